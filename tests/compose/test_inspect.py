"""`acl-compose inspect`: the firmwares an image boots, read from real GRUB bytes.

(The full report on composed images is tested in test_pipeline.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
