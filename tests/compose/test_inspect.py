"""`acl-compose inspect`: the firmwares an image boots, read from real GRUB bytes; compose
keeps the testbed's BIOS boot (GRUB's boot code in the MBR, its core image in BIOS-BOOT);
and the full report on a composed image (`mini_release`, tests/compose/conftest.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from acl_compose.image import firmware, gpt
from tests import tinydisk
from tests.conftest import run_cli


def test_inspect_reports_which_firmwares_boot_the_image(tmp_path: Path) -> None:
    img = tinydisk.build(tmp_path / "tiny.img", tinydisk.SILENT, tmp_path / "work", bios=True)
    text = run_cli("inspect", img, check=True).stdout
    assert "UEFI: boots: EFI/BOOT/BOOTX64.EFI on partition 1 (EFI-SYSTEM)" in text
    assert "BIOS: boots: GRUB boot code in the MBR; GRUB core image at LBA 18432 " in text
    assert "(partition 2 BIOS-BOOT)" in text
    broken = tmp_path / "broken.img"
    shutil.copyfile(img, broken)
    with open(broken, "r+b") as f:
        f.write(bytes(440))
    report = json.loads(run_cli("--json", "inspect", broken, check=True).stdout)
    assert report["firmware"]["bios"] == {
        "bootable": False,
        "reason": "the protective MBR holds no boot code (bytes 0-439 are zero)",
    }
    assert report["firmware"]["uefi"]["bootable"] is True
    text = run_cli("inspect", broken, check=True).stdout
    assert "BIOS: CANNOT boot: the protective MBR holds no boot code" in text


def _bios_bytes(image: Path) -> tuple[bytes, bytes]:
    """(MBR boot code, whole BIOS-BOOT partition) of a raw image."""
    part = gpt.read(image).by_label("BIOS-BOOT")
    with open(image, "rb") as f:
        code = f.read(firmware.BOOT_CODE_END)
        f.seek(part.offset)
        return code, f.read(part.size)


@pytest.mark.integration
def test_compose_keeps_the_testbeds_bios_boot(composed_release, testbed_image: Path) -> None:
    """The testbed installs GRUB for BIOS; the composed image keeps its boot code and core image
    byte for byte, and inspect says both firmwares boot it (raw and qcow2)."""
    base = firmware.boot_support(testbed_image)["bios"]
    assert base.bootable and base.details["boot_code"] == "grub", base.reason  # not zeros
    assert _bios_bytes(composed_release.raw) == _bios_bytes(testbed_image)
    for out in composed_release.release["outputs"]:
        report = json.loads(
            run_cli("--json", "inspect", composed_release.out_dir / out["file"], check=True).stdout
        )["firmware"]
        assert report["uefi"]["bootable"] and report["bios"]["bootable"], (out["format"], report)
        assert report["bios"]["core_lba"] == base.details["core_lba"], out["format"]
    text = run_cli("inspect", composed_release.raw, check=True).stdout
    assert "UEFI: boots: EFI/BOOT/BOOTX64.EFI on partition 1 (EFI-SYSTEM)" in text
    assert "BIOS: boots: GRUB boot code in the MBR; GRUB core image at LBA" in text


def test_inspect_shows_everything(mini_release):
    for name in ("acl-test-1.0.0.bin", "acl-test-1.0.0.qcow2", "acl-test-1.0.0.vhd"):
        proc = run_cli("--json", "inspect", mini_release["out"] / name, check=True)
        r = json.loads(proc.stdout)
        assert r["flatcar_version"] == "9999.2.0"
        assert (
            r["usr"]["verified"] is True
            and r["usr"]["kernel_root_hash"] == mini_release["release"]["usr"]["root_hash"]
        )
        platform = "azure" if name.endswith(".vhd") else "qemu"
        assert r["oem"]["id"] == r["oem"]["grub_oem_id"] == platform
        assert r["oem"]["release"]["VERSION_ID"] == "1.2.3"
        (sx,) = r["oem"]["sysexts"]
        assert (sx["file"], sx["id"], sx["version"], sx["active"], sx["status"]) == (
            f"sysext/oem-{platform}-9999.2.0.raw", platform, "9999.2.0", True, "ok")  # fmt: skip
        assert sx["sha256"] == mini_release["release"]["platforms"][platform]["sysext"]["sha256"]
        assert (
            r["oem"]["configs"]["base/base.ign"]["sha256"]
            == mini_release["release"]["ignition"]["sha256"]
        )
        got = {
            s["name"]: (s["version"], s["signed"], s["status"], s["enabled_by"])
            for s in r["sysexts"]
        }
        assert got == {
            "azure-base": ("1.1.0", True, "ok", "/etc/extensions/azure-base.raw"),
            "aks-node": ("1.0.0", True, "ok", "/etc/extensions/aks-node.raw"),
        }
        assert [p["label"] for p in r["disk"]["partitions"]][2] == "USR-A"
    text = run_cli("inspect", mini_release["out"] / "acl-test-1.0.0.bin", check=True).stdout
    assert (
        "sysext aks-node 1.0.0" in text
        and "/usr verity: verified" in text
        and "OEM id: qemu (oem-release: QEMU 1.2.3; grub.cfg oem_id=qemu)" in text
        and "OEM sysext oem-qemu 9999.2.0: OEM:/sysext/oem-qemu-9999.2.0.raw (active; unsigned; ok)"
        in text
    )
