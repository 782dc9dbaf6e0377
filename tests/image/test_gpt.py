"""GPT reader/writer, cross-checked against sgdisk in both directions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from acl_compose.errors import InputError
from acl_compose.image import gpt

MiB = 1 << 20
DISK_GUID = "00000000-1111-2222-3333-444444444444"
USR_A_GUID = "7130C94A-213A-4E5A-8E26-6CCE9662F132"  # Flatcar's fixed USR-A PARTUUID


def sgdisk(*args: str) -> str:
    return subprocess.run(["sgdisk", *args], check=True, capture_output=True, text=True).stdout


def _layout() -> list[gpt.Partition]:
    mb = MiB // gpt.SECTOR
    return [
        gpt.Partition(1, gpt.TYPES["efi"], "11111111-0000-0000-0000-000000000001", "EFI-SYSTEM",
                      2048, 2048 + 8 * mb - 1),
        gpt.Partition(3, gpt.TYPES["flatcar-usr"], USR_A_GUID, "USR-A",
                      2048 + 8 * mb, 2048 + 16 * mb - 1, attributes=(1 << 56) | (1 << 48)),
        gpt.Partition(9, gpt.TYPES["flatcar-root"], "11111111-0000-0000-0000-000000000009", "ROOT",
                      2048 + 16 * mb, 2048 + 20 * mb - 1),
    ]  # fmt: skip


def test_written_gpt_matches_sgdisk(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    gpt.write(img, _layout(), DISK_GUID, size=32 * MiB)
    # sgdisk -v reports problems (CRC, overlaps, backup header) as text; a clean table says so.
    assert "No problems found" in sgdisk("-v", str(img))
    listing = sgdisk("-p", str(img))
    assert DISK_GUID in listing
    info = sgdisk("-i", "3", str(img))
    assert "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6" in info
    assert USR_A_GUID in info
    assert "'USR-A'" in info
    assert "First sector: 18432" in info
    assert "Attribute flags: 0101000000000000" in info


def test_reads_sgdisk_made_gpt(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(16 * MiB)
    sgdisk("-U", DISK_GUID, "-n", "2:2048:+4M", "-t", "2:8300", "-c", "2:OEM",
           "-u", f"2:{USR_A_GUID}", "-A", "2:set:60", str(img))  # fmt: skip
    disk = gpt.read(img)
    assert disk.guid == DISK_GUID
    oem = disk.by_label("OEM")
    assert oem.number == 2
    assert oem.type_guid == gpt.TYPES["linux"]
    assert oem.guid == USR_A_GUID
    assert oem.offset == 2048 * 512 and oem.size == 4 * MiB
    assert oem.attributes == gpt.ATTR_READ_ONLY


def test_roundtrip_and_missing_label(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    gpt.write(img, _layout(), DISK_GUID, size=32 * MiB)
    disk = gpt.read(img)
    assert [(p.number, p.name) for p in disk.partitions] == [(1, "EFI-SYSTEM"), (3, "USR-A"),
                                                              (9, "ROOT")]  # fmt: skip
    with pytest.raises(InputError, match="no partition labelled 'OEM'"):
        disk.by_label("OEM")


def test_corrupted_entries_are_refused(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    gpt.write(img, _layout(), DISK_GUID, size=32 * MiB)
    with open(img, "r+b") as f:
        f.seek(2 * 512 + 130)  # inside the second partition entry
        f.write(b"X")
    with pytest.raises(InputError, match="CRC mismatch"):
        gpt.read(img)


def test_not_a_gpt(tmp_path: Path) -> None:
    img = tmp_path / "plain.img"
    img.write_bytes(bytes(4096))
    with pytest.raises(InputError, match="no GPT found"):
        gpt.read(img)


def test_overlap_and_range_refused(tmp_path: Path) -> None:
    parts = _layout()
    parts[1].first_lba = parts[0].last_lba
    with pytest.raises(InputError, match="overlap"):
        gpt.write(tmp_path / "a.img", parts, DISK_GUID, size=32 * MiB)
    with pytest.raises(InputError, match="outside the usable range"):
        gpt.write(tmp_path / "b.img", _layout(), DISK_GUID, size=16 * MiB)


def test_copy_in_out_is_exact_and_sparse(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    disk = gpt.write(img, _layout(), DISK_GUID, size=32 * MiB)
    usr = disk.by_number(3)
    payload = tmp_path / "payload"
    with open(payload, "wb") as f:
        f.write(os.urandom(4096))
        f.seek(4 * MiB)
        f.write(b"tail")
    gpt.copy_in(img, usr, payload)
    out = tmp_path / "out"
    gpt.copy_out(img, usr, out)
    data = out.read_bytes()
    assert len(data) == usr.size
    assert data[: payload.stat().st_size] == payload.read_bytes()
    assert data[payload.stat().st_size :] == bytes(usr.size - payload.stat().st_size)
    # The zero gap stays a hole: far fewer blocks allocated than the partition size.
    assert out.stat().st_blocks * 512 < 1 * MiB
    # Neighbouring partitions untouched; GPT still valid.
    assert gpt.read(img).by_label("ROOT").size == 4 * MiB


def test_copy_in_too_large(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    disk = gpt.write(img, _layout(), DISK_GUID, size=32 * MiB)
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(5 * MiB)
    with pytest.raises(InputError, match="do not fit partition 9"):
        gpt.copy_in(img, disk.by_number(9), big)
