"""Which firmwares can boot a disk image, read from the image without booting it.

UEFI: a new VM (OVMF with fresh variables, as `boot` runs it; a new Azure Gen2 VM) boots the
removable-media path `\\EFI\\BOOT\\BOOTX64.EFI` of the EFI system partition, so that file must
be there (read with mtools) and be a PE image for x86-64.
BIOS (SeaBIOS; Azure Generation 1): the firmware runs the boot code of the protective MBR,
which must be there and end in 0x55AA. Flatcar installs GRUB's `boot.img` there; it loads
the first sector of GRUB's core image from the LBA it holds at 0x5c (`diskboot.img`), whose
block list (the sector's last 12 bytes) loads the rest: the check follows both, so a zeroed
or overwritten BIOS-BOOT partition is caught as well as a zeroed MBR.
Images other than raw are read through qemu-img, region by region (a sparse view of the
disk), so a qcow2 or dynamic VHD is checked in well under a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acl_compose.errors import AclComposeError, InputError
from acl_compose.image import fs, gpt
from acl_compose.run import run
from acl_compose.ui import opt
from acl_compose.util import scratch_dir

SECTOR = 512
BOOT_CODE_END = 440  # MBR boot code; the disk signature and partition table follow
GRUB_KERNEL_SECTOR = 0x5C  # boot.img: u64 LBA of the core image's first sector
GRUB_BLOCKLIST = SECTOR - 12  # diskboot.img: {u64 start, u16 sectors, u16 segment}
GRUB_CORE_SEGMENT = 0x820  # where diskboot loads the rest of the core image
EFI_LOADER = "EFI/BOOT/BOOTX64.EFI"
PE_MACHINE_X86_64 = 0x8664
PE_MACHINES = {0x8664: "x86-64", 0x14C: "i386", 0xAA64: "arm64", 0x1C2: "arm"}
HEAD = 1 << 20  # the MBR, the GPT header and its entries
FIRMWARES = ("uefi", "bios")


@dataclass
class Support:
    """Whether one firmware can boot the image, and why (what was found, or what is missing)."""

    firmware: str
    bootable: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"bootable": self.bootable, "reason": self.reason, **self.details}


# --------------------------------------------------------------------------- reading


def qemu_format(path: Path) -> tuple[str, int]:
    """(format, virtual size) as qemu-img sees the file."""
    proc = run(["qemu-img", "info", "--output=json", str(path)], check=False)
    if proc.returncode != 0:
        raise InputError(
            f"{path}: qemu-img cannot read it as a disk image",
            hint="pass a raw (.bin), qcow2 or VHD disk image",
        )
    info = json.loads(proc.stdout)
    return str(info["format"]), int(info["virtual-size"])


class DiskView:
    """A raw view of a disk image: the file itself when it is raw, else a sparse file of the
    virtual size holding only the regions asked for (`need`), converted by qemu-img."""

    def __init__(self, image: Path, work: Path) -> None:
        self.image = image
        self.format, self.size = qemu_format(image)
        # A fixed VHD is raw bytes and a footer; qemu-img's region copy handles it too.
        self.path = image if self.format == "raw" else work / "view.raw"
        self._done: set[tuple[int, int]] = set()
        if self.path != image:
            with open(self.path, "wb") as f:
                f.truncate(self.size)

    def need(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) of the disk readable in the view."""
        offset, end = max(0, offset), min(self.size, offset + length)
        if self.path == self.image or end <= offset or (offset, end) in self._done:
            return
        n = end - offset
        src = (f"driver=raw,offset={offset},size={n},file.driver={self.format},"
               f"file.file.driver=file,file.file.filename={_opt_value(self.image)}")  # fmt: skip
        dst = (f"driver=raw,offset={offset},size={n},file.driver=file,"
               f"file.filename={_opt_value(self.path)}")  # fmt: skip
        run(["qemu-img", "convert", "-q", "-n", "--image-opts", src, "--target-image-opts", dst])
        self._done.add((offset, end))

    def read(self, offset: int, length: int) -> bytes:
        self.need(offset, length)
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)


def _opt_value(path: Path) -> str:
    # QEMU's option syntax: a comma inside a value is written twice.
    return str(path.resolve()).replace(",", ",,")


# --------------------------------------------------------------------------- checks


def check_uefi(view: DiskView, disk: gpt.Disk | None) -> Support:
    if disk is None:
        return Support("uefi", False, "no GPT, so no EFI system partition")
    esps = [p for p in disk.partitions if p.type_guid == gpt.TYPES["efi"]]
    if not esps:
        return Support("uefi", False, "the GPT has no EFI system partition")
    esp = esps[0]
    where = f"partition {esp.number} ({esp.name or 'ESP'})"
    view.need(esp.offset, esp.size)
    try:
        data = fs.fat_read(view.path, esp.offset, EFI_LOADER)
    except AclComposeError:
        return Support("uefi", False, f"no {EFI_LOADER} in the FAT filesystem of {where}")
    machine = _pe_machine(data)
    details = {"partition": esp.number, "loader": EFI_LOADER, "size": len(data)}
    if machine is None:
        return Support("uefi", False, f"{EFI_LOADER} on {where} is not a PE image", details)
    arch = PE_MACHINES.get(machine, f"machine {machine:#06x}")
    details["architecture"] = arch
    if machine != PE_MACHINE_X86_64:
        return Support("uefi", False, f"{EFI_LOADER} on {where} is for {arch}, not x86-64", details)
    return Support("uefi", True, f"{EFI_LOADER} on {where} (PE x86-64, {len(data)} bytes)", details)


