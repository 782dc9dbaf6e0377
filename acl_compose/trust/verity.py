"""dm-verity hash trees in pure Python, bit-exact with cryptsetup's `veritysetup format`.

Layout (FACTS section 3, cryptsetup lib/verity): an optional 512-byte superblock at
`hash_offset`, then the tree levels stored top level first down to the leaves. Hash type 1
hashes every block as H(salt || block) with digests padded to a power of two; hash type 0
(Chrome OS) hashes H(block || salt) with digests packed. The root hash is the digest of the
single top hash block (or of the only data block when there is just one).

Leaves (the data) are hashed in worker processes that each open the file themselves and hash a
range, so memory stays constant whatever the data size; the small upper levels are built in the
parent as leaf blocks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import struct
import tempfile
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError
from acl_compose.trust.verity_diag import RootHashMismatch
from acl_compose.trust.verity_tree import (
    SUPERBLOCK_SIZE,
    Layout,
    VerityError,
    verify_tree,
    write_tree,
)
from acl_compose.ui import opt
from acl_compose.util import signals_held

__all__ = [
    "RootHashMismatch",
    "VerityError",
    "VerityResult",
    "VeritySuperblock",
    "create",
    "parse_root_hash",
    "parse_salt",
    "read_superblock",
    "verify",
]

log = logging.getLogger("acl_compose")

ALGORITHMS = ("sha1", "sha224", "sha256", "sha384", "sha512")
MIN_BLOCK, MAX_BLOCK = 512, 65536
MAX_SALT = 256
_MAGIC = b"verity\0\0"
# signature, version, hash_type, uuid, algorithm, data/hash block size, data_blocks, salt_size,
# pad, salt, pad: struct verity_sb in cryptsetup, little-endian, packed.
_SB = struct.Struct("<8sII16s32sIIQH6x256s168x")
assert _SB.size == SUPERBLOCK_SIZE


@dataclass
class VeritySuperblock:
    hash_type: int
    uuid: str
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes
    version: int = 1

    def to_bytes(self) -> bytes:
        return _SB.pack(
            _MAGIC,
            self.version,
            self.hash_type,
            uuidlib.UUID(self.uuid).bytes,
            self.algorithm.encode(),
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            len(self.salt),
            self.salt,
        )

    @classmethod
    def from_bytes(cls, raw: bytes, where: str = "superblock") -> VeritySuperblock | None:
        """Parse a superblock; None if there is no verity magic, InputError if it is malformed."""
        if len(raw) < SUPERBLOCK_SIZE or raw[:8] != _MAGIC:
            return None
        _, version, htype, uid, alg, dbs, hbs, nblocks, salt_size, salt = _SB.unpack(
            raw[:SUPERBLOCK_SIZE]
        )
        algorithm = alg.rstrip(b"\0").decode("ascii", "replace")
        if version != 1 or htype not in (0, 1) or salt_size > MAX_SALT:
            raise InputError(f"{where}: unsupported verity superblock (version {version})")
        return cls(
            hash_type=htype,
            uuid=str(uuidlib.UUID(bytes=uid)),
            algorithm=algorithm,
            data_block_size=dbs,
            hash_block_size=hbs,
            data_blocks=nblocks,
            salt=salt[:salt_size],
            version=version,
        )


@dataclass
class VerityResult:
    root_hash: str
    salt: bytes
    algorithm: str
    hash_type: int
    data_blocks: int
    data_block_size: int
    hash_block_size: int
    hash_offset: int
    uuid: str | None
    superblock: bool
    hash_size: int  # bytes from hash_offset to the end of the tree, superblock included

    def to_json(self) -> dict[str, Any]:
        return {
            "root_hash": self.root_hash,
            "salt": self.salt.hex(),
            "hash_algorithm": self.algorithm,
            "data_blocks": self.data_blocks,
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "hash_offset": self.hash_offset,
            "uuid": self.uuid,
        }


# ---------------------------------------------------------------- parameters


def _check_params(
    algorithm: str,
    data_block_size: int,
    hash_block_size: int,
    hash_type: int,
    salt: bytes,
    hash_offset: int,
) -> None:
    if algorithm not in ALGORITHMS:
        raise InputError(
            f"unsupported hash algorithm {algorithm!r}",
            hint=f"use one of {', '.join(ALGORITHMS)}",
        )
    for what, size in (("data block size", data_block_size), ("hash block size", hash_block_size)):
        if not (MIN_BLOCK <= size <= MAX_BLOCK) or size & (size - 1):
            raise InputError(
                f"{what} {size} is not a power of two between {MIN_BLOCK} and {MAX_BLOCK}",
                hint="use 512, 1024, 2048, 4096 (the default), ... 65536",
            )
    if hash_type not in (0, 1):
        raise InputError(
            f"verity hash type {hash_type} is not 0 or 1",
            hint=f"use hash type 1 ({opt('--format 1', 'the current one')})",
        )
    if len(salt) > MAX_SALT:
        raise InputError(f"salt is {len(salt)} bytes, at most {MAX_SALT} allowed")
    if hash_offset < 0 or hash_offset % 512:
        raise InputError(
            f"hash offset {hash_offset} is not a multiple of 512",
            hint="dm-verity addresses the hash area in 512-byte sectors",
        )


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise InputError(
            f"{opt('--workers', 'the number of workers')} must be at least 1, got {workers}"
        )


def parse_salt(text: str | None) -> bytes | None:
    """CLI salt: hex, `-` for none, None for a random one."""
    if text is None:
        return None
    if text == "-":
        return b""
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InputError(
            f"salt {text!r} is not hexadecimal", hint="use hex digits or - for none"
        ) from None


def _normalize_uuid(value: str | None) -> str:
    if value is None:
        return str(uuidlib.uuid4())
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise InputError(
            f"UUID {value!r} is malformed", hint="use the 8-4-4-4-12 hex form"
        ) from None


def _data_size(path: Path) -> int:
    try:
        st = os.stat(path)
    except OSError as e:
        raise InputError(f"cannot read data file {path}: {e.strerror}") from None
    if not (os.path.isfile(path) or _is_blockdev(st.st_mode)):
        raise InputError(f"data file {path} is not a regular file or block device")
    if _is_blockdev(st.st_mode):
        with open(path, "rb") as f:
            return f.seek(0, os.SEEK_END)
    return st.st_size


def _is_blockdev(mode: int) -> bool:
    import stat

    return stat.S_ISBLK(mode)


def _same_file(a: Path, b: Path | None) -> bool:
    if b is None:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _resolve_data_blocks(data: Path, size: int, data_blocks: int | None, dbs: int) -> int:
    if data_blocks is None:
        data_blocks = size // dbs
        if size % dbs:
            log.warning(
                "%s: last %d bytes are not a whole %d-byte block and are not covered "
                "(as veritysetup)",
                data,
                size % dbs,
                dbs,
            )
    if data_blocks < 1:
        raise InputError(
            f"data file {data} holds no whole {dbs}-byte block",
            hint="the data must be at least one data block long",
        )
    if data_blocks * dbs > size:
        raise InputError(
            f"data file {data} is {size} bytes, smaller than {data_blocks} blocks of {dbs}",
            hint=f"lower {opt('--data-blocks', 'the number of data blocks')} or use the right file",
        )
    return data_blocks


# ---------------------------------------------------------------- create


def create(
    data: str | os.PathLike[str],
    hash_path: str | os.PathLike[str] | None = None,
    *,
    hash_offset: int | None = None,
    salt: bytes | None = None,
    algorithm: str = "sha256",
    data_block_size: int = 4096,
    hash_block_size: int = 4096,
    hash_type: int = 1,
    superblock: bool = True,
    data_blocks: int | None = None,
    uuid: str | None = None,
    workers: int | None = None,
    data_offset: int = 0,
) -> VerityResult:
    """Build the hash tree of `data` like `veritysetup format` and return its root hash.

    hash_path None (or the data file itself) puts the tree into `data` at hash_offset, which
    defaults to the end of the file rounded up to the hash block size. A separate hash file is
    written atomically; bytes before hash_offset in an existing one are kept. `data_offset`
    says where the data starts inside `data` (a partition slot of a disk image).
    """
    data = Path(data)
    _check_workers(workers)
    salt = os.urandom(32) if salt is None else bytes(salt)
    _check_params(algorithm, data_block_size, hash_block_size, hash_type, salt, hash_offset or 0)
    size = max(0, _data_size(data) - data_offset)
    nblocks = _resolve_data_blocks(data, size, data_blocks, data_block_size)
    same = _same_file(data, Path(hash_path) if hash_path is not None else None)
    if hash_offset is None:
        end = data_offset + (size if same and data_blocks is None else nblocks * data_block_size)
        hash_offset = (
            (end + hash_block_size - 1) // hash_block_size * hash_block_size if same else 0
        )
    uuid_s = _normalize_uuid(uuid) if superblock else None
    sb_bytes = None
    if uuid_s is not None:
        sb_bytes = VeritySuperblock(
            hash_type, uuid_s, algorithm, data_block_size, hash_block_size, nblocks, salt
        ).to_bytes()
    lay = Layout(
        algorithm,
        hash_type,
        salt,
        data_block_size,
        hash_block_size,
        nblocks,
        hash_offset,
        superblock,
        data_offset,
    )
    if same and lay.area_start < data_offset + nblocks * data_block_size:
        raise InputError(
            f"hash offset {hash_offset} overlaps the data of {data} "
            f"({nblocks} blocks of {data_block_size} bytes)",
            hint=f"put the tree at byte {nblocks * data_block_size} or later "
            f"({opt('--hash-offset', 'the hash offset')}), or in a separate hash file",
        )

    if same:
        try:
            fd = os.open(data, os.O_RDWR)
        except OSError as e:
            raise InputError(f"cannot open {data} for writing: {e.strerror}") from None
        try:
            root = write_tree(fd, data, data, lay, sb_bytes, workers)
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        root = _create_separate(data, Path(hash_path), lay, sb_bytes, workers)  # type: ignore[arg-type]
    return VerityResult(
        root_hash=root.hex(),
        salt=salt,
        algorithm=algorithm,
        hash_type=hash_type,
        data_blocks=nblocks,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
        hash_offset=hash_offset,
        uuid=uuid_s,
        superblock=superblock,
        hash_size=lay.end_byte - hash_offset,
    )


def _create_separate(
    data: Path, hash_path: Path, lay: Layout, sb_bytes: bytes | None, workers: int | None
) -> bytes:
    if hash_path.is_dir():
        raise InputError(f"hash file {hash_path} is a directory")
    hash_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = -1, None
    try:
        with signals_held():  # a Ctrl-C right after mkstemp still finds `tmp` to remove
            fd, tmp = tempfile.mkstemp(
                prefix=f".{hash_path.name}.", suffix=".tmp", dir=hash_path.parent
            )
        if lay.hash_offset and hash_path.exists():
            # veritysetup writes into the existing file: keep what precedes the hash area.
            with open(hash_path, "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
                shutil.copyfileobj(_limited(src, lay.area_start), dst)
        os.fchmod(fd, 0o644)
        root = write_tree(fd, hash_path, data, lay, sb_bytes, workers)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, hash_path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    return root


class _limited:
    """A read-only file wrapper that stops after `n` bytes."""

    def __init__(self, f: Any, n: int) -> None:
        self.f, self.n = f, n

    def read(self, size: int = -1) -> bytes:
        if self.n <= 0:
            return b""
        chunk = self.f.read(self.n if size < 0 else min(size, self.n))
        self.n -= len(chunk)
        return chunk


# ---------------------------------------------------------------- superblock and verify


def read_superblock(path: str | os.PathLike[str], offset: int = 0) -> VeritySuperblock | None:
    """The verity superblock at `offset` in `path`, or None if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read(SUPERBLOCK_SIZE)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    return VeritySuperblock.from_bytes(raw, where=f"{path} at offset {offset}")


