"""Offline filesystem edits on a small Flatcar-shaped image, cross-checked with e2fsprogs,
btrfs-progs, mtools and sgdisk."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from acl_compose.errors import AclComposeError, InputError
from acl_compose.image import fs, gpt, usr
from acl_compose.image.outputs import copy_sparse


@pytest.fixture
def disk(mini_flatcar, tmp_path: Path) -> Path:
    """A private copy of the session's mini image (tests edit it)."""
    dest = tmp_path / "disk.bin"
    copy_sparse(mini_flatcar.path, dest)
    return dest


def _part_sha(img: Path, part: gpt.Partition) -> str:
    h = hashlib.sha256()
    with open(img, "rb") as f:
        f.seek(part.offset)
        left = part.size
        while left:
            b = f.read(min(left, 1 << 20))
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def _debugfs(spec: str, cmd: str) -> str:
    return subprocess.run(["debugfs", "-R", cmd, spec], capture_output=True, text=True).stdout


def test_gpt_matches_sgdisk(disk: Path):
    d = gpt.read(disk)
    out = subprocess.run(["sgdisk", "-i", "3", str(disk)], capture_output=True, text=True).stdout
    assert d.by_label("USR-A").guid in out
    assert "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6" in out
    assert f"First sector: {d.by_label('USR-A').first_lba}" in out


def test_ext4_edit_in_place_only_touches_root(disk: Path, tmp_path: Path):
    d = gpt.read(disk)
    root = d.by_label("ROOT")
    others = {p.name: _part_sha(disk, p) for p in d.partitions if p.name != "ROOT"}
    spec = fs.ext4_spec(disk, root.offset)
    src = tmp_path / "payload"
    src.write_bytes(b"payload\n" * 1000)
    edit = fs.Ext4Edit(spec, source_date_epoch=1_700_000_000)
    edit.write(src, "/opt/extensions/x/x-1.raw", 0o640)
    edit.symlink("/etc/extensions/x.raw", "/opt/extensions/x/x-1.raw")
    edit.apply()  # runs e2fsck -fn
    assert fs.ext4_read(spec, "/opt/extensions/x/x-1.raw") == src.read_bytes()
    assert fs.ext4_readlink(spec, "/etc/extensions/x.raw") == "/opt/extensions/x/x-1.raw"
    stat = _debugfs(spec, "stat /opt/extensions/x/x-1.raw")
    assert "Mode:  0640" in stat and "User:     0   Group:     0" in stat
    assert "0x6553f100" in stat  # inode times from SOURCE_DATE_EPOCH
    entries = {e.name: e for e in fs.ext4_list(spec, "/opt/extensions") or []}
    assert entries["x"].is_dir and oct(entries["x"].mode & 0o777) == "0o755"
    assert fs.ext4_list(spec, "/nope") is None
    # Writing again replaces the file (no "already exists" failure).
    src.write_bytes(b"v2")
    edit = fs.Ext4Edit(spec)
    edit.write(src, "/opt/extensions/x/x-1.raw")
    edit.apply()
    assert fs.ext4_read(spec, "/opt/extensions/x/x-1.raw") == b"v2"
    # Independent check with e2fsck and the other partitions are byte-identical.
    assert subprocess.run(["e2fsck", "-fn", spec], capture_output=True).returncode == 0
    assert {p.name: _part_sha(disk, p) for p in d.partitions if p.name != "ROOT"} == others


def test_ext4_readlink_long_targets(disk: Path):
    """Targets of 60+ bytes live in a data block, not the inode ("slow" symlinks)."""
    spec = fs.ext4_spec(disk, gpt.read(disk).by_label("ROOT").offset)
    targets = {
        "/etc/extensions/c.raw": "/opt/extensions/container-runtime/container-runtime-1.0.0.raw",
        "/etc/extensions/d.raw": "/opt/" + "d" * 200,
        "/etc/extensions/e.raw": "/opt/e",
    }
    edit = fs.Ext4Edit(spec)
    for link, target in targets.items():
        edit.symlink(link, target)
    edit.apply()
    for link, target in targets.items():
        assert fs.ext4_readlink(spec, link) == target
        # debugfs's own view: a fast link shows its target, a slow one has a data block.
        stat = _debugfs(spec, f"stat {link}")
        assert ("Fast link dest" in stat) == (len(target) < 60), stat
    assert fs.ext4_readlink(spec, "/etc") is None


