"""Downloaded bundle sources: `url` (optionally an archive member) and `deb` (a Debian package).

Both are pinned by sha256, fetched once through fetch's content-addressed cache (retries,
resume, HTML-page refusal, re-hash before reuse) and hashed again while they are read here,
so the bytes that reach the image are the bytes that were pinned. `deb` entries resolve to
`<mirror>/pool/<component>/<prefix>/<source>/<package>_<version>_<arch>.deb` on a Debian
mirror (ACL_COMPOSE_DEBIAN_MIRROR or --debian-mirror; default deb.debian.org) and are unpacked
without dpkg: a .deb is an ar archive whose `data.tar.{xz,gz,bz2,zst}` holds the files.
No maintainer script runs; Debian's split /bin, /sbin, /lib map to /usr (merged /usr).

Every placed file gets an origin record for sysext.contents (shape in sysext/README.md).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from acl_compose.errors import (
    AclComposeError,
    FetchError,
    InputError,
    PolicyError,
    VerificationError,
)
from acl_compose.run import run
from acl_compose.ui import opt
from acl_compose.util import scratch_dir

if TYPE_CHECKING:
    from acl_compose.sysext.bundle import Bundle, FileEntry

DEFAULT_DEBIAN_MIRROR = "https://deb.debian.org/debian"
ENV_DEBIAN_MIRROR = "ACL_COMPOSE_DEBIAN_MIRROR"
# Security updates (bookworm-security) live in their own archive, under pool/updates/<component>.
DEFAULT_DEBIAN_SECURITY_MIRROR = "https://deb.debian.org/debian-security"
ENV_DEBIAN_SECURITY_MIRROR = "ACL_COMPOSE_DEBIAN_SECURITY_MIRROR"
ARCHIVES = ("main", "security")
DEB_ARCH = {"x86-64": "amd64", "arm64": "arm64"}
# Keys a files entry may carry besides path/mode, per source kind.
OPTION_KEYS = {
    "url": {"sha256", "extract", "include", "exclude"},
    "deb": {
        "version",
        "sha256",
        "source",
        "arch",
        "component",
        "archive",
        "extract",
        "include",
        "exclude",
    },
}
ALL_OPTION_KEYS = set().union(*OPTION_KEYS.values())
# Debian before merged /usr ships these at the top level; on the host they are links into /usr.
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
CHUNK = 1 << 20
_PKG = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_VERSION = re.compile(r"^([0-9]+:)?[A-Za-z0-9.+~-]+$")


def _err(where: str, msg: str, hint: str | None = None) -> InputError:
    return InputError(f"{where}: {msg}", hint=hint or "see the bundle format in sysext/README.md")


# ---------------------------------------------------------------- options
@dataclass
class SourceOptions:
    """Where downloads come from and whether the network may be used."""

    cache_dir: Path
    offline: bool = False
    debian_mirror: str | None = None
    progress: bool = False  # a progress bar on stderr for large downloads

    def mirror(self) -> str:
        value = self.debian_mirror or os.environ.get(ENV_DEBIAN_MIRROR) or DEFAULT_DEBIAN_MIRROR
        return value.rstrip("/")

    def security_mirror(self) -> str:
        value = os.environ.get(ENV_DEBIAN_SECURITY_MIRROR) or DEFAULT_DEBIAN_SECURITY_MIRROR
        return value.rstrip("/")


def parse_options(
    kind: str, entry: dict[str, Any], where: str, raw: Callable[[str], str | None]
) -> tuple[str, dict[str, Any]]:
    """Validate the url/deb keys of a files entry; returns (sha256, options).

    `raw(key)` gives the key's text as written (so `version: 1.10` stays "1.10").
    """
    for key in ALL_OPTION_KEYS - OPTION_KEYS[kind]:
        if key in entry:
            raise _err(where, f"{key} does not apply to {kind} entries")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        what = entry.get("path") or entry.get("deb")
        raise _err(where, f"{kind} entry {what} needs sha256: <64 lowercase hex> of the download")
    opts: dict[str, Any] = {}
    if kind == "deb":
        if not _PKG.match(str(entry["deb"])):
            raise _err(where, f"deb {entry['deb']!r} is not a Debian package name")
        if "version" not in entry:
            raise _err(where, f"deb {entry['deb']} needs version: (as in `apt-cache policy`)")
        version = entry["version"]
        version = version if isinstance(version, str) else raw("version") or str(version)
        if not _VERSION.match(version):
            raise _err(where, f"version {version!r} is not a Debian version")
        opts["version"] = version
        for key in ("source", "arch", "component"):
            if key in entry:
                value = entry[key]
                if not isinstance(value, str) or not _PKG.match(value):
                    raise _err(where, f"{key} must be a Debian name, got {value!r}")
                opts[key] = value
        if "archive" in entry:
            if entry["archive"] not in ARCHIVES:
                raise _err(where, f"archive must be one of {', '.join(ARCHIVES)}, "
                           f"got {entry['archive']!r}")  # fmt: skip
            opts["archive"] = entry["archive"]
    if "extract" in entry:
        member = entry["extract"]
        if not isinstance(member, str) or not member.strip():
            raise _err(where, "extract must name a member (file or directory) of the archive")
        opts["extract"] = _norm_member(member, where, kind == "deb")
    for key in ("include", "exclude"):
        if key in entry:
            pats = entry[key]
            if isinstance(pats, str):
                pats = [pats]
            if not isinstance(pats, list) or not all(isinstance(p, str) and p for p in pats):
                raise _err(where, f"{key} must be a list of path patterns like /usr/bin/*")
            if not all(p.startswith("/") for p in pats):
                raise _err(where, f"{key} patterns are image paths and start with / ({pats})")
            opts[key] = list(pats)
    return sha, opts


def _norm_member(name: str, where: str, merged_usr: bool) -> str:
    """An archive member name as a relative path ('' for the archive root); no '..'."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PolicyError(f"{where}: archive member {name!r} climbs out with '..'")
    if merged_usr and parts and parts[0] in MERGED_USR:
        parts.insert(0, "usr")
    return "/".join(parts)


