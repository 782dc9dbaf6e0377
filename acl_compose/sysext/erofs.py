"""Set an erofs filesystem's UUID after mkfs, in its superblock.

The builder derives the UUID from the bundle's input digest, but runs mkfs.erofs while that
digest is still being hashed (on two cores they overlap); the UUID is written afterwards.
The result is byte for byte what `mkfs.erofs -U UUID` makes: the UUID sits at byte 48 of the
superblock (which starts at byte 1024) and, when the SB_CHKSUM feature is on (mkfs.erofs
sets it), the superblock's crc32c is recomputed over the rest of its block with the checksum
field zeroed (seed ~0, no final inversion, as erofs-utils and the kernel compute it).
"""

from __future__ import annotations

import os
import struct
import uuid

from acl_compose.errors import InputError
from acl_compose.image.btrfs import crc32c_raw

SUPER_OFFSET = 1024
MAGIC = 0xE0F5E1E2
FEATURE_COMPAT_SB_CHKSUM = 0x1
_UUID_AT = 48


def set_uuid(path: str | os.PathLike[str], value: str, offset: int = 0) -> None:
    """Write `value` as the UUID of the erofs filesystem at `offset` of `path`."""
    fd = os.open(path, os.O_RDWR)
    try:
        head = os.pread(fd, SUPER_OFFSET + 16, offset)
        magic, _, compat, blkszbits = struct.unpack_from("<IIIB", head, SUPER_OFFSET)
        if magic != MAGIC or not 12 <= blkszbits <= 16:  # 4 KiB blocks and up
            raise InputError(f"{path}: no erofs superblock at byte {offset + SUPER_OFFSET}")
        block = bytearray(os.pread(fd, (1 << blkszbits) - SUPER_OFFSET, offset + SUPER_OFFSET))
        block[_UUID_AT : _UUID_AT + 16] = uuid.UUID(value).bytes
        if compat & FEATURE_COMPAT_SB_CHKSUM:
            block[4:8] = bytes(4)
            block[4:8] = struct.pack("<I", crc32c_raw(0xFFFFFFFF, bytes(block)))
        os.pwrite(fd, bytes(block), offset + SUPER_OFFSET)
    finally:
        os.close(fd)
