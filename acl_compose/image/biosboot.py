"""GRUB for BIOS in a disk image, as Flatcar's build_library/grub_install.sh installs it for
`i386-pc` (the testbed's images get it so; tests build tiny BIOS disks with it).

Flatcar's script, for that target: builds the core image with grub-mkimage from
CORE_MODULES + `biosdisk serial`, the same early config (load.cfg: find the ESP by its
filesystem UUID, prefix (memdisk)) and the same memdisk (grub.cfg.tar) as the EFI image,
into `flatcar/grub/i386-pc/core.img` on the ESP; copies every other module and list file,
xz-compressed, into that folder (GRUB loads them from `$prefix/i386-pc`, and Flatcar's grub.cfg
sets the prefix to `($root)/flatcar/grub`); runs `grub-bios-setup --device-map=/dev/null`,
which writes boot.img into the MBR (keeping the partition table) and embeds core.img in the
BIOS-BOOT partition; and saves the disk's first 448 bytes as `flatcar/grub/i386-pc/mbr.bin`.

Flatcar runs grub-bios-setup on a loop device with the ESP mounted. Here it runs on the image
file, nothing mounted: grub-bios-setup insists on knowing the disk that holds its
`--directory` (it reads the device from /proc/self/mountinfo), so the directory is a tmpfs
whose source is named after the image, in a private mount namespace that ends with the
command. GRUB's own tool writes the bytes (boot.img patched with the core's LBA, the core's
block list, its Reed-Solomon redundancy), so the result is what Flatcar's build writes.
"""

from __future__ import annotations

import lzma
import os
from pathlib import Path

from acl_compose.errors import ToolError
from acl_compose.run import run
from acl_compose.util import scratch_dir

GRUB_PC = Path("/usr/lib/grub/i386-pc")
BIOS_SETUP = GRUB_PC / "grub-bios-setup"  # Debian's grub-pc-bin keeps it out of PATH
# Flatcar's CORE_MODULES for i386-pc, without its own gptprio and search_part_label (stock
# GRUB has neither) and the pgp/gcry modules (no signed configs here), as the EFI image.
MODULES = (
    "biosdisk serial btrfs configfile echo fat memdisk normal part_gpt read search "
    "search_fs_uuid tar terminal test xzio"
).split()
GRUB_DIR = "flatcar/grub/i386-pc"  # on the ESP, as Flatcar's GRUB_DIR
MBR_SAVE = 448  # bytes grub_install.sh keeps as mbr.bin (boot code, disk signature, ...)


def require_grub_pc() -> None:
    if not BIOS_SETUP.is_file():
        raise ToolError(
            f"{BIOS_SETUP} not found (GRUB for BIOS)",
            hint="install it: apt-get install grub-pc-bin (or run `make deps`)",
        )


def core_image(
    out: Path, memdisk: Path, load_cfg: Path, mtime: int, extra_modules: tuple[str, ...] = ()
) -> None:
    """`grub-mkimage --format i386-pc`, with the EFI image's early config and memdisk."""
    require_grub_pc()
    run(
        ["grub-mkimage", "--compression=xz", "--format", "i386-pc", "--directory", GRUB_PC,
         "--config", load_cfg, "--memdisk", memdisk, "--prefix", "(memdisk)",
         "--output", out, *MODULES, *extra_modules],
        env={"SOURCE_DATE_EPOCH": str(mtime)},
        hint="install Debian's grub-pc-bin (make deb)",
    )  # fmt: skip


def module_files(dest: Path) -> Path:
    """Every module and list file but the core ones, xz-compressed (as `xz --stdout`), in
    `dest/i386-pc/`; returns that folder (copied to the ESP as GRUB_DIR)."""
    folder = dest / "i386-pc"
    folder.mkdir(parents=True, exist_ok=True)
    core = {f"{m}.mod" for m in MODULES}
    for src in sorted(GRUB_PC.iterdir()):
        if src.suffix in (".mod", ".lst") and src.name not in core:
            data = lzma.compress(src.read_bytes(), format=lzma.FORMAT_XZ)
            (folder / src.name).write_bytes(data)
    return folder


def install(image: Path, core: Path) -> bytes:
    """boot.img into the MBR and `core` into BIOS-BOOT, by grub-bios-setup; returns the
    disk's first MBR_SAVE bytes afterwards (Flatcar's mbr.bin)."""
    require_grub_pc()
    image = Path(image).resolve()
    script = (
        'mount -t tmpfs "$1" "$2" && cp "$3" "$2/boot.img" && cp "$4" "$2/core.img" && '
        'exec "$0" --device-map=/dev/null --directory="$2" "$1"'
    )
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    with scratch_dir(prefix="acl-grub-pc-") as mountpoint:
        run(
            ["unshare", *userns, "--mount", "--propagation", "private", "--",
             "sh", "-c", script, BIOS_SETUP, image, mountpoint, GRUB_PC / "boot.img", core],
            hint="unshare needs root or user namespaces",
        )  # fmt: skip
    with open(image, "rb") as f:
        return f.read(MBR_SAVE)
