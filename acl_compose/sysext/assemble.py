"""Assemble a bundle's image tree: files entries placed with normalized metadata, images
packed, units enabled, the extension-release file written.

The tree is assembled in a scratch directory so the filesystem built from it depends only on
the bundle's content: modes normalized (no umask), root ownership and fixed times left to
mkfs. url/deb entries are placed by `sources`, `images:` packed by `oci`.
"""

from __future__ import annotations

import configparser
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError, PolicyError
from acl_compose.image.osrelease import format_os_release
from acl_compose.sysext import oci, sources
from acl_compose.sysext.bundle import (
    EXTENSION_RELEASE_DIR,
    Bundle,
    FileEntry,
    _err,
    _normal_mode,
    _source_path,
)
from acl_compose.sysext.policy import walk_sorted
from acl_compose.util import scratch_dir


def assemble(
    bundle: Bundle,
    root: Path,
    download: sources.SourceOptions | None = None,
    records: dict[str, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Build the image tree under `root` (empty dir). Returns image path -> where it came from.

    Regular files get mode 0644 (0755 if any execute bit is set) unless `mode` is given,
    directories 0755: the builder's umask and the source's ownership never reach the image.
    Special files and setuid bits in sources are copied as found so the policy can name them.
    `records` (image path -> origin record, as in sysext.contents) is filled for the SBOM.
    """
    origin: dict[str, str] = {}
    records = {} if records is None else records
    _place_entries(bundle, bundle.files, root, download, origin, records)
    for image in bundle.images:
        _build_image(bundle, image, root, download, origin, records)
    _enable_units(bundle, root, origin)
    for path, where in origin.items():
        if where.startswith("units: "):
            records[path] = {"kind": "generated", "bundle": bundle.name, "by": where}
    er = Path(EXTENSION_RELEASE_DIR) / f"extension-release.{bundle.name}"
    _make_parents(root, root / er.parent, bundle.where(1))
    if os.path.lexists(root / er):
        raise _err(
            origin.get("/" + str(er), bundle.where(1)),
            f"/{er} is generated from sysext.yaml; do not ship it in files",
        )
    _write_file(root / er, format_os_release(bundle.extension_release()).encode(), 0o644)
    origin["/" + str(er)] = "extension-release (generated)"
    records["/" + str(er)] = {"kind": "generated", "bundle": bundle.name, "by": "sysext.yaml"}
    # Timestamps are not normalized here: mkfs pins them all (-T0 / -all-time 0), which
    # the reproducibility tests prove, and hard-linked bundle files must stay untouched.
    return origin


def _place_entries(
    bundle: Bundle,
    entries: list[FileEntry],
    root: Path,
    download: sources.SourceOptions | None,
    origin: dict[str, str],
    records: dict[str, dict[str, Any]],
    sysext_tree: bool = True,
) -> None:
    linked: set[tuple[int, int]] = set()
    for f in entries:
        where = bundle.where(f.line)
        if f.source in ("url", "deb"):
            sources.place(f, bundle, root, download, origin, records, sysext_tree=sysext_tree)
            continue
        rel = f.path.lstrip("/")
        if not rel:
            raise _err(where, "path / cannot be a file")
        target = root / rel
        _make_parents(root, target.parent, where)
        if os.path.lexists(target) and f.source != "from":
            raise _err(where, f"{f.path} is listed twice")
        if f.source == "inline":
            _write_file(target, f.value.encode(), f.mode if f.mode is not None else 0o644)
            records[f.path] = {"kind": "inline", "bundle": bundle.name, "inline": True}
        elif f.source == "symlink":
            os.symlink(f.value, target)
            records[f.path] = {"kind": "symlink", "bundle": bundle.name, "symlink": f.value}
        else:
            _copy_tree(_source_path(bundle, f), target, f.mode, where, origin, f.path, linked)
            records[f.path] = {"kind": "from", "bundle": bundle.name, "from": f.value}
        origin.setdefault(f.path, where)


def _build_image(
    bundle: Bundle,
    image: oci.ImageEntry,
    root: Path,
    download: sources.SourceOptions | None,
    origin: dict[str, str],
    records: dict[str, dict[str, Any]],
) -> None:
    """An `images:` entry: its files assembled apart, packed as an OCI archive into the tree."""
    where = bundle.where(image.line)
    with scratch_dir(prefix=".image-", dir=root.parent) as scratch:
        tree = scratch / "rootfs"
        tree.mkdir()
        os.chmod(tree, 0o755)
        img_origin: dict[str, str] = {}
        img_records: dict[str, dict[str, Any]] = {}
        _place_entries(bundle, image.files, tree, download, img_origin, img_records, False)
        target = root / image.path.lstrip("/")
        _make_parents(root, target.parent, where)
        if os.path.lexists(target):
            raise _err(where, f"{image.path} is provided twice")
        info = oci.write_archive(tree, target, image, bundle.architecture, scratch)
        records[image.path] = {
            "kind": "oci-image",
            "bundle": bundle.name,
            "name": image.name,
            **info,
            "files": sources.image_contents(tree, img_records),
        }
        origin[image.path] = where


def _make_parents(root: Path, directory: Path, where: str) -> None:
    rel = directory.relative_to(root)
    cur = root
    for part in rel.parts:
        cur = cur / part
        if os.path.islink(cur) or (cur.exists() and not cur.is_dir()):
            raise _err(where, f"/{cur.relative_to(root)} is not a directory")
        if not cur.exists():
            cur.mkdir()
            os.chmod(cur, 0o755)


def _write_file(target: Path, data: bytes, mode: int) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(target, mode)


def _place_file(
    src: str | Path,
    st: os.stat_result,
    target: str | Path,
    mode: int | None,
    linked: set[tuple[int, int]],
) -> None:
    """Hard-link `src` into the tree when its mode is already the image's, else copy it.

    Linking saves copying large trees; it is invisible in the image because mkfs runs with
    fixed timestamps and root ownership, and erofs/squashfs count links only within the
    tree. A source inode is linked at most once, so two entries never become one inode.
    The linked file is never modified (no chmod/utime), so the bundle is left untouched.
    """
    want = mode if mode is not None else _normal_mode(st.st_mode)
    key = (st.st_dev, st.st_ino)
    if stat.S_IMODE(st.st_mode) == want and key not in linked:
        try:
            os.link(src, target)
            linked.add(key)
            return
        except FileExistsError:
            raise
        except OSError:  # other filesystem, or not permitted: copy instead
            pass
    if os.path.lexists(target):
        raise FileExistsError(target)
    shutil.copyfile(src, target)
    os.chmod(target, want)


def _copy_tree(
    src: Path,
    target: Path,
    mode: int | None,
    where: str,
    origin: dict[str, str],
    image_path: str,
    linked: set[tuple[int, int]],
) -> None:
    src_s, target_s = os.fspath(src), os.fspath(target)
    for rel, st in walk_sorted(src_s):
        s = f"{src_s}/{rel}" if rel else src_s
        t = f"{target_s}/{rel}" if rel else target_s
        ipath = f"{image_path}/{rel}" if rel else image_path
        origin.setdefault(ipath, where)
        m = st.st_mode
        if stat.S_ISDIR(m):
            if not os.path.isdir(t) or os.path.islink(t):
                if os.path.lexists(t):
                    raise _err(where, f"{ipath} is both a file and a directory")
                os.mkdir(t)
            os.chmod(
                t, (mode if mode is not None and not rel else 0o755) | (stat.S_IMODE(m) & 0o7000)
            )
        else:
            # No lexists() first: link, symlink and mknod refuse an existing name themselves
            # (one lstat less per file of a large tree).
            try:
                if stat.S_ISLNK(m):
                    os.symlink(os.readlink(s), t)
                elif stat.S_ISREG(m):
                    _place_file(s, st, t, mode if not rel else None, linked)
                # Device nodes, FIFOs and sockets are reproduced so the policy check names them.
                elif stat.S_ISCHR(m) or stat.S_ISBLK(m) or stat.S_ISFIFO(m):
                    os.mknod(t, stat.S_IFMT(m) | 0o600, st.st_rdev)
                else:
                    raise PolicyError(f"{where}: {ipath} is a socket or other special file")
            except FileExistsError:
                raise _err(where, f"{ipath} is provided twice") from None


def _unit_wanted_by(unit_file: Path) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, allow_no_value=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(unit_file.read_text(encoding="utf-8"))
    except (configparser.Error, UnicodeDecodeError) as e:
        raise InputError(f"{unit_file.name}: cannot parse unit file: {e}") from e
    if not parser.has_section("Install"):
        return []
    return [t for v in (parser["Install"].get("WantedBy") or "").split() for t in [v] if t]


def _enable_units(bundle: Bundle, root: Path, origin: dict[str, str]) -> None:
    """`units:` -> `<target>.wants/<unit>` links, as `systemctl enable` would create them."""
    unit_dir = root / "usr/lib/systemd/system"
    for unit in bundle.units:
        f = unit_dir / unit
        if not f.is_file():
            raise InputError(
                f"{bundle.manifest}: unit {unit} is enabled but /usr/lib/systemd/system/{unit} "
                "is not in files",
                hint="add the unit file under files: with path /usr/lib/systemd/system/<unit>",
            )
        targets = _unit_wanted_by(f) or ["multi-user.target"]
        for t in targets:
            wants = unit_dir / f"{t}.wants"
            _make_parents(root, wants, str(bundle.manifest))
            link = wants / unit
            if not os.path.lexists(link):
                os.symlink(f"../{unit}", link)
                origin[f"/usr/lib/systemd/system/{t}.wants/{unit}"] = f"units: {unit}"
