"""Discoverable Disk Images for system extensions: write and read the GPT layout.

Layout (as systemd-repart makes it for a signed verity extension):
  1 root-<arch>             the filesystem (erofs/squashfs), UUID = first 128 bits of root hash
  2 root-<arch>-verity      the dm-verity hash tree with superblock, UUID = last 128 bits
  3 root-<arch>-verity-sig  JSON {"rootHash","certificateFingerprint","signature"}, NUL padded
systemd-dissect matches the data/verity pair by those UUIDs, so they are not cosmetic.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError, VerificationError
from acl_compose.image import gpt
from acl_compose.image.sparse import feed_zeros
from acl_compose.util import data_ranges

ALIGN = 4096
FIRST_LBA = 2048  # 1 MiB, the conventional first partition offset
DATA_OFFSET = FIRST_LBA * gpt.SECTOR  # where the filesystem starts
SIG_SIZE = 16 * 1024  # systemd-repart's size for the signature partition
MAX_SIGNATURE = 1 << 20  # what a reader accepts: far above any real signature JSON
CHUNK = 4 << 20
WINDOW = 16 << 20  # bytes mapped at a time while hashing an image
GPT_MAGIC = b"EFI PART"
ARCH_OF_TYPE = {
    gpt.TYPES[f"root-{arch}{suffix}"]: (arch, role)
    for arch in ("x86-64", "arm64")
    for suffix, role in (("", "data"), ("-verity", "verity"), ("-verity-sig", "sig"))
}


def _uuid_from(raw: bytes, version4: bool = False) -> str:
    b = bytearray(raw[:16])
    if version4:  # for GUIDs that are not hash-matched, keep them well-formed RFC 4122 v4
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b))).upper()


def partition_uuids(root_hash: str) -> dict[str, str]:
    """The deterministic GUIDs of a DDI with this root hash (disk, data, verity, sig)."""
    rh = bytes.fromhex(root_hash)
    return {
        "data": _uuid_from(rh[:16]),
        "verity": _uuid_from(rh[-16:]),
        "sig": _uuid_from(hashlib.sha256(b"acl-compose verity-sig\0" + rh).digest(), True),
        "disk": _uuid_from(hashlib.sha256(b"acl-compose disk\0" + rh).digest(), True),
    }


def signature_json(root_hash: str, fingerprint: str, signature_b64: str) -> bytes:
    """The signature partition's content, compact JSON in systemd-repart's key order."""
    doc = {"rootHash": root_hash, "certificateFingerprint": fingerprint, "signature": signature_b64}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Extent:
    """`size` bytes at `offset` of `path`: a filesystem or tree, alone or inside a DDI."""

    path: Path
    offset: int
    size: int

    @classmethod
    def of(cls, src: str | os.PathLike[str] | Extent) -> Extent:
        if isinstance(src, Extent):
            return src
        return cls(Path(src), 0, os.stat(src).st_size)


@dataclass
class Plan:
    """Where everything goes in a DDI for a filesystem and tree of given sizes."""

    parts: list[gpt.Partition]
    disk_guid: str
    total: int

    @property
    def data(self) -> gpt.Partition:
        return self.parts[0]

    @property
    def verity(self) -> gpt.Partition:
        return self.parts[1]


def plan(
    fs_size: int, tree_size: int, root_hash: str, architecture: str, sig_size: int | None
) -> Plan:
    """The GPT of a DDI: data, verity (and signature, `sig_size` bytes of JSON) partitions,
    one after the other."""
    ids = partition_uuids(root_hash)
    sizes = [("data", gpt.align_up(fs_size, ALIGN)), ("verity", gpt.align_up(tree_size, ALIGN))]
    if sig_size is not None:
        sizes.append(("sig", max(SIG_SIZE, gpt.align_up(sig_size, ALIGN))))
    suffix = {"data": "", "verity": "-verity", "sig": "-verity-sig"}
    parts = []
    lba = FIRST_LBA
    for number, (role, size) in enumerate(sizes, start=1):
        label = f"root-{architecture}{suffix[role]}"
        sectors = size // gpt.SECTOR
        parts.append(
            gpt.Partition(
                number=number,
                type_guid=gpt.TYPES[label],
                guid=ids[role],
                name=label,
                first_lba=lba,
                last_lba=lba + sectors - 1,
                attributes=gpt.ATTR_READ_ONLY,
            )
        )
        lba += sectors
    # Backup GPT: 32 entry sectors + header after the last partition, rounded to 4 KiB.
    total = gpt.align_up((lba + 1 + gpt.ENTRIES_SECTORS) * gpt.SECTOR, ALIGN)
    return Plan(parts, ids["disk"], total)


def write(
    out: str | os.PathLike[str],
    fs_image: str | os.PathLike[str] | Extent,
    verity_tree: str | os.PathLike[str] | Extent,
    root_hash: str,
    architecture: str,
    sig_json: bytes | None = None,
    copied: Callable[[], object] | None = None,
) -> tuple[gpt.Disk, str]:
    """Write the DDI to `out` (a new file): GPT + data + verity (+ signature) partitions.

    The filesystem and tree are copied in the kernel (copy_file_range), the filesystem a
    WINDOW at a time, while a thread hashes the image from `out` itself right behind the
    copy. `copied()` is called as soon as the sources are no longer read, before the hash is
    done: a caller can drop a 200 MB source while the hash finishes. Returns the GPT and the
    image's sha256.
    """
    fs, tree = Extent.of(fs_image), Extent.of(verity_tree)
    p = plan(fs.size, tree.size, root_hash, architecture, _len(sig_json))
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        disk = _frame(Path(out), fd, p, sig_json)
        _copy_into(fd, p.verity, tree)  # small, and then all but the data slot is in place
        follow = _Follower(fd, p.data.offset)
        hasher = threading.Thread(target=follow.run, args=(p.total,), daemon=True)
        hasher.start()
        try:
            if fs.size > p.data.size:
                raise InputError(f"{fs.path} does not fit partition {p.data.name}")
            for at in range(0, fs.size, WINDOW):
                n = min(WINDOW, fs.size - at)
                copy_extent(Extent(fs.path, fs.offset + at, n), fd, p.data.offset + at)
                follow.advance(p.data.offset + at + n)
        except BaseException:
            follow.advance(-1)
            hasher.join()
            raise
        follow.advance(p.total)  # the rest of the slot is the zeros ftruncate left
        try:
            if copied is not None:
                copied()
        finally:
            hasher.join()  # before the fd closes, whatever copied() did
        return disk, follow.hexdigest()
    finally:
        os.close(fd)


class _Follower:
    """Hashes an image from its fd in order, never past what the writer says is in place."""

    def __init__(self, fd: int, ready: int) -> None:
        self._fd, self._ready, self._cond = fd, ready, threading.Condition()
        self._h = hashlib.sha256()
        self._error: BaseException | None = None

    def advance(self, ready: int) -> None:
        """Bytes before `ready` are written; -1: the writer failed, stop."""
        with self._cond:
            self._ready = ready
            self._cond.notify()

    def run(self, total: int) -> None:
        done = 0
        try:
            while done < total:
                with self._cond:
                    self._cond.wait_for(lambda d=done: self._ready > d or self._ready < 0)
                    ready = self._ready
                if ready < 0:
                    return
                _hash_range(self._h, self._fd, done, ready - done)
                done = ready
        except BaseException as e:  # noqa: BLE001 - raised by hexdigest()
            self._error = e

    def hexdigest(self) -> str:
        if self._error is not None:
            raise self._error
        return self._h.hexdigest()


def _hash_range(h: Any, fd: int, offset: int, size: int) -> None:
    """Data through mmap (no copy out of the page cache), one WINDOW at a time, so resident
    memory stays at a window whatever the image size; holes as zeros without touching them
    (a read fault on a tmpfs hole allocates a page, and SIGBUSes when the tmpfs is full)."""
    pos, end = offset, offset + size
    for data, length in [*data_ranges(fd, offset, end), (end, 0)]:
        feed_zeros(h, _ZEROS, data - pos)  # a hole
        pos = data
        while pos < data + length:
            n = min(WINDOW, data + length - pos)
            skew = pos % mmap.ALLOCATIONGRANULARITY
            flags = mmap.MAP_SHARED | _MAP_POPULATE
            with mmap.mmap(fd, n + skew, flags, mmap.PROT_READ, offset=pos - skew) as m:
                with memoryview(m) as view:
                    h.update(view[skew:])
            pos += n


def write_around(
    image: str | os.PathLike[str],
    fs_size: int,
    verity_tree: str | os.PathLike[str] | Extent,
    root_hash: str,
    architecture: str,
    sig_json: bytes | None = None,
) -> tuple[gpt.Disk, str]:
    """Complete a DDI whose filesystem is already in its slot at DATA_OFFSET (mksquashfs
    -offset writes it there): the tree goes after it, then the signature and both GPTs.
    No copy of the filesystem; the result is byte for byte what write() makes."""
    tree = Extent.of(verity_tree)
    p = plan(fs_size, tree.size, root_hash, architecture, _len(sig_json))
    assert p.data.offset == DATA_OFFSET
    fd = os.open(image, os.O_RDWR)
    try:
        os.ftruncate(fd, DATA_OFFSET + fs_size)  # nothing of the slot's padding may be left
        _copy_into(fd, p.verity, tree)
        return _finish(Path(image), fd, p, sig_json)
    finally:
        os.close(fd)


def _len(sig_json: bytes | None) -> int | None:
    return None if sig_json is None else len(sig_json)


def _copy_into(fd: int, part: gpt.Partition, src: Extent) -> None:
    """Copy `src` into the partition's slot (the rest of the slot stays zero)."""
    if src.size > part.size:
        raise InputError(f"{src.path} does not fit partition {part.name}")
    copy_extent(src, fd, part.offset)