# ---------------------------------------------------------------- where an entry comes from
def pool_path(package: str, version: str, arch: str, source: str | None = None,
              component: str = "main") -> str:  # fmt: skip
    """Debian's pool layout: pool/main/c/containerd/containerd_1.6.20~ds1-1+deb12u3_amd64.deb.

    The directory is named after the *source* package (Packages' Source: field), the file
    after the binary package, without the epoch.
    """
    src = source or package
    prefix = src[:4] if src.startswith("lib") else src[0]
    plain = version.split(":", 1)[1] if ":" in version else version
    return f"pool/{component}/{prefix}/{src}/{package}_{plain}_{arch}.deb"


def origin_record(entry: FileEntry, bundle: Bundle, mirror: str | None = None) -> dict[str, Any]:
    """The download behind a url/deb entry, as sysext.contents records an origin. `mirror`:
    the Debian mirror (default: $ACL_COMPOSE_DEBIAN_MIRROR, else deb.debian.org)."""
    rec: dict[str, Any]
    if entry.source == "deb":
        o = entry.options
        arch = o.get("arch") or DEB_ARCH[bundle.architecture]
        component = o.get("component", "main")
        if o.get("archive") == "security":  # bookworm-security: its own archive
            component = f"updates/{component}"
            mirror = SourceOptions(Path()).security_mirror()
        path = pool_path(entry.value, o["version"], arch, o.get("source"), component)
        mirror = (mirror or SourceOptions(Path()).mirror()).rstrip("/")
        rec = {"kind": "deb", "bundle": bundle.name, "package": entry.value,
               "version": o["version"], "architecture": arch, "sha256": entry.sha256,
               "filename": path, "url": f"{mirror}/{path}"}  # fmt: skip
    else:
        rec = {"kind": "url", "bundle": bundle.name, "url": entry.value, "sha256": entry.sha256}
        if "extract" in entry.options:
            rec["extract"] = entry.options["extract"] or "."
    return rec


def describe(rec: dict[str, Any]) -> str:
    if rec["kind"] == "deb":
        return f"deb {rec['package']} {rec['version']} ({rec['url']})"
    return f"url {rec['url']}"


