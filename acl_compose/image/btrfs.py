"""Offline btrfs: read a filesystem image's trees, and restore xattrs and inode flags in it.

Why: Flatcar's OEM filesystem carries the `compression=zlib` property (`btrfs property set`,
stored as the xattr `btrfs.compression` on every inode plus the COMPRESS inode flag), and
`mkfs.btrfs --rootdir` (btrfs-progs 6.2) can neither set properties nor copy `btrfs.*`,
`security.*` or `trusted.*` xattrs without a mount or privileges. So a rebuild stages each
such xattr as a `user.*` xattr of the same name length (which mkfs copies), and `patch`
renames it in place afterwards: same item size, new name and name hash, leaf re-sorted and
re-checksummed. Nothing is mounted; only crc32c filesystems (mkfs's default) are patched.

On-disk format: btrfs-progs' kernel-shared/ctree.h (superblock, node header, items, keys).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from acl_compose.errors import InputError, ToolError

SUPER_OFFSET = 0x10000
MAGIC = b"_BHRfS_M"
CSUM_CRC32C = 0
# Node header: csum 32, fsid 16, bytenr, flags, chunk uuid 16, generation, owner, nritems, level.
HEADER_SIZE = 0x65
ITEM_SIZE = 25  # key 17 + data offset u32 + data size u32
KEY_PTR_SIZE = 33  # key 17 + block pointer u64 + generation u64
DIR_ITEM_SIZE = 30  # location key 17 + transid u64 + data_len u16 + name_len u16 + type u8

INODE_ITEM, INODE_REF, XATTR_ITEM, ROOT_ITEM, CHUNK_ITEM = 1, 12, 24, 132, 228
ROOT_TREE_OBJECTID, FS_TREE_OBJECTID, FIRST_FREE_OBJECTID = 1, 5, 256
INODE_FLAGS_OFFSET = 64  # in btrfs_inode_item

# Inode flags a rebuild keeps: the user-visible attributes (chattr) and the property flags.
# Not NODATASUM/NODATACOW/PREALLOC: they describe how mkfs laid out the data, not the file.
FLAG_NOCOMPRESS, FLAG_COMPRESS = 1 << 3, 1 << 11
KEPT_FLAGS = FLAG_NOCOMPRESS | (0x7F << 5) | FLAG_COMPRESS  # SYNC..DIRSYNC, COMPRESS


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c_raw(crc: int, data: bytes) -> int:
    """The kernel's crc32c(seed, data): no inversion before or after."""
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def name_hash(name: bytes) -> int:
    """btrfs_name_hash(): the key offset of DIR_ITEM and XATTR_ITEM entries."""
    return crc32c_raw(0xFFFFFFFE, name)


def block_csum(block: bytes | bytearray) -> bytes:
    """The checksum in a tree block's first 4 bytes: crc32c over everything after the csum."""
    return struct.pack("<I", crc32c_raw(0xFFFFFFFF, bytes(block[0x20:])) ^ 0xFFFFFFFF)


Key = tuple[int, int, int]  # (objectid, type, offset): the sort order of every btrfs tree


@dataclass
class Item:
    key: Key
    data: bytes


@dataclass
class Inode:
    number: int
    path: str  # "" for the top directory, else "a/b" (first INODE_REF when hard-linked)
    mode: int = 0
    flags: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


