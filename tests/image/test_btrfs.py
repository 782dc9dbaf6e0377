"""image.btrfs (offline tree reader and xattr patcher) and image.oem (Flatcar's OEM filesystem).

Everything is cross-checked with btrfs-progs (`dump-tree`, `dump-super`, `btrfs check`), and,
as root, with the kernel: the patched filesystem mounts and `btrfs property get` agrees.
"""

from __future__ import annotations

import os
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from acl_compose.errors import AclComposeError, InputError, ToolError
from acl_compose.image import btrfs, fs, oem
from tests import btrfs_tools

MIB = 1 << 20


def mkfs(tree: Path, out: Path, size: int = 64 * MIB, mixed: bool = True) -> str:
    fs_uuid = str(uuid.uuid4())
    with open(out, "wb") as f:
        f.truncate(size)
    argv = ["mkfs.btrfs", "-q", "-f", "-L", "OEM", "-U", fs_uuid, *(["-M"] if mixed else [])]
    subprocess.run([*argv, "-r", tree, out], check=True, capture_output=True)
    return fs_uuid


def sample_tree(root: Path) -> Path:
    (root / "sysext").mkdir(parents=True)
    (root / "oem-release").write_text("ID=qemu\n")
    (root / "grub.cfg").write_text('set oem_id="qemu"\n')
    (root / "sysext" / "oem-qemu-1.raw").write_bytes(os.urandom(300_000))
    (root / "link").symlink_to("oem-release")
    return root


def test_crc32c_and_name_hash_match_the_kernel() -> None:
    # RFC 3720's crc32c check value, and the key offset the kernel gave the compression
    # property (seen in `dump-tree` of a filesystem where `btrfs property set` ran).
    assert btrfs.crc32c_raw(0xFFFFFFFF, b"123456789") ^ 0xFFFFFFFF == 0xE3069283
    assert btrfs.name_hash(b"btrfs.compression") == 550297449


def test_reader_sees_what_btrfs_progs_sees(tmp_path: Path) -> None:
    tree = sample_tree(tmp_path / "tree")
    os.setxattr(tree / "oem-release", "user.note", b"kept")
    img = tmp_path / "fs.img"
    mkfs(tree, img)
    with btrfs.Filesystem(img) as f:
        mine = {p: (n.flags, n.xattrs) for p, n in f.by_path().items()}
    theirs = btrfs_tools.fs_tree(img)
    assert set(mine) == set(theirs) == {"", "sysext", "sysext/oem-qemu-1.raw", "oem-release",
                                        "grub.cfg", "link"}  # fmt: skip
    assert mine["oem-release"][1] == {b"user.note": b"kept"}
    assert theirs["oem-release"]["xattrs"] == {"user.note": "kept"}
    for path, (flags, _) in mine.items():
        assert flags == theirs[path]["flags"], path


def test_patch_renames_adds_and_sets_flags(tmp_path: Path) -> None:
    tree = sample_tree(tmp_path / "tree")
    for p in ("sysext", "oem-release", "grub.cfg", "sysext/oem-qemu-1.raw"):
        os.setxattr(tree / p, "user.acl0~~~~~~~~", b"zlib")  # as long as btrfs.compression
    img = tmp_path / "fs.img"
    mkfs(tree, img)
    flags = {p: btrfs.FLAG_COMPRESS for p in ("", "sysext", "oem-release", "grub.cfg")}
    with btrfs.Filesystem(img, write=True) as f:
        add = {"": {b"btrfs.compression": b"zlib"}, "link": {b"user.x": b"1"}}
        count = f.patch({b"user.acl0~~~~~~~~": b"btrfs.compression"}, flags, add)
    assert count == 6
    assert btrfs_tools.check(img).returncode == 0, btrfs_tools.check(img).stderr
    seen = btrfs_tools.fs_tree(img)
    for p in ("", "sysext", "oem-release", "grub.cfg", "sysext/oem-qemu-1.raw"):
        assert seen[p]["xattrs"] == {"btrfs.compression": "zlib"}, p
    assert seen["link"]["xattrs"] == {"user.x": "1"}
    assert seen["oem-release"]["flags"] == btrfs.FLAG_COMPRESS
    assert seen["sysext/oem-qemu-1.raw"]["flags"] == 0  # not asked for