def download(rec: dict[str, Any], where: str, opts: SourceOptions) -> Path:
    """The pinned file from the cache, or fetched into it; errors name the entry's line."""
    from acl_compose import fetch

    try:
        return Path(
            fetch.download(rec["url"], sha256=rec["sha256"], cache_dir=opts.cache_dir,
                           offline=opts.offline, progress=opts.progress)
        )  # fmt: skip
    except VerificationError as e:
        raise VerificationError(f"{where}: {describe(rec)}: {e.message}", hint=e.hint) from e
    except FetchError as e:
        hint = e.hint
        if "not found" in e.message and rec["kind"] == "deb":
            hint = (
                "a Debian mirror keeps only current versions: check the version and sha256 with "
                f"`apt-cache show {rec['package']}` (Version, SHA256), set source: when the "
                "source package is named differently, or use a Debian mirror "
                f"({opt('--debian-mirror URL', 'ACL_COMPOSE_DEBIAN_MIRROR')}) that still has it"
            )
        elif opts.offline:
            hint = (
                f"build once without {opt('--offline', 'offline mode')} to fill the download cache"
            )
        raise FetchError(f"{where}: {describe(rec)}: {e.message}", hint=hint) from e


# ---------------------------------------------------------------- reading verified bytes
class _HashingReader(io.RawIOBase):
    """Passes reads through and hashes them; `check()` drains the rest and compares."""

    def __init__(self, f: IO[bytes], sha256: str, where: str) -> None:
        self._f, self._h, self._want, self._where = f, hashlib.sha256(), sha256, where

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b)  # type: ignore[attr-defined]
        if n:
            self._h.update(memoryview(b)[:n])
        return n or 0

    def verify(self) -> None:
        """Hash what the consumer did not read (tar padding, later ar members), then compare."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass
        if self._h.hexdigest() != self._want:
            raise VerificationError(
                f"{self._where}: sha256 {self._h.hexdigest()} of the file read does not match "
                f"the pinned {self._want}",
                hint="the cached download changed after it was verified; run the build again",
            )


class _Bounded(io.RawIOBase):
    """At most `size` bytes of `f` (one ar member)."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(b)[: min(len(b), self._left)]
        n = self._f.readinto(view)  # type: ignore[attr-defined]
        if not n:
            raise PolicyError("truncated ar archive")
        self._left -= n
        return n

    def skip(self) -> None:
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass


@contextlib.contextmanager
def _open_verified(path: Path, sha256: str, where: str) -> Iterator[_HashingReader]:
    with open(path, "rb", buffering=0) as f:
        reader = _HashingReader(f, sha256, where)
        yield reader
        reader.verify()


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


@contextlib.contextmanager
def _deb_data(reader: IO[bytes], where: str) -> Iterator[IO[bytes]]:
    """The data.tar member of a .deb (an ar archive), as a stream of its (packed) bytes."""
    if _read_exact(reader, 8) != b"!<arch>\n":
        raise PolicyError(f"{where}: not a Debian package (no ar archive header)")
    while True:
        header = _read_exact(reader, 60)
        if len(header) < 60 or header[58:60] != b"`\n":
            raise PolicyError(f"{where}: no data.tar member in the Debian package")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        member = _Bounded(reader, size)
        if name.startswith("data.tar"):
            yield member  # type: ignore[misc]
        member.skip()
        if size % 2:
            reader.read(1)
        if name.startswith("data.tar"):
            return


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@contextlib.contextmanager
def _tar_source(stream: IO[bytes], scratch: Path) -> Iterator[IO[bytes]]:
    """A tar stream tarfile can read: gzip/xz/bzip2 it unpacks itself; zstd (which Python's
    tarfile lacks) goes through the zstd tool into a scratch file."""
    buffered = io.BufferedReader(stream, CHUNK)  # type: ignore[arg-type]
    if buffered.peek(4)[:4] != ZSTD_MAGIC:
        yield buffered
        return
    packed, plain = scratch / "archive.tar.zst", scratch / "archive.tar"
    with open(packed, "wb") as out:
        while chunk := buffered.read(CHUNK):
            out.write(chunk)
    run(["zstd", "-q", "-d", "-f", "-o", plain, packed])
    packed.unlink()
    with open(plain, "rb") as f:
        yield f
    plain.unlink()


