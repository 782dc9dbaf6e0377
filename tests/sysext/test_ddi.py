"""ddi: the GPT layout, and the two ways to assemble a DDI agree byte for byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from acl_compose.errors import InputError
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


def test_copy_and_hash_across_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem of several copy windows, read from inside another file: the hash follows
    the copy window by window (a slow copy is waited for, never hashed ahead of), `copied`
    runs once the source is no longer read (it may be removed then), and the sha256 is the
    file's; a failing copy leaves no hasher waiting."""
    real_copy = ddi.copy_extent

    def slow_copy(src: ddi.Extent, fd: int, dst_offset: int) -> None:
        time.sleep(0.05)  # far longer than hashing a window: a hasher running ahead reads zeros
        real_copy(src, fd, dst_offset)

    monkeypatch.setattr(ddi, "copy_extent", slow_copy)
    size = 2 * ddi.WINDOW + 12288  # two whole windows and a short one
    src = tmp_path / "src.bin"
    payload = os.urandom(size)
    src.write_bytes(os.urandom(8192) + payload)
    tree = tmp_path / "tree"
    tree.write_bytes(os.urandom(16384))
    calls = []

    def copied() -> None:
        calls.append(1)
        src.unlink()  # what the builder does with its scratch image

    out = tmp_path / "out.raw"
    disk, sha = ddi.write(out, ddi.Extent(src, 8192, size), tree, ROOT, "x86-64", None, copied)
    assert calls == [1] and not src.exists()
    assert sha == hashlib.sha256(out.read_bytes()).hexdigest()
    with open(out, "rb") as f:
        f.seek(disk.by_number(1).offset)
        assert f.read(size) == payload
    before = set(threading.enumerate())
    with pytest.raises(InputError, match="shorter than expected"):  # a source shorter than said
        ddi.write(tmp_path / "short.raw", ddi.Extent(tree, 0, 3 * ddi.WINDOW), tree, ROOT, "x86-64")
    assert set(threading.enumerate()) <= before  # no hasher left waiting


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


HASH_RANGE = """
import hashlib, os, sys
from acl_compose.sysext import ddi
fd = os.open(sys.argv[1], os.O_RDONLY)
h = hashlib.sha256()
ddi._hash_range(h, fd, 0, os.fstat(fd).st_size)
print(h.hexdigest())
"""


def test_hash_reads_holes_as_zeros_without_touching_them(small_tmpfs: Path) -> None:
    """A sparse image on a full tmpfs: touching a hole through mmap would allocate a page
    and die of SIGBUS (it did, building into a full /tmp); the digest is still the bytes'."""
    img = small_tmpfs / "sparse.img"
    data = os.urandom(1 << 20)
    with open(img, "wb") as f:
        f.truncate(64 << 20)  # 16 times the tmpfs
        f.seek(3 << 20)
        f.write(data)  # data between two holes, the last one up to EOF
    with open(small_tmpfs / "filler", "wb") as f, pytest.raises(OSError, match="No space"):
        while True:
            f.write(bytes(1 << 16))
            f.flush()
    proc = subprocess.run([sys.executable, "-c", HASH_RANGE, img], capture_output=True,
                          text=True, cwd=Path(__file__).parents[2])  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # -7: SIGBUS
    want = hashlib.sha256(bytes(3 << 20) + data + bytes(60 << 20)).hexdigest()
    assert proc.stdout.strip() == want
