"""Run mkfs.btrfs --rootdir on a canonical copy of a tree, so its bytes depend only on content.

Why: mkfs.btrfs 6.2 (Debian 12) numbers each inode `st_ino + 256` of the source file and takes
directory entries in `scandir()` order without sorting (mkfs/rootdir.c), and that order also
decides where file data lands. Both are whatever the build host's filesystem says, so the
same files give a different filesystem on every build. This module, run as
`python -m acl_compose.image.btrfs_stage SPEC` inside a private mount namespace (see
`btrfs_pin.mkfs_canonical`), copies the tree onto a fresh tmpfs, where inode numbers are
handed out in creation order (per-superblock counter, Linux >= 5.9):
1. every object is created, in sorted path order, in a flat staging directory (so inode
   numbers follow the sorted paths), with owner, mode and extended attributes;
2. entries are renamed into place directory by directory, in the order that makes this
   kernel's tmpfs `readdir` list them sorted (a probe tells newest-first from oldest-first);
3. times are set from the source, then mkfs.btrfs runs on it. The namespace ends with mkfs.
Exit status 3 means tmpfs cannot hold the tree's extended attributes (user.* xattrs on tmpfs
need Linux >= 6.6): the caller builds from the original tree instead and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

NO_XATTRS = 3


def _walk(top: str) -> list[tuple[str, os.stat_result]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out.append((os.path.relpath(full, top), os.lstat(full)))
    out.sort(key=lambda t: t[0].split("/"))
    return out


def _newest_first(base: str) -> bool:
    probe = os.path.join(base, ".probe")
    os.mkdir(probe)
    for name in ("a", "b"):
        os.mkdir(os.path.join(probe, name))
    order = os.listdir(probe)
    shutil.rmtree(probe)
    return order == ["b", "a"]


def _copy_xattrs(src: str, dst: str) -> None:
    for name in os.listxattr(src, follow_symlinks=False):
        os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                    follow_symlinks=False)  # fmt: skip


def stage(src: str, mnt: str) -> str:
    """Build the canonical copy of `src` under the (empty, tmpfs) `mnt`; returns its root."""
    newest_first = _newest_first(mnt)
    root = os.path.join(mnt, "root")
    os.mkdir(root)
    staging = os.path.join(mnt, "staging")
    os.mkdir(staging)
    entries = _walk(src)
    staged: dict[str, str] = {}
    linked: dict[tuple[int, int], str] = {}
    for i, (rel, st) in enumerate(entries):
        s, d = os.path.join(src, rel), os.path.join(staging, str(i))
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in linked:
            os.link(linked[(st.st_dev, st.st_ino)], d)  # a hard link stays one inode
        elif stat.S_ISREG(mode):
            shutil.copyfile(s, d)
            linked[(st.st_dev, st.st_ino)] = d
        else:
            os.mknod(d, mode, st.st_rdev)
        os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(d, stat.S_IMODE(mode))
        _copy_xattrs(s, d)
        staged[rel] = d
    children: dict[str, list[str]] = {"": []}
    for rel, st in entries:
        parent = os.path.dirname(rel)
        children.setdefault(parent, []).append(rel)
        if stat.S_ISDIR(st.st_mode):
            children.setdefault(rel, [])
    for directory in sorted(children, key=lambda r: (r.count("/") if r else -1, r)):
        names = sorted(children[directory])
        for rel in reversed(names) if newest_first else names:
            os.rename(staged[rel], os.path.join(root, rel))
    os.rmdir(staging)
    # Times last (renames touch directories), deepest first; ctime and atime are pinned later.
    for rel, st in sorted(entries, key=lambda t: -t[0].count("/")):
        os.utime(os.path.join(root, rel), ns=(st.st_mtime_ns, st.st_mtime_ns),
                 follow_symlinks=False)  # fmt: skip
    top = os.lstat(src)
    os.utime(root, ns=(top.st_mtime_ns, top.st_mtime_ns))
    return root


def main() -> int:
    """SPEC (JSON): {"src": DIR, "mnt": EMPTY_DIR, "mkfs": [argv without -r and target],
    "out": IMAGE}. Mounts tmpfs on mnt (this must run in a private mount namespace)."""
    spec = json.loads(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "acl-btrfs-stage", spec["mnt"]],
                   check=True)  # fmt: skip
    try:
        root = stage(spec["src"], spec["mnt"])
    except OSError as e:
        if e.errno in (95, 61):  # EOPNOTSUPP / ENODATA: tmpfs without user xattrs
            print(f"tmpfs cannot hold the tree's extended attributes: {e}", file=sys.stderr)
            return NO_XATTRS
        raise
    proc = subprocess.run([*spec["mkfs"], "-r", root, spec["out"]])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