# ---------------------------------------------------------------- placing files in the tree
@dataclass
class _Target:
    """Maps archive members of one entry to image paths and filters them."""

    entry: FileEntry
    where: str
    extract: str
    merged_usr: bool
    include: list[str]
    exclude: list[str]

    def image_path(self, member: str) -> str | None:
        m = _norm_member(member, self.where, self.merged_usr)
        if not self.extract:
            rel = m
        elif m == self.extract:
            rel = ""
        elif m.startswith(self.extract + "/"):
            rel = m[len(self.extract) + 1 :]
        else:
            return None
        return posixpath.join(self.entry.path, rel) if rel else self.entry.path

    def wanted(self, ipath: str, used: set[str]) -> bool:
        hits = [p for p in self.include if fnmatch.fnmatchcase(ipath, p)]
        used.update(hits)
        if self.include and not hits:
            return False
        return not any(fnmatch.fnmatchcase(ipath, p) for p in self.exclude)


def _parent_dirs(root: Path, ipath: str, where: str) -> Path:
    """Create the parents of `ipath` under root (0755); refuse symlinked or non-dir parents."""
    parts = ipath.strip("/").split("/")
    cur = root
    for part in parts[:-1]:
        cur = cur / part
        if os.path.islink(cur) or (os.path.lexists(cur) and not cur.is_dir()):
            raise _err(where, f"/{cur.relative_to(root)} is not a directory")
        if not os.path.lexists(cur):
            cur.mkdir()
            os.chmod(cur, 0o755)
    return cur / parts[-1]


def _new_file(target: Path, where: str, ipath: str) -> IO[bytes]:
    if os.path.lexists(target):
        raise _err(where, f"{ipath} is provided twice")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "wb")


def _file_mode(member_mode: int, override: int | None) -> int:
    if override is not None:
        return override
    # As bundle files: owner bits decide, group/other mirror them; setuid kept for the policy.
    return (member_mode & 0o7000) | (0o755 if member_mode & 0o111 else 0o644)


def place(
    entry: FileEntry,
    bundle: Bundle,
    root: Path,
    opts: SourceOptions | None,
    origin: dict[str, str],
    records: dict[str, dict[str, Any]],
    *,
    sysext_tree: bool = True,
) -> None:
    """Put a url/deb entry's files into `root`, recording each file's origin."""
    where = bundle.where(entry.line)
    if opts is None:
        raise _err(where, f"{entry.path} needs a download but none is available")
    rec = origin_record(entry, bundle, opts.mirror())
    blob = download(rec, where, opts)
    o = entry.options
    is_deb = entry.source == "deb"
    if not is_deb and "extract" not in o:
        if o.get("include") or o.get("exclude"):
            raise _err(where, "include/exclude need an archive: add extract: (e.g. extract: .)")
        target = _parent_dirs(root, entry.path, where)
        with _open_verified(blob, rec["sha256"], f"{where}: {describe(rec)}") as reader:
            with _new_file(target, where, entry.path) as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
        os.chmod(target, entry.mode if entry.mode is not None else 0o644)
        origin.setdefault(entry.path, where)
        records[entry.path] = rec
        return
    sel = _Target(entry, where, o.get("extract", ""), is_deb, o.get("include", []),
                  o.get("exclude", []))  # fmt: skip
    label = f"{where}: {describe(rec)}"
    with scratch_dir(prefix=".unpack-", dir=root.parent) as scratch:
        with _open_verified(blob, rec["sha256"], label) as reader:
            with contextlib.ExitStack() as stack:
                packed: IO[bytes] = reader  # type: ignore[assignment]
                if is_deb:
                    packed = stack.enter_context(_deb_data(reader, label))
                tar = stack.enter_context(_tar_source(packed, scratch))
                placed = _extract_tar(tar, sel, root, rec, origin, records, label)
    if not placed:
        what = f"member {o['extract']!r}" if o.get("extract") else "any file"
        raise _err(where, f"{describe(rec)} has no {what} that include/exclude keep")
    if entry.mode is not None and len(placed) != 1:
        raise _err(where, "mode applies only when extract picks a single file")
    if sysext_tree:
        outside = [p for p in placed if p.split("/")[1:2] not in (["usr"], ["opt"])]
        if outside:
            raise _err(
                where,
                f"{describe(rec)}: {outside[0]} lands outside /usr and /opt"
                + (f" (+{len(outside) - 1} more)" if len(outside) > 1 else ""),
                hint="systemd-sysext merges only /usr and /opt: leave such files out with "
                "exclude: [/etc/*] or pick what you need with include:",
            )


