"""What Flatcar does with the paths an Ignition config writes, as data the validator applies.

Refused (Ignition fails at boot, or the write shadows what the image relies on):
- /usr is read-only, mounted from dm-verity, and Flatcar's root links bin, sbin, lib and lib64
  into it: Ignition's files stage fails there and the node drops to the emergency shell.
- /oem is the OEM partition (/usr/share/oem on releases before the OEM sysexts): it holds the
  baked base config `base/base.ign`, `config.ign`, `grub.cfg`, `oem-release` and the OEM
  sysexts. A file written or a filesystem mounted there shadows them on every later boot; so
  does a mount unit for it. The initrd copies `base.ign` to /usr/lib/ignition/base.d/.

Warned: ROOT is disposable on Flatcar. `flatcar-reset`, or a config that reformats ROOT,
empties it and the next boot is a first boot, where Ignition applies its configs again: what
Ignition writes comes back, what compose baked into ROOT does not. ROOT_BAKED lists that
content; keep it in step with where compose puts the product's files (compose/placement.py).
A link to it comes back dangling after a reset, and a config that wipes ROOT loses it at the
very first boot. Compose bakes nothing into ROOT today: the sysext images are on the OEM
partition, their links and certificate come from the base config on every first boot.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from acl_compose.ignition.locate import Report

# (path, why): the path itself and everything below it; most specific first.
REFUSED: tuple[tuple[str, str], ...] = (
    (
        "/usr/share/oem",
        "/usr/share/oem is where older Flatcar mounts the OEM partition (baked base config, "
        "OEM sysexts) and read-only /usr on newer ones: a write there shadows them or fails",
    ),
    (
        "/usr/lib/ignition",
        "/usr/lib/ignition holds the baked base config (base.d/) and user.ign, on read-only "
        "/usr (dm-verity): Ignition fails at first boot",
    ),
    (
        "/usr",
        "/usr is read-only on Flatcar (dm-verity), so Ignition fails at first boot and the node "
        "drops to the emergency shell; write under /etc, /opt or /var, or ship it in a sysext",
    ),
    (
        "/oem",
        "/oem is the OEM partition (baked base config base/base.ign, config.ign, grub.cfg, OEM "
        "sysexts): a write there shadows them on every later boot; bake OEM content with "
        "`acl-compose compose` instead",
    ),
)
# Links in Flatcar's root filesystem (merged /usr): a path through them lands in /usr.
ROOT_LINKS = {"/bin": "/usr/bin", "/sbin": "/usr/sbin", "/lib": "/usr/lib", "/lib64": "/usr/lib64"}
# (path, what): content compose writes to ROOT that only a new image brings back.
ROOT_BAKED: tuple[tuple[str, str], ...] = ()
ROOT_DEVICES = {"/dev/disk/by-label/ROOT", "/dev/disk/by-partlabel/ROOT"}


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _lands(path: str) -> str:
    """Where `path` lands in Flatcar's root filesystem (through bin -> usr/bin and co.)."""
    for link, target in ROOT_LINKS.items():
        if _under(path, link):
            return target + path[len(link) :]
    return path


def refusal(path: str) -> str | None:
    """Why a config may not write or mount at `path` on Flatcar, or None. Only absolute,
    simplified paths are judged (the others are already errors)."""
    if not path.startswith("/") or posixpath.normpath(path) != path or path.startswith("//"):
        return None
    real = _lands(path)
    for prefix, why in REFUSED:
        if _under(real, prefix):
            if real == path:
                return why
            link = "/" + path.split("/")[1]
            return f"{link} links to {ROOT_LINKS[link]} on Flatcar, and {why}"
    return None


def unit_path(name: str) -> str | None:
    """The path a .mount/.automount unit name stands for (systemd-escape --unescape --path)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or suffix not in ("mount", "automount"):
        return None
    if stem == "-":
        return "/"
    return "/" + re.sub(
        r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), stem.replace("-", "/")
    )


def baked(path: str) -> str | None:
    """What compose bakes into ROOT at `path` (lost by a ROOT reset), or None."""
    for prefix, what in ROOT_BAKED:
        if _under(path, prefix):
            return what
    return None


def check(cfg: dict[str, Any], report: Report) -> None:
    """Refuse writes Flatcar cannot do or that shadow OEM/base config; warn on ROOT resets."""
    storage = cfg.get("storage", {})
    written: set[str] = set()
    for kind in ("files", "directories", "links"):
        for i, node in enumerate(storage.get(kind, [])):
            written.add(node["path"])
            why = refusal(node["path"])
            if why:
                report.error(("storage", kind, i, "path"), f"cannot write {node['path']}: {why}")
    filesystems = storage.get("filesystems", [])
    for i, fs in enumerate(filesystems):
        why = refusal(fs["path"]) if fs.get("path") else None
        if why:
            report.error(
                ("storage", "filesystems", i, "path"), f"cannot mount at {fs['path']}: {why}"
            )
    for i, unit in enumerate(cfg.get("systemd", {}).get("units", [])):
        where = unit_path(unit["name"])
        # Enabling the image's own mount unit is harmless; replacing or masking it is not.
        changes = unit.get("contents") or unit.get("dropins") or unit.get("mask")
        why = refusal(where) if where and changes else None
        if why:
            report.error(
                ("systemd", "units", i, "name"),
                f"cannot replace or mask the mount of {where}: {why}",
            )

    for i, link in enumerate(storage.get("links", [])):
        target = link.get("target") or ""
        if not link.get("hard"):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(link["path"]), target))
        what = baked(target)
        if what and target not in written:
            report.warn(
                ("storage", "links", i, "target"),
                f"{target} is on ROOT, where compose baked {what}: a ROOT reset (flatcar-reset, "
                "or a config that reformats ROOT) deletes it, and this link comes back dangling",
            )
    for i, fs in enumerate(filesystems):
        root = fs.get("device") in ROOT_DEVICES or fs.get("label") == "ROOT"
        if ROOT_BAKED and root and fs.get("wipeFilesystem"):
            lost = "; ".join(f"{what} ({prefix})" for prefix, what in ROOT_BAKED)
            report.warn(
                ("storage", "filesystems", i, "wipeFilesystem"),
                f"reformats ROOT at first boot, which loses what compose baked there: {lost}",
            )