def _pe_machine(data: bytes) -> int | None:
    if len(data) < 0x40 or data[:2] != b"MZ":
        return None
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    if pe + 6 > len(data) or data[pe : pe + 4] != b"PE\0\0":
        return None
    return int(struct.unpack_from("<H", data, pe + 4)[0])


def check_bios(view: DiskView, disk: gpt.Disk | None) -> Support:
    mbr = view.read(0, SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        return Support("bios", False, "sector 0 lacks the MBR boot signature 0x55AA")
    code = mbr[:BOOT_CODE_END]
    if not any(code):
        return Support(
            "bios", False, f"the protective MBR holds no boot code (bytes 0-{BOOT_CODE_END - 1} "
            "are zero)"
        )  # fmt: skip
    if b"GRUB" not in code:
        # Another boot loader (syslinux' gptmbr, ...): present, but not followed further.
        return Support("bios", True, "boot code in the MBR (not GRUB's; its loader not checked)",
                       {"boot_code": "other"})  # fmt: skip
    sectors = view.size // SECTOR
    (first,) = struct.unpack_from("<Q", mbr, GRUB_KERNEL_SECTOR)
    details: dict[str, Any] = {"boot_code": "grub", "core_lba": first}
    if not 0 < first < sectors:
        return Support(
            "bios", False, f"GRUB's MBR boot code points at LBA {first}, outside the disk",
            details,
        )  # fmt: skip
    head = view.read(first * SECTOR, SECTOR)
    start, count, segment = struct.unpack_from("<QHH", head, GRUB_BLOCKLIST)
    where = _partition_at(disk, first)
    if not any(head) or segment != GRUB_CORE_SEGMENT or not count:
        return Support(
            "bios", False, f"no GRUB core image at LBA {first}{where}, where GRUB's MBR boot "
            "code points (the sector is " + ("zero)" if not any(head) else "not GRUB's)"),
            details,
        )  # fmt: skip
    if not 0 < start or start + count > sectors:
        return Support(
            "bios", False, f"GRUB's core image at LBA {first}{where} lists sectors "
            f"{start}-{start + count - 1}, outside the disk", details,
        )  # fmt: skip
    body = view.read(start * SECTOR, SECTOR)
    if not any(body):
        return Support(
            "bios", False, f"GRUB's core image at LBA {first}{where} continues at LBA {start} "
            "with zeros (the core image was overwritten)", details,
        )  # fmt: skip
    details.update(core_sectors=count + 1)
    if disk is not None:
        details["partition"] = next(
            (p.number for p in disk.partitions if p.first_lba <= first <= p.last_lba), None
        )
    return Support(
        "bios", True, f"GRUB boot code in the MBR; GRUB core image at LBA {first}{where}, "
        f"{count + 1} sectors", details,
    )  # fmt: skip


def _partition_at(disk: gpt.Disk | None, lba: int) -> str:
    for p in disk.partitions if disk else []:
        if p.first_lba <= lba <= p.last_lba:
            return f" (partition {p.number} {p.name})".replace(" )", ")")
    return ""


# --------------------------------------------------------------------------- API


@contextlib.contextmanager
def _view(image: str | os.PathLike[str]) -> Iterator[tuple[DiskView, gpt.Disk | None]]:
    path = Path(image)
    if not path.is_file():
        raise InputError(f"{path}: image not found", hint="pass a disk image file")
    with scratch_dir(prefix="acl-firmware-") as tmp:
        view = DiskView(path, Path(tmp))
        view.need(0, HEAD)
        try:
            disk: gpt.Disk | None = gpt.read(view.path)
        except InputError:
            disk = None
        yield view, disk


def boot_support(image: str | os.PathLike[str]) -> dict[str, Support]:
    """{"uefi": Support, "bios": Support} for a disk image (raw, qcow2, VHD)."""
    with _view(image) as (view, disk):
        return {"uefi": check_uefi(view, disk), "bios": check_bios(view, disk)}


def require(image: str | os.PathLike[str], firmware: str) -> Support:
    """Refuse, with the reason, an image `firmware` cannot boot (uefi, bios; others pass)."""
    if firmware not in FIRMWARES:
        return Support(firmware, True, "not checked")
    with _view(image) as (view, disk):
        check = check_uefi if firmware == "uefi" else check_bios
        result = check(view, disk)
        if result.bootable:
            return result
        other = "bios" if firmware == "uefi" else "uefi"
        alt = (check_bios if other == "bios" else check_uefi)(view, disk)
    if alt.bootable:
        hint = (f"it boots with {_flag(other)} ({alt.reason}); `acl-compose inspect` lists "
                "what the image holds")  # fmt: skip
    else:
        hint = (f"it cannot boot with {_flag(other)} either ({alt.reason}): is it a bootable "
                "disk image? `acl-compose inspect` lists what it holds")  # fmt: skip
    raise InputError(f"{image}: cannot boot with {_flag(firmware)}: {result.reason}", hint=hint)


def _flag(firmware: str) -> str:
    if firmware == "uefi":
        return opt("--firmware uefi", "UEFI firmware")
    return opt("--firmware bios", "BIOS firmware")