def _extract_tar(
    stream: IO[bytes],
    sel: _Target,
    root: Path,
    rec: dict[str, Any],
    origin: dict[str, str],
    records: dict[str, dict[str, Any]],
    label: str,
) -> list[str]:
    """Unpack the selected members of a tar stream (any compression tarfile reads)."""
    placed: list[str] = []
    used: set[str] = set()
    written: dict[str, Path] = {}
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - closed below
    except tarfile.TarError as e:
        raise PolicyError(f"{label}: not a tar archive ({e})") from e
    with tar:
        try:
            for m in tar:
                ipath = sel.image_path(m.name)
                if ipath is None or m.isdir() or ipath == "/":
                    continue
                if not sel.wanted(ipath, used):
                    continue
                target = _parent_dirs(root, ipath, sel.where)
                if m.isfile():
                    src = tar.extractfile(m)
                    with _new_file(target, sel.where, ipath) as out:
                        while chunk := src.read(CHUNK):  # type: ignore[union-attr]
                            out.write(chunk)
                    os.chmod(target, _file_mode(m.mode, sel.entry.mode))
                elif m.issym():
                    if os.path.lexists(target):
                        raise _err(sel.where, f"{ipath} is provided twice")
                    link = m.linkname
                    if sel.merged_usr and link.startswith("/"):
                        link = "/" + _norm_member(link, sel.where, True)
                    os.symlink(link, target)
                elif m.islnk():
                    first = written.get(_norm_member(m.linkname, sel.where, sel.merged_usr))
                    if first is None:
                        raise PolicyError(
                            f"{label}: hard link {m.name} -> {m.linkname}: target not extracted"
                        )
                    if os.path.lexists(target):
                        raise _err(sel.where, f"{ipath} is provided twice")
                    os.link(first, target)
                else:
                    raise PolicyError(f"{label}: {m.name} is a device node or FIFO")
                written[_norm_member(m.name, sel.where, sel.merged_usr)] = target
                placed.append(ipath)
                origin.setdefault(ipath, sel.where)
                records[ipath] = dict(rec, member=m.name)
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, AclComposeError):
                raise
            raise PolicyError(f"{label}: cannot unpack: {e}") from e
    unused = [p for p in sel.include if p not in used]
    if unused:
        raise _err(sel.where, f"{describe(rec)}: include pattern {unused[0]} matches nothing")
    return placed


# ---------------------------------------------------------------- origins for the SBOM
def resolver(
    records: dict[str, dict[str, Any]], fallback: Callable[[str], dict[str, Any]] | None = None
) -> Callable[[str], dict[str, Any]]:
    """image path -> origin (sysext.contents' shape), from what assemble recorded: the
    path's own record, or for a file inside a `from:` directory its parent's; else `fallback`."""

    def resolve(path: str) -> dict[str, Any]:
        rec = records.get(path)
        if rec is None:
            parent = path
            while rec is None and parent not in ("", "/"):
                parent = posixpath.dirname(parent)
                rec = records.get(parent)
            if rec is not None and rec.get("kind") == "from":
                rec = dict(rec, **{"from": posixpath.join(rec["from"], path[len(parent) + 1 :])})
            elif rec is not None:
                rec = None
        if rec is None:
            return fallback(path) if fallback else {"kind": "unknown"}
        return {k: v for k, v in rec.items() if k != "member"}

    return resolve


def add_members(contents: list[dict[str, Any]], records: dict[str, dict[str, Any]]) -> None:
    """Each extracted file's archive member, beside its origin (the origin stays one record
    per download, so an SBOM lists the package once)."""
    for item in contents:
        member = records.get(item["path"], {}).get("member")
        if member:
            item["member"] = member


def image_contents(tree: Path, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """sysext.contents records for an image's root filesystem (before it is packed)."""
    from acl_compose.sysext.contents import record_tree

    contents = record_tree(tree, resolver(records))
    add_members(contents, records)
    return contents


def downloads(contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct url/deb origins behind a contents list (inside preloaded images too)."""
    seen: dict[str, dict[str, Any]] = {}
    pending = list(contents)
    while pending:
        origin = pending.pop().get("origin") or {}
        if origin.get("kind") in ("url", "deb"):
            seen.setdefault(origin["url"], origin)
        elif origin.get("kind") == "oci-image":
            pending += origin.get("files", [])
    return [seen[k] for k in sorted(seen)]
