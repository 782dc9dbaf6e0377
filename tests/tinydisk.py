"""Tiny bootable disks for the boot harness's tests: seconds under TCG, not a full OS.

A GPT disk with an EFI system partition holding `EFI/BOOT/BOOTX64.EFI` (GRUB, made by
grub-mkstandalone) whose embedded config is `script`, so OVMF really boots it and GRUB prints
what the test wants on the serial console (a fatal line, or nothing while it sleeps). With
`bios=True` GRUB for BIOS is installed too, as the testbed installs it (image.biosboot: boot.img
in the MBR, the core image with `script` in its memdisk in BIOS-BOOT), so SeaBIOS boots it.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from acl_compose.image import biosboot, gpt
from acl_compose.run import run

MiB = 1 << 20
ESP_SECTORS = 16384  # 8 MiB from LBA 2048
BIOS_SECTORS = 2048  # 1 MiB, for GRUB's core image
SIZE = 16 * MiB
SERIAL = "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n"
# What a failing guest prints: a line the harness treats as fatal at once.
PANIC = SERIAL + 'echo "Kernel panic - not syncing: acl-compose tiny test disk"\nsleep 600\n'
SILENT = SERIAL + "sleep 600\n"  # a guest that never answers


def partitions() -> list[gpt.Partition]:
    esp_end = 2048 + ESP_SECTORS - 1
    return [
        gpt.Partition(1, gpt.TYPES["efi"], "11111111-2222-4333-8444-555555555501", "EFI-SYSTEM",
                      2048, esp_end),
        gpt.Partition(2, gpt.TYPES["bios"], "11111111-2222-4333-8444-555555555502", "BIOS-BOOT",
                      esp_end + 1, esp_end + BIOS_SECTORS),
    ]  # fmt: skip


def build(path: Path, script: str, work: Path, bios: bool = False) -> Path:
    """A tiny disk at `path` whose GRUB (UEFI, and BIOS if asked) runs `script`."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "grub.cfg"
    cfg.write_text(script)
    efi = work / "bootx64.efi"
    run(
        ["grub-mkstandalone", "-O", "x86_64-efi", "-o", efi, "--locales=", "--themes=",
         "--fonts=", "--install-modules=normal configfile serial terminal echo sleep test",
         "--modules=serial terminal", f"boot/grub/grub.cfg={cfg}"],
    )  # fmt: skip
    esp = work / "esp.img"
    esp.unlink(missing_ok=True)
    run(["mkfs.vfat", "-C", esp, str(ESP_SECTORS // 2)])
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"], env=env)
    run(["mcopy", "-i", esp, efi, "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    path.unlink(missing_ok=True)
    disk = gpt.write(path, partitions(), "11111111-2222-4333-8444-555555555500", size=SIZE)
    gpt.copy_in(path, disk.by_label("EFI-SYSTEM"), esp)
    if bios:
        memdisk = work / "memdisk.tar"
        with tarfile.open(memdisk, "w", format=tarfile.USTAR_FORMAT) as tar:
            tar.add(cfg, arcname="grub.cfg")
        load_cfg = work / "load.cfg"
        load_cfg.write_text("set prefix=(memdisk)\n")
        core = work / "core.img"
        biosboot.core_image(core, memdisk, load_cfg, 0, extra_modules=("sleep",))
        biosboot.install(path, core)
    return path
