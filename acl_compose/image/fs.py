"""Offline filesystem work on disk images: no root, no loop devices, no mounts.

- ext4 (ROOT): edited in place inside the disk image with `debugfs -w`, addressing the
  partition as `IMAGE?offset=N` (e2fsprogs' unix I/O manager option), checked with `e2fsck -fn`.
- btrfs (USR, OEM): read with `btrfs restore` from an extracted partition file; the OEM
  filesystem is rebuilt with `mkfs.btrfs --rootdir`, keeping its label and UUID.
- FAT (ESP): read with mtools, addressing the partition as `IMAGE@@OFFSET`.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from acl_compose.errors import InputError, ToolError
from acl_compose.image import gpt
from acl_compose.run import run
from acl_compose.util import scratch_dir

BTRFS_SUPER_OFFSET = 0x10000
BTRFS_MAGIC = b"_BHRfS_M"


# --------------------------------------------------------------------------- ext4


def ext4_spec(image: str | os.PathLike[str], offset: int = 0) -> str:
    """The name e2fsprogs opens: the file, or a partition inside it at a byte offset."""
    return f"{image}?offset={offset}" if offset else str(image)


def _debugfs(
    spec: str, commands: Iterable[str], write: bool = False, env: dict | None = None
) -> str:
    """Run debugfs commands; debugfs exits 0 even when a command fails, so read stderr."""
    cmds = list(commands)
    for c in cmds:
        if "\n" in c:
            raise InputError(f"debugfs command contains a newline: {c!r}")
    with tempfile.NamedTemporaryFile("w", prefix="acl-debugfs-", suffix=".cmd") as f:
        f.write("\n".join(cmds) + "\n")
        f.flush()
        argv = ["debugfs", *(["-w"] if write else []), "-f", f.name, spec]
        proc = run(argv, env=env)
    errors = [
        line
        for line in proc.stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("debugfs ")
    ]
    if errors:
        raise ToolError(
            f"debugfs on {spec}: {errors[0].strip()}",
            hint="the ext4 filesystem may be damaged or full",
        )
    return proc.stdout.decode(errors="replace")


def _q(path: str) -> str:
    """Quote a path for debugfs (it accepts double-quoted arguments)."""
    if '"' in path:
        raise InputError(f"path {path!r} contains a double quote")
    return f'"{path}"'


@dataclass
class Ext4Entry:
    name: str
    mode: int
    uid: int
    gid: int
    size: int

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000

    @property
    def is_symlink(self) -> bool:
        return (self.mode & 0o170000) == 0o120000


def ext4_list(spec: str, directory: str) -> list[Ext4Entry] | None:
    """Entries of a directory (without . and ..); None when it does not exist."""
    proc = run(["debugfs", "-R", f"ls -p {_q(directory)}", spec])
    err = proc.stderr.decode(errors="replace")
    if "File not found" in err or "not a directory" in err.lower():
        return None
    out = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        # /ino/mode/uid/gid/name/size/
        parts = line.split("/")
        if len(parts) < 7:
            continue
        name = "/".join(parts[5:-2])
        if name in (".", ".."):
            continue
        size = int(parts[-2]) if parts[-2].isdigit() else 0
        out.append(Ext4Entry(name, int(parts[2], 8), int(parts[3]), int(parts[4]), size))
    return out


def ext4_exists(spec: str, path: str) -> bool:
    proc = run(["debugfs", "-R", f"stat {_q(path)}", spec])
    return b"File not found" not in proc.stderr and bool(proc.stdout.strip())


def ext4_read(spec: str, path: str) -> bytes:
    """A file's bytes (small files: config, certificates)."""
    proc = run(["debugfs", "-R", f"cat {_q(path)}", spec])
    if b"File not found" in proc.stderr:
        raise InputError(f"{path}: not found in the ext4 filesystem {spec}")
    return proc.stdout


