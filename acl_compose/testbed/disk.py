"""Filesystems and the GPT disk image of the testbed, built without mounting anything.

Partition numbers, labels, type GUIDs and USR PARTUUIDs are Flatcar's (disk_layout.json);
sizes are those of older Flatcar releases (128 MiB ESP and OEM, 1 GiB USR), ROOT is 1 GiB.
USR-A's verity geometry is Flatcar's exactly: 260094 data blocks, hash offset 1065345024.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from acl_compose.image import gpt
from acl_compose.run import run

MiB = 1 << 20
ALIGN = 2 * MiB
USR_FS_BLOCKS = 260094  # Flatcar's fs_blocks for USR: the filesystem, then the verity tree
USR_HASH_OFFSET = USR_FS_BLOCKS * 4096  # 1065345024
KERNEL_HASH_OFFSET = 64  # amd64: root hash as 64 ASCII hex at byte 64 of vmlinuz-a

# Fixed identifiers keep the image deterministic where it is cheap.
NS = uuid.UUID("6d1c3a52-0b5e-4c55-9a37-8a0e4a2f7c11")


def fixed_uuid(name: str) -> str:
    return str(uuid.uuid5(NS, name)).upper()


@dataclass(frozen=True)
class Part:
    number: int
    label: str
    type_guid: str
    size: int
    guid: str
    attributes: int = 0


# gptprio (Flatcar's GRUB): priority bits 48-51, tries 52-55, successful bit 56.
USR_A_ATTRS = (1 << 48) | (1 << 56)

LAYOUT: tuple[Part, ...] = (
    Part(1, "EFI-SYSTEM", gpt.TYPES["efi"], 128 * MiB, fixed_uuid("EFI-SYSTEM")),
    Part(2, "BIOS-BOOT", gpt.TYPES["bios"], 2 * MiB, fixed_uuid("BIOS-BOOT")),
    Part(
        3,
        "USR-A",
        gpt.TYPES["flatcar-usr"],
        1024 * MiB,
        "7130C94A-213A-4E5A-8E26-6CCE9662F132",
        USR_A_ATTRS,
    ),
    Part(4, "USR-B", gpt.TYPES["flatcar-usr"], 1024 * MiB, "E03DD35C-7C2D-4A47-B3FE-27F15780A57C"),
    Part(6, "OEM", gpt.TYPES["linux"], 128 * MiB, fixed_uuid("OEM")),
    Part(7, "OEM-CONFIG", gpt.TYPES["flatcar-reserved"], 64 * MiB, fixed_uuid("OEM-CONFIG")),
    Part(9, "ROOT", gpt.TYPES["flatcar-root"], 1024 * MiB, fixed_uuid("ROOT")),
)
DISK_GUID = fixed_uuid("disk")


def part(label: str) -> Part:
    return next(p for p in LAYOUT if p.label == label)


def _sized(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def make_vfat(path: Path, size: int, label: str, files: dict[str, Path | bytes]) -> None:
    """FAT32 ESP filled with mtools (no mount). `files` maps ESP paths to sources."""
    _sized(path, size)
    run(["mkfs.vfat", "-F", "32", "-n", label, "-i", "0F1A7CA4", path])
    env = {"MTOOLS_SKIP_CHECK": "1"}
    made: set[str] = set()
    for dest in sorted(files):
        parts = dest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                run(["mmd", "-i", path, f"::/{d}"], env=env)
                made.add(d)
        src = files[dest]
        if isinstance(src, bytes):
            tmp = path.with_name(f".{path.name}.blob")
            tmp.write_bytes(src)
            src = tmp
        run(["mcopy", "-i", path, "-o", src, f"::/{dest}"], env=env)
    path.with_name(f".{path.name}.blob").unlink(missing_ok=True)


def make_btrfs(path: Path, size: int, rootdir: Path | None, label: str, fs_uuid: str) -> None:
    _sized(path, size)
    argv = ["mkfs.btrfs", "-q", "-L", label, "-U", fs_uuid.lower(), "-m", "single", "-d", "single"]
    if rootdir is not None:
        argv += ["--rootdir", rootdir]
    run([*argv, path])


def make_ext4(path: Path, size: int, rootdir: Path, label: str, fs_uuid: str) -> None:
    _sized(path, size)
    run(
        [
            "mke2fs",
            "-q",
            "-t",
            "ext4",
            "-L",
            label,
            "-U",
            fs_uuid.lower(),
            "-E",
            f"hash_seed={fixed_uuid('ext4-hash-seed').lower()}",
            "-d",
            rootdir,
            path,
        ],
        env={"E2FSPROGS_FAKE_TIME": os.environ.get("SOURCE_DATE_EPOCH", "0")},
    )


def write_kernel_hash(kernel: Path, root_hash: str) -> None:
    """Flatcar keeps the /usr root hash at byte 64 of the kernel (where GRUB reads it)."""
    data = root_hash.encode("ascii")
    if len(data) != 64:
        raise ValueError(f"root hash must be 64 hex characters, got {root_hash!r}")
    with open(kernel, "r+b") as f:
        f.seek(KERNEL_HASH_OFFSET)
        f.write(data)


def read_kernel_hash(kernel: Path) -> str:
    with open(kernel, "rb") as f:
        f.seek(KERNEL_HASH_OFFSET)
        return f.read(64).decode("ascii")


def partitions() -> list[gpt.Partition]:
    out = []
    lba = ALIGN // gpt.SECTOR
    for p in LAYOUT:
        sectors = p.size // gpt.SECTOR
        out.append(
            gpt.Partition(
                p.number, p.type_guid, p.guid, p.label, lba, lba + sectors - 1, p.attributes
            )
        )
        lba += sectors
    return out


def disk_size() -> int:
    return ALIGN + sum(p.size for p in LAYOUT) + ALIGN


def assemble(image: Path, contents: dict[str, Path]) -> gpt.Disk:
    """Write the GPT and copy each partition file (sparse) into place."""
    image.unlink(missing_ok=True)
    disk = gpt.write(image, partitions(), DISK_GUID, size=disk_size())
    for label, src in contents.items():
        gpt.copy_in(image, disk.by_label(label), src)
    return disk
