"""The testbed's EFI system partition and BIOS boot, as Flatcar's grub_install.sh makes them.

GRUB's EFI core image (`EFI/boot/bootx64.efi`) is made by grub-mkimage with a small early
config that finds the ESP by its filesystem UUID and a memdisk holding `grub.cfg` (Flatcar's,
see files/grub/grub.cfg); the same tar is kept on the ESP as `flatcar/grub/grub.cfg.tar`. GRUB
for BIOS (`--target=i386-pc`, image.biosboot) gets the same early config and memdisk: its core
image, boot.img, load.cfg and the other modules (xz) in `flatcar/grub/i386-pc/`, boot.img in the
MBR and the core image in BIOS-BOOT (install_bios, after the disk is assembled), and the MBR's
first 448 bytes saved as `flatcar/grub/i386-pc/mbr.bin`. The ESP has no readable grub.cfg. The
kernel carries the /usr root hash at byte 64; `flatcar/first_boot` makes GRUB pass
`flatcar.first_boot=detected`.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from acl_compose.image import biosboot, gpt
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


def load_cfg(work: Path) -> Path:
    """The core images' early config (grub_install.sh's load.cfg, minus check_signatures)."""
    path = work / "load.cfg"
    path.write_text(f"search.fs_uuid {ESP_FS_UUID} root hd0,gpt1\nset prefix=(memdisk)\nset\n")
    return path


def grub_image(out: Path, memdisk: Path, work: Path, mtime: int) -> None:
    """grub-mkimage as grub_install.sh runs it: early config + memdisk + core modules."""
    run(
        ["grub-mkimage", "--compression=xz", "--format", "x86_64-efi", "--directory", GRUB_DIR,
         "--config", load_cfg(work), "--memdisk", memdisk, "--prefix", "(memdisk)",
         "--output", out, *MODULES],
        env={"SOURCE_DATE_EPOCH": str(mtime)},
    )  # fmt: skip


def esp_files(kernel: Path, initrd: Path, root_hash: str, work: Path, mtime: int) -> dict:
    """ESP path -> source (file or bytes) for disk.make_vfat."""
    tar = work / "grub.cfg.tar"
    tar.write_bytes(memdisk_tar(grub_cfg(root_hash), mtime))
    efi = work / "bootx64.efi"
    grub_image(efi, tar, work, mtime)
    pc = biosboot.module_files(work / "grub-pc")  # i386-pc/: every other module, xz
    biosboot.core_image(pc / "core.img", tar, load_cfg(work), mtime)
    (pc / "load.cfg").write_bytes(load_cfg(work).read_bytes())
    (pc / "boot.img").write_bytes((biosboot.GRUB_PC / "boot.img").read_bytes())
    return {
        "EFI/boot/bootx64.efi": efi,
        biosboot.GRUB_DIR: pc,
        "flatcar/grub/grub.cfg.tar": tar,
        "flatcar/vmlinuz-a": kernel,
        "flatcar/initrd-a": initrd,
        "flatcar/first_boot": FIRST_BOOT,
    }


def install_bios(image: Path, work: Path) -> None:
    """GRUB for BIOS into the assembled disk: grub-bios-setup writes boot.img into the MBR and
    the core image (made by esp_files) into BIOS-BOOT; the MBR then goes to the ESP as mbr.bin
    (grub_install.sh keeps it to restore the boot code)."""
    mbr = work / "mbr.bin"
    mbr.write_bytes(biosboot.install(image, work / "grub-pc" / "i386-pc" / "core.img"))
    esp = gpt.read(image).by_label("EFI-SYSTEM")
    run(["mcopy", "-o", "-i", f"{image}@@{esp.offset}", mbr, f"::/{biosboot.GRUB_DIR}/mbr.bin"],
        env={"MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