def ext4_read_file(spec: str, path: str, strip_prefix: str = "") -> bytes | None:
    """A file's bytes, following symlinks (a few hops); None if absent. `strip_prefix` maps
    absolute link targets into the filesystem (a USR image holds /usr at its root)."""
    rel = "/" + path.strip("/")
    for _ in range(8):
        if not ext4_exists(spec, rel):
            return None
        target = ext4_readlink(spec, rel)
        if target is None:
            return ext4_read(spec, rel)
        if not target.startswith("/"):
            target = str(PurePosixPath(rel).parent / target)
        target = os.path.normpath(target)
        if strip_prefix and (target + "/").startswith(strip_prefix.rstrip("/") + "/"):
            target = target[len(strip_prefix.rstrip("/")) :] or "/"
        rel = target
    return None


def ext4_dump(spec: str, path: str, dest: str | os.PathLike[str]) -> None:
    """Copy a (large) file out of the filesystem into `dest`."""
    proc = run(["debugfs", "-R", f"dump {_q(path)} {_q(str(dest))}", spec])
    if b"File not found" in proc.stderr or not Path(dest).exists():
        raise InputError(f"{path}: not found in the ext4 filesystem {spec}")


def ext4_readlink(spec: str, path: str) -> str | None:
    """A symlink's target, or None if `path` is no symlink."""
    out = run(["debugfs", "-R", f"stat {_q(path)}", spec]).stdout.decode(errors="replace")
    m = re.search(r'Fast link dest: "(.*)"', out)
    if m:
        return m.group(1)
    # Targets of 60 bytes or more live in a data block ("slow" symlinks): read that block.
    size = re.search(r"Type: symlink\s.*?Size: (\d+)", out, re.S)
    if not size:
        return None
    return ext4_read(spec, path)[: int(size.group(1))].decode(errors="replace")


class Ext4Edit:
    """A batch of edits applied in one `debugfs -w` run; `apply()` checks and commits.

    Paths are absolute inside the filesystem. Everything added is owned by root.
    """

    def __init__(self, spec: str, source_date_epoch: int | None = None) -> None:
        self.spec = spec
        self.cmds: list[str] = []
        self._dirs: set[str] = set()
        self.sde = source_date_epoch

    def mkdir_p(self, path: str, mode: int = 0o755) -> None:
        parts = PurePosixPath(path).parts[1:]
        cur = ""
        for part in parts:
            cur = f"{cur}/{part}"
            if cur in self._dirs:
                continue
            self._dirs.add(cur)
            entries = ext4_list(self.spec, cur)
            if entries is None:
                self.cmds += [f"mkdir {_q(cur)}", f"sif {_q(cur)} mode 0{0o040000 | mode:o}"]
                self.cmds += [f"sif {_q(cur)} uid 0", f"sif {_q(cur)} gid 0"]

    def _remove_existing(self, path: str) -> None:
        if ext4_exists(self.spec, path):
            self.cmds.append(f"rm {_q(path)}")

    def write(self, src: str | os.PathLike[str], path: str, mode: int = 0o644) -> None:
        self.mkdir_p(str(PurePosixPath(path).parent))
        self._remove_existing(path)
        self.cmds += [
            f"write {_q(str(src))} {_q(path)}",
            f"sif {_q(path)} mode 0{0o100000 | mode:o}",
        ]
        self.cmds += [f"sif {_q(path)} uid 0", f"sif {_q(path)} gid 0"]

    def symlink(self, path: str, target: str) -> None:
        self.mkdir_p(str(PurePosixPath(path).parent))
        self._remove_existing(path)
        self.cmds.append(f"symlink {_q(path)} {_q(target)}")

    def apply(self) -> None:
        if not self.cmds:
            return
        # Fixed inode times from SOURCE_DATE_EPOCH keep ROOT reproducible.
        env = {"E2FSPROGS_FAKE_TIME": str(self.sde)} if self.sde is not None else None
        _debugfs(self.spec, self.cmds, write=True, env=env)
        self.cmds = []
        ext4_check(self.spec)


