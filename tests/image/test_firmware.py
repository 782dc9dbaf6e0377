"""Which firmwares can boot an image: the checks against real GRUB bytes, and their negatives.

The disks are tiny but real: GRUB for UEFI made by grub-mkstandalone, GRUB for BIOS installed
by grub-bios-setup (image.biosboot), so the MBR, core image and block list are GRUB's own. The
same disks boot under QEMU in tests/boot/test_evidence.py; here nothing boots.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acl_compose.errors import InputError
from acl_compose.image import biosboot, firmware, gpt
from acl_compose.run import run
from tests import tinydisk
from tests.conftest import REPO, run_cli


@pytest.fixture(scope="session")
def tiny_bios(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-bios")
    return tinydisk.build(d / "tiny.img", tinydisk.SILENT, d / "work", bios=True)


@pytest.fixture
def tiny(tiny_bios: Path, tmp_path: Path) -> Path:
    """A private copy the test may damage."""
    copy = tmp_path / "tiny.img"
    shutil.copyfile(tiny_bios, copy)
    return copy


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_both_firmwares_found_with_what_they_boot(tiny: Path) -> None:
    s = firmware.boot_support(tiny)
    assert s["uefi"].bootable and s["bios"].bootable
    assert s["uefi"].details["architecture"] == "x86-64"
    assert "EFI/BOOT/BOOTX64.EFI on partition 1 (EFI-SYSTEM)" in s["uefi"].reason
    bios_boot = gpt.read(tiny).by_label("BIOS-BOOT")
    # GRUB's boot.img holds the core image's LBA at 0x5c: the first sector of BIOS-BOOT.
    (lba,) = struct.unpack_from("<Q", tiny.read_bytes()[:512], 0x5C)
    assert lba == bios_boot.first_lba == s["bios"].details["core_lba"]
    assert s["bios"].details["partition"] == 2
    assert "GRUB core image at LBA" in s["bios"].reason and "BIOS-BOOT" in s["bios"].reason
    assert s["bios"].details["core_sectors"] > 2


def test_grub_bios_setup_keeps_the_partition_table(tiny: Path, tmp_path: Path) -> None:
    """boot.img goes into bytes 0-439 only: sgdisk still reads the same GPT."""
    mbr = tiny.read_bytes()[:512]
    assert mbr[510:] == b"\x55\xaa" and any(mbr[:440])
    assert mbr[446 + 4] == 0xEE, "the protective MBR's partition entry must stay"
    out = run(["sgdisk", "-v", tiny]).stdout.decode()
    assert "No problems found" in out
    assert [p.name for p in gpt.read(tiny).partitions] == ["EFI-SYSTEM", "BIOS-BOOT"]


def test_zeroed_mbr_boot_code_is_not_bios_bootable(tiny: Path) -> None:
    _patch(tiny, 0, bytes(440))
    s = firmware.boot_support(tiny)
    assert not s["bios"].bootable and s["uefi"].bootable
    assert s["bios"].reason == "the protective MBR holds no boot code (bytes 0-439 are zero)"


def test_zeroed_bios_boot_partition_is_not_bios_bootable(tiny: Path) -> None:
    part = gpt.read(tiny).by_label("BIOS-BOOT")
    _patch(tiny, part.offset, bytes(part.size))
    s = firmware.boot_support(tiny)
    assert not s["bios"].bootable
    assert (
        "no GRUB core image at LBA" in s["bios"].reason
        and "(the sector is zero)" in s["bios"].reason
    )


def test_core_image_body_overwritten_is_caught(tiny: Path) -> None:
    """diskboot.img intact but the sectors its block list names zeroed (what a tool writing
    over BIOS-BOOT after the first sector would leave)."""
    part = gpt.read(tiny).by_label("BIOS-BOOT")
    _patch(tiny, part.offset + 512, bytes(part.size - 512))
    s = firmware.boot_support(tiny)
    assert not s["bios"].bootable and "continues at LBA" in s["bios"].reason


def test_mbr_pointing_outside_the_disk(tiny: Path) -> None:
    _patch(tiny, 0x5C, struct.pack("<Q", 1 << 40))
    s = firmware.boot_support(tiny)
    assert not s["bios"].bootable and "outside the disk" in s["bios"].reason


def test_missing_signature_and_foreign_boot_code(tiny: Path) -> None:
    _patch(tiny, 0, b"\xfa\x31\xc0" + bytes(437))  # some other loader's code: not followed
    s = firmware.boot_support(tiny)
    assert s["bios"].bootable and s["bios"].details["boot_code"] == "other"
    _patch(tiny, 510, b"\0\0")
    assert "0x55AA" in firmware.boot_support(tiny)["bios"].reason


def test_efi_loader_checks(tiny: Path, tmp_path: Path) -> None:
    esp = gpt.read(tiny).by_label("EFI-SYSTEM")
    spec = f"{tiny}@@{esp.offset}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    pe = run(["mcopy", "-n", "-i", spec, "::/EFI/BOOT/BOOTX64.EFI", "-"], env=env).stdout
    (lfanew,) = struct.unpack_from("<I", pe, 0x3C)
    arm = bytearray(pe)
    arm[lfanew + 4 : lfanew + 6] = struct.pack("<H", 0xAA64)
    (tmp_path / "arm.efi").write_bytes(arm)
    run(["mcopy", "-o", "-i", spec, tmp_path / "arm.efi", "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    s = firmware.boot_support(tiny)["uefi"]
    assert not s.bootable and "is for arm64, not x86-64" in s.reason
    (tmp_path / "text.efi").write_text("not a PE file\n" * 10)
    run(["mcopy", "-o", "-i", spec, tmp_path / "text.efi", "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    assert "is not a PE image" in firmware.boot_support(tiny)["uefi"].reason
    run(["mdel", "-i", spec, "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    assert "no EFI/BOOT/BOOTX64.EFI in the FAT filesystem of partition 1" in (
        firmware.boot_support(tiny)["uefi"].reason
    )


def test_no_gpt_no_esp(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(4 << 20))
    s = firmware.boot_support(blank)
    assert not s["uefi"].bootable and "no GPT" in s["uefi"].reason
    assert not s["bios"].bootable and "0x55AA" in s["bios"].reason


@pytest.mark.parametrize("fmt", ["qcow2", "vpc"])
def test_other_formats_are_read_through_qemu_img(tiny: Path, tmp_path: Path, fmt: str) -> None:
    """The same verdicts for the qcow2 and VHD forms; a damaged MBR too."""
    out = tmp_path / f"tiny.{fmt}"
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, tiny, out])
    s = firmware.boot_support(out)
    assert s["uefi"].bootable and s["bios"].bootable
    assert s["bios"].details["core_lba"] == gpt.read(tiny).by_label("BIOS-BOOT").first_lba
    _patch(tiny, 0, bytes(440))
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, tiny, out])
    assert not firmware.boot_support(out)["bios"].bootable


def test_require_refuses_with_the_reason_and_the_alternative(tiny: Path) -> None:
    assert firmware.require(tiny, "bios").bootable
    assert firmware.require(tiny, "kernel").reason == "not checked"
    _patch(tiny, 0, bytes(440))
    with pytest.raises(InputError) as e:
        firmware.require(tiny, "bios")
    assert "cannot boot with --firmware bios: the protective MBR holds no boot code" in str(e.value)
    assert "boots with --firmware uefi (EFI/BOOT/BOOTX64.EFI" in e.value.hint


@pytest.mark.parametrize("command", ["boot", "test"])
def test_cli_refuses_a_zeroed_mbr_for_bios_at_once(tiny: Path, tmp_path: Path, command) -> None:
    """The issue's promise: refused for BIOS in under 5 s, with a clear error, nothing booted."""
    _patch(tiny, 0, bytes(440))
    junit = tmp_path / "res" / "junit.xml"
    extra = ["--junit-xml", junit] if command == "test" else ["--run", "true"]
    start = time.monotonic()
    proc = run_cli(command, tiny, "--firmware", "bios", "--accel", "tcg", *extra, check=False,
                   env={"TMPDIR": str(tmp_path)})  # fmt: skip
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert f"error: {tiny}: cannot boot with --firmware bios: the protective MBR holds no boot " \
        "code (bytes 0-439 are zero)" in proc.stderr  # fmt: skip
    assert "hint: it boots with --firmware uefi" in proc.stderr
    assert took < 5, f"refusal took {took:.1f}s"
    assert not list(tmp_path.glob("acl-*")), "nothing may be started or left behind"
    assert not junit.parent.exists()


def test_module_files_are_xz_and_leave_out_the_core(tmp_path: Path) -> None:
    """Flatcar's GRUB_DIR content: every non-core module and list file, xz-compressed."""
    folder = biosboot.module_files(tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert "linux.mod" in names and "command.lst" in names and "moddep.lst" in names
    assert not names & {f"{m}.mod" for m in biosboot.MODULES}
    out = run(["xz", "-dc", folder / "linux.mod"]).stdout
    assert out == (biosboot.GRUB_PC / "linux.mod").read_bytes()


def test_qemu_tests_plugin_refuses_too(tiny: Path, tmp_path: Path) -> None:
    """`pytest qemu-tests/ --image IMAGE --firmware bios`: the same refusal, as a usage error."""
    _patch(tiny, 0, bytes(440))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "qemu-tests/test_health.py", "--image", str(tiny),
         "--firmware", "bios", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert "cannot boot with --firmware bios: the protective MBR holds no boot code" in (
        proc.stderr
    )
    assert time.monotonic() - start < 10
    assert not list(tmp_path.glob("acl-*"))
