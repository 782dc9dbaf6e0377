"""Ignition authoring: Butane-style YAML (`variant: flatcar`) to validated Ignition JSON.

`render` translates YAML the way Butane does (snake_case keys to Ignition's camelCase,
`inline`/`local` contents to data URLs, `contents_local`, `ssh_authorized_keys_local`,
`storage.trees`), then validates the result (see validation.py) with every error
located at the YAML line and column it came from. `merge` applies Ignition's own merge rules,
`dumps` writes compact (or indented) JSON.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import posixpath
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from acl_compose import ui, yamlpos
from acl_compose.errors import InputError
from acl_compose.ignition.locate import IgnitionError, KeyPath, Locator, Report, parse_json, snake
from acl_compose.ignition.merging import canonical, merge
from acl_compose.ignition.validation import (
    check_config,
    decode_data_url,
    resolve,
    run_ignition_validate,
    schema,
)
from acl_compose.ui import opt
from acl_compose.util import safe_join

__all__ = [
    "IgnitionError",
    "render",
    "load",
    "validate",
    "merge",
    "dumps",
    "data_url",
    "decode_data_url",
    "run_ignition_validate",
    "BUTANE_VERSIONS",
]

BUTANE_VERSIONS = {"1.0.0": "3.3.0", "1.1.0": "3.4.0"}
# Butane-only keys, by the (index-free) Ignition path of the object that may carry them.
EXTRA_KEYS: dict[KeyPath, set[str]] = {
    (): {"variant", "version"},
    ("storage",): {"trees"},
    ("systemd", "units"): {"contents_local"},
    ("systemd", "units", "dropins"): {"contents_local"},
    ("passwd", "users"): {"ssh_authorized_keys_local"},
}
RESOURCE_EXTRAS = {"inline", "local"}


# --- data URLs ----------------------------------------------------------------------------------


# RFC 2396 "unreserved" bytes: left as they are in a percent-encoded data URL (as Butane does).
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()"


def _b64_len(n: int) -> int:
    return len(";base64,") + 4 * ((n + 2) // 3)


def data_url(data: bytes, compress: bool = True) -> tuple[str, str]:
    """The shortest data URL for `data` and its `compression` value, as Butane chooses it:
    percent-encoding (RFC 2396 unreserved characters kept), base64, or gzip+base64 (only
    when it saves more than the 4 bytes of "gzip"). gzip output is deterministic (mtime 0).
    Lengths are computed first so only the winning encoding is built."""
    pct_len = 1 + len(data) + 2 * len(data.translate(None, _UNRESERVED))
    b64_len = _b64_len(len(data))
    if compress:
        packed = gzip.compress(data, 9, mtime=0)
        if _b64_len(len(packed)) + len("gzip") < min(pct_len, b64_len):
            return "data:;base64," + base64.b64encode(packed).decode(), "gzip"
    if pct_len <= b64_len:
        return "data:," + urllib.parse.quote(data, safe="!*'()"), ""
    return "data:;base64," + base64.b64encode(data).decode(), ""


def resource_bytes(res: dict[str, Any]) -> bytes:
    """The decompressed bytes of a data-URL resource (ValueError for other schemes)."""
    data = decode_data_url(res["source"])
    return gzip.decompress(data) if res.get("compression") == "gzip" else data


# --- YAML with positions ------------------------------------------------------------------------


def load_yaml(text: str, filename: str) -> tuple[yamlpos.Located, Locator]:
    """Parse YAML; returns it with its positions, and a locator for error messages."""
    try:
        located = yamlpos.load(text)
    except yaml.YAMLError as e:
        raise IgnitionError([yamlpos.describe(e, filename)], getattr(e, "hint", None)) from None
    return located, Locator(filename, {(): (1, 1), **located.positions}, origin={})


# --- Butane -> Ignition --------------------------------------------------------------------------


def _NO_FILES_DIR() -> str:  # noqa: N802 - reads as the message it is
    flag = opt("--files-dir DIR", "")
    if flag:
        return f"local paths need a files directory: pass {flag}"
    return "local paths need a files directory, and none is given here: inline the contents"


class _Translator:
    def __init__(
        self,
        version: str,
        locator: Locator,
        raws: dict[KeyPath, str],
        files_dir: Path | None,
        report: Report,
    ) -> None:
        self.root = schema(version)
        self.resource_schema = resolve(self.root["definitions"]["resource"], self.root)
        self.locator = locator
        self.origin = locator.origin if locator.origin is not None else {}
        self.raws = raws
        self.files_dir = files_dir
        self.report = report

    def error(self, ypath: KeyPath, msg: str) -> None:
        self.report.error_at_source(ypath, msg)

    def value(self, y: Any, node: dict[str, Any], ypath: KeyPath, ipath: KeyPath) -> Any:
        self.origin[ipath] = ypath
        node = resolve(node, self.root)
        if isinstance(y, dict) and "properties" in node:
            return self.obj(y, node, ypath, ipath)
        if isinstance(y, list) and "items" in node:
            return [
                self.value(v, node["items"], ypath + (i,), ipath + (i,)) for i, v in enumerate(y)
            ]
        return y  # primitives (and type mismatches, which the schema check reports)

    def obj(
        self, y: dict[Any, Any], node: dict[str, Any], ypath: KeyPath, ipath: KeyPath
    ) -> dict[str, Any]:
        props = node["properties"]
        sig = tuple(p for p in ipath if isinstance(p, str))
        is_resource = node is self.resource_schema
        extras = RESOURCE_EXTRAS if is_resource else EXTRA_KEYS.get(sig, set())
        by_snake = {snake(k): k for k in props}
        out: dict[str, Any] = {}
        for key, val in y.items():
            yp = ypath + (key,)
            if key in extras:
                continue
            if sig == ("ignition",) and key == "version":
                self.error(
                    yp,
                    "ignition.version is set from the top-level `version:` "
                    "(Butane 1.0.0 -> 3.3.0, 1.1.0 -> 3.4.0); remove it",
                )
            elif key in by_snake:
                ik = by_snake[key]
                out[ik] = self.value(val, props[ik], yp, ipath + (ik,))
            elif key in props and snake(key) != key:
                self.error(
                    yp, f"unknown key {key!r} (Ignition spelling; Butane YAML uses {snake(key)!r})"
                )
            else:
                self.error(yp, f"unknown key {key!r}")
        if is_resource:
            self.resource(y, out, ypath, ipath)
        elif sig in (("systemd", "units"), ("systemd", "units", "dropins")):
            self.contents_local(y, out, ypath, ipath)
        elif sig == ("passwd", "users") and "ssh_authorized_keys_local" in y:
            self.ssh_keys_local(y["ssh_authorized_keys_local"], out, ypath, ipath)
        elif sig in (("storage", "files"), ("storage", "directories")):
            self.mode(y, out, ypath)
        order = list(props)
        return {k: out[k] for k in sorted(out, key=order.index)}

    # Butane sugar ----------------------------------------------------------------------------

    def read_local(self, rel: Any, ypath: KeyPath) -> bytes | None:
        if not isinstance(rel, str):
            self.error(ypath, "expected a path relative to the files directory")
            return None
        if self.files_dir is None:
            self.error(ypath, _NO_FILES_DIR())
            return None
        if rel.startswith("/"):
            self.error(ypath, f"local path {rel!r} must be relative to the files directory")
            return None
        try:
            path = safe_join(self.files_dir, rel, "local path")
        except InputError:
            self.error(ypath, f"local path {rel!r} escapes the files directory {self.files_dir}")
            return None
        try:
            return path.read_bytes()
        except OSError as e:
            self.error(ypath, f"cannot read local file {rel!r}: {e.strerror}")
            return None

    def resource(
        self, y: dict[str, Any], out: dict[str, Any], ypath: KeyPath, ipath: KeyPath
    ) -> None:
        given = [k for k in ("inline", "local", "source") if k in y]
        if len(given) > 1:
            self.error(
                ypath + (given[1],),
                f"only one of inline, local, source may be set (found {', '.join(given)})",
            )
            return
        if not given or given[0] == "source":
            return
        kind = given[0]
        if y.get("compression"):
            self.error(
                ypath + ("compression",),
                f"compression applies to source only; {kind} contents are compressed automatically",
            )
            return
        if kind == "inline":
            if not isinstance(y["inline"], str):
                self.error(ypath + ("inline",), "expected a string")
                return
            data: bytes | None = y["inline"].encode()
        else:
            data = self.read_local(y["local"], ypath + ("local",))
        if data is None:
            return
        out["source"], out["compression"] = data_url(data)
        self.origin[ipath + ("source",)] = ypath + (kind,)
        self.origin[ipath + ("compression",)] = ypath + (kind,)

    def contents_local(
        self, y: dict[str, Any], out: dict[str, Any], ypath: KeyPath, ipath: KeyPath
    ) -> None:
        if "contents_local" not in y:
            return
        yp = ypath + ("contents_local",)
        if "contents" in y:
            self.error(yp, "contents and contents_local are mutually exclusive")
            return
        data = self.read_local(y["contents_local"], yp)
        if data is not None:
            try:
                out["contents"] = data.decode()
            except UnicodeDecodeError:
                self.error(yp, "unit contents must be UTF-8 text")
                return
            self.origin[ipath + ("contents",)] = yp

    def ssh_keys_local(
        self, files: Any, out: dict[str, Any], ypath: KeyPath, ipath: KeyPath
    ) -> None:
        yp = ypath + ("ssh_authorized_keys_local",)
        if not isinstance(files, list):
            self.error(yp, "expected a list of paths relative to the files directory")
            return
        keys = list(out.get("sshAuthorizedKeys", []))
        for i, rel in enumerate(files):
            data = self.read_local(rel, yp + (i,))
            if data is None:
                continue
            for line in data.decode(errors="replace").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    self.origin[ipath + ("sshAuthorizedKeys", len(keys))] = yp + (i,)
                    keys.append(line.strip())
        out["sshAuthorizedKeys"] = keys

    def mode(self, y: dict[str, Any], out: dict[str, Any], ypath: KeyPath) -> None:
        """Modes by the one rule of every YAML here (yamlpos.file_mode); each bad one is
        reported here, so all are listed, not only those the schema check would see."""
        if "mode" not in y or y["mode"] is None:
            return
        yp = ypath + ("mode",)
        try:
            out["mode"], warning = yamlpos.file_mode(y["mode"], self.raws.get(yp))
        except yamlpos.ScalarError as e:
            self.error(yp, str(e))
            out.pop("mode", None)
            return
        if warning:
            self.report.warnings.append(f"{self.locator.where(yp)}: {warning}")

    def trees(self, trees: Any, storage: dict[str, Any]) -> None:
        ytrees: KeyPath = ("storage", "trees")
        if not isinstance(trees, list):
            self.error(ytrees, "expected a list of {local, path}")
            return
        files = storage.setdefault("files", [])
        links = storage.setdefault("links", [])
        by_path = {f.get("path"): f for f in files if isinstance(f, dict)}
        taken = {
            n.get("path") for n in storage.get("directories", []) + links if isinstance(n, dict)
        }
        for t, tree in enumerate(trees):
            yp = ytrees + (t,)
            if not isinstance(tree, dict) or "local" not in tree:
                self.error(yp, "a tree needs `local` (a directory under the files directory)")
                continue
            for key in tree:
                if key not in ("local", "path"):
                    self.error(yp + (key,), f"unknown key {key!r}")
            if self.files_dir is None:
                self.error(yp + ("local",), _NO_FILES_DIR())
                continue
            try:
                top = safe_join(self.files_dir, str(tree["local"]), "tree")
            except InputError:
                self.error(yp + ("local",), f"tree {tree['local']!r} escapes the files directory")
                continue
            if not top.is_dir():
                self.error(yp + ("local",), f"tree {tree['local']!r} is not a directory")
                continue
            dest_root = str(tree.get("path", "/"))
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                for name in sorted(
                    filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
                ):
                    src = Path(dirpath, name)
                    dest = posixpath.join(dest_root, str(src.relative_to(top)))
                    if src.is_symlink():
                        if dest in by_path or dest in taken:
                            self.error(yp, f"tree entry {dest!r} is already defined")
                            continue
                        self.origin[("storage", "links", len(links))] = yp
                        links.append({"path": dest, "target": os.readlink(src)})
                        continue
                    url, comp = data_url(src.read_bytes())
                    mode = 0o755 if src.stat().st_mode & 0o111 else 0o644
                    entry = by_path.get(dest)
                    if entry is None and dest not in taken:
                        self.origin[("storage", "files", len(files))] = yp
                        files.append(
                            {
                                "path": dest,
                                "contents": {"source": url, "compression": comp},
                                "mode": mode,
                            }
                        )
                    elif entry is not None and not entry.get("contents", {}).get("source"):
                        entry["contents"] = {"source": url, "compression": comp}
                        entry.setdefault("mode", mode)
                    else:
                        self.error(yp, f"tree entry {dest!r} is already defined")
        for key in ("files", "links"):
            if not storage[key]:
                del storage[key]


def render_text(
    text: str,
    filename: str,
    files_dir: str | os.PathLike[str] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    located, locator = load_yaml(text, filename)
    data = located.data
    report = Report(locator)
    if not isinstance(data, dict):
        report.error_at_source((), "expected a mapping with variant: flatcar and version:")
        report.raise_if_errors()
    if data.get("variant") != "flatcar":
        report.error_at_source(
            ("variant",) if "variant" in data else (),
            f"variant must be 'flatcar' (got {data.get('variant')!r})",
        )
    bversion = data.get("version")
    if "version" in data and not isinstance(bversion, str):
        try:
            yamlpos.text(bversion, located.raws.get(("version",)), "version")
        except yamlpos.ScalarError as e:
            report.error_at_source(("version",), str(e))
    elif bversion not in BUTANE_VERSIONS:
        report.error_at_source(
            ("version",) if "version" in data else (),
            f"unsupported version {bversion!r}; acl-compose knows flatcar 1.0.0 "
            "(Ignition 3.3.0) and 1.1.0 (Ignition 3.4.0)",
        )
    report.raise_if_errors(hint="start the file with `variant: flatcar` and `version: 1.0.0`")
    version = BUTANE_VERSIONS[bversion]
    tr = _Translator(version, locator, located.raws, Path(files_dir) if files_dir else None, report)
    tr.origin[()] = ()
    tr.origin[("ignition", "version")] = ("version",)
    body = tr.obj(data, tr.root, (), ())
    storage = data.get("storage")
    if isinstance(storage, dict) and "trees" in storage:
        tr.trees(storage["trees"], body.setdefault("storage", {}))
    ign = body.get("ignition", {}) if isinstance(body.get("ignition"), dict) else {}
    cfg = {"ignition": {"version": version, **ign}}
    cfg.update({k: v for k, v in body.items() if k != "ignition"})
    check_config(cfg, report)  # also after translation errors: every error is listed
    report.raise_if_errors()
    _emit(report.warnings, warnings)
    return canonical(cfg, version)


def _emit(found: list[str], sink: list[str] | None) -> None:
    if sink is not None:
        sink.extend(found)
    else:
        for w in found:
            ui.warn(w)


def _display(path: str | os.PathLike[str]) -> str:
    """A path as the user would write it: relative to the working directory if inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _read(path: str | os.PathLike[str]) -> str:
    """The text of a config; YAML (by its suffix) only as far as yamlpos's size limit."""
    try:
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            return yamlpos.read(path)
        return Path(path).read_text()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}", hint="check the path") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text", hint="pass a YAML or JSON file") from None
    except yaml.YAMLError as e:
        hint = getattr(e, "hint", None)
        raise IgnitionError([yamlpos.describe(e, _display(path))], hint) from None