class Filesystem:
    """A btrfs filesystem in `path` starting at byte `offset`; single device."""

    def __init__(self, path: str | os.PathLike[str], offset: int = 0, write: bool = False) -> None:
        self.path = Path(path)
        self.offset = offset
        self._f = open(path, "r+b" if write else "rb")  # noqa: SIM115 (closed by close())
        try:
            self._read_super()
            self._chunks: list[tuple[int, int, list[int]]] = []
            self._load_chunks()
        except BaseException:
            self._f.close()
            raise

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Filesystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- superblock and chunk mapping --------------------------------------------------------

    def _read_super(self) -> None:
        self._f.seek(self.offset + SUPER_OFFSET)
        sb = self._f.read(4096)
        if len(sb) < 4096 or sb[0x40:0x48] != MAGIC:
            raise InputError(f"{self.path}: no btrfs filesystem at offset {self.offset}")
        self.fsid = sb[0x20:0x30]
        (self.generation,) = struct.unpack_from("<Q", sb, 0x48)
        self.root, self.chunk_root = struct.unpack_from("<QQ", sb, 0x50)
        self.sectorsize, self.nodesize = struct.unpack_from("<II", sb, 0x90)
        (self._sys_array_size,) = struct.unpack_from("<I", sb, 0xA0)
        (self.csum_type,) = struct.unpack_from("<H", sb, 0xC4)
        self._sys_array = sb[0x32B : 0x32B + self._sys_array_size]

    def _add_chunk(self, logical: int, data: bytes) -> int:
        """Parse a btrfs_chunk at the start of `data`; returns its size in bytes."""
        length = struct.unpack_from("<Q", data, 0)[0]
        (num_stripes,) = struct.unpack_from("<H", data, 44)
        stripes = [struct.unpack_from("<QQ", data, 48 + 32 * i)[1] for i in range(num_stripes)]
        self._chunks.append((logical, length, stripes))
        return 48 + 32 * num_stripes

    def _load_chunks(self) -> None:
        pos = 0
        while pos < len(self._sys_array):
            _, ktype, logical = struct.unpack_from("<QBQ", self._sys_array, pos)
            pos += 17
            if ktype != CHUNK_ITEM:
                raise InputError(f"{self.path}: unexpected key type {ktype} in sys_chunk_array")
            pos += self._add_chunk(logical, self._sys_array[pos:])
        for item in self.items(self.chunk_root):
            if item.key[1] == CHUNK_ITEM:
                self._add_chunk(item.key[2], item.data)

    def _physical(self, logical: int) -> list[int]:
        for start, length, stripes in self._chunks:
            if start <= logical < start + length:
                return [s + logical - start for s in stripes]
        raise InputError(f"{self.path}: logical address {logical} is in no chunk")

    # -- tree blocks -------------------------------------------------------------------------

    def read_block(self, logical: int) -> bytearray:
        where = self._physical(logical)[0]
        self._f.seek(self.offset + where)
        block = bytearray(self._f.read(self.nodesize))
        if len(block) != self.nodesize or block[0x30:0x38] != struct.pack("<Q", logical):
            raise InputError(f"{self.path}: tree block {logical} is unreadable")
        if self.csum_type == CSUM_CRC32C and block[:4] != block_csum(block):
            raise InputError(f"{self.path}: tree block {logical} fails its checksum")
        return block

    def write_block(self, logical: int, block: bytearray) -> None:
        block[:32] = block_csum(block).ljust(32, b"\0")
        for where in self._physical(logical):  # every copy (DUP metadata has two)
            self._f.seek(self.offset + where)
            self._f.write(block)

    @staticmethod
    def _leaf_items(block: bytes | bytearray) -> list[Item]:
        (nritems,) = struct.unpack_from("<I", block, 0x60)
        items = []
        for i in range(nritems):
            oid, kt, off, doff, dsize = struct.unpack_from("<QBQII", block, HEADER_SIZE + i * 25)
            start = HEADER_SIZE + doff
            items.append(Item((oid, kt, off), bytes(block[start : start + dsize])))
        return items

    def _leaves(self, logical: int, path: tuple = ()) -> Iterator[tuple[tuple, int, bytearray]]:
        """Depth-first: (path of (node, slot) pairs, leaf address, leaf block)."""
        block = self.read_block(logical)
        level = block[0x64]
        if level == 0:
            yield path, logical, block
            return
        (nritems,) = struct.unpack_from("<I", block, 0x60)
        for slot in range(nritems):
            (child,) = struct.unpack_from("<Q", block, HEADER_SIZE + slot * KEY_PTR_SIZE + 17)
            yield from self._leaves(child, (*path, (logical, slot)))

    def items(self, root: int) -> Iterator[Item]:
        for _, _, leaf in self._leaves(root):
            yield from self._leaf_items(leaf)

    def fs_tree_root(self) -> int:
        """The top-level subvolume's tree (ROOT_ITEM of objectid 5 in the root tree)."""
        for item in self.items(self.root):
            if item.key[0] == FS_TREE_OBJECTID and item.key[1] == ROOT_ITEM:
                return int(struct.unpack_from("<Q", item.data, 176)[0])  # root_item.bytenr
        raise InputError(f"{self.path}: btrfs has no FS tree")

    # -- files -------------------------------------------------------------------------------

    def inodes(self) -> dict[int, Inode]:
        """Every inode of the top-level subvolume with its path, mode, flags and xattrs."""
        found: dict[int, Inode] = {}
        parents: dict[int, tuple[int, str]] = {}
        for item in self.items(self.fs_tree_root()):
            number, ktype, offset = item.key
            if ktype == INODE_ITEM:
                node = found.setdefault(number, Inode(number, ""))
                (node.mode,) = struct.unpack_from("<I", item.data, 52)
                (node.flags,) = struct.unpack_from("<Q", item.data, INODE_FLAGS_OFFSET)
            elif ktype == INODE_REF and number != offset and number not in parents:
                (name_len,) = struct.unpack_from("<H", item.data, 8)
                parents[number] = (offset, item.data[10 : 10 + name_len].decode(errors="replace"))
            elif ktype == XATTR_ITEM:
                node = found.setdefault(number, Inode(number, ""))
                node.xattrs.update(_entries(item.data))
        for number, node in found.items():
            parts, cur = [], number
            while cur in parents and len(parts) < 4096:
                cur, name = parents[cur]
                parts.append(name)
            node.path = "/".join(reversed(parts))
        return found

    def by_path(self) -> dict[str, Inode]:
        return {node.path: node for node in self.inodes().values()}

    # -- patching ----------------------------------------------------------------------------

    def patch(
        self,
        renames: dict[bytes, bytes],
        flags: dict[str, int],
        add: dict[str, dict[bytes, bytes]] | None = None,
    ) -> int:
        """Rename xattrs (placeholder -> real name, same length), set inode flags by path, and
        add xattrs mkfs cannot carry (it copies none onto the top directory).

        Returns the number of xattrs renamed or added. Leaves whose order changes are
        re-sorted; a changed first key is carried into the parent nodes.
        """
        if self.csum_type != CSUM_CRC32C:
            raise ToolError(f"{self.path}: only crc32c btrfs filesystems can be patched")
        for old, new in renames.items():
            if len(old) != len(new):
                raise ValueError(f"xattr rename {old!r} -> {new!r} changes the length")
        nodes = {n.path: n for n in self.inodes().values()}
        want_flags = {nodes[p].number: f for p, f in flags.items() if p in nodes}
        inserts: dict[int, list[Item]] = {}
        for p, xattrs in (add or {}).items():
            if p not in nodes:
                raise ToolError(f"{self.path}: no inode at {p!r} to add xattrs to")
            for name, value in xattrs.items():
                if name not in nodes[p].xattrs and renames.get(name) is None:
                    inserts.setdefault(nodes[p].number, []).append(self._xattr_item(
                        nodes[p].number, name, value))  # fmt: skip
        count = 0
        # A full leaf hands its last items on to the next one, which may hand on its own in
        # turn (btrfs' push_leaf_right, cascaded): `carry` holds them meanwhile. Blocks are
        # re-read as they are reached.
        carry: list[Item] = []
        leaves = [(path, logical) for path, logical, _ in self._leaves(self.fs_tree_root())]
        for path, logical in leaves:
            leaf = self.read_block(logical)
            original = self._leaf_items(leaf)
            # Before the loop renames items in place: their key changes with the name's hash.
            first = original[0].key if original else None
            items = carry + original
            changed, carry = bool(carry), []
            for item in list(items):
                number, ktype, _ = item.key
                if ktype == XATTR_ITEM:
                    data, renamed = _rename_in_xattr_item(item.data, renames)
                    if renamed:
                        name_len = struct.unpack_from("<H", data, 27)[0]
                        item.key = (number, ktype, name_hash(data[30 : 30 + name_len]))
                        item.data, count, changed = data, count + renamed, True
                elif ktype == INODE_ITEM:
                    if number in want_flags:
                        data = bytearray(item.data)
                        struct.pack_into("<Q", data, INODE_FLAGS_OFFSET, want_flags[number])
                        item.data, changed = bytes(data), True
                    if number in inserts:
                        new = inserts.pop(number)
                        items += new
                        count, changed = count + len(new), True
            if not changed:
                continue
            items.sort(key=lambda it: it.key)
            if len({it.key for it in items}) != len(items):
                raise ToolError(f"{self.path}: xattrs collide in tree block {logical}")
            while _used(items) > self.nodesize and len(items) > 1:
                carry.insert(0, items.pop())
            _write_leaf_items(leaf, items)
            self.write_block(logical, leaf)
            if items[0].key != first:
                self._fix_parent_keys(path, items[0].key)
        if carry:
            raise ToolError(
                f"{self.path}: no room in the filesystem tree's leaves for the added xattrs",
                hint="the rebuilt filesystem was not used; report this with the base image",
            )
        self._check_order()
        return count

    def _xattr_item(self, number: int, name: bytes, value: bytes) -> Item:
        head = struct.pack("<17sQHHB", b"", self.generation, len(value), len(name), 8)  # FT_XATTR
        return Item((number, XATTR_ITEM, name_hash(name)), head + name + value)

    def _fix_parent_keys(self, path: tuple, key: Key) -> None:
        for node_logical, slot in reversed(path):
            node = self.read_block(node_logical)
            struct.pack_into("<QBQ", node, HEADER_SIZE + slot * KEY_PTR_SIZE, *key)
            self.write_block(node_logical, node)
            if slot != 0:
                break

    def _check_order(self) -> None:
        previous: Key | None = None
        for item in self.items(self.fs_tree_root()):
            if previous is not None and item.key <= previous:
                raise ToolError(
                    f"{self.path}: keys out of order after patching ({previous} >= {item.key})",
                    hint="the rebuilt filesystem was not used; report this with the base image",
                )
            previous = item.key


