"""Reproducible btrfs rebuilds (image.btrfs_pin, image.btrfs_stage), checked with btrfs-progs.

The same files, laid down differently on the build host (other inode numbers, creation order,
ctimes), rebuilt twice must give byte-identical filesystems that `btrfs check` accepts and
`btrfs restore` reads back; plain mkfs.btrfs on the same trees must not (so the test can fail).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from acl_compose.image import btrfs_pin, fs

MIB = 1 << 20
FSID = "3fbce631-28d9-4e90-8e86-fb9cffd778e7"
SDE = 1700000000
FILES = {
    "oem-release": b"ID=azure\nVERSION_ID=1\n",
    "base/base.ign": b'{"ignition":{"version":"3.3.0"}}\n' * 200,  # not inline: a data extent
    "sysext/oem-azure-1.raw": bytes(range(256)) * 1024,
    "a/b/c/deep.txt": b"deep\n",
    "z.conf": b"z\n",
}


def make_tree(root: Path, reverse: bool, mtime: int) -> Path:
    """FILES under `root`, created in forward or reverse order (other inode numbers, other
    directory order on the host), every mtime set to `mtime`, plus a symlink and an xattr."""
    root.mkdir(parents=True)
    names = sorted(FILES, reverse=reverse)
    pad = []
    for name in names:
        if reverse:  # shift the host's inode numbers too
            pad.append(root.parent / f"pad-{len(pad)}-{root.name}")
            pad[-1].write_text("x")
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(FILES[name])
    (root / "grub.cfg").symlink_to("base/base.ign")
    os.setxattr(root / "z.conf", b"user.acl-test", b"kept")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in dirnames + filenames:
            os.utime(Path(dirpath) / n, (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))
    for p in pad:
        p.unlink()
    return root


def like(mixed: bool) -> fs.BtrfsInfo:
    return fs.BtrfsInfo(FSID, "OEM", 0, 4096, 4096 if mixed else 16384, mixed)


@pytest.mark.parametrize(("mixed", "size"), [(True, 32 * MIB), (False, 300 * MIB)])
def test_rebuild_is_byte_identical_and_checks(tmp_path: Path, mixed: bool, size: int) -> None:
    """Mixed (Flatcar's OEM) and non-mixed with DUP metadata and a superblock mirror at
    64 MiB; the later tree has newer mtimes, clamped to SOURCE_DATE_EPOCH."""
    images = []
    for i, reverse in enumerate((False, True)):
        tree = make_tree(tmp_path / f"t{i}", reverse, SDE + 1000 * (i + 1))
        out = tmp_path / f"oem{i}.img"
        fs.btrfs_rebuild(tree, out, size, like(mixed), SDE)
        images.append(out)
    a, b = (p.read_bytes() for p in images)
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    img = images[0]
    check = subprocess.run(["btrfs", "check", "--readonly", "--check-data-csum", img],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stderr
    supers = subprocess.run(["btrfs", "inspect-internal", "dump-super", "-a", img],
                            capture_output=True, text=True).stdout  # fmt: skip
    csums = re.findall(r"^csum\s+0x[0-9a-f]+ \[(.*)\]$", supers, re.M)
    assert csums == ["match"] * (2 if size > 64 * MIB else 1)  # every superblock copy
    assert "DON'T MATCH" not in supers
    ids = btrfs_pin.uuids(img)
    assert ids["fsid"] == FSID and ids["device"] != ids["chunk_tree"]
    assert f"dev_item.uuid\t\t{ids['device']}" in supers
    tree = subprocess.run(["btrfs", "inspect-internal", "dump-tree", img],
                          capture_output=True, text=True).stdout  # fmt: skip
    times = set(re.findall(r"[acmo]time (\d+)\.", tree))
    assert times <= {str(SDE), "0"}, times
    out = tmp_path / "restored"
    fs.btrfs_restore(img, out)
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
    assert os.readlink(out / "grub.cfg") == "base/base.ign"
    dump = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", "fs", img],
                          capture_output=True, text=True).stdout  # fmt: skip
    assert "name: user.acl-test" in dump and "data kept" in dump


def test_plain_mkfs_is_not_reproducible(tmp_path: Path) -> None:
    """What the pinning fixes: mkfs.btrfs alone differs on every build of the same files."""
    images = []
    for i, reverse in enumerate((False, True)):
        tree = make_tree(tmp_path / f"t{i}", reverse, SDE)
        out = tmp_path / f"plain{i}.img"
        with open(out, "wb") as f:
            f.truncate(32 * MIB)
        subprocess.run(["mkfs.btrfs", "-q", "-f", "-M", "-U", FSID, "-r", tree, out], check=True)
        images.append(out.read_bytes())
    assert images[0] != images[1]


def test_without_a_mount_namespace_it_still_builds(tmp_path: Path, monkeypatch, capsys) -> None:
    """No unshare: mkfs runs on the tree as it is (said on stderr); UUIDs and times are still
    pinned, and the filesystem is sound."""
    tree = make_tree(tmp_path / "t", False, SDE)
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, **kw: None if name == "unshare" else real(
        name, **kw))  # fmt: skip
    out = tmp_path / "oem.img"
    fs.btrfs_rebuild(tree, out, 32 * MIB, like(True), SDE)
    assert "not reproducible" in capsys.readouterr().err
    assert (
        subprocess.run(["btrfs", "check", "--readonly", out], capture_output=True).returncode == 0
    )
    assert btrfs_pin.uuids(out)["device"] == btrfs_pin.uuids(out)["device"]
