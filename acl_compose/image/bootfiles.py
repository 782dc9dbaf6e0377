"""Kernel, initramfs and Flatcar's kernel command line read from an image, for direct boot.

A Flatcar ESP has no readable grub.cfg: it lives in GRUB's memdisk and the /usr arguments are
built at boot by GRUB (build_library/grub.cfg). So the command line is synthesized from the
image the way that grub.cfg builds it: the USR partition gptprio would pick (highest
priority that succeeded or has tries left) and its kernel, the /usr root hash at byte 64 of
that kernel (what Flatcar's GRUB appends as verity.usrhash=), `oem_id`, `linux_console` and
`linux_append` from OEM:/grub.cfg (else the id from OEM:/oem-release), the first-boot flag
while the ESP has flatcar/first_boot, and the serial console.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from acl_compose.errors import InputError
from acl_compose.image import fs, gpt
from acl_compose.image.osrelease import parse_os_release
from acl_compose.util import scratch_dir

USR_A_PARTUUID = "7130c94a-213a-4e5a-8e26-6cce9662f132"  # grub.cfg: vmlinuz-a, else vmlinuz-b
HASH_OFFSETS = {"amd64-usr": 64, "arm64-usr": 512}
DEFAULT_CONSOLE = "console=ttyS0,115200n8 console=tty0"  # grub.cfg's choice under EFI on x86
_GRUB_SET = re.compile(r'^\s*set\s+(\w+)=(?:"([^"]*)"|\'([^\']*)\'|(\S*))\s*$')
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class BootSpec:
    kernel: str  # ESP path, e.g. /flatcar/vmlinuz-a
    initrd: str | None
    args: list[str] = field(default_factory=list)

    @property
    def cmdline(self) -> str:
        return " ".join(self.args)


def grub_variables(text: str, variables: dict[str, str] | None = None) -> dict[str, str]:
    """The unconditional `set name=value` lines of a GRUB config, `$name` references resolved
    against what was set before (as OEM configs do: `set linux_append="$linux_append x"`)."""
    out = dict(variables or {})
    for line in text.splitlines():
        m = _GRUB_SET.match(line)
        if not m:
            continue
        value = next(g for g in m.groups()[1:] if g is not None)
        out[m[1]] = re.sub(r"\$\{?(\w+)\}?", lambda v: out.get(v[1], ""), value)
    return out


def usr_partition(disk: gpt.Disk) -> gpt.Partition:
    """gptprio.next's choice: the highest priority USR partition that booted successfully or
    has tries left (priority bits 48-51, tries 52-55, successful bit 56)."""
    usr_type = gpt.TYPES["flatcar-usr"]
    best: tuple[int, gpt.Partition] | None = None
    for p in disk.partitions:
        if p.type_guid != usr_type:
            continue
        prio, tries, ok = (p.attributes >> 48) & 15, (p.attributes >> 52) & 15, p.attributes >> 56
        if prio and (tries or ok & 1) and (best is None or prio > best[0]):
            best = (prio, p)
    if best is None:
        raise InputError(
            "no USR partition is bootable (no gptprio priority with success or tries left)",
            hint="is this a Flatcar image?",
        )
    return best[1]


def _oem_settings(image: Path, disk: gpt.Disk) -> dict[str, str]:
    try:
        oem = disk.by_label("OEM")
    except InputError:
        return {}
    with scratch_dir(prefix="acl-oem-") as tmp:
        part = Path(tmp) / "oem.img"
        gpt.copy_out(image, oem, part)
        if fs.btrfs_info(part) is None:
            return {}
        settings = grub_variables((fs.btrfs_read_file(part, "grub.cfg") or b"").decode())
        if not settings.get("oem_id"):
            release = fs.btrfs_read_file(part, "oem-release")
            if release:
                settings["oem_id"] = parse_os_release(release.decode()).get("ID", "")
    return settings


def flatcar_boot_spec(image: str | Path, board: str = "amd64-usr") -> BootSpec:
    """What Flatcar's GRUB would boot: kernel, initramfs (testbed only) and command line."""
    image = Path(image)
    disk = gpt.read(image)
    esp = disk.by_label("EFI-SYSTEM")
    usr = usr_partition(disk)
    suffix = "a" if usr.guid.lower() == USR_A_PARTUUID else "b"
    kernel = f"/flatcar/vmlinuz-{suffix}"
    listing = {n.rsplit("/", 1)[-1].lower() for n in fs.fat_list(image, esp.offset, "/flatcar")}
    initrd = f"/flatcar/initrd-{suffix}" if f"initrd-{suffix}" in listing else None
    with scratch_dir(prefix="acl-esp-") as tmp:
        fs.fat_copy(image, esp.offset, kernel, Path(tmp) / "vmlinuz")
        off = HASH_OFFSETS.get(board, 64)
        with open(Path(tmp) / "vmlinuz", "rb") as f:
            f.seek(off)
            usr_hash = f.read(64).decode("ascii", errors="replace")
    oem = _oem_settings(image, disk)
    if _HEX64.match(usr_hash):
        args = ["mount.usr=/dev/mapper/usr", f"verity.usr=PARTUUID={usr.guid.lower()}"]
    else:  # an image without dm-verity: grub.cfg's non-verity variant
        args, usr_hash = [f"mount.usr=PARTUUID={usr.guid.lower()}"], ""
    args += ["rootflags=rw", "mount.usrflags=ro", "consoleblank=0", "root=LABEL=ROOT"]
    args += (oem.get("linux_console") or DEFAULT_CONSOLE).split()
    if "first_boot" in listing:
        args.append("flatcar.first_boot=detected")
    if oem.get("oem_id"):
        args.append(f"flatcar.oem.id={oem['oem_id']}")
    args += oem.get("linux_append", "").split()
    if usr_hash:
        args.append(f"verity.usrhash={usr_hash}")  # what Flatcar's GRUB appends
    return BootSpec(kernel, initrd, args)


def kernel_boot_files(image: Path, dest: Path) -> tuple[Path, Path | None, str]:
    """Copy the kernel (and initramfs) off the ESP into `dest`; returns them and the
    synthesized command line."""
    spec = flatcar_boot_spec(image)
    esp = gpt.read(image).by_label("EFI-SYSTEM")
    kernel = dest / "vmlinuz"
    fs.fat_copy(image, esp.offset, spec.kernel, kernel)
    initrd = None
    if spec.initrd:
        initrd = dest / "initrd"
        fs.fat_copy(image, esp.offset, spec.initrd, initrd)
    return kernel, initrd, spec.cmdline