def _rename_in_xattr_item(data: bytes, renames: dict[bytes, bytes]) -> tuple[bytes, int]:
    out, pos, count = bytearray(data), 0, 0
    while pos < len(data):
        data_len, name_len = struct.unpack_from("<HH", data, pos + 25)
        name = data[pos + 30 : pos + 30 + name_len]
        if name in renames:
            out[pos + 30 : pos + 30 + name_len] = renames[name]
            count += 1
        pos += DIR_ITEM_SIZE + name_len + data_len
    if count and len(list(_entries(bytes(out)))) > 1:
        raise ToolError("an xattr item holds several names after renaming; cannot re-key it")
    return bytes(out), count


def _entries(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(name, value) of each btrfs_dir_item in an XATTR_ITEM (colliding hashes share one)."""
    pos = 0
    while pos < len(data):
        data_len, name_len = struct.unpack_from("<HH", data, pos + 25)
        name_at = pos + DIR_ITEM_SIZE
        yield (
            data[name_at : name_at + name_len],
            data[name_at + name_len : name_at + name_len + data_len],
        )
        pos = name_at + name_len + data_len


def _used(items: list[Item]) -> int:
    return HEADER_SIZE + sum(ITEM_SIZE + len(it.data) for it in items)


def _write_leaf_items(leaf: bytearray, items: list[Item]) -> None:
    """Rewrite a leaf's item headers and data (data packed from the end, in item order)."""
    struct.pack_into("<I", leaf, 0x60, len(items))
    end = len(leaf) - HEADER_SIZE
    for i, item in enumerate(items):
        end -= len(item.data)
        at = HEADER_SIZE + i * ITEM_SIZE
        struct.pack_into("<QBQII", leaf, at, *item.key, end, len(item.data))
        leaf[HEADER_SIZE + end : HEADER_SIZE + end + len(item.data)] = item.data
