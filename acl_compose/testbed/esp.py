"""The testbed's EFI system partition, laid out as Flatcar's grub_install.sh lays it out.

GRUB's core image (`EFI/boot/bootx64.efi`) is made by grub-mkimage with a small early config
that finds the ESP by its filesystem UUID and a memdisk holding `grub.cfg` (Flatcar's, see
files/grub/grub.cfg); the same tar is kept on the ESP as `flatcar/grub/grub.cfg.tar`, where a
BIOS core image can embed it too. The ESP has no readable grub.cfg. The kernel carries the
/usr root hash at byte 64; `flatcar/first_boot` makes GRUB pass `flatcar.first_boot=detected`.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from acl_compose.run import run
from acl_compose.testbed import disk

FILES = Path(__file__).parent / "files"
GRUB_DIR = Path("/usr/lib/grub/x86_64-efi")
# The FAT volume ID the build gives the ESP; GRUB's early config searches for it, as Flatcar's
# load.cfg searches for the ESP's filesystem UUID (grub-probe -t fs_uuid).
ESP_VOLUME_ID = "0F1A7CA4"
ESP_FS_UUID = f"{ESP_VOLUME_ID[:4]}-{ESP_VOLUME_ID[4:]}"
# Flatcar's CORE_MODULES for x86_64-efi, minus its own gptprio and search_part_label (stock
# GRUB has neither), plus search_label and all_video (which Flatcar's grub.cfg loads).
MODULES = (
    "normal search test fat part_gpt search_fs_uuid search_label xzio terminal configfile "
    "memdisk tar echo read btrfs serial linux efi_gop all_video"
).split()
FIRST_BOOT = b"If this file exists, Ignition will run and then delete the file.\n"


def grub_cfg(root_hash: str) -> bytes:
    """Flatcar's grub.cfg with the testbed's one departure filled in: the /usr root hash."""
    text = (FILES / "grub/grub.cfg").read_text()
    text = text.replace("@USRHASH@", root_hash)
    text = text.replace("@USR_PARTUUID@", disk.part("USR-A").guid.lower())
    return text.encode()


def memdisk_tar(cfg: bytes, mtime: int) -> bytes:
    """grub.cfg.tar: the memdisk (`tar cf grub.cfg.tar grub.cfg`), reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("grub.cfg")
        info.size, info.mtime, info.mode = len(cfg), mtime, 0o644
        tar.addfile(info, io.BytesIO(cfg))
    return buf.getvalue()


def grub_image(out: Path, memdisk: Path, work: Path, mtime: int) -> None:
    """grub-mkimage as grub_install.sh runs it: early config + memdisk + core modules."""
    load_cfg = work / "load.cfg"
    load_cfg.write_text(f"search.fs_uuid {ESP_FS_UUID} root hd0,gpt1\nset prefix=(memdisk)\nset\n")
    run(
        ["grub-mkimage", "--compression=xz", "--format", "x86_64-efi", "--directory", GRUB_DIR,
         "--config", load_cfg, "--memdisk", memdisk, "--prefix", "(memdisk)",
         "--output", out, *MODULES],
        env={"SOURCE_DATE_EPOCH": str(mtime)},
    )  # fmt: skip


def esp_files(kernel: Path, initrd: Path, root_hash: str, work: Path, mtime: int) -> dict:
    """ESP path -> source (file or bytes) for disk.make_vfat."""
    tar = work / "grub.cfg.tar"
    tar.write_bytes(memdisk_tar(grub_cfg(root_hash), mtime))
    efi = work / "bootx64.efi"
    grub_image(efi, tar, work, mtime)
    return {
        "EFI/boot/bootx64.efi": efi,
        "flatcar/grub/grub.cfg.tar": tar,
        "flatcar/vmlinuz-a": kernel,
        "flatcar/initrd-a": initrd,
        "flatcar/first_boot": FIRST_BOOT,
    }
