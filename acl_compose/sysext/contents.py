"""What a sysext holds, file by file, and where each file came from (for SBOMs and diffs).

`record_tree` lists an assembled image tree while it still exists (the builder calls it
between policy check and mkfs): per regular file and symlink its path, mode, size, SHA-1 and
SHA-256 (SPDX requires SHA-1 per file) or link target, and its origin, taken from the
bundle's own record of sources (`assemble`'s image path -> `sysext.yaml:LINE` map and the
`FileEntry` on that line). Every field of the entry is kept, so a new source kind (a Debian
package, an archive member) shows up with its own fields without changes here.

`image_contents` lists an existing image (a prebuilt .raw, or one read back from a composed
disk) by extracting its erofs/squashfs filesystem; those files' origin is the image itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError
from acl_compose.run import run
from acl_compose.sysext.bundle import Bundle, FileEntry
from acl_compose.sysext.policy import walk_sorted
from acl_compose.util import scratch_dir

SQUASHFS_MAGIC = b"hsqs"
EROFS_MAGIC = b"\xe2\xe1\xf5\xe0"


def _hashes(path: str) -> tuple[str, str]:
    h1, h256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h1.update(chunk)
            h256.update(chunk)
    return h1.hexdigest(), h256.hexdigest()


def _entry_origin(bundle: Bundle, fe: FileEntry, image_path: str) -> dict[str, Any]:
    """The FileEntry as a plain record: `{"kind": "url", "url": ..., "sha256": ...}`.

    Line numbers are left out: the build cache is keyed by content, not by where in
    sysext.yaml an entry sits, so a cached record could name a stale line.
    """
    fields = dataclasses.asdict(fe)
    origin: dict[str, Any] = {"kind": fe.source, "bundle": bundle.name}
    value = fields.pop("value")
    for k in ("path", "line", "source", "mode"):
        fields.pop(k, None)
    if fe.source == "from":
        # The bundle-relative source file: the entry's path, or a file inside its tree.
        below = image_path[len(fe.path) :].lstrip("/") if image_path != fe.path else ""
        origin["from"] = os.path.normpath(os.path.join(value, below)) if below else value
    elif fe.source == "inline":
        origin["inline"] = True  # the content is in sysext.yaml; its hash is the file's
    else:
        origin[fe.source] = value
    origin.update({k: v for k, v in fields.items() if v is not None and v != [] and v != {}})
    return origin


def origin_resolver(bundle: Bundle, origin: dict[str, str]) -> Any:
    """image path -> origin record, from `assemble`'s path -> `sysext.yaml:LINE` map."""
    by_where = {bundle.where(f.line): f for f in bundle.files}

    def resolve(path: str) -> dict[str, Any]:
        where = origin.get(path)
        if where is None:  # a file inside a directory entry: its nearest listed parent
            parent = path
            while parent not in origin and "/" in parent.strip("/"):
                parent = parent.rsplit("/", 1)[0]
            where = origin.get(parent)
        fe = by_where.get(where or "")
        if fe is not None:
            return _entry_origin(bundle, fe, path)
        if where and where.startswith("units: "):
            return {"kind": "generated", "bundle": bundle.name, "by": where}
        if where and "extension-release" in where:
            return {"kind": "generated", "bundle": bundle.name, "by": "sysext.yaml"}
        return {"kind": "unknown", "bundle": bundle.name}

    return resolve


def record_tree(
    tree: str | os.PathLike[str],
    resolve: Any | None = None,
    known: dict[tuple[int, int, int, int], tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Regular files and symlinks under `tree`, sorted by path (directories are implied).

    `known`: (device, inode, size, mtime) -> (sha1, sha256) of files already read (the tree
    hard-links bundle files, so the build's digest pass has hashed most of them).
    """
    top = os.fspath(tree)
    out: list[dict[str, Any]] = []
    for rel, st in walk_sorted(top):
        if not rel or stat.S_ISDIR(st.st_mode):
            continue
        path = "/" + rel
        full = f"{top}/{rel}"
        item: dict[str, Any] = {"path": path, "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
        if stat.S_ISREG(st.st_mode):
            hit = known.get((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)) if known else None
            sha1, sha256 = hit or _hashes(full)
            item.update(type="file", size=st.st_size, sha1=sha1, sha256=sha256)
        elif stat.S_ISLNK(st.st_mode):
            item.update(type="symlink", target=os.readlink(full))
        else:
            item.update(type="special")
        if resolve is not None:
            item["origin"] = resolve(path)
        out.append(item)
    return out


def image_contents(image: str | os.PathLike[str], origin: dict[str, Any]) -> list[dict[str, Any]]:
    """The files of a sysext image (GPT DDI or bare erofs/squashfs), each with `origin`."""
    from acl_compose.image import gpt
    from acl_compose.sysext import ddi

    image = Path(image)
    with scratch_dir(prefix="acl-sysext-ls-") as tmp:
        work = Path(tmp)
        fs = image
        if ddi.is_ddi(image):
            fs = work / "data.img"
            gpt.copy_out(image, ddi.read(image).data, fs)
        with open(fs, "rb") as f:
            head = f.read(1028)
        dest = work / "tree"
        if head[:4] == SQUASHFS_MAGIC:
            run(["unsquashfs", "-no-xattrs", "-no-progress", "-quiet", "-d", dest, fs],
                hint=f"{image} is not a readable squashfs image")  # fmt: skip
        elif head[1024:1028] == EROFS_MAGIC:
            dest.mkdir()
            run(["fsck.erofs", f"--extract={dest}", "--preserve-perms", "--overwrite", fs],
                hint=f"{image} is not a readable erofs image")  # fmt: skip
        else:
            raise InputError(f"{image}: neither erofs nor squashfs inside", hint="is it a sysext?")
        try:
            return record_tree(dest, lambda _p: dict(origin))
        finally:
            shutil.rmtree(dest, ignore_errors=True)


def shared_paths(listings: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """Paths (files and links, not directories) that more than one extension ships, with the
    extensions' names: systemd-sysext stacks them in one overlay, so only one copy is seen."""
    owners: dict[str, list[str]] = {}
    for name, entries in listings.items():
        for e in entries:
            if e.get("type") != "dir" and not e["path"].startswith("/usr/lib/extension-release.d/"):
                owners.setdefault(e["path"], []).append(name)
    return {p: names for p, names in sorted(owners.items()) if len(names) > 1}


def overlap_warnings(listings: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per path two extensions ship (see shared_paths)."""
    return [
        f"{path} is in {' and '.join(names)}: the merged /usr shows one of them, hiding the other"
        for path, names in shared_paths(listings).items()
    ]