def copy_extent(src: Extent, fd: int, dst_offset: int) -> None:
    """Copy `src` to `dst_offset` of `fd`, in the kernel (copy_file_range) where it can."""
    with open(src.path, "rb", buffering=0) as s:
        done = 0
        while done < src.size:
            try:
                n = os.copy_file_range(
                    s.fileno(), fd, src.size - done, src.offset + done, dst_offset + done
                )
            except OSError:  # e.g. across filesystems on older kernels: copy by hand
                n = 0
            if n == 0:
                chunk = os.pread(s.fileno(), min(CHUNK, src.size - done), src.offset + done)
                if not chunk:
                    raise InputError(f"{src.path}: shorter than expected")
                n = os.pwrite(fd, chunk, dst_offset + done)
            done += n


def copy_to_file(src: Extent, dest: str | os.PathLike[str]) -> None:
    """`src` as a new file `dest` (mode 0644)."""
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        copy_extent(src, fd, 0)
    finally:
        os.close(fd)


def _frame(path: Path, fd: int, p: Plan, sig_json: bytes | None) -> gpt.Disk:
    """Size the file and write the signature partition and both GPTs."""
    os.ftruncate(fd, p.total)  # zero-extends: partition padding and the gaps read as zeros
    if sig_json is not None:
        os.pwrite(fd, sig_json.ljust(p.parts[2].size, b"\0"), p.parts[2].offset)
    return gpt.write(path, p.parts, p.disk_guid, p.total)


