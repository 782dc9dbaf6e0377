"""The OEM partition's btrfs filesystem, made and rebuilt offline as Flatcar makes it.

Flatcar formats OEM with `mkfs.btrfs --mixed -m single -d single --label OEM` and then runs
`btrfs property set <mnt> compression zlib` (build_library/disk_util FormatBtrfs), so the top
directory and every inode created below it carry the `btrfs.compression` property (an xattr
plus the COMPRESS inode flag). `make_oem_filesystem` builds such a filesystem from a tree;
`rebuild_oem_filesystem` is the one place compose changes OEM: it keeps label, UUID, mixed
mode, checksum type, every xattr (properties included) and the kept inode flags of what was
there, and gives new files what the kernel would give them (the properties of their parent).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from acl_compose import util
from acl_compose.errors import InputError, ToolError
from acl_compose.image import btrfs, fs

COMPRESSION = b"btrfs.compression"
Content = bytes | Path | None  # bytes or a file to copy; None deletes the path


@dataclass
class Attrs:
    xattrs: dict[bytes, bytes]
    flags: int


def read_attrs(part_file: str | os.PathLike[str]) -> dict[str, Attrs]:
    """Path -> xattrs and kept inode flags of every inode ("" is the top directory)."""
    with btrfs.Filesystem(part_file) as f:
        return {
            n.path: Attrs(dict(n.xattrs), n.flags & btrfs.KEPT_FLAGS) for n in f.inodes().values()
        }


def make_oem_filesystem(
    tree: Path,
    out: Path,
    size: int,
    label: str,
    fs_uuid: str,
    compression: str | None = "zlib",
    source_date_epoch: int | None = None,
) -> None:
    """Flatcar's FormatBtrfs + files copied in: mixed, single profiles, the compression
    property on the top directory and inherited by everything below it."""
    like = fs.BtrfsInfo(fs_uuid.lower(), label, size, 4096, 4096, mixed=True)
    props = {COMPRESSION: compression.encode()} if compression else {}
    top = Attrs(props, btrfs.FLAG_COMPRESS if compression else 0)
    _write(tree, out, size, like, {"": top}, out.parent, source_date_epoch)


def rebuild_oem_filesystem(
    part_file: Path,
    size: int,
    changes: Mapping[str, Content],
    work: Path,
    source_date_epoch: int | None = None,
) -> dict[str, Attrs]:
    """Rebuild the OEM btrfs in `part_file` with `changes` applied (OEM paths, no leading /).

    Keeps label, UUID, mixed mode, checksum type, xattrs and inode flags; new paths inherit
    their parent directory's `btrfs.*` properties. Reproducible: see fs.btrfs_rebuild (new
    files' times are clamped to `source_date_epoch`). Returns the attributes now on disk.
    """
    like = fs.btrfs_info(part_file)
    if like is None:
        raise InputError(
            f"{part_file}: the OEM partition holds no btrfs filesystem",
            hint="is this a Flatcar image?",
        )
    before = read_attrs(part_file)
    tree = work / "oem-tree"
    shutil.rmtree(tree, ignore_errors=True)
    fs.btrfs_restore(part_file, tree)
    for rel, content in sorted(changes.items()):
        target = util.safe_join(tree, rel, "OEM path")
        if content is None:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
        os.chmod(target, 0o644)
    try:
        return _write(tree, part_file, size, like, before, work, source_date_epoch)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def _expected(tree: Path, before: Mapping[str, Attrs]) -> dict[str, Attrs]:
    """What every path should carry: its old attributes, or its parent's properties."""
    want: dict[str, Attrs] = {"": before.get("", Attrs({}, 0))}
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            rel = (Path(dirpath) / name).relative_to(tree).as_posix()
            if rel in before:
                want[rel] = before[rel]
                continue
            parent = want[rel.rpartition("/")[0]]
            props = {k: v for k, v in parent.xattrs.items() if k.startswith(b"btrfs.")}
            if (Path(dirpath) / name).is_symlink():
                props.pop(COMPRESSION, None)  # the kernel ignores it on anything but files/dirs
            flags = btrfs.FLAG_COMPRESS if COMPRESSION in props else 0
            want[rel] = Attrs(props, flags)
    return want


def _write(
    tree: Path,
    out: Path,
    size: int,
    like: fs.BtrfsInfo,
    before: Mapping[str, Attrs],
    work: Path,
    source_date_epoch: int | None,
) -> dict[str, Attrs]:
    """mkfs.btrfs --rootdir, then the xattrs and flags it cannot write (see image/btrfs.py)."""
    want = _expected(tree, before)
    renames: dict[bytes, bytes] = {}  # staged user.* name -> real name
    staged_for: dict[bytes, bytes] = {}
    add: dict[str, dict[bytes, bytes]] = {}
    real_user = {n for a in want.values() for n in a.xattrs if n.startswith(b"user.")}
    for rel, attrs in want.items():
        path = tree / rel if rel else tree
        for name, value in attrs.xattrs.items():
            # mkfs copies nothing onto the top directory, and user.* cannot sit on a symlink.
            if not rel or path.is_symlink():
                add.setdefault(rel, {})[name] = value
                continue
            if name.startswith(b"user."):
                os.setxattr(path, name, value, follow_symlinks=False)
                continue
            stage = staged_for.get(name) or _stage_name(name, set(renames) | real_user)
            if stage is None:
                add.setdefault(rel, {})[name] = value
                continue
            staged_for[name], renames[stage] = stage, name
            os.setxattr(path, stage, value, follow_symlinks=False)
    flags = {rel: a.flags for rel, a in want.items()}

    def restore_attrs(image: Path) -> None:
        if renames or add or any(flags.values()):
            with btrfs.Filesystem(image, write=True) as f:
                f.patch(renames, flags, add)

    tmp = work / f".{out.name}.rebuild"
    try:
        fs.btrfs_rebuild(tree, tmp, size, like, source_date_epoch, fixup=restore_attrs)
        got = read_attrs(tmp)
        wrong = [r for r, a in want.items() if r in got and got[r] != a]
        if wrong or set(got) != set(want):
            raise ToolError(
                f"rebuilt {like.label} filesystem lost attributes of "
                f"{', '.join(sorted(wrong)) or sorted(set(got) ^ set(want))}",
                hint="the rebuilt filesystem was not used; report this with the base image",
            )
        os.replace(tmp, out)
        return got
    finally:
        tmp.unlink(missing_ok=True)


def _stage_name(name: bytes, taken: set[bytes]) -> bytes | None:
    """A `user.*` name as long as `name` (so item sizes match), unused so far; None if the
    name is too short to hold one."""
    room = len(name) - len(b"user.")
    for i in range(1000):
        body = f"acl{i}".encode()
        if len(body) > room:
            return None
        stage = b"user." + body.ljust(room, b"~")
        if stage not in taken:
            return stage
    return None
