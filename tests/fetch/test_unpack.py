"""unpack: bzip2 images decompressed (lbzip2 or Python) into sparse files, refused when corrupt."""

from __future__ import annotations

import bz2
import os
from pathlib import Path

import pytest

from acl_compose import fetch
from acl_compose.errors import InputError


@pytest.mark.parametrize("use_lbzip2", [True, False])
def test_decompress_sparse(tmp_path: Path, use_lbzip2: bool) -> None:
    raw = os.urandom(70_000) + bytes(8 << 20) + b"tail" + bytes(5000)
    src = tmp_path / "img.bin.bz2"
    src.write_bytes(bz2.compress(raw, 1))
    dest = fetch.decompress(src, tmp_path / "img.bin", use_lbzip2=use_lbzip2)
    assert dest.read_bytes() == raw
    assert dest.stat().st_blocks * 512 < 1 << 20  # the 8 MiB of zeros are holes


def test_sparse_writer_blocks_and_tail(tmp_path: Path) -> None:
    """Zero blocks anywhere in a chunk (and a ragged tail) become holes; the bytes survive."""
    from acl_compose.fetch.unpack import BLOCK, CHUNK, SparseWriter

    rnd = os.urandom(BLOCK)
    pattern = [rnd if i % 3 == 0 else bytes(BLOCK) for i in range(CHUNK // BLOCK)]
    chunks = [b"".join(pattern), bytes(CHUNK), rnd[:100] + bytes(BLOCK * 3 + 7)]
    dest = tmp_path / "out"
    with open(dest, "wb") as f:
        w = SparseWriter(f.fileno())
        for c in chunks:
            buf = bytearray(CHUNK)  # a reused buffer longer than the data, as lbzip2's reader
            buf[: len(c)] = c
            w.write(buf, len(c))
        w.finish()
    assert dest.read_bytes() == b"".join(chunks)
    data_blocks = CHUNK // BLOCK // 3 + 1 + 1  # the random blocks, plus the tail's first block
    assert dest.stat().st_blocks * 512 <= (data_blocks + 2) * BLOCK


def test_decompress_corrupt_is_input_error(tmp_path: Path) -> None:
    src = tmp_path / "bad.bz2"
    good = bz2.compress(os.urandom(50_000))
    src.write_bytes(good[:-40] + bytes(40))
    for use in (True, False):
        with pytest.raises(InputError, match=str(src)):
            fetch.decompress(src, tmp_path / "bad.raw", use_lbzip2=use)
        assert not (tmp_path / "bad.raw").exists()
