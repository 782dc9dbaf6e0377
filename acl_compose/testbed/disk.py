"""Filesystems and the GPT disk image of the testbed, built without mounting anything.

Partition numbers, labels, type GUIDs, USR PARTUUIDs, sizes and placement are Flatcar's
(build_library/disk_layout.json and disk_util): partitions aligned to 2 MiB from the first
usable one, the disk rounded up to 258048 sectors, disk GUID 00000000-...-000000000001
(randomized by the guest on first boot). Two flavours: `current` (since alpha 4487: 1 GiB
ESP and OEM, 2 GiB USR) and `old` (before 3815: 128 MiB ESP and OEM, 1 GiB USR, ext2 /usr,
the ESP marked legacy-bootable). USR-A's verity geometry is the same in both: 260094 data
blocks, hash offset 1065345024.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from acl_compose.image import gpt
from acl_compose.run import run

MiB = 1 << 20
SECTOR = 512
PART_ALIGN = 4096  # sectors (2 MiB)
DISK_ALIGN = 258048  # sectors: 2 MiB and the 16H/63S CHS cylinder, as disk_util aligns it
GPT_RESERVED = 34  # sectors
USR_FS_BLOCKS = 260094  # Flatcar's fs_blocks for USR: the filesystem, then the verity tree
USR_HASH_OFFSET = USR_FS_BLOCKS * 4096  # 1065345024
KERNEL_HASH_OFFSET = 64  # amd64: root hash as 64 ASCII hex at byte 64 of vmlinuz-a
DISK_GUID = "00000000-0000-0000-0000-000000000001"  # Flatcar's; disk-uuid.service replaces it

# Fixed identifiers keep the image deterministic where it is cheap.
NS = uuid.UUID("6d1c3a52-0b5e-4c55-9a37-8a0e4a2f7c11")


def fixed_uuid(name: str) -> str:
    return str(uuid.uuid5(NS, name)).upper()


@dataclass(frozen=True)
class Part:
    number: int
    label: str
    type_guid: str
    sectors: int
    guid: str
    attributes: int = 0

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


# gptprio (Flatcar's GRUB): priority bits 48-51, tries 52-55, successful bit 56. disk_util
# gives the "prioritize" partition (USR-A) priority 1 and successful (`cgpt add -S1 -P1`).
USR_A_ATTRS = (1 << 48) | (1 << 56)
LEGACY_BOOT = 1 << 2  # cgpt -B1: the "hybrid" feature of the old ESP


def _layout(esp: int, usr: int, oem: int, root: int, esp_attrs: int = 0) -> tuple[Part, ...]:
    """Sizes in 512-byte sectors, as disk_layout.json's "blocks"."""
    usr_type = gpt.TYPES["flatcar-usr"]
    return (
        Part(1, "EFI-SYSTEM", gpt.TYPES["efi"], esp, fixed_uuid("EFI-SYSTEM"), esp_attrs),
        Part(2, "BIOS-BOOT", gpt.TYPES["bios"], 4096, fixed_uuid("BIOS-BOOT")),
        Part(3, "USR-A", usr_type, usr, "7130C94A-213A-4E5A-8E26-6CCE9662F132", USR_A_ATTRS),
        Part(4, "USR-B", usr_type, usr, "E03DD35C-7C2D-4A47-B3FE-27F15780A57C"),
        Part(6, "OEM", gpt.TYPES["linux"], oem, fixed_uuid("OEM")),
        Part(7, "OEM-CONFIG", gpt.TYPES["flatcar-reserved"], 131072, fixed_uuid("OEM-CONFIG")),
        Part(9, "ROOT", gpt.TYPES["flatcar-root"], root, fixed_uuid("ROOT")),
    )


@dataclass(frozen=True)
class Flavor:
    name: str
    layout: tuple[Part, ...]
    usr_fs: str  # "btrfs" or "ext2"
    default_version: str
    description: str
    # Platform OEM sysexts published beside the image (oem-azure.raw), as releases since 3760 do.
    oem_artifacts: tuple[str, ...] = ()

    def part(self, label: str) -> Part:
        return next(p for p in self.layout if p.label == label)


