"""ddi: the GPT layout, and the two ways to assemble a DDI agree byte for byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from acl_compose.image import gpt
from acl_compose.sysext import ddi
from acl_compose.trust import verity

ROOT = "ab" * 32


@pytest.fixture
def fs_and_tree(tmp_path: Path) -> tuple[Path, Path]:
    fs = tmp_path / "fs.img"
    fs.write_bytes(os.urandom(3 << 20) + bytes(4096) + os.urandom(8192))
    tree = tmp_path / "verity.img"
    verity.create(fs, tree, salt=b"s" * 32, uuid="12345678-1234-5678-9abc-def012345678")
    return fs, tree


@pytest.mark.parametrize("signed", [False, True])
def test_write_around_equals_write(tmp_path: Path, fs_and_tree, signed: bool) -> None:
    """A filesystem already in its slot (mksquashfs -offset) gives the same image as a copy."""
    fs, tree = fs_and_tree
    sig = b'{"rootHash":"x","signature":"y"}' if signed else None
    disk, sha = ddi.write(tmp_path / "copy.raw", fs, tree, ROOT, "x86-64", sig)
    around = tmp_path / "around.raw"
    with open(around, "wb") as f:
        f.write(b"junk in the GPT area" * 10)  # what sits before the slot does not matter
        f.seek(ddi.DATA_OFFSET)
        f.write(fs.read_bytes())
    disk2, sha2 = ddi.write_around(around, fs.stat().st_size, tree, ROOT, "x86-64", sig)
    assert (tmp_path / "copy.raw").read_bytes() == around.read_bytes()
    assert sha == sha2 == hashlib.sha256(around.read_bytes()).hexdigest()
    assert disk.partitions == disk2.partitions and len(disk.partitions) == (3 if signed else 2)
    # sgdisk, independently, finds a valid GPT with the partitions where the plan put them.
    out = subprocess.run(["sgdisk", "-v", around], capture_output=True, text=True)
    assert "No problems found" in out.stdout, out.stdout
    data = gpt.read(around).by_number(1)
    assert data.offset == ddi.DATA_OFFSET
    with open(around, "rb") as f:
        f.seek(data.offset)
        assert f.read(fs.stat().st_size) == fs.read_bytes()


def test_extents_copy_from_inside_another_image(tmp_path: Path, fs_and_tree) -> None:
    """A cached DDI is a source of extents: rebuilding from it gives the same image."""
    fs, tree = fs_and_tree
    first = tmp_path / "first.raw"
    disk, sha = ddi.write(first, fs, tree, ROOT, "x86-64")
    d, v = disk.by_number(1), disk.by_number(2)
    again = tmp_path / "again.raw"
    _, sha2 = ddi.write(
        again,
        ddi.Extent(first, d.offset, fs.stat().st_size),
        ddi.Extent(first, v.offset, tree.stat().st_size),
        ROOT,
        "x86-64",
    )
    assert sha2 == sha and again.read_bytes() == first.read_bytes()
    ddi.copy_to_file(ddi.Extent(first, d.offset, fs.stat().st_size), tmp_path / "fs.out")
    assert (tmp_path / "fs.out").read_bytes() == fs.read_bytes()


def test_too_large_for_its_slot(tmp_path: Path, fs_and_tree) -> None:
    fs, tree = fs_and_tree
    part = ddi.plan(4096, 4096, ROOT, "x86-64", None).data
    fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(Exception, match="does not fit"):
            ddi._copy_into(fd, part, ddi.Extent.of(fs))
    finally:
        os.close(fd)
