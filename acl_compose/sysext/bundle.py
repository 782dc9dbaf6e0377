"""Sysext bundles: load `sysext.yaml` (with file:line errors) and hash their inputs.

A bundle is a directory with `sysext.yaml`, a `files/` tree and a README; `assemble` turns it
into the image tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from acl_compose import ui, yamlpos
from acl_compose.errors import InputError
from acl_compose.sysext import oci, sources
from acl_compose.sysext.policy import walk_sorted

TOP_KEYS = {
    "name",
    "version",
    "description",
    "os",
    "sysext_level",
    "version_id",
    "architecture",
    "filesystem",
    "compression",
    "files",
    "units",
    "reload_manager",
    "allow_package_manager",
    "images",
}
FILE_KEYS = {"path", "from", "inline", "url", "deb", "symlink", "mode", *sources.ALL_OPTION_KEYS}
SOURCES = ("from", "inline", "url", "symlink", "deb")
ARCHITECTURES = ("x86-64", "arm64")
COMPRESSIONS = {
    "erofs": ("none", "lz4", "lz4hc"),
    "squashfs": ("none", "gzip", "xz", "lzo", "lz4", "zstd"),
}
DEFAULT_COMPRESSION = {"erofs": "lz4hc", "squashfs": "gzip"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|timer|path|target|mount)$")
EXTENSION_RELEASE_DIR = "usr/lib/extension-release.d"


# ---------------------------------------------------------------- the bundle model
@dataclass
class FileEntry:
    path: str  # absolute target path in the image, e.g. /usr/bin/foo
    line: int  # line in sysext.yaml, for error messages
    source: str  # "from" | "inline" | "url" | "symlink" | "deb"
    value: str
    sha256: str | None = None
    mode: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # url/deb: see sources.py


@dataclass
class Bundle:
    directory: Path
    manifest: Path
    name: str
    version: str
    description: str = ""
    os: str = "flatcar"
    sysext_level: str | None = "1.0"
    version_id: str | None = None
    architecture: str = "x86-64"
    filesystem: str = "erofs"
    compression: str = "lz4hc"
    files: list[FileEntry] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    reload_manager: bool = False
    allow_package_manager: str | None = None
    images: list[oci.ImageEntry] = field(default_factory=list)

    def where(self, line: int) -> str:
        return f"{self.manifest}:{line}"

    def extension_release(self) -> dict[str, str]:
        data = {"ID": self.os}
        if self.sysext_level is not None:
            data["SYSEXT_LEVEL"] = self.sysext_level
        if self.version_id is not None:
            data["VERSION_ID"] = self.version_id
        data["ARCHITECTURE"] = self.architecture
        # SYSEXT_ID/SYSEXT_VERSION_ID describe the extension itself (os-release(5), newer systemd).
        data["SYSEXT_ID"] = self.name
        data["SYSEXT_VERSION_ID"] = self.version
        if self.reload_manager:
            data["EXTENSION_RELOAD_MANAGER"] = "1"
        return data


def _err(where: str, msg: str, hint: str | None = None) -> InputError:
    return InputError(f"{where}: {msg}", hint=hint or "see the bundle format in sysext/README.md")


def _scalar_str(value: Any, raw: str | None, key: str, where: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise _err(where, f"{key} must be a string, got {value!r}")
    # Numbers such as `version: 1.0` are taken as written, not as floats.
    return value if isinstance(value, str) else raw if raw is not None else str(value)


def _parse_mode(value: Any, raw: str | None, where: str) -> int:
    """The one mode rule of every YAML here (yamlpos.file_mode, Butane's)."""
    try:
        mode, warning = yamlpos.file_mode(value, raw)
    except yamlpos.ScalarError as e:
        raise _err(
            where, f"mode: {e}", hint="write modes as unquoted octal numbers, e.g. 0755"
        ) from None
    if warning:
        ui.warn(f"{where}: {warning}")
    return mode


def _version_text(value: Any, raw: str | None, key: str, where: str) -> str:
    """Names and versions are text: an unquoted 0.10 is refused, not read as 0.1."""
    try:
        return yamlpos.text(value, raw, key)
    except yamlpos.ScalarError as e:
        raise _err(where, f"{key}: {e}") from None


def load_bundle(directory: str | os.PathLike[str]) -> Bundle:
    """Parse and validate `DIR/sysext.yaml`; InputError with file:line on any mistake."""
    directory = Path(directory)
    manifest = directory / "sysext.yaml"
    if not manifest.is_file():
        raise InputError(
            f"{manifest} not found", hint="a bundle is a directory with sysext.yaml and files/"
        )
    try:
        loc = yamlpos.load(yamlpos.read(manifest))
    except OSError as e:
        raise InputError(f"{manifest}: cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise InputError(yamlpos.describe(e, manifest), getattr(e, "hint", None)) from e
    data = loc.data
    if not isinstance(data, dict):
        raise _err(f"{manifest}:1", "expected a mapping of bundle fields")

    def at(key: str) -> str:
        return f"{manifest}:{loc.line((key,))}"

    def text(key: str) -> str:
        return _scalar_str(data[key], loc.raw((key,)), key, at(key))

    def version_text(key: str) -> str:  # located at the value: file:line:col
        line, col = loc.start((key,))
        return _version_text(data[key], loc.raw((key,)), key, f"{manifest}:{line}:{col}")

    for key in data:
        if key not in TOP_KEYS:
            raise _err(
                at(key), f"unknown key {key!r}", hint=f"known keys: {', '.join(sorted(TOP_KEYS))}"
            )
    for key in ("name", "version"):
        if key not in data:
            raise _err(f"{manifest}:{loc.start(())[0]}", f"missing required key {key!r}")
    b = Bundle(
        directory=directory,
        manifest=manifest,
        name=version_text("name"),
        version=version_text("version"),
    )
    for key in ("name", "version"):
        if not _NAME.match(getattr(b, key)):
            raise _err(at(key), f"{key} {getattr(b, key)!r} may only use letters, digits and _.+-")
    if "description" in data:
        b.description = text("description")
    if "os" in data:
        b.os = text("os")
        if not re.fullmatch(r"[a-z0-9._-]+|_any", b.os):
            raise _err(at("os"), f"os {b.os!r} is not an os-release ID (lowercase) or _any")
    if "version_id" in data:
        b.version_id = version_text("version_id")
        b.sysext_level = None
    if "sysext_level" in data:
        b.sysext_level = version_text("sysext_level")
    if "architecture" in data:
        b.architecture = text("architecture")
        if b.architecture not in ARCHITECTURES:
            raise _err(
                at("architecture"), f"architecture must be one of {', '.join(ARCHITECTURES)}"
            )
    if "filesystem" in data:
        b.filesystem = text("filesystem")
        if b.filesystem not in COMPRESSIONS:
            raise _err(at("filesystem"), "filesystem must be erofs or squashfs")
    b.compression = DEFAULT_COMPRESSION[b.filesystem]
    if "compression" in data:
        b.compression = text("compression")
        if b.compression not in COMPRESSIONS[b.filesystem]:
            allowed = ", ".join(COMPRESSIONS[b.filesystem])
            raise _err(
                at("compression"), f"compression for {b.filesystem} must be one of {allowed}"
            )
    if "reload_manager" in data:
        if not isinstance(data["reload_manager"], bool):
            raise _err(at("reload_manager"), "reload_manager must be true or false")
        b.reload_manager = data["reload_manager"]
    if "allow_package_manager" in data:
        reason = data["allow_package_manager"]
        if not isinstance(reason, str) or not reason.strip():
            raise _err(
                at("allow_package_manager"),
                "allow_package_manager must be a non-empty reason string",
            )
        b.allow_package_manager = reason
    if "units" in data:
        units = data["units"]
        if not isinstance(units, list):
            raise _err(at("units"), "units must be a list of unit names")
        for i, unit in enumerate(units):
            where = f"{manifest}:{loc.line(('units', i))}"
            if not isinstance(unit, str) or not _UNIT.match(unit):
                raise _err(where, f"{unit!r} is not a systemd unit name")
            b.units.append(unit)
    if "files" in data:
        files = data["files"]
        if not isinstance(files, list):
            raise _err(at("files"), "files must be a list of entries")
        for i, entry in enumerate(files):
            b.files.append(_file_entry(entry, loc, ("files", i), manifest))
    if "images" in data:
        b.images = oci.parse_images(
            data["images"],
            manifest,
            lambda yp: loc.line(yp),
            lambda entry, yp: _file_entry(entry, loc, yp, manifest, image=True),
        )
    return b


def _file_entry(
    entry: Any, loc: yamlpos.Located, ypath: yamlpos.Path, manifest: Path, image: bool = False
) -> FileEntry:
    line = loc.line(ypath)
    where = f"{manifest}:{line}"
    if not isinstance(entry, dict):
        raise _err(where, "each files entry must be a mapping with path and a source")
    for key in entry:
        if key not in FILE_KEYS:
            raise _err(
                f"{manifest}:{loc.line(ypath + (key,))}",
                f"unknown key {key!r} in files entry",
                hint=f"known keys: {', '.join(sorted(FILE_KEYS))}",
            )
    if "path" not in entry and "deb" not in entry:
        raise _err(where, "files entry without path")
    # A whole Debian package lands at its own paths: path defaults to /.
    path = _scalar_str(entry.get("path", "/"), loc.raw(ypath + ("path",)), "path", where)
    if not path.startswith("/"):
        raise _err(where, f"path {path!r} must be absolute (e.g. /usr/lib/...)")
    norm = os.path.normpath(path)
    if path != "/" and (norm != path.rstrip("/") or ".." in path.split("/")):
        raise _err(where, f"path {path!r} is not normalized (no '..', '//' or '.')")
    kinds = [s for s in SOURCES if s in entry]
    if len(kinds) != 1:
        raise _err(where, f"files entry {path} needs exactly one of {', '.join(SOURCES)}")
    src = kinds[0]
    value = entry[src]
    if not isinstance(value, str):
        if src == "inline" and value is not None and not isinstance(value, (dict, list, bool)):
            value = _scalar_str(value, loc.raw(ypath + (src,)), src, where)
        else:
            raise _err(where, f"{src} of {path} must be a string")
    fe = FileEntry(path=norm, line=line, source=src, value=value)
    if norm == "/" and (src != "deb" or "extract" in entry):
        raise _err(where, "path / is only for a whole Debian package (deb without extract)")
    if src in ("url", "deb"):
        fe.sha256, fe.options = sources.parse_options(
            src, entry, where, lambda key: loc.raw(ypath + (key,))
        )
    elif "sha256" in entry or sources.ALL_OPTION_KEYS & entry.keys():
        key = sorted(({"sha256"} | sources.ALL_OPTION_KEYS) & entry.keys())[0]
        raise _err(where, f"{key} only applies to url and deb entries ({path})")
    if "mode" in entry:
        if src == "symlink":
            raise _err(where, f"symlink {path} cannot have a mode")
        line, col = loc.start(ypath + ("mode",))
        fe.mode = _parse_mode(entry["mode"], loc.raw(ypath + ("mode",)), f"{manifest}:{line}:{col}")
    return fe


# ---------------------------------------------------------------- hashing the inputs
# (device, inode, size, mtime) -> (sha1, sha256) of files read by one input_digest call.
FileHashes = dict[tuple[int, int, int, int], tuple[str, str]]


def input_digest(
    bundle: Bundle,
    extra: dict[str, Any],
    memo: dict[str, str] | None = None,
    file_hashes: FileHashes | None = None,
) -> str:
    """A sha256 over everything that determines the image: fields, file bytes, modes, links.

    Used as the build cache key and the seed of the verity salt and filesystem UUID.
    `memo` maps a file's identity (device, inode, size, mtime, ctime) to its content hash,
    so an unchanged bundle is not re-read on every build; it is updated in place.
    `file_hashes`, when given, collects each file read with its SHA-1 as well (the SBOM's
    per-file hashes, sysext.contents), so the build reads each file once.
    """
    h = hashlib.sha256()
    h.update(_fields_json(bundle, extra))
    for f in all_entries(bundle):
        if f.source != "from":
            continue
        src = os.fspath(_source_path(bundle, f))
        for rel, st in walk_sorted(src):
            p = f"{src}/{rel}" if rel else src
            # Only what reaches the image: file type and the normalized mode, not the umask.
            fmt = stat.S_IFMT(st.st_mode)
            mode = (
                _normal_mode(st.st_mode)
                if stat.S_ISREG(st.st_mode)
                else stat.S_IMODE(st.st_mode) & 0o7000
            )
            h.update(f"\0{f.path}\0{rel}\0{fmt:o}\0{mode:o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                h.update(_file_sha256(p, st, memo, file_hashes).encode())
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                h.update(str(st.st_rdev).encode())
    return h.hexdigest()


def all_entries(bundle: Bundle) -> list[FileEntry]:
    """The bundle's files entries and those of its images."""
    return [*bundle.files, *(f for i in bundle.images for f in i.files)]


def _entry_fields(f: FileEntry) -> tuple[Any, ...]:
    return (f.path, f.source, f.value, f.sha256, f.mode, f.options)


def _fields_json(bundle: Bundle, extra: dict[str, Any]) -> bytes:
    fields = {
        k: v
        for k, v in vars(bundle).items()
        if k not in ("directory", "manifest", "files", "description", "images")
    }
    fields["files"] = [_entry_fields(f) for f in bundle.files]
    if bundle.images:  # (only then: bundles without images keep their cache keys)
        fields["images"] = [
            {**{k: v for k, v in vars(i).items() if k not in ("line", "files")},
             "files": [_entry_fields(f) for f in i.files]}
            for i in bundle.images
        ]  # fmt: skip
    fields.update(extra)
    return json.dumps(fields, sort_keys=True, default=str).encode()


# Sources whose content the fingerprint below covers: by stat (from), or by value in sysext.yaml
# (url and deb are pinned by their sha256).
_FINGERPRINTED = {"from", "inline", "symlink", "url", "deb"}


class Fingerprint(NamedTuple):
    full: str  # fields + every source's stat identity, ctime included
    without_ctime: str  # the same without ctime, which the build's own hard links change


def stat_fingerprint(bundle: Bundle, extra: dict[str, Any]) -> Fingerprint | None:
    """A cheap stand-in for input_digest: the same fields plus every source file's stat identity
    (device, inode, size, mtime, ctime, mode; link targets), no file contents.

    Equal `full` fingerprints mean unchanged inputs (ctime cannot be set back by `touch`, so
    any rewrite shows). None when the bundle has a kind of source it does not cover.
    """
    if any(f.source not in _FINGERPRINTED for f in all_entries(bundle)):
        return None
    full = hashlib.sha256(_fields_json(bundle, extra))
    loose = full.copy()
    for f in all_entries(bundle):
        if f.source != "from":
            continue
        src = os.fspath(_source_path(bundle, f))
        for rel, st in walk_sorted(src):
            ident = (
                f"\0{f.path}\0{rel}\0{st.st_mode:o}\0{st.st_dev}:{st.st_ino}:{st.st_size}:"
                f"{st.st_mtime_ns}:{st.st_rdev}\0"
            )
            if stat.S_ISLNK(st.st_mode):
                ident += os.readlink(f"{src}/{rel}" if rel else src)
            loose.update(ident.encode())
            full.update(f"{ident}\0{st.st_ctime_ns}".encode())
    return Fingerprint(full.hexdigest(), loose.hexdigest())


def _file_sha256(
    path: str, st: os.stat_result, memo: dict[str, str] | None, file_hashes: FileHashes | None
) -> str:
    # ctime cannot be set back by `touch`, so a rewritten file always gets a new identity.
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    if memo is not None and ident in memo:
        return memo[ident]
    h = hashlib.sha256()
    h1 = hashlib.sha1(usedforsecurity=False) if file_hashes is not None else None
    # Sized to the file (most are small): a fresh 1 MiB buffer per file is a 1 MiB memset each.
    buf = bytearray(min(1 << 20, st.st_size + 1))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            if h1 is not None:
                h1.update(view[:n])
    digest = h.hexdigest()
    if memo is not None:
        memo[ident] = digest
    if file_hashes is not None and h1 is not None:
        file_hashes[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = (h1.hexdigest(), digest)
    return digest


def _source_path(bundle: Bundle, f: FileEntry) -> Path:
    root = bundle.directory.resolve()
    p = (bundle.directory / f.value).resolve() if not os.path.isabs(f.value) else Path(f.value)
    if p != root and root not in p.parents:
        raise _err(bundle.where(f.line), f"from: {f.value} is outside the bundle directory")
    if not os.path.lexists(bundle.directory / f.value):
        raise _err(bundle.where(f.line), f"from: {f.value} does not exist")
    # Keep the unresolved path so a symlink given as source is itself checked by policy.
    return bundle.directory / f.value


def _normal_mode(st_mode: int) -> int:
    # setuid/setgid/sticky are kept so the policy sees them; group/other mirror the owner.
    special = stat.S_IMODE(st_mode) & 0o7000
    return special | (0o755 if st_mode & 0o111 else 0o644)