def test_patch_refuses_length_changes_and_other_checksums(tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    mkfs(sample_tree(tmp_path / "tree"), img)
    with btrfs.Filesystem(img, write=True) as f, pytest.raises(ValueError):
        f.patch({b"user.a": b"btrfs.compression"}, {})
    xx = tmp_path / "xx.img"
    with open(xx, "wb") as out:
        out.truncate(64 * MIB)
    subprocess.run(
        ["mkfs.btrfs", "-q", "-M", "--csum", "xxhash", xx], check=True, capture_output=True
    )
    with btrfs.Filesystem(xx, write=True) as f, pytest.raises(ToolError, match="crc32c"):
        f.patch({}, {"": btrfs.FLAG_COMPRESS})


def test_corrupted_tree_block_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    mkfs(sample_tree(tmp_path / "tree"), img)
    with btrfs.Filesystem(img) as f:
        root = f.fs_tree_root()
        where = f._physical(root)[0]
    with open(img, "r+b") as out:
        out.seek(where + 200)
        out.write(b"\xff")
    with btrfs.Filesystem(img) as f, pytest.raises(InputError, match="checksum"):
        f.inodes()
    with pytest.raises(InputError, match="no btrfs"):
        btrfs.Filesystem(tmp_path / "tree" / "oem-release")


def test_make_oem_filesystem_is_flatcars(tmp_path: Path) -> None:
    """disk_util FormatBtrfs: mixed, single, label, compression=zlib on everything."""
    img = tmp_path / "oem.img"
    oem.make_oem_filesystem(sample_tree(tmp_path / "tree"), img, 128 * MIB, "OEM",
                            "3C07B6C1-1D3A-4A5E-9C1E-2F0C5A4B6D70")  # fmt: skip
    assert btrfs_tools.check(img).returncode == 0
    assert btrfs_tools.mixed(img)
    assert btrfs_tools.super_field(img, "label") == "OEM"
    assert btrfs_tools.super_field(img, "fsid") == "3c07b6c1-1d3a-4a5e-9c1e-2f0c5a4b6d70"
    seen = btrfs_tools.fs_tree(img)
    for path, info in seen.items():
        if path == "link":  # the kernel gives symlinks no compression property
            assert info["xattrs"] == {} and info["flags"] == 0
        else:
            assert info["xattrs"] == {"btrfs.compression": "zlib"}, path
            assert info["flags"] & btrfs.FLAG_COMPRESS, path


def test_rebuild_keeps_everything_and_new_files_inherit(tmp_path: Path) -> None:
    img = tmp_path / "oem.img"
    oem.make_oem_filesystem(sample_tree(tmp_path / "tree"), img, 64 * MIB, "OEM",
                            str(uuid.uuid4()))  # fmt: skip
    # Attributes a real OEM may carry besides the property: an SELinux label, a user xattr,
    # a chattr flag (NODUMP).
    with btrfs.Filesystem(img, write=True) as f:
        f.patch({}, {"grub.cfg": btrfs.FLAG_COMPRESS | 1 << 8},
                {"oem-release": {b"security.selinux": b"system_u:object_r:etc_t:s0\0"},
                 "sysext": {b"user.note": b"x"}})  # fmt: skip
    before_info = fs.btrfs_info(img)
    before = btrfs_tools.fs_tree(img)
    got = oem.rebuild_oem_filesystem(
        img, 64 * MIB, {"base/base.ign": b"{}", "grub.cfg": None}, tmp_path / "work"
    )
    assert btrfs_tools.check(img).returncode == 0
    after_info = fs.btrfs_info(img)
    assert (after_info.uuid, after_info.label, after_info.mixed, after_info.csum) == (
        before_info.uuid, before_info.label, True, "crc32c")  # fmt: skip
    after = btrfs_tools.fs_tree(img)
    for path in ("", "sysext", "oem-release", "sysext/oem-qemu-1.raw", "link"):
        assert after[path] == before[path], path
    assert after["oem-release"]["xattrs"]["security.selinux"].startswith("system_u:")
    assert "grub.cfg" not in after
    for new in ("base", "base/base.ign"):  # what the kernel would have given them
        assert after[new]["xattrs"] == {"btrfs.compression": "zlib"}, new
        assert after[new]["flags"] == btrfs.FLAG_COMPRESS, new
    assert fs.btrfs_read_file(img, "base/base.ign") == b"{}"
    assert set(got) == set(after)
    assert not (tmp_path / "work" / "oem-tree").exists()


def test_rebuild_that_does_not_fit_says_so(tmp_path: Path) -> None:
    img = tmp_path / "oem.img"
    oem.make_oem_filesystem(sample_tree(tmp_path / "tree"), img, 64 * MIB, "OEM",
                            str(uuid.uuid4()))  # fmt: skip
    before = img.read_bytes()
    big = tmp_path / "big.raw"
    big.write_bytes(os.urandom(80 * MIB))
    with pytest.raises(AclComposeError, match="mkfs.btrfs could not rebuild"):
        oem.rebuild_oem_filesystem(img, 64 * MIB, {"x/big.raw": big}, tmp_path / "work")
    assert img.read_bytes() == before  # nothing half-written


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_kernel_agrees_with_the_patched_filesystem(tmp_path: Path) -> None:
    img = tmp_path / "oem.img"
    oem.make_oem_filesystem(sample_tree(tmp_path / "tree"), img, 128 * MIB, "OEM",
                            str(uuid.uuid4()))  # fmt: skip
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", img, mnt], check=True)
    try:
        prop = subprocess.run(["btrfs", "property", "get", mnt, "compression"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert prop.strip() == "compression=zlib"
        (mnt / "new").mkdir()
        (mnt / "new" / "file").write_text("inherits\n")
        prop = subprocess.run(["btrfs", "property", "get", mnt / "new" / "file", "compression"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert prop.strip() == "compression=zlib"
    finally:
        subprocess.run(["umount", mnt], check=True)
        subprocess.run(["btrfs", "device", "scan", "--forget"], capture_output=True)
    assert btrfs_tools.check(img).returncode == 0


def test_added_xattr_spills_into_the_next_leaf(tmp_path: Path) -> None:
    """When the top directory's leaf is full, its last items move to the next leaf (btrfs'
    push_leaf_right), which hands its own on when it is full too; parent keys follow."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(150):  # enough inodes for an FS tree of several leaves
        (tree / f"file-{i:03d}.conf").write_text(f"{i}\n")
    img = tmp_path / "fs.img"
    mkfs(tree, img)
    with btrfs.Filesystem(img) as f:
        leaves = list(f._leaves(f.fs_tree_root()))
        assert len(leaves) >= 3
        free = [4096 - btrfs._used(f._leaf_items(leaf)) for _, _, leaf in leaves[:2]]
    # Fits neither the first leaf nor what the second could take from it: a cascade.
    big = b"v" * min(sum(free) + 200, 3800)
    with btrfs.Filesystem(img, write=True) as f:
        assert f.patch({}, {}, {"": {b"user.big": big}}) == 1
    check = btrfs_tools.check(img)
    assert check.returncode == 0, check.stdout + check.stderr
    seen = btrfs_tools.fs_tree(img)
    shown = seen[""]["xattrs"]["user.big"]  # dump-tree prints long values shortened
    assert len(shown) >= 200 and big.decode().startswith(shown)
    assert {f"file-{i:03d}.conf" for i in range(150)} <= set(seen)
    with btrfs.Filesystem(img) as f:
        assert f.by_path()[""].xattrs[b"user.big"] == big


def test_renamed_xattr_first_in_its_leaf_updates_the_parent_key(tmp_path: Path) -> None:
    """A rename changes the xattr's key (its offset is the name's hash): when that item opens
    a leaf, the key pointing at the leaf from the parent node must change too, or the kernel
    refuses the tree ("tree first key mismatch")."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(300):  # inodes whose xattrs open some of the FS tree's leaves
        (tree / f"f{i:03d}").write_text(f"{i}\n")
        os.setxattr(tree / f"f{i:03d}", "user.acl0~~~~~~~~", b"zlib")
    img = tmp_path / "fs.img"
    mkfs(tree, img)
    with btrfs.Filesystem(img) as f:
        firsts = [f._leaf_items(leaf)[0].key for _, _, leaf in f._leaves(f.fs_tree_root())]
    assert any(key[1] == btrfs.XATTR_ITEM for key in firsts), firsts  # the case under test
    with btrfs.Filesystem(img, write=True) as f:
        assert f.patch({b"user.acl0~~~~~~~~": b"btrfs.compression"}, {}) == 300
    check = btrfs_tools.check(img)
    assert check.returncode == 0, check.stdout + check.stderr
    with btrfs.Filesystem(img) as f:
        for path, logical, leaf in f._leaves(f.fs_tree_root()):
            node_logical, slot = path[-1]
            node = f.read_block(node_logical)
            parent_key = struct.unpack_from("<QBQ", node, btrfs.HEADER_SIZE + slot * 33)
            assert parent_key == f._leaf_items(leaf)[0].key, logical