def parse_root_hash(text: str, algorithm: str | None = None) -> bytes:
    """A root hash from hex; InputError when it is not hex or has the wrong length."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise InputError(f"root hash {text!r} is not hexadecimal") from None
    sizes = {hashlib.new(a).digest_size: a for a in ALGORITHMS}
    if algorithm is not None:
        want = hashlib.new(algorithm).digest_size
        if len(raw) != want:
            raise InputError(
                f"root hash is {len(raw) * 2} hex digits, {algorithm} needs {want * 2}",
                hint="pass the whole root hash printed by `verity format`",
            )
    elif len(raw) not in sizes or len(text) % 2:
        raise InputError(f"root hash {text!r} has the wrong length for sha1/sha256/sha512")
    return raw


def _pick(name: str, given: Any, from_sb: Any, where: str) -> Any:
    if given is not None and given != from_sb:
        shown = given.hex() if isinstance(given, bytes) else given
        stored = from_sb.hex() if isinstance(from_sb, bytes) else from_sb
        raise InputError(
            f"{name} {shown} differs from the superblock in {where} ({stored})",
            hint="omit the option to use the superblock's value",
        )
    return from_sb


def verify(
    data: str | os.PathLike[str],
    hash_path: str | os.PathLike[str] | None,
    root_hash: str,
    *,
    hash_offset: int | None = None,
    salt: bytes | None = None,
    algorithm: str | None = None,
    data_block_size: int | None = None,
    hash_block_size: int | None = None,
    hash_type: int | None = None,
    superblock: bool = True,
    data_blocks: int | None = None,
    uuid: str | None = None,
    workers: int | None = None,
    data_offset: int = 0,
) -> VerityResult:
    """Check `data` and its tree against `root_hash`, top level first.

    With a superblock the layout comes from it (options that contradict it are refused).
    `data_offset` says where the data starts inside `data` (a partition of a disk image).
    Raises VerityError naming the first corrupted hash block (block number in the file that
    holds the tree, as the kernel counts) or data block, or RootHashMismatch when the tree is
    whole but the root hash is not its own.
    """
    data = Path(data)
    _check_workers(workers)
    parse_root_hash(root_hash)  # obviously malformed root hashes before any file access
    size = max(0, _data_size(data) - data_offset)
    same = _same_file(data, Path(hash_path) if hash_path is not None else None)
    tree_file = data if same else Path(hash_path)  # type: ignore[arg-type]
    if not tree_file.is_file() and not tree_file.is_block_device():
        raise InputError(f"cannot read hash file {tree_file}: no such file")
    if hash_offset is None:
        if not same:
            hash_offset = 0
        elif data_blocks is not None:
            hbs = hash_block_size or 4096
            hash_offset = (data_blocks * (data_block_size or 4096) + hbs - 1) // hbs * hbs
        else:
            raise InputError(
                f"the hash tree is inside {data}: its offset is needed "
                f"({opt('--hash-offset', 'the hash offset')})",
                hint="give the hash offset printed by `verity format` (or the number of data "
                f"blocks: {opt('--data-blocks', 'the data blocks')})",
            )
    if superblock:
        sb = read_superblock(tree_file, hash_offset)
        if sb is None:
            raise InputError(
                f"no verity superblock in {tree_file} at offset {hash_offset}",
                hint=f"check the offset ({opt('--hash-offset', 'the hash offset')}), or say there "
                f"is no superblock ({opt('--no-superblock', 'no superblock')}) and give the "
                "layout",
            )
        where = str(tree_file)
        algorithm = _pick("hash algorithm", algorithm, sb.algorithm, where)
        data_block_size = _pick("data block size", data_block_size, sb.data_block_size, where)
        hash_block_size = _pick("hash block size", hash_block_size, sb.hash_block_size, where)
        hash_type = _pick("hash type", hash_type, sb.hash_type, where)
        data_blocks = _pick("data blocks", data_blocks, sb.data_blocks, where)
        salt = _pick("salt", salt, sb.salt, where)
        uuid = _pick("UUID", None if uuid is None else _normalize_uuid(uuid), sb.uuid, where)
    else:
        algorithm = algorithm or "sha256"
        data_block_size = data_block_size or 4096
        hash_block_size = hash_block_size or 4096
        hash_type = 1 if hash_type is None else hash_type
        salt = b"" if salt is None else salt
        uuid = None
    _check_params(algorithm, data_block_size, hash_block_size, hash_type, salt, hash_offset)
    root = parse_root_hash(root_hash, algorithm)
    nblocks = _resolve_data_blocks(data, size, data_blocks, data_block_size)
    lay = Layout(
        algorithm,
        hash_type,
        salt,
        data_block_size,
        hash_block_size,
        nblocks,
        hash_offset,
        superblock,
        data_offset,
    )
    data_end = data_offset + nblocks * data_block_size
    if same and lay.area_start < data_end and lay.end_byte > data_offset:
        raise InputError(f"hash offset {hash_offset} overlaps the data of {data}")
    verify_tree(data, tree_file, lay, root, workers)
    return VerityResult(
        root_hash=root.hex(),
        salt=salt,
        algorithm=algorithm,
        hash_type=hash_type,
        data_blocks=nblocks,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
        hash_offset=hash_offset,
        uuid=uuid,
        superblock=superblock,
        hash_size=lay.end_byte - hash_offset,
    )