def ext4_check(spec: str) -> None:
    """Read-only e2fsck: the edited filesystem must be clean."""
    proc = run(["e2fsck", "-fn", spec], check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.strip()]
        raise ToolError(
            f"e2fsck found errors in {spec}: {lines[-1] if lines else proc.returncode}",
            hint="the ext4 filesystem is damaged",
        )


# --------------------------------------------------------------------------- btrfs


@dataclass
class BtrfsInfo:
    uuid: str
    label: str
    total_bytes: int
    sectorsize: int
    nodesize: int
    mixed: bool = False  # mixed data+metadata block groups (small filesystems)
    csum: str = "crc32c"


CSUM_TYPES = {0: "crc32c", 1: "xxhash", 2: "sha256", 3: "blake2"}


def btrfs_info(path: str | os.PathLike[str], offset: int = 0) -> BtrfsInfo | None:
    """Parse the primary btrfs superblock (at 64 KiB); None when there is none."""
    with open(path, "rb") as f:
        f.seek(offset + BTRFS_SUPER_OFFSET)
        sb = f.read(4096)
    if len(sb) < 0x12B + 256 or sb[0x40:0x48] != BTRFS_MAGIC:
        return None
    (total,) = struct.unpack_from("<Q", sb, 0x70)
    sectorsize, nodesize = struct.unpack_from("<II", sb, 0x90)
    (incompat,) = struct.unpack_from("<Q", sb, 0xBC)
    (csum_type,) = struct.unpack_from("<H", sb, 0xC4)
    label = sb[0x12B : 0x12B + 256].split(b"\0", 1)[0].decode(errors="replace")
    fsid = str(uuid.UUID(bytes=sb[0x20:0x30]))
    csum = CSUM_TYPES.get(csum_type, str(csum_type))
    return BtrfsInfo(fsid, label, total, sectorsize, nodesize, bool(incompat & 0x4), csum)


def btrfs_restore(
    part: str | os.PathLike[str], dest: str | os.PathLike[str], path_regex: str | None = None
) -> None:
    """Copy files (with symlinks, owners, modes, times) out of an unmounted btrfs image."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)  # btrfs restore wants it to exist
    argv = ["btrfs", "restore", "-i", "-m", "-S"]
    if path_regex:
        argv += ["--path-regex", path_regex]
    proc = run([*_userns(), *argv, str(part), str(dest)], check=False)
    if proc.returncode != 0:
        last = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise ToolError(
            f"btrfs restore of {part} failed: {last[-1] if last else proc.returncode}",
            hint="is it a btrfs filesystem?",
        )


def btrfs_read_file(part: str | os.PathLike[str], path: str) -> bytes | None:
    """One file's bytes from a btrfs partition image (following a symlink once); None if absent."""
    rel = path.strip("/")
    pieces = rel.split("/")
    regex = (
        "^/("
        + "".join(f"{re.escape(p)}(|/" for p in pieces[:-1])
        + re.escape(pieces[-1])
        + ")" * len(pieces[:-1])
        + ")$"
    )
    with scratch_dir(prefix="acl-btrfs-") as tmp:
        btrfs_restore(part, tmp, regex)
        target = Path(tmp, rel)
        if target.is_symlink():
            link = os.readlink(target)
            resolved = (
                PurePosixPath("/" + rel).parent / link
                if not link.startswith("/")
                else PurePosixPath(link)
            )
            norm = os.path.normpath(str(resolved))
            if norm.startswith("/usr/"):  # USR images hold /usr at their root
                norm = norm[4:]
            return btrfs_read_file(part, norm) if norm.strip("/") != rel else None
        return target.read_bytes() if target.is_file() else None


