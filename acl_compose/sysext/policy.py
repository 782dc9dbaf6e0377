"""What a system extension for an immutable host may not carry.

Checked on the assembled tree (before the filesystem is made) and, by `sysext check`,
on the tree extracted from an existing image. Every violation names the image path.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

from acl_compose.errors import PolicyError

# systemd-sysext merges only these hierarchies; anything else is silently ignored at boot.
MERGED = ("usr", "opt")

# Commands of package managers and language-level installers. qemu-tests/test_immutable.py
# keeps its own list for the booted host; tests/sysext/test_policy.py checks this one covers it.
PACKAGE_MANAGERS = frozenset(
    """
    apt apt-get apt-cache aptitude dpkg dpkg-deb
    rpm rpm-ostree dnf dnf4 dnf5 microdnf tdnf yum zypper
    pacman apk opkg xbps-install emerge ebuild equery
    nix nix-env snap flatpak pip pip3 easy_install gem npm
    """.split()
)
# Python's installers as modules: with them any Python on the host can install packages.
PYTHON_INSTALLERS = ("pip", "ensurepip")
# Package databases: where a package manager records what it installed.
PACKAGE_DATABASES = (
    "var/lib/dpkg",
    "var/lib/rpm",
    "usr/lib/sysimage/rpm",
    "var/lib/pacman",
    "lib/apk/db",
    "var/lib/apt",
    "var/lib/dnf",
    "var/db/pkg",
)


@dataclass(frozen=True)
class Violation:
    path: str  # image path, e.g. /usr/bin/dpkg
    rule: str  # short rule id: outside, os-release, symlink, device, setuid, package-manager
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _symlink_escapes(rel: str, target: str) -> str | None:
    """Why a link at image path `rel` pointing to `target` leaves the image, or None."""
    if target.startswith("/"):
        resolved = posixpath.normpath(target).lstrip("/")
    else:
        joined = posixpath.join(posixpath.dirname(rel), target)
        # Lexical resolution: '..' past the image root escapes it.
        depth = 0
        for part in joined.split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    return f"symlink to {target} resolves outside the image"
            elif part not in ("", "."):
                depth += 1
        resolved = posixpath.normpath(joined)
    top = resolved.split("/", 1)[0]
    if top not in MERGED:
        return f"symlink to {target} resolves to /{resolved}, outside /usr and /opt of the image"
    return None


def walk_sorted(src: str | os.PathLike[str]) -> list[tuple[str, os.stat_result]]:
    """(relative path, lstat) of src and everything below it, sorted by path.

    Plain strings and scandir, not pathlib: this runs per file of possibly large trees.
    """
    top = os.fspath(src)
    out = [("", os.lstat(top))]
    if not stat.S_ISDIR(out[0][1].st_mode):
        return out
    pending = [("", top)]
    while pending:
        rel_dir, abs_dir = pending.pop()
        with os.scandir(abs_dir) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                st = entry.stat(follow_symlinks=False)
                out.append((rel, st))
                if stat.S_ISDIR(st.st_mode):
                    pending.append((rel, entry.path))
    out.sort(key=lambda t: t[0])
    return out


def check_tree(
    root: str | os.PathLike[str], allow_package_manager: bool = False
) -> list[Violation]:
    """All policy violations in the tree at `root`, in sorted path order."""
    root_s = os.fspath(root)
    found: list[Violation] = []
    entries = walk_sorted(root_s)[1:]  # everything below the root, sorted
    has_children = {posixpath.dirname(rel) for rel, _ in entries}
    for rel, st in entries:
        path = "/" + rel
        mode = st.st_mode
        name = posixpath.basename(rel)
        top = rel.split("/", 1)[0]
        if not allow_package_manager:
            db = next((d for d in PACKAGE_DATABASES if rel == d or rel.startswith(d + "/")), None)
            if db is not None and rel == db:
                found.append(Violation(path, "package-manager", f"package database /{db}"))
                continue
            # A command: in a bin/sbin directory, or executable anywhere (not e.g. a
            # shell-completion file that happens to be called "apt").
            in_bin = posixpath.basename(posixpath.dirname(rel)) in ("bin", "sbin")
            runnable = stat.S_ISLNK(mode) or (stat.S_ISREG(mode) and mode & 0o111)
            if db is None and stat.S_ISDIR(mode) and _python_installer(rel, name):
                found.append(
                    Violation(path, "package-manager", f"Python installer {name!r} is not allowed")
                )
                continue
            if (
                db is None
                and name in PACKAGE_MANAGERS
                and not stat.S_ISDIR(mode)
                and (in_bin or runnable)
            ):
                found.append(
                    Violation(path, "package-manager", f"package manager {name!r} is not allowed")
                )
                continue
        if top not in MERGED:
            # Name files (and empty directories), not the parents created for them.
            if not stat.S_ISDIR(mode) or rel not in has_children:
                found.append(
                    Violation(path, "outside", "outside /usr and /opt (systemd-sysext ignores it)")
                )
            continue
        if name == "os-release" or rel == "usr/lib/os-release":
            found.append(Violation(path, "os-release", "an extension must not ship os-release"))
        if stat.S_ISLNK(mode):
            why = _symlink_escapes(rel, os.readlink(f"{root_s}/{rel}"))
            if why:
                found.append(Violation(path, "symlink", why))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            found.append(Violation(path, "device", "device node"))
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            found.append(Violation(path, "device", "FIFO or socket"))
        if not stat.S_ISLNK(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            bits = "setuid" if mode & stat.S_ISUID else "setgid"
            found.append(
                Violation(path, "setuid", f"{bits} bit set (mode {stat.S_IMODE(mode):04o})")
            )
    return found


def _python_installer(rel: str, name: str) -> bool:
    """A pip/ensurepip package (or pip's metadata) in a Python library directory."""
    installer = name in PYTHON_INSTALLERS or (
        name.startswith("pip-") and name.endswith(".dist-info")
    )
    return installer and "python" in posixpath.dirname(rel)


def enforce(
    root: str | os.PathLike[str],
    *,
    allow_package_manager: str | None = None,
    origin: dict[str, str] | None = None,
    label: str = "",
) -> None:
    """Raise PolicyError naming the first violation (and how many more there are)."""
    found = check_tree(root, allow_package_manager=bool(allow_package_manager))
    if not found:
        return
    # The most specific rule first: /var/lib/dpkg is a package database before it is "outside".
    found.sort(key=lambda v: v.rule != "package-manager")
    first = found[0]
    where = (origin or {}).get(first.path) or _origin_of(first.path, origin or {}) or label
    more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
    hint = "remove the offending file from the bundle"
    if first.rule == "package-manager":
        hint = (
            "an immutable host must not carry a package manager; set "
            'allow_package_manager: "<reason>" only for a deliberate exception'
        )
    elif first.rule == "outside":
        hint = "systemd-sysext merges only /usr and /opt; move the file there"
    raise PolicyError(f"{where + ': ' if where else ''}{first}{more}", hint=hint)


def _origin_of(path: str, origin: dict[str, str]) -> str | None:
    """The entry that produced `path` or its nearest listed parent."""
    p = path
    while p and p != "/":
        if p in origin:
            return origin[p]
        p = posixpath.dirname(p)
    return None
