"""The fixed VHD is what Azure takes, checked with a footer parser written here from the VHD
specification (Microsoft "Virtual Hard Disk Image Format Specification", Hard Disk Footer
Format), independent of qemu-img and of acl_compose's own check."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from acl_compose.errors import VerificationError
from acl_compose.image import outputs
from tests.vhd_tools import MIB, assert_azure_fixed_vhd, parse_footer, spec_chs

VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z


@pytest.mark.parametrize("size", [40 * MIB + 512, 41 * MIB, 1])
def test_written_vhd_is_what_azure_takes(tmp_path, size):
    raw = tmp_path / "disk.bin"
    content = bytes(range(256)) * (size // 256) + b"\x5a" * (size % 256)
    raw.write_bytes(content)
    vhd = tmp_path / "disk.vhd"
    outputs.write_vhd(raw, vhd, tmp_path)
    assert_azure_fixed_vhd(vhd, content)
    assert vhd.stat().st_size - 512 == -(-size // MIB) * MIB


def test_pinned_footer_keeps_it_valid(tmp_path):
    raw = tmp_path / "disk.bin"
    raw.write_bytes(b"x" * (3 * MIB))
    out = tmp_path / "out"
    out.mkdir()
    (vhd,) = outputs.write_outputs(raw, out, "a", ["vhd"], tmp_path, 1700000000)
    f = assert_azure_fixed_vhd(Path(vhd["path"]))
    assert f["timestamp"] == 1700000000 - VHD_EPOCH
    assert f["unique_id"] != bytes(16)


@pytest.mark.parametrize("mib", [3, 130, 1025, 8706, 40000])
def test_geometry_matches_qemu_img_without_force_size(tmp_path, mib):
    """qemu-img without force_size rounds the disk to the spec's CHS geometry and writes it:
    the product's and this file's transcriptions of the spec must both agree with it."""
    vhd = tmp_path / "g.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(vhd),
                    f"{mib}M"], check=True)  # fmt: skip
    f = parse_footer(vhd)
    chs = (f["cylinders"], f["heads"], f["sectors"])
    assert spec_chs(f["current_size"] // 512) == chs
    assert outputs.vhd_geometry(f["current_size"]) == chs


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "needle"),
    [
        (56, ">HBB", (1000, 4, 17), "geometry 1000/4/17"),
        (60, ">I", (3,), "disk type 3"),
        (16, ">Q", (512,), "data offset 0x200"),
        (48, ">Q", (5 * MIB,), "not a whole MiB matching the file"),
        (12, ">I", (0x00020000,), "version 0x20000"),
    ],
)
def test_check_refuses_a_bad_footer(tmp_path, offset, fmt, value, needle):
    """Each field broken alone, checksum recomputed: the check still names it."""
    raw = tmp_path / "disk.bin"
    raw.write_bytes(b"x" * (2 * MIB))
    vhd = tmp_path / "disk.vhd"
    outputs.write_vhd(raw, vhd, tmp_path)
    with open(vhd, "r+b") as f:
        f.seek(-512, 2)
        footer = bytearray(f.read(512))
        struct.pack_into(fmt, footer, offset, *value)
        struct.pack_into(">I", footer, 64, 0)
        struct.pack_into(">I", footer, 64, (~sum(footer)) & 0xFFFFFFFF)
        f.seek(-512, 2)
        f.write(footer)
    with pytest.raises(VerificationError, match="VHD") as e:
        outputs.check_vhd(vhd)
    assert needle in e.value.message
    # ... and the independent parser agrees something is wrong.
    with pytest.raises(AssertionError):
        assert_azure_fixed_vhd(vhd)
