"""Reproducible btrfs images from mkfs.btrfs 6.2: what mkfs leaves to chance, pinned.

mkfs.btrfs (btrfs-progs 6.2, Debian 12) takes the filesystem UUID (`-U`) but has no option for
the rest: the device UUID and the chunk-tree UUID (random, in the superblock, every tree block
header, the chunk and device trees), the top subvolume's UUID (its ROOT_ITEM, and a key in the
UUID tree) and times (root item ctime/otime, the top directories' inode times = now; every
file's ctime and atime as the build host has them; and uninitialised memory in the transid of
some directory entries). It also takes inode numbers and entry
order from the build host's filesystem; `mkfs_canonical` runs it on a canonical tmpfs copy of
the tree for that (see btrfs_stage.py).

`pin` rewrites the rest in place: UUIDs derived from the filesystem UUID (itself kept from the
base image), every inode's atime/ctime/otime = its mtime clamped to SOURCE_DATE_EPOCH, the top
subvolume's times = SOURCE_DATE_EPOCH, directory entries' transid 0, and what mkfs leaves
behind zeroed (stale copies of tree blocks in free space, old bytes in tree blocks' slack);
then it re-checksums every tree block and superblock copy (crc32c; other checksum types are
refused). `btrfs check` accepts the result.

On-disk format: btrfs-progs kernel-shared/ctree.h (v6.2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from acl_compose import ui
from acl_compose.errors import InputError, ToolError
from acl_compose.image.btrfs import CSUM_CRC32C, Filesystem, crc32c_raw
from acl_compose.run import run
from acl_compose.util import signals_held

SUPER_OFFSETS = (0x10000, 0x4000000, 0x4000000000)  # primary, mirrors at 64 MiB and 256 GiB
MAGIC = b"_BHRfS_M"
HEADER = 0x65  # csum 32, fsid 16, bytenr 8, flags 8, chunk uuid 16, gen 8, owner 8, nr 4, level 1
ITEM = 25
KEY_PTR = 33
INODE_ITEM, ROOT_ITEM, DEV_EXTENT, DEV_ITEM, CHUNK_ITEM = 1, 132, 204, 216, 228
DIR_ENTRIES = (24, 84, 96)
EXTENT_ITEM, METADATA_ITEM, BLOCK_GROUP_ITEM = (
    168,
    169,
    192,
)  # XATTR_ITEM, DIR_ITEM, DIR_INDEX: btrfs_dir_item lists
UUID_SUBVOL, UUID_RECEIVED = 251, 252
ATIME = 112  # btrfs_inode_item: atime, ctime, mtime, otime (u64 sec + u32 nsec each)
ROOT_UUID, ROOT_CTIME = 247, 327  # in btrfs_root_item (after the embedded inode item)


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """btrfs's checksum: crc32c with the usual inversion before and after."""
    return crc32c_raw(0xFFFFFFFF, bytes(data)) ^ 0xFFFFFFFF


