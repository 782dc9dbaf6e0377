"""A fixed VHD checked the way Azure takes it, with a footer parser written here from the VHD
specification (Microsoft "Virtual Hard Disk Image Format Specification", Hard Disk Footer
Format), independent of qemu-img and of acl_compose's own check. Shared by the image and
compose tests."""

from __future__ import annotations

import struct
from pathlib import Path

MIB = 1 << 20


def parse_footer(path: Path) -> dict:
    """Every field of the 512-byte footer at the end of a fixed VHD, big-endian."""
    with open(path, "rb") as f:
        f.seek(-512, 2)
        raw = f.read(512)
    names = ("cookie", "features", "version", "data_offset", "timestamp", "creator_app",
             "creator_version", "creator_os", "original_size", "current_size", "cylinders",
             "heads", "sectors", "disk_type", "checksum", "unique_id", "saved_state")  # fmt: skip
    fields = dict(zip(names, struct.unpack(">8sIIQI4sI4sQQHBBII16sB", raw[:85]), strict=True))
    fields["reserved"] = raw[85:]
    fields["computed_checksum"] = (~(sum(raw[:64]) + sum(raw[68:]))) & 0xFFFFFFFF
    return fields


def spec_chs(total_sectors: int) -> tuple[int, int, int]:
    """The specification's CHS calculation, transcribed separately from the product's."""
    total_sectors = min(total_sectors, 65535 * 16 * 255)
    if total_sectors >= 65535 * 16 * 63:
        sectors_per_track, heads = 255, 16
        cylinder_times_heads = total_sectors // sectors_per_track
    else:
        sectors_per_track = 17
        cylinder_times_heads = total_sectors // sectors_per_track
        heads = (cylinder_times_heads + 1023) // 1024
        if heads < 4:
            heads = 4
        if cylinder_times_heads >= heads * 1024 or heads > 16:
            sectors_per_track, heads = 31, 16
            cylinder_times_heads = total_sectors // sectors_per_track
        if cylinder_times_heads >= heads * 1024:
            sectors_per_track, heads = 63, 16
            cylinder_times_heads = total_sectors // sectors_per_track
    return cylinder_times_heads // heads, heads, sectors_per_track


def assert_azure_fixed_vhd(path: Path, raw: bytes | None = None) -> dict:
    f = parse_footer(path)
    size = path.stat().st_size - 512
    assert f["cookie"] == b"conectix"
    assert f["features"] & 2, "the reserved feature bit must be set"
    assert f["version"] == 0x00010000
    assert f["data_offset"] == 0xFFFFFFFFFFFFFFFF, "a fixed disk has no dynamic header"
    assert f["disk_type"] == 2, "Azure takes fixed VHDs only"
    assert f["checksum"] == f["computed_checksum"]
    assert f["current_size"] == f["original_size"] == size
    assert size % MIB == 0, "Azure wants a virtual size that is a whole number of MiB"
    chs = (f["cylinders"], f["heads"], f["sectors"])
    # force_size's marker (size from current_size) or the spec's geometry for the size.
    assert chs in ((65535, 16, 255), spec_chs(size // 512))
    assert f["cylinders"] * f["heads"] * f["sectors"] * 512 <= max(size, 65535 * 16 * 255 * 512)
    assert f["saved_state"] == 0 and f["reserved"] == bytes(427)
    if raw is not None:
        with open(path, "rb") as d:
            assert d.read(len(raw)) == raw
            assert d.read(size - len(raw)) == bytes(size - len(raw))
    return f