FLAVORS = {
    "current": Flavor(
        "current",
        _layout(esp=2097152, usr=4194304, oem=2097152, root=3653632),
        "btrfs",
        "9999.2.0",
        "today's Flatcar (alpha 4487 on): 1 GiB ESP and OEM, 2 GiB USR, btrfs /usr",
        ("oem-azure.raw",),
    ),
    "old": Flavor(
        "old",
        _layout(esp=262144, usr=2097152, oem=262144, root=4427776, esp_attrs=LEGACY_BOOT),
        "ext2",
        "3760.2.0",
        "Flatcar before 3815: 128 MiB ESP and OEM, 1 GiB USR, ext2 /usr",
    ),
}
CURRENT = FLAVORS["current"]
LAYOUT = CURRENT.layout


def part(label: str, flavor: Flavor = CURRENT) -> Part:
    return flavor.part(label)


def _sized(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def make_vfat(
    path: Path, size: int, label: str, volume_id: str, files: dict[str, Path | bytes]
) -> None:
    """FAT32 ESP (disk_util FormatFat: FAT32 whatever the size) filled with mtools (no mount).
    `files` maps ESP paths to sources (a file, bytes, or a folder copied whole)."""
    _sized(path, size)
    run(["mkfs.vfat", "-F", "32", "-n", label, "-i", volume_id, path])
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
        if isinstance(src, Path) and src.is_dir():  # a whole folder, in one mcopy
            run(["mcopy", "-s", "-i", path, src, f"::/{dest}"], env=env)
            continue
        if isinstance(src, bytes):
            tmp = path.with_name(f".{path.name}.blob")
            tmp.write_bytes(src)
            src = tmp
        run(["mcopy", "-i", path, "-o", src, f"::/{dest}"], env=env)
    path.with_name(f".{path.name}.blob").unlink(missing_ok=True)


def make_btrfs(path: Path, size: int, rootdir: Path | None, label: str, fs_uuid: str) -> None:
    """Flatcar's FormatBtrfs geometry: --mixed, single profiles (the OEM partition also gets
    the compression property: image.oem.make_oem_filesystem)."""
    _sized(path, size)
    argv = ["mkfs.btrfs", "-q", "-L", label, "-U", fs_uuid.lower(), "--mixed"]
    argv += ["-m", "single", "-d", "single"]
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


def make_ext2_usr(path: Path, blocks: int, rootdir: Path) -> None:
    """/usr as Flatcar made it before 3815 (disk_util FormatExt for the USR partition):
    ext2, 4 KiB blocks, one inode per block, 256-byte inodes; no UUID, fixed time, no
    reserved blocks, no periodic fsck."""
    _sized(path, blocks * 4096)
    env = {"E2FSPROGS_FAKE_TIME": os.environ.get("SOURCE_DATE_EPOCH", "0")}
    run(["mke2fs", "-q", "-F", "-t", "ext2", "-b", "4096", "-i", "4096", "-I", "256",
         "-d", rootdir, path, str(blocks)], env=env)  # fmt: skip
    run(["tune2fs", "-e", "remount-ro", "-U", "clear", "-T", "20091119110000",
         "-c", "0", "-i", "0", "-m", "0", "-r", "0", path], env=env)  # fmt: skip


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


def partitions(flavor: Flavor = CURRENT) -> list[gpt.Partition]:
    """disk_util's placement: each partition aligned to 2 MiB after the previous one."""
    out = []
    lba = GPT_RESERVED
    for p in flavor.layout:
        lba = gpt.align_up(lba, PART_ALIGN)
        out.append(
            gpt.Partition(
                p.number, p.type_guid, p.guid, p.label, lba, lba + p.sectors - 1, p.attributes
            )
        )
        lba += p.sectors
    return out


def disk_size(flavor: Flavor = CURRENT) -> int:
    last = partitions(flavor)[-1].last_lba + 1
    return gpt.align_up(last + GPT_RESERVED, DISK_ALIGN) * SECTOR


def assemble(image: Path, contents: dict[str, Path], flavor: Flavor = CURRENT) -> gpt.Disk:
    """Write the GPT and copy each partition file (sparse) into place."""
    image.unlink(missing_ok=True)
    disk = gpt.write(image, partitions(flavor), DISK_GUID, size=disk_size(flavor))
    for label, src in contents.items():
        gpt.copy_in(image, disk.by_label(label), src)
    return disk
