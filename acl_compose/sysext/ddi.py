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
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from acl_compose.errors import InputError, VerificationError
from acl_compose.image import gpt

ALIGN = 4096
FIRST_LBA = 2048  # 1 MiB, the conventional first partition offset
SIG_SIZE = 16 * 1024
CHUNK = 4 << 20  # systemd-repart's size for the signature partition
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


def write(
    out: str | os.PathLike[str],
    fs_image: str | os.PathLike[str],
    verity_tree: str | os.PathLike[str],
    root_hash: str,
    architecture: str,
    sig_json: bytes | None = None,
) -> tuple[gpt.Disk, str]:
    """Write the DDI to `out` (a new file): GPT + data + verity (+ signature) partitions.

    Returns the GPT and the sha256 of the whole image file.
    """
    ids = partition_uuids(root_hash)
    sizes = [
        ("data", gpt.align_up(os.stat(fs_image).st_size, ALIGN)),
        ("verity", gpt.align_up(os.stat(verity_tree).st_size, ALIGN)),
    ]
    if sig_json is not None:
        sizes.append(("sig", max(SIG_SIZE, gpt.align_up(len(sig_json), ALIGN))))
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
    out = Path(out)
    with open(out, "wb") as f:
        f.truncate(total)
    disk = gpt.write(out, parts, ids["disk"], total)
    # One sequential pass writes the partitions and hashes the whole image on the way,
    # so the result's sha256 costs no second read of a large image.
    h = hashlib.sha256()
    with open(out, "r+b") as f:
        h.update(os.pread(f.fileno(), parts[0].offset, 0))
        for part, src in zip(parts, (fs_image, verity_tree), strict=False):
            _stream_into(f.fileno(), part, Path(src), h)
        if sig_json is not None:
            blob = sig_json.ljust(parts[2].size, b"\0")
            os.pwrite(f.fileno(), blob, parts[2].offset)
            h.update(blob)
        end = parts[-1].offset + parts[-1].size
        h.update(os.pread(f.fileno(), total - end, end))
    return disk, h.hexdigest()


def _stream_into(fd: int, part: gpt.Partition, src: Path, h: hashlib._Hash) -> None:
    """Copy `src` to the partition, zero-padding it to the partition size; hash what lands."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = part.offset
    with open(src, "rb", buffering=0) as s:
        while n := s.readinto(buf):
            os.pwrite(fd, view[:n], pos)
            h.update(view[:n])
            pos += n
    pad = part.offset + part.size - pos
    if pad < 0:
        raise InputError(f"{src} does not fit partition {part.name}")
    h.update(bytes(pad))  # the file was truncated to size: the padding is already zero


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
        with open(self.path, "rb") as f:
            f.seek(self.sig.offset)
            raw = f.read(self.sig.size)
        try:
            doc = json.loads(raw.rstrip(b"\0").decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
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