def _finish(path: Path, fd: int, p: Plan, sig_json: bytes | None) -> tuple[gpt.Disk, str]:
    """_frame(), then the sha256 of the whole image."""
    disk = _frame(path, fd, p, sig_json)
    h = hashlib.sha256()
    _hash_range(h, fd, 0, p.total)
    return disk, h.hexdigest()


_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_ZEROS = memoryview(bytes(1 << 20))


@dataclass
class DdiInfo:
    path: Path
    disk: gpt.Disk
    architecture: str
    data: gpt.Partition
    verity: gpt.Partition | None
    sig: gpt.Partition | None

    @property
    def uuid_root_hash(self) -> str | None:
        """The root hash the data/verity partition UUIDs encode (first + last 128 bits)."""
        if self.verity is None:
            return None
        return uuid.UUID(self.data.guid).bytes.hex() + uuid.UUID(self.verity.guid).bytes.hex()

    def signature(self) -> dict[str, str] | None:
        """The parsed signature JSON, or None without a signature partition."""
        if self.sig is None:
            return None
        if self.sig.size > MAX_SIGNATURE:  # repart writes 16 KiB; the GPT says how much to read
            raise VerificationError(
                f"{self.path}: signature partition of {self.sig.size} bytes (at most "
                f"{MAX_SIGNATURE} expected)"
            )
        with open(self.path, "rb") as f:
            f.seek(self.sig.offset)
            raw = f.read(self.sig.size)
        try:
            doc = json.loads(raw.rstrip(b"\0").decode())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise VerificationError(f"{self.path}: signature partition is not JSON: {e}") from e
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), str) for k in ("rootHash", "signature")
        ):
            raise VerificationError(f"{self.path}: signature JSON lacks rootHash/signature")
        return doc


def is_ddi(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as f:
        f.seek(512)
        return f.read(8) == GPT_MAGIC


def read(path: str | os.PathLike[str]) -> DdiInfo:
    """Find the root data / verity / signature partitions of a sysext DDI."""
    path = Path(path)
    disk = gpt.read(path)
    found: dict[str, gpt.Partition] = {}
    arch = None
    for p in disk.partitions:
        hit = ARCH_OF_TYPE.get(p.type_guid)
        if hit is None:
            continue
        a, role = hit
        if arch is not None and a != arch:
            raise InputError(f"{path}: partitions for both {arch} and {a}")
        arch = a
        if role in found:
            raise InputError(f"{path}: more than one root {role} partition")
        found[role] = p
    if "data" not in found or arch is None:
        raise InputError(
            f"{path}: no root-x86-64 or root-arm64 partition; not a sysext DDI",
            hint="build it with `acl-compose sysext build`",
        )
    return DdiInfo(path, disk, arch, found["data"], found.get("verity"), found.get("sig"))
