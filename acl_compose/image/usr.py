"""The verity-sealed /usr of a Flatcar disk image, read offline.

Flatcar writes the /usr root hash as 64 ASCII hex at byte 64 of `flatcar/vmlinuz-a` on the
ESP (FACTS 3) and keeps the hash tree with a verity superblock inside USR-A after the
filesystem. Nothing here hard-codes offsets: the superblock is found from the filesystem's
own size (btrfs total_bytes, or ext2's block count) and, failing that, by scanning data blocks.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError, VerificationError
from acl_compose.image import fs, gpt
from acl_compose.image.osrelease import parse_os_release
from acl_compose.image.sparse import data_ranges
from acl_compose.trust import verity

KERNEL_PATH = "flatcar/vmlinuz-a"
HASH_OFFSETS = {"amd64-usr": 64, "arm64-usr": 512}
VERITY_MAGIC = b"verity\0\0"
_HEX64 = re.compile(rb"^[0-9a-f]{64}$")


class UsrVerityError(VerificationError):
    """The /usr partition does not match the root hash the kernel carries."""

    hint = "refusing this base image: its /usr was modified; fetch a trusted release"


@dataclass
class UsrVerity:
    kernel_root_hash: str
    hash_offset: int
    superblock: verity.VeritySuperblock

    def to_json(self) -> dict[str, Any]:
        sb = self.superblock
        return {
            "root_hash": self.kernel_root_hash,
            "hash_offset": self.hash_offset,
            "data_blocks": sb.data_blocks,
            "data_block_size": sb.data_block_size,
            "hash_block_size": sb.hash_block_size,
            "hash_algorithm": sb.algorithm,
            "salt": sb.salt.hex(),
            "uuid": sb.uuid,
        }


def esp(disk: gpt.Disk) -> gpt.Partition:
    for p in disk.partitions:
        if p.type_guid == gpt.TYPES["efi"]:
            return p
    return disk.by_label("EFI-SYSTEM")


def kernel_root_hash(
    image: str | os.PathLike[str], disk: gpt.Disk, board: str = "amd64-usr"
) -> str:
    """The root hash Flatcar's GRUB passes as verity.usrhash, read from the kernel on the ESP."""
    kernel = fs.fat_read(image, esp(disk).offset, KERNEL_PATH)
    off = HASH_OFFSETS.get(board, 64)
    raw = kernel[off : off + 64]
    if not _HEX64.match(raw):
        raise UsrVerityError(
            f"{image}: {KERNEL_PATH} carries no /usr root hash at byte {off}",
            hint="this is not a Flatcar-style image with a verity-protected /usr",
        )
    return raw.decode()


def find_superblock(part: str | os.PathLike[str]) -> tuple[int, verity.VeritySuperblock]:
    """Locate the verity superblock in a USR partition file; streamed, memory stays flat."""
    size = os.path.getsize(part)
    start = 0
    info = fs.btrfs_info(part)
    if info is not None:
        start = info.total_bytes
    else:
        start = _ext2_size(part) or 0
    start = -(-start // 4096) * 4096
    with open(part, "rb") as f:
        # Fast path: right after the filesystem (where Flatcar's build puts it).
        for off in (start,):
            f.seek(off)
            sb = verity.VeritySuperblock.from_bytes(f.read(512), f"{part}@{off}")
            if sb is not None:
                return off, sb
        # Otherwise scan 4 KiB-aligned data blocks after the filesystem, skipping holes.
        for off, length in data_ranges(f.fileno(), start, size):
            first = -(-off // 4096) * 4096
            for block in range(first, off + length, 4096):
                head = os.pread(f.fileno(), 8, block)
                if head == VERITY_MAGIC:
                    sb = verity.VeritySuperblock.from_bytes(os.pread(f.fileno(), 512, block))
                    if sb is not None:
                        return block, sb
    raise UsrVerityError(
        f"{part}: no dm-verity superblock found in the USR partition",
        hint="the base image's /usr has no verity hash tree; it cannot be verified",
    )


def _ext2_size(part: str | os.PathLike[str]) -> int | None:
    """Bytes used by an ext2/3/4 filesystem (Flatcar /usr before 3815), from its superblock."""
    with open(part, "rb") as f:
        f.seek(1024)
        sb = f.read(1024)
    if len(sb) < 1024 or sb[56:58] != b"\x53\xef":
        return None
    (blocks_lo,) = struct.unpack_from("<I", sb, 4)
    (log_bs,) = struct.unpack_from("<I", sb, 24)
    return blocks_lo * (1024 << log_bs)


def verify_usr(
    image: str | os.PathLike[str],
    disk: gpt.Disk,
    usr_file: str | os.PathLike[str],
    board: str = "amd64-usr",
) -> UsrVerity:
    """Recompute USR-A's hash tree and require the root hash the kernel carries."""
    expected = kernel_root_hash(image, disk, board)
    offset, sb = find_superblock(usr_file)
    try:
        verity.verify(
            usr_file,
            usr_file,
            expected,
            hash_offset=offset,
            salt=sb.salt,
            algorithm=sb.algorithm,
            data_block_size=sb.data_block_size,
            hash_block_size=sb.hash_block_size,
            hash_type=sb.hash_type,
            data_blocks=sb.data_blocks,
        )
    except verity.VerityError as e:
        raise UsrVerityError(
            f"{image}: /usr (USR-A) does not match the root hash in {KERNEL_PATH}: {e.message}"
        ) from e
    return UsrVerity(expected, offset, sb)


def usr_partition(disk: gpt.Disk) -> gpt.Partition:
    return disk.by_label("USR-A")


def extract(
    image: str | os.PathLike[str], part: gpt.Partition, dest: str | os.PathLike[str]
) -> Path:
    gpt.copy_out(image, part, dest)
    return Path(dest)


def filesystem(usr_file: str | os.PathLike[str]) -> str | None:
    """The USR partition's filesystem: btrfs (Flatcar 3815 on), ext2 (before), else None."""
    if fs.btrfs_info(usr_file) is not None:
        return "btrfs"
    return "ext2" if _ext2_size(usr_file) else None


def read_file(usr_file: str | os.PathLike[str], path: str) -> bytes | None:
    """A file from an unmounted USR partition (btrfs restore or debugfs); None if absent."""
    kind = filesystem(usr_file)
    if kind == "btrfs":
        return fs.btrfs_read_file(usr_file, path)
    if kind == "ext2":
        return fs.ext4_read_file(fs.ext4_spec(usr_file), path, strip_prefix="/usr")
    raise InputError(
        f"{usr_file}: USR-A holds neither btrfs nor ext2", hint="is this a Flatcar image?"
    )


def read_os_release(usr_file: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """os-release text and fields from a USR partition (its root is /usr)."""
    data = read_file(usr_file, "lib/os-release")
    if data is None:
        raise InputError(
            f"{usr_file}: /usr/lib/os-release not found in USR-A", hint="is this a Flatcar image?"
        )
    text = data.decode(errors="replace")
    return text, parse_os_release(text)


def require_disk(image: str | os.PathLike[str]) -> gpt.Disk:
    disk = gpt.read(image)
    for label in ("EFI-SYSTEM", "USR-A", "OEM", "ROOT"):
        disk.by_label(label)
    return disk
