"""Disk image outputs and sparse-aware file helpers.

Images are mostly holes (a 8 GiB Flatcar disk holds well under 1 GiB of data), so every
copy and hash here walks the file's data extents with SEEK_DATA/SEEK_HOLE and never
materialises the holes: memory stays flat and time follows the data, not the size.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError, VerificationError
from acl_compose.run import run

CHUNK = 4 << 20
MIB = 1 << 20
FORMATS = {"raw": "bin", "qcow2": "qcow2", "vhd": "vhd"}


def data_ranges(fd: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """(offset, length) of the data (non-hole) ranges of `fd` within [start, end)."""
    if end is None:
        end = os.fstat(fd).st_size
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                return
            yield pos, end - pos  # filesystem without SEEK_DATA: all data
            return
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole


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
            _feed_zeros(h, zero, off - pos)
            done = 0
            while done < length:
                buf = os.pread(fd, min(CHUNK, length - done), off + done)
                if not buf:
                    raise InputError(f"{path}: file shrank while hashing")
                h.update(buf)
                done += len(buf)
            pos = off + length
        _feed_zeros(h, zero, size - pos)
    return h


def _feed_zeros(h: Any, zero: memoryview, n: int) -> None:
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


def output_name(stem: str, fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r}", hint=f"use any of: {', '.join(FORMATS)}")
    return f"{stem}.{FORMATS[fmt]}"


def write_qcow2(raw: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Compact qcow2 (holes stay unallocated); qemu-img reads only data extents."""
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(dest)])


def vhd_size(raw_size: int) -> int:
    """Azure wants a fixed VHD whose virtual size is a whole number of MiB."""
    return -(-raw_size // MIB) * MIB


def write_vhd(
    raw: str | os.PathLike[str], dest: str | os.PathLike[str], work_dir: str | os.PathLike[str]
) -> None:
    """Azure fixed VHD: raw bytes (size rounded up to 1 MiB) plus a 512-byte footer.

    force_size keeps qemu-img from rounding to CHS geometry, so the virtual size is exact.
    """
    size = os.stat(raw).st_size
    target = vhd_size(size)
    src = Path(raw)
    if target != size:
        # Pad a sparse copy so the original output stays byte-exact.
        src = Path(work_dir) / (Path(raw).name + ".padded")
        copy_sparse(raw, src)
        os.truncate(src, target)
    try:
        run(
            [
                "qemu-img",
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                "subformat=fixed,force_size",
                str(src),
                str(dest),
            ]
        )
    finally:
        if src != Path(raw):
            src.unlink(missing_ok=True)
    check_vhd(dest, target)


def check_vhd(path: str | os.PathLike[str], expect_size: int | None = None) -> int:
    """Check the fixed-VHD footer (cookie, type, checksum); return the virtual size."""
    total = os.stat(path).st_size
    with open(path, "rb") as f:
        f.seek(total - 512)
        footer = f.read(512)
    if footer[:8] != b"conectix":
        raise VerificationError(f"{path}: no VHD footer (cookie 'conectix' missing)")
    (disk_type,) = struct.unpack_from(">I", footer, 60)
    (current_size,) = struct.unpack_from(">Q", footer, 48)
    (checksum,) = struct.unpack_from(">I", footer, 64)
    calc = (~sum(footer[:64] + b"\0\0\0\0" + footer[68:])) & 0xFFFFFFFF
    if disk_type != 2:
        raise VerificationError(f"{path}: VHD disk type {disk_type}, expected 2 (fixed)")
    if calc != checksum:
        raise VerificationError(f"{path}: VHD footer checksum mismatch")
    if current_size % MIB or current_size != total - 512:
        raise VerificationError(
            f"{path}: VHD virtual size {current_size} is not a whole MiB matching the file"
        )
    if expect_size is not None and current_size != expect_size:
        raise VerificationError(f"{path}: VHD virtual size {current_size}, expected {expect_size}")
    return current_size


def write_outputs(
    raw: Path, out_dir: Path, stem: str, formats: list[str], work_dir: Path
) -> list[dict[str, object]]:
    """Write every requested format; `raw` (the composed work image) becomes the .bin.

    The conversions (qemu-img, mostly I/O) run beside the raw image's hash (CPU; hashlib
    drops the GIL), and the fixed VHD's sha256 continues the raw one: a fixed VHD is the raw
    bytes, zero padding to a whole MiB, and a 512-byte footer.
    """
    paths = {fmt: out_dir / output_name(stem, fmt) for fmt in formats}
    size = os.stat(raw).st_size

    def convert() -> None:
        if "qcow2" in paths:
            write_qcow2(raw, paths["qcow2"])
        if "vhd" in paths:
            write_vhd(raw, paths["vhd"], work_dir)

    with ThreadPoolExecutor(max_workers=2) as pool:
        conv = pool.submit(convert)
        raw_hash = pool.submit(_hash_state, raw)
        conv.result()
        h = raw_hash.result()
    digests = {"raw": h.hexdigest()}
    if "vhd" in paths:
        v = h.copy()
        _feed_zeros(v, memoryview(bytes(CHUNK)), vhd_size(size) - size)
        with open(paths["vhd"], "rb") as f:
            f.seek(vhd_size(size))
            v.update(f.read())
        digests["vhd"] = v.hexdigest()
    if "qcow2" in paths:
        digests["qcow2"] = hash_sparse(paths["qcow2"])
    if "raw" in paths:
        os.replace(raw, paths["raw"])
    results: list[dict[str, object]] = []
    for fmt in FORMATS:
        if fmt in paths:
            p = paths[fmt]
            results.append({"format": fmt, "path": p, "file": p.name,
                            "size": os.stat(p).st_size, "sha256": digests[fmt]})  # fmt: skip
    return results
