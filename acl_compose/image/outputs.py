"""Output images: raw, compact qcow2 and Azure's fixed VHD, each hashed for release.json."""

from __future__ import annotations

import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from acl_compose.errors import InputError, VerificationError
from acl_compose.image.sparse import CHUNK, _hash_state, copy_sparse, feed_zeros, hash_sparse
from acl_compose.run import run

MIB = 1 << 20
FORMATS = {"raw": "bin", "qcow2": "qcow2", "vhd": "vhd"}
# The platform each format is made for unless told otherwise (Azure takes fixed VHDs).
DEFAULT_PLATFORM = {"raw": "qemu", "qcow2": "qemu", "vhd": "azure"}


def output_name(stem: str, fmt: str, platform: str | None = None) -> str:
    """`<stem>.<ext>` for the format's default platform, `<stem>-<platform>.<ext>` otherwise,
    so every (format, platform) pair has its own file."""
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r}", hint=f"use any of: {', '.join(FORMATS)}")
    if platform is None or platform == DEFAULT_PLATFORM[fmt]:
        return f"{stem}.{FORMATS[fmt]}"
    return f"{stem}-{platform}.{FORMATS[fmt]}"


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


# CHS geometry of the footer (VHD spec, appendix "CHS calculation"), and the marker qemu-img's
# force_size writes instead: "the size is current_size, not C*H*S" (what Azure and Flatcar use).
CHS_MAX = (65535, 16, 255)


def vhd_geometry(size: int) -> tuple[int, int, int]:
    """The spec's cylinders, heads, sectors per track for a disk of `size` bytes."""
    total = min(size // 512, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def check_vhd(path: str | os.PathLike[str], expect_size: int | None = None) -> int:
    """Check a fixed-VHD footer as Azure takes it: cookie, version, fixed type with no dynamic
    header, checksum, a virtual size that is a whole MiB and the file's, and a geometry that is
    the spec's for that size or force_size's marker. Returns the virtual size. The size it
    claims is only compared with the file's, never used to read or allocate."""
    total = os.stat(path).st_size
    if total < 512:
        raise VerificationError(f"{path}: {total} bytes, too small to hold a VHD footer")
    with open(path, "rb") as f:
        f.seek(total - 512)
        footer = f.read(512)
    if footer[:8] != b"conectix":
        raise VerificationError(f"{path}: no VHD footer (cookie 'conectix' missing)")
    (version,) = struct.unpack_from(">I", footer, 12)
    (data_offset,) = struct.unpack_from(">Q", footer, 16)
    (current_size,) = struct.unpack_from(">Q", footer, 48)
    cyls, heads, spt = struct.unpack_from(">HBB", footer, 56)
    (disk_type,) = struct.unpack_from(">I", footer, 60)
    (checksum,) = struct.unpack_from(">I", footer, 64)
    calc = (~sum(footer[:64] + b"\0\0\0\0" + footer[68:])) & 0xFFFFFFFF
    if disk_type != 2:
        raise VerificationError(f"{path}: VHD disk type {disk_type}, expected 2 (fixed)")
    if calc != checksum:
        raise VerificationError(f"{path}: VHD footer checksum mismatch")
    if version != 0x00010000 or data_offset != 0xFFFFFFFFFFFFFFFF:
        raise VerificationError(
            f"{path}: VHD footer version {version:#x}, data offset {data_offset:#x}: "
            "not a fixed VHD 1.0 (expected 0x10000 and no dynamic header)"
        )
    if current_size % MIB or current_size != total - 512:
        raise VerificationError(
            f"{path}: VHD virtual size {current_size} is not a whole MiB matching the file"
        )
    if (cyls, heads, spt) not in (vhd_geometry(current_size), CHS_MAX):
        raise VerificationError(
            f"{path}: VHD geometry {cyls}/{heads}/{spt} (C/H/S) is neither the spec's for "
            f"{current_size} bytes {vhd_geometry(current_size)} nor 65535/16/255"
        )
    if expect_size is not None and current_size != expect_size:
        raise VerificationError(f"{path}: VHD virtual size {current_size}, expected {expect_size}")
    return current_size


VHD_EPOCH = 946684800  # the VHD footer counts seconds from 2000-01-01 00:00:00 UTC


def pin_vhd_footer(path: str | os.PathLike[str], timestamp: int, unique_id: bytes) -> None:
    """Replace what qemu-img makes up (creation time, random unique id) in a fixed VHD's
    footer, and its checksum, so the same raw image always gives the same VHD."""
    total = os.stat(path).st_size
    with open(path, "r+b") as f:
        f.seek(total - 512)
        footer = bytearray(f.read(512))
        if footer[:8] != b"conectix":
            raise VerificationError(f"{path}: no VHD footer (cookie 'conectix' missing)")
        struct.pack_into(">I", footer, 24, max(0, min(timestamp - VHD_EPOCH, 0xFFFFFFFF)))
        footer[68:84] = unique_id[:16].ljust(16, b"\0")
        struct.pack_into(">I", footer, 64, 0)
        struct.pack_into(">I", footer, 64, (~sum(footer)) & 0xFFFFFFFF)
        f.seek(total - 512)
        f.write(footer)


def write_outputs(
    raw: Path,
    out_dir: Path,
    stem: str,
    formats: list[str],
    work_dir: Path,
    source_date_epoch: int | None = None,
    platform: str | None = None,
) -> list[dict[str, object]]:
    """Write every requested format; `raw` (the composed work image) becomes the .bin.
    `platform` (the image's OEM platform) names the files (`output_name`) and the results.

    The conversions (qemu-img, mostly I/O) run beside the raw image's hash (CPU; hashlib
    drops the GIL), and the fixed VHD's sha256 continues the raw one: a fixed VHD is the raw
    bytes, zero padding to a whole MiB, and a 512-byte footer. With `source_date_epoch` the
    VHD footer is pinned (its time, and a unique id derived from the raw image's sha256).
    """
    paths = {fmt: out_dir / output_name(stem, fmt, platform) for fmt in formats}
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
    if "vhd" in paths and source_date_epoch is not None:
        uid = hashlib.sha256(f"acl-compose vhd id\0{digests['raw']}".encode()).digest()
        pin_vhd_footer(paths["vhd"], source_date_epoch, uid)
    if "vhd" in paths:
        v = h.copy()
        feed_zeros(v, memoryview(bytes(CHUNK)), vhd_size(size) - size)
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
            if platform is not None:
                results[-1]["platform"] = platform
    return results