def test_ext4_edit_failure_is_reported(disk: Path, tmp_path: Path):
    root = gpt.read(disk).by_label("ROOT")
    spec = fs.ext4_spec(disk, root.offset)
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.write(b"\1" * (40 << 20))  # larger than the 32 MiB filesystem
    edit = fs.Ext4Edit(spec)
    edit.write(big, "/big")
    with pytest.raises(AclComposeError, match="debugfs|e2fsck"):
        edit.apply()


def test_debugfs_quotes_refused(disk: Path):
    with pytest.raises(InputError):
        fs.ext4_read(fs.ext4_spec(disk, 0), '/a"b')


def test_btrfs_read_and_rebuild_keeps_label_and_uuid(disk: Path, tmp_path: Path):
    d = gpt.read(disk)
    oem = d.by_label("OEM")
    part = tmp_path / "oem.img"
    gpt.copy_out(disk, oem, part)
    info = fs.btrfs_info(part)
    assert info is not None and info.label == "OEM"
    dump = subprocess.run(
        ["btrfs", "inspect-internal", "dump-super", str(part)], capture_output=True, text=True
    ).stdout
    assert f"fsid\t\t\t{info.uuid}" in dump and f"total_bytes\t\t{info.total_bytes}" in dump
    assert fs.btrfs_read_file(part, "README").startswith(b"generic image")
    assert fs.btrfs_read_file(part, "nope") is None
    tree = tmp_path / "tree"
    fs.btrfs_restore(part, tree)
    (tree / "base").mkdir()
    (tree / "base" / "base.ign").write_text("{}")
    fs.btrfs_rebuild(tree, part, oem.size, info)
    again = fs.btrfs_info(part)
    assert (again.uuid, again.label) == (info.uuid, info.label)
    assert part.stat().st_size == oem.size
    assert fs.btrfs_read_file(part, "base/base.ign") == b"{}"
    assert fs.btrfs_read_file(part, "README").startswith(b"generic image")
    blkid = subprocess.run(
        ["blkid", "-p", "-o", "export", str(part)], capture_output=True, text=True
    ).stdout
    if blkid:  # blkid is optional; when present it must agree
        assert f"UUID={info.uuid}" in blkid and "LABEL=OEM" in blkid


def test_fat_read_kernel_hash(disk: Path, mini_flatcar):
    d = gpt.read(disk)
    kernel = fs.fat_read(disk, usr.esp(d).offset, "flatcar/vmlinuz-a")
    assert kernel[64:128].decode() == mini_flatcar.root_hash
    with pytest.raises(InputError, match="cannot read"):
        fs.fat_read(disk, usr.esp(d).offset, "flatcar/nope")
    assert any("flatcar" in line for line in fs.fat_list(disk, usr.esp(d).offset))


def test_usr_superblock_found_and_verified(disk: Path, tmp_path: Path, mini_flatcar):
    d = usr.require_disk(disk)
    f = usr.extract(disk, usr.usr_partition(d), tmp_path / "usr.img")
    off, sb = usr.find_superblock(f)
    assert off == mini_flatcar.usr_hash_offset and sb.data_blocks * 4096 == off
    res = usr.verify_usr(disk, d, f)
    assert res.kernel_root_hash == mini_flatcar.root_hash
    if shutil.which("veritysetup"):  # independent check of the same tree
        r = subprocess.run(["veritysetup", "verify", str(f), str(f), res.kernel_root_hash,
                            f"--hash-offset={off}"], capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
    text, fields = usr.read_os_release(f)
    assert fields["ID"] == "flatcar" and fields["SYSEXT_LEVEL"] == "1.0"


def test_usr_superblock_found_by_scan(tmp_path: Path, disk: Path):
    """When the superblock is not right after the filesystem, the scan still finds it."""
    d = usr.require_disk(disk)
    f = usr.extract(disk, usr.usr_partition(d), tmp_path / "usr.img")
    off, sb = usr.find_superblock(f)
    with open(f, "r+b") as h:
        h.seek(off)
        blob = h.read(f.stat().st_size - off)
        h.seek(off)
        h.write(bytes(len(blob)))
        h.seek(off + 8192)
        h.write(blob[: f.stat().st_size - off - 8192])
    off2, sb2 = usr.find_superblock(f)
    assert off2 == off + 8192 and sb2 == sb


def test_altered_usr_is_refused(disk: Path, tmp_path: Path):
    d = usr.require_disk(disk)
    part = usr.usr_partition(d)
    f = usr.extract(disk, part, tmp_path / "usr.img")
    with open(f, "r+b") as h:  # one byte inside the filesystem's first data blocks
        h.seek(0x10000 + 4096 * 3)
        b = h.read(1)
        h.seek(-1, 1)
        h.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(usr.UsrVerityError, match="does not match the root hash"):
        usr.verify_usr(disk, d, f)
