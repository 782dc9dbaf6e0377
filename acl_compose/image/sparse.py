"""Sparse-aware copies and hashes of disk images.

Images are mostly holes (a 8 GiB Flatcar disk holds well under 1 GiB of data), so every
copy and hash here walks the file's data extents with SEEK_DATA/SEEK_HOLE and never
materialises the holes: memory stays flat and time follows the data, not the size.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from acl_compose.errors import InputError
from acl_compose.util import data_ranges

CHUNK = 4 << 20


_ZERO_HASH_CACHE: dict[str, dict[int, object]] = {}


def hash_sparse(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Digest of a file's full contents (holes read as zeros) without reading the holes."""
    return _hash_state(path, algorithm).hexdigest()


def _hash_state(path: str | os.PathLike[str], algorithm: str = "sha256") -> Any:
    h = hashlib.new(algorithm)
    zero = memoryview(bytes(CHUNK))
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        for off, length in data_ranges(fd, 0, size):
            feed_zeros(h, zero, off - pos)
            done = 0
            while done < length:
                buf = os.pread(fd, min(CHUNK, length - done), off + done)
                if not buf:
                    raise InputError(f"{path}: file shrank while hashing")
                h.update(buf)
                done += len(buf)
            pos = off + length
        feed_zeros(h, zero, size - pos)
    return h


def feed_zeros(h: Any, zero: memoryview, n: int) -> None:
    while n > 0:
        k = min(n, len(zero))
        h.update(zero[:k])
        n -= k


def copy_sparse(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy a file keeping its holes: only data ranges are copied, in the kernel
    (copy_file_range; shares extents where the filesystem can), streamed otherwise."""
    s = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(s).st_size
        d = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(d, size)
            for off, length in data_ranges(s, 0, size):
                _copy_range(s, d, off, length, str(src))
        finally:
            os.close(d)
    finally:
        os.close(s)


def _copy_range(s: int, d: int, off: int, length: int, name: str) -> None:
    done = 0
    while done < length:
        want = min(1 << 30, length - done)
        try:
            n = os.copy_file_range(s, d, want, off + done, off + done)
        except OSError:
            n = 0
        if n == 0:  # not supported here (or a race): plain copy of this piece
            buf = os.pread(s, min(CHUNK, want), off + done)
            if not buf:
                raise InputError(f"{name}: file shrank while copying")
            n = os.pwrite(d, buf, off + done)
        done += n