def btrfs_rebuild(
    src_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: int,
    like: BtrfsInfo,
    source_date_epoch: int | None = None,
    fixup: Callable[[Path], None] | None = None,
) -> None:
    """Make a btrfs image of `size` bytes holding `src_dir` (and the `user.*` xattrs of what
    is below it), with the label, UUID, checksum and block geometry of `like`.

    Reproducibly: mkfs runs on a canonical copy of the tree and what it makes up (device and
    chunk-tree UUIDs, subvolume UUID, times) is pinned afterwards (image.btrfs_pin), with
    times clamped to `source_date_epoch`. `fixup(out)` runs between the two: image.oem puts
    back there the properties and other xattrs mkfs cannot write (see image/btrfs.py).
    """
    from acl_compose.image import btrfs_pin

    out = Path(out)
    out.unlink(missing_ok=True)
    with open(out, "wb") as f:
        f.truncate(size)
    label, fs_uuid = like.label, like.uuid
    argv = ["mkfs.btrfs", "-q", "-f", "-L", label, "-U", fs_uuid, "-s", str(like.sectorsize)]
    argv += ["--csum", like.csum]
    # Flatcar's FormatBtrfs: --mixed -m single -d single (small filesystems share block groups).
    argv += ["-M", "-m", "single", "-d", "single"] if like.mixed else ["-n", str(like.nodesize)]
    try:
        btrfs_pin.mkfs_canonical(Path(src_dir), argv, out, out.parent)
        failure = ""
    except ToolError as e:
        failure = e.message
    if not failure and out.stat().st_size > size:  # mkfs extends an image file that is too small
        failure = f"the files need more than {size} bytes"
    if failure:
        raise ToolError(
            f"mkfs.btrfs could not rebuild the {label or 'btrfs'} filesystem: {failure}",
            hint="the content may not fit the partition; make the added files smaller",
        )
    info = btrfs_info(out)
    if info is None or info.uuid != fs_uuid or info.label != label or info.mixed != like.mixed:
        raise ToolError(f"mkfs.btrfs did not keep label/UUID/mixed mode on {out}")
    if fixup is not None:
        fixup(out)
    btrfs_pin.pin(out, source_date_epoch)


def _userns() -> list[str]:
    """Without root, run in a user namespace mapped to root so files keep uid/gid 0."""
    if os.geteuid() == 0 or not shutil.which("unshare"):
        return []
    return ["unshare", "--map-root-user"]


# --------------------------------------------------------------------------- FAT


def _mtools_env() -> dict[str, str]:
    return {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


def _mcopy_out(image: str | os.PathLike[str], offset: int, path: str, dest: str) -> bytes:
    proc = run(
        ["mcopy", "-n", "-o", "-i", f"{image}@@{offset}", f"::/{path.lstrip('/')}", dest],
        env=_mtools_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise InputError(
            f"{image}: cannot read {path} from the FAT filesystem at offset {offset}",
            hint="is this an ESP holding that file?",
        )
    return proc.stdout


def fat_read(image: str | os.PathLike[str], offset: int, path: str) -> bytes:
    """A file's bytes from a FAT filesystem at `offset` inside `image`."""
    return _mcopy_out(image, offset, path, "-")


def fat_copy(
    image: str | os.PathLike[str], offset: int, path: str, dest: str | os.PathLike[str]
) -> None:
    """Copy a (large) file out of a FAT filesystem at `offset` inside `image` into `dest`."""
    _mcopy_out(image, offset, path, str(dest))


def fat_list(image: str | os.PathLike[str], offset: int, path: str = "/") -> list[str]:
    proc = run(
        ["mdir", "-b", "-i", f"{image}@@{offset}", f"::/{path.lstrip('/')}"],
        env=_mtools_env(),
        check=False,
    )
    return [ln.strip() for ln in proc.stdout.decode(errors="replace").splitlines() if ln.strip()]


# --------------------------------------------------------------------------- helpers


def partition_spec(image: str | os.PathLike[str], part: gpt.Partition) -> str:
    return ext4_spec(image, part.offset)