def derived_uuid(fsid: bytes, purpose: str) -> bytes:
    raw = bytearray(hashlib.sha256(b"acl-compose btrfs\0" + fsid + purpose.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


# --------------------------------------------------------------------------- canonical mkfs


def mkfs_canonical(src_dir: Path, mkfs_argv: list[str], out: Path, work: Path) -> bool:
    """mkfs.btrfs `mkfs_argv` -r src_dir out, from a canonical tmpfs copy of the tree.

    Returns False (after building from `src_dir` directly) where that cannot be done here:
    no private mount namespace, or tmpfs without user xattrs for a tree that has them.
    """
    mnt = None
    try:
        with signals_held():  # a Ctrl-C right after mkdtemp still finds `mnt` to remove
            mnt = Path(tempfile.mkdtemp(prefix=".btrfs-stage-", dir=work))
        ns = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            ns.insert(1, "--map-root-user")
        spec = {"src": str(src_dir), "mnt": str(mnt), "mkfs": mkfs_argv, "out": str(out)}
        argv = [*ns, sys.executable, "-m", "acl_compose.image.btrfs_stage", json.dumps(spec)]
        if shutil.which("unshare"):
            proc = run(argv, check=False)
            if proc.returncode == 0:
                return True
            why = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        else:
            why = ["unshare is missing"]
        ui.warn(
            "cannot build the btrfs filesystem from a canonical copy "
            f"({why[-1] if why else 'unknown'}): its inode numbers and layout follow this "
            "host's filesystem, so it is not reproducible"
        )
        from acl_compose.image.fs import _userns

        run([*_userns(), *mkfs_argv, "-r", str(src_dir), str(out)])
        return False
    finally:
        if mnt is not None:
            shutil.rmtree(mnt, ignore_errors=True)


# --------------------------------------------------------------------------- pinning


class _Image(Filesystem):
    """btrfs.Filesystem (chunk map, checked reads, checksummed writes of every copy) under the
    names the pinner uses, plus a walk over every tree block."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, write=True)
        if self.csum_type != CSUM_CRC32C:
            self.close()
            raise ToolError(f"{path}: only crc32c btrfs filesystems can be pinned")
        self.f = self._f

    read = Filesystem.read_block
    write = Filesystem.write_block
    physical = Filesystem._physical

    def blocks(self, logical: int) -> Iterator[int]:
        """Every tree block of the tree rooted at `logical`, nodes first."""
        block = self.read(logical)
        yield logical
        if block[0x64] == 0:
            return
        (n,) = struct.unpack_from("<I", block, 0x60)
        for i in range(n):
            yield from self.blocks(struct.unpack_from("<Q", block, HEADER + i * KEY_PTR + 17)[0])

    def _items(self, root: int) -> Iterator[tuple[tuple[int, int, int], bytes]]:
        for item in self.items(root):
            yield item.key, item.data


def pin(part_file: str | os.PathLike[str], source_date_epoch: int | None) -> None:
    """Pin the UUIDs and times mkfs.btrfs made up in `part_file` (see the module doc)."""
    img = _Image(Path(part_file))
    try:
        _pin(img, source_date_epoch)
    finally:
        img.f.close()


def _pin(img: _Image, sde: int | None) -> None:
    chunk_uuid = derived_uuid(img.fsid, "chunk-tree")
    subvol_uuids: dict[bytes, bytes] = {}
    roots = [img.root, img.chunk_root]
    roots += [struct.unpack_from("<Q", d, 176)[0] for k, d in img._items(img.root)
              if k[1] == ROOT_ITEM]  # fmt: skip
    dev_uuids: dict[bytes, bytes] = {}
    for key, data in img._items(img.chunk_root):
        if key[1] == DEV_ITEM:
            dev_uuids[data[66:82]] = derived_uuid(img.fsid, f"device-{key[2]}")
    seen: set[int] = set()
    uuid_tree_leaves = []
    for root in roots:
        for logical in img.blocks(root):
            if logical in seen:
                continue
            seen.add(logical)
            block = img.read(logical)
            block[0x40:0x50] = chunk_uuid
            _zero_slack(block)
            if block[0x64] == 0:
                if _pin_leaf(block, img, sde, dev_uuids, chunk_uuid, subvol_uuids):
                    uuid_tree_leaves.append(logical)
            img.write(logical, block)
    for logical in uuid_tree_leaves:  # after every ROOT_ITEM got its new UUID
        block = img.read(logical)
        _rekey_uuid_leaf(block, subvol_uuids, img)
        img.write(logical, block)
    _pin_supers(img, dev_uuids)
    _zero_free_space(img)


def _zero_free_space(img: _Image) -> None:
    """mkfs copies tree blocks on write and removes its temporary chunks, and leaves the old
    bytes (random chunk-tree UUID, old checksums) where nothing lives now: zero every byte of
    the image that no extent, tree block or superblock copy uses."""
    from acl_compose.image.sparse import data_ranges

    extent_root = next((struct.unpack_from("<Q", d, 176)[0] for k, d in img._items(img.root)
                        if k[0] == 2 and k[1] == ROOT_ITEM), None)  # fmt: skip
    if extent_root is None:
        raise InputError(f"{img.path}: btrfs without an extent tree")
    live = [(o, o + 4096) for o in SUPER_OFFSETS]
    for (start, kt, off), _ in img._items(extent_root):
        length = off if kt == EXTENT_ITEM else img.nodesize if kt == METADATA_ITEM else 0
        if length:
            live += [(p, p + length) for p in img.physical(start)]
    fd = img.f.fileno()
    img.f.flush()
    size = os.fstat(fd).st_size
    for d_off, d_len in list(data_ranges(fd, 0, size)):
        for a, b in _minus(d_off, d_off + d_len, live):
            os.pwrite(fd, bytes(b - a), a)


def _minus(a: int, b: int, holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[a, b) without the ranges in `holes`."""
    out = [(a, b)]
    for h0, h1 in holes:
        out = [r for x, y in out for r in ((x, min(y, h0)), (max(x, h1), y)) if r[0] < r[1]]
    return out


def _zero_slack(block: bytearray) -> None:
    """Zero a tree block's unused middle (mkfs leaves old bytes there when items move)."""
    (n,) = struct.unpack_from("<I", block, 0x60)
    if block[0x64] != 0:  # a node: key pointers, then nothing
        start, end = HEADER + n * KEY_PTR, len(block)
    else:  # a leaf: item headers from the front, item data packed from the back
        offsets = [struct.unpack_from("<I", block, HEADER + i * ITEM + 17)[0] for i in range(n)]
        start, end = HEADER + n * ITEM, HEADER + min(offsets, default=len(block) - HEADER)
    if start < end:
        block[start:end] = bytes(end - start)


def _pin_leaf(block: bytearray, img: _Image, sde: int | None, dev_uuids: dict[bytes, bytes],
              chunk_uuid: bytes, subvol_uuids: dict[bytes, bytes]) -> bool:  # fmt: skip
    """Rewrite one leaf's items in place; True if it holds UUID-tree keys (rekeyed later)."""
    (n,) = struct.unpack_from("<I", block, 0x60)
    uuid_keys = False
    for i in range(n):
        oid, kt, off, doff, dsize = struct.unpack_from("<QBQII", block, HEADER + i * ITEM)
        at = HEADER + doff
        if kt == INODE_ITEM and dsize >= 160:
            sec, nsec = struct.unpack_from("<QI", block, at + ATIME + 24)  # mtime
            if sde is not None and sec > sde:
                sec, nsec = sde, 0
            otime = struct.unpack_from("<Q", block, at + ATIME + 36)[0]
            for j, _name in enumerate(("atime", "ctime", "mtime", "otime")):
                if j == 3 and otime == 0:
                    continue
                struct.pack_into("<QI", block, at + ATIME + 12 * j, sec, nsec)
        elif kt == ROOT_ITEM and dsize >= ROOT_CTIME + 24:
            old = bytes(block[at + ROOT_UUID : at + ROOT_UUID + 16])
            if old != bytes(16):
                new = derived_uuid(img.fsid, f"subvolume-{oid}")
                subvol_uuids[old] = new
                block[at + ROOT_UUID : at + ROOT_UUID + 16] = new
            for j in range(2):  # ctime, otime: when the subvolume was made
                p = at + ROOT_CTIME + 12 * j
                if struct.unpack_from("<Q", block, p)[0]:
                    struct.pack_into("<QI", block, p, sde or 0, 0)
        elif kt == DEV_ITEM:
            block[at + 66 : at + 82] = dev_uuids[bytes(block[at + 66 : at + 82])]
        elif kt == CHUNK_ITEM:
            (stripes,) = struct.unpack_from("<H", block, at + 44)
            for s in range(stripes):
                p = at + 48 + 32 * s + 16
                block[p : p + 16] = dev_uuids.get(bytes(block[p : p + 16]), block[p : p + 16])
        elif kt == DEV_EXTENT:
            block[at + 32 : at + 48] = chunk_uuid
        elif kt in DIR_ENTRIES:
            # mkfs leaves the transid of some entries uninitialised (stack garbage); 0 as in
            # the others. Entries: location key 17, transid 8, data_len 2, name_len 2, type 1.
            pos = at
            while pos + 30 <= at + dsize:
                data_len, name_len = struct.unpack_from("<HH", block, pos + 25)
                struct.pack_into("<Q", block, pos + 17, 0)
                pos += 30 + name_len + data_len
        elif kt in (UUID_SUBVOL, UUID_RECEIVED):
            uuid_keys = True
    return uuid_keys


def _rekey_uuid_leaf(block: bytearray, subvol_uuids: dict[bytes, bytes], img: _Image) -> None:
    """UUID-tree keys are the subvolume UUID's halves: renamed keys, leaf re-sorted."""
    (n,) = struct.unpack_from("<I", block, 0x60)
    items = []
    for i in range(n):
        oid, kt, off, doff, dsize = struct.unpack_from("<QBQII", block, HEADER + i * ITEM)
        old = struct.pack("<QQ", oid, off)
        if kt in (UUID_SUBVOL, UUID_RECEIVED) and old in subvol_uuids:
            oid, off = struct.unpack("<QQ", subvol_uuids[old])
        items.append(((oid, kt, off), (doff, dsize)))
    if [k for k, _ in items] != sorted(k for k, _ in items) and n > 1:
        if struct.unpack_from("<Q", block, 0x30)[0] != _uuid_tree_root(img):
            raise ToolError(f"{img.path}: cannot re-sort a UUID tree of more than one block")
        items.sort()
    for i, ((oid, kt, off), (doff, dsize)) in enumerate(items):
        struct.pack_into("<QBQII", block, HEADER + i * ITEM, oid, kt, off, doff, dsize)


def _uuid_tree_root(img: _Image) -> int:
    for key, data in img._items(img.root):
        if key[0] == 9 and key[1] == ROOT_ITEM:
            return int(struct.unpack_from("<Q", data, 176)[0])
    return -1


def _pin_supers(img: _Image, dev_uuids: dict[bytes, bytes]) -> None:
    total = os.fstat(img.f.fileno()).st_size
    for off in SUPER_OFFSETS:
        if off + 4096 > total:
            continue
        img.f.seek(off)
        sb = bytearray(img.f.read(4096))
        if sb[0x40:0x48] != MAGIC:
            continue
        sb[0x10B:0x11B] = dev_uuids.get(bytes(sb[0x10B:0x11B]), sb[0x10B:0x11B])  # dev_item.uuid
        (size,) = struct.unpack_from("<I", sb, 0xA0)
        sb[0x32B + size : 0x32B + 2048] = bytes(2048 - size)  # removed temporary chunks' bytes
        pos = 0x32B
        while pos < 0x32B + size:
            (stripes,) = struct.unpack_from("<H", sb, pos + 17 + 44)
            for s in range(stripes):
                p = pos + 17 + 48 + 32 * s + 16
                sb[p : p + 16] = dev_uuids.get(bytes(sb[p : p + 16]), sb[p : p + 16])
            pos += 17 + 48 + 32 * stripes
        sb[0:32] = struct.pack("<I", crc32c(memoryview(sb)[0x20:])).ljust(32, b"\0")
        img.f.seek(off)
        img.f.write(sb)


def uuids(part_file: str | os.PathLike[str]) -> dict[str, str]:
    """The UUIDs a btrfs image carries (for tests and reports): fs, device, chunk tree."""
    img = _Image(Path(part_file))
    try:
        block = img.read(img.root)
        img.f.seek(SUPER_OFFSETS[0])
        sb = img.f.read(4096)
        return {"fsid": str(uuid.UUID(bytes=img.fsid)),
                "device": str(uuid.UUID(bytes=sb[0x10B:0x11B])),
                "chunk_tree": str(uuid.UUID(bytes=bytes(block[0x40:0x50])))}  # fmt: skip
    finally:
        img.f.close()