def render(
    path: str | os.PathLike[str],
    files_dir: str | os.PathLike[str] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """Render Butane-style YAML to an Ignition config dict; IgnitionError if invalid.
    Warnings go to `warnings` if given, else to stderr."""
    return render_text(_read(path), _display(path), files_dir, warnings)


def is_json(path: str | os.PathLike[str], text: str) -> bool:
    suffix = Path(path).suffix.lower()
    if suffix in (".ign", ".json"):
        return True
    if suffix in (".yaml", ".yml"):
        return False
    return text.lstrip().startswith("{")


def load(
    path: str | os.PathLike[str],
    files_dir: str | os.PathLike[str] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """An Ignition config from YAML (rendered) or JSON (validated); IgnitionError if invalid."""
    text = _read(path)
    if not is_json(path, text):
        return render_text(text, _display(path), files_dir, warnings)
    cfg, locator = parse_json(text, _display(path))
    _emit(validate(cfg, locator), warnings)
    return cfg


def validate(config: Any, locator: Locator | None = None) -> list[str]:
    """Validate an Ignition config dict; returns warnings, raises IgnitionError on errors."""
    report = Report(locator or Locator())
    check_config(config, report)
    report.raise_if_errors()
    return report.warnings


def dumps(config: dict[str, Any], pretty: bool = False) -> str:
    """Compact JSON (Ignition reads it as is), or indented with `pretty`."""
    if pretty:
        return json.dumps(config, indent=2, ensure_ascii=False)
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False)
