"""Validation of Ignition 3.3.0 / 3.4.0 configs, with errors located in the source file.

Two layers: a structural walk over the vendored Ignition JSON schema (types, required keys,
and unknown keys, which the schema itself does not reject), then the semantic rules Ignition
applies in Go (absolute clean paths, duplicate entries, mode range, unit syntax, data URLs,
hashes ...). Messages follow Ignition's wording where it has one, so they match what a machine
would print at first boot. Where Debian's `ignition-validate` is installed, `run_ignition_validate`
gets its independent verdict too.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import json
import posixpath
import re
import urllib.parse
import zlib
from pathlib import Path
from typing import Any

from acl_compose.ignition import flatcar
from acl_compose.ignition.locate import KeyPath, Report, dotted
from acl_compose.run import run, which

SPECS = ("3.3.0", "3.4.0")
SCHEMA_DIR = Path(__file__).parent / "schema"
URL_SCHEMES = {"http", "https", "tftp", "s3", "gs", "arn", "data"}
FS_FORMATS = {None, "", "ext4", "btrfs", "xfs", "vfat", "swap", "none"}
HASH_SIZES = {"sha512": 128, "sha256": 64}
UNIT_SUFFIXES = (
    ".service .socket .device .mount .automount .swap .target .path .timer .snapshot .slice .scope"
).split()
# Units an enabled-without-contents entry may name: shipped by Flatcar (or Debian's systemd).
KNOWN_UNITS = set(
    """
    docker.service docker.socket containerd.service sshd.service sshd.socket ssh.service
    ssh.socket locksmithd.service update-engine.service waagent.service chronyd.service
    chrony.service ntpd.service iscsid.service iscsi.service multipathd.service
    nvidia.service fstrim.timer fstrim.service logrotate.timer logrotate.service
    etcd-member.service flanneld.service multi-user.target network-online.target
    sysinit.target basic.target getty.target serial-getty@ttyS0.service getty@tty1.service
    nfs-server.service rpcbind.service sssd.service kubelet.service dbus.service
    """.split()
)


# --- the schema ------------------------------------------------------------------------------


@functools.cache
def schema(version: str) -> dict[str, Any]:
    name = "v" + "_".join(version.split(".")[:2]) + ".json"
    return json.loads((SCHEMA_DIR / name).read_text())


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`s and flatten `allOf` into one {type, properties, required, items}."""
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    if "allOf" not in node:
        return node
    flat: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
    for sub in node["allOf"]:
        sub = resolve(sub, root)
        flat["properties"].update(sub.get("properties", {}))
        flat["required"] += sub.get("required", [])
    return flat


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def check_schema(
    value: Any, node: dict[str, Any], root: dict[str, Any], path: KeyPath, report: Report
) -> None:
    node = resolve(node, root)
    want = node.get("type")
    if want is not None:
        allowed = want if isinstance(want, list) else [want]
        got = json_type(value)
        if got not in allowed:
            shown = " or ".join(t for t in allowed if t != "null")
            report.error(path, f"expected {shown}, got {got}")
            return
    if isinstance(value, dict):
        props = node.get("properties", {})
        for key, sub in value.items():
            if key in props:
                check_schema(sub, props[key], root, path + (key,), report)
            else:
                report.error(path + (key,), unknown_key_message(key, props))
        for key in node.get("required", []):
            if key not in value:
                report.error(path, f"missing required key {key!r}")
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            check_schema(item, node["items"], root, path + (i,), report)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def unknown_key_message(key: str, props: dict[str, Any]) -> str:
    msg = f"unknown key {key!r}"
    if camel(key) in props and camel(key) != key:
        return f"{msg} (Butane spelling; Ignition JSON uses {camel(key)!r})"
    return msg


# --- data URLs and resources ------------------------------------------------------------------


def decode_data_url(url: str) -> bytes:
    """Decode `data:[<mediatype>][;base64],<data>` strictly, as Ignition does; ValueError else."""
    if not url.startswith("data:") or "," not in url:
        raise ValueError("missing comma in data URL")
    header, data = url[5:].split(",", 1)
    if header.split(";")[-1] == "base64":
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as e:
            raise ValueError(f"illegal base64 data: {e}") from None
    bad = re.search(r"%(?![0-9A-Fa-f]{2})", data)
    if bad:
        raise ValueError(f"invalid percent-escape at data offset {bad.start()}")
    bad = re.search(r"[^A-Za-z0-9\-_.!~*'();/?:@&=+$,%]", data)
    if bad:  # RFC 2396 URI characters only; Ignition refuses the rest
        raise ValueError(f"invalid data character {bad.group()!r} at data offset {bad.start()}")
    return urllib.parse.unquote_to_bytes(data)


def check_hash(spec: str) -> tuple[str, str] | str:
    """`sha512-<hex>` -> (function, hex); or an error message in Ignition's words."""
    if "-" not in spec:
        return "malformed hash specifier"
    fn, _, digest = spec.partition("-")
    if fn not in HASH_SIZES:
        return f"unrecognized hash function {fn!r} (use sha512 or sha256)"
    if len(digest) != HASH_SIZES[fn]:
        return f"incorrect size for hash sum ({len(digest)} hex digits, {fn} has {HASH_SIZES[fn]})"
    if not re.fullmatch(r"[0-9a-fA-F]+", digest):
        return "hash sum is not hexadecimal"
    return fn, digest.lower()


def check_resource(
    res: dict[str, Any], path: KeyPath, report: Report, require_source: bool = False
) -> None:
    source = res.get("source")
    compression = res.get("compression")
    if compression not in (None, "", "gzip"):
        report.error(path + ("compression",), f"invalid compression method {compression!r}")
        compression = None
    if source == "":
        source = None  # Ignition treats an empty source as none
    if source is None:
        if require_source:
            report.error(path, "source is required")
        if res.get("verification", {}).get("hash") is not None:
            report.error(path + ("verification", "hash"), "verification requires a source")
        return
    if re.search(r"[\x00-\x1f\x7f]", source):
        report.error(path + ("source",), "unable to parse url: control character in URL")
        return
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    if scheme not in URL_SCHEMES:
        report.error(path + ("source",), f"invalid url scheme {scheme or source!r}")
        return
    data = None
    if scheme == "data":
        try:
            data = decode_data_url(source)
            if compression == "gzip":
                data = gzip.decompress(data)
        except (ValueError, OSError, EOFError, zlib.error) as e:
            report.error(path + ("source",), f"data URL does not decode: {e}")
            return
    hspec = res.get("verification", {}).get("hash")
    if hspec is not None:
        parsed = check_hash(hspec)
        if isinstance(parsed, str):
            report.error(path + ("verification", "hash"), parsed)
        elif data is not None and hashlib.new(parsed[0], data).hexdigest() != parsed[1]:
            actual = hashlib.new(parsed[0], data).hexdigest()
            report.error(
                path + ("verification", "hash"),
                f"hash does not match the contents ({parsed[0]}-{actual})",
            )


# --- semantic checks ----------------------------------------------------------------------------


def check_path(p: str, path: KeyPath, report: Report) -> None:
    if not p.startswith("/"):
        report.error(path, f"path not absolute: {p!r}")
    elif posixpath.normpath(p) != p or p.startswith("//"):
        report.error(path, f"path is not fully simplified: {p!r}")


def unit_syntax_error(text: str) -> str | None:
    """The first syntax error systemd's (go-systemd's) unit parser would report, or None."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].lstrip(" \t\ufeff")
        i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            end = line.find("]")
            if end < 0:
                return "invalid unit content: unable to find end of section"
            if line[end + 1 :].strip():
                return (
                    f'invalid unit content: found garbage after section name : "{line[end + 1 :]}"'
                )
            continue
        if "=" not in line:
            where = "newline" if i < len(lines) else "end of file"
            return f"invalid unit content: unexpected {where} encountered while parsing option name"
        while line.endswith("\\") and i < len(lines):  # continuation lines
            line = lines[i]
            i += 1
    return None


def known_unit(name: str) -> bool:
    return name in KNOWN_UNITS or name.startswith("systemd-") or name.endswith(".target")


def check_duplicates(items: list[tuple[str, KeyPath]], what: str, report: Report) -> None:
    seen: dict[str, KeyPath] = {}
    for key, path in items:
        if key in seen:
            other = report.locator.source_path(seen[key])
            report.error(path, f"duplicate entry defined: {what} {key!r} is also {dotted(other)}")
        else:
            seen[key] = path


def check_semantics(cfg: dict[str, Any], version: str, report: Report) -> None:
    ign = cfg.get("ignition", {})
    conf = ign.get("config", {})
    for i, res in enumerate(conf.get("merge", [])):
        check_resource(res, ("ignition", "config", "merge", i), report, require_source=True)
    if conf.get("replace"):
        check_resource(conf["replace"], ("ignition", "config", "replace"), report)
    cas = ign.get("security", {}).get("tls", {}).get("certificateAuthorities", [])
    for i, res in enumerate(cas):
        check_resource(
            res,
            ("ignition", "security", "tls", "certificateAuthorities", i),
            report,
            require_source=True,
        )

    proxy = ign.get("proxy", {})
    if (proxy.get("httpsProxy") or "").startswith("http://"):
        report.warn(
            ("ignition", "proxy", "httpsProxy"),
            "insecure plaintext HTTP proxy specified for HTTPS resources",
        )

    storage = cfg.get("storage", {})
    nodes: list[tuple[str, KeyPath]] = []
    for kind in ("files", "directories", "links"):
        for i, node in enumerate(storage.get(kind, [])):
            base: KeyPath = ("storage", kind, i)
            check_path(node["path"], base + ("path",), report)
            nodes.append((node["path"], base))
            for owner in ("user", "group"):
                o = node.get(owner, {})
                if o.get("id") is not None and o.get("name") is not None:
                    report.error(base + (owner,), "cannot set both id and name")
            mode = node.get("mode")
            if mode is not None:
                if not 0 <= mode <= 0o7777:
                    report.error(
                        base + ("mode",),
                        f"illegal file mode {mode} (must be 0 to 4095, octal 0 to 07777)",
                    )
                elif mode & 0o7000 and version == "3.3.0":
                    report.warn(
                        base + ("mode",),
                        "setuid/setgid/sticky bits are not supported in "
                        "spec versions older than 3.4.0",
                    )
            if kind == "files":
                contents = node.get("contents", {})
                check_resource(contents, base + ("contents",), report)
                for j, res in enumerate(node.get("append", [])):
                    check_resource(res, base + ("append", j), report)
                if node.get("overwrite") and contents.get("source") is None:
                    report.error(
                        base + ("overwrite",), "overwrite must be false if source is unspecified"
                    )
            if kind == "links" and not node.get("target"):
                report.error(base, "link target is required")
    check_duplicates(nodes, "path", report)
    links = {node["path"] for node in storage.get("links", [])}
    what = {"files": "file", "directories": "directory", "links": "link"}
    dirs = {node["path"] for node in storage.get("directories", [])}
    for p, base in nodes:
        parent, child = posixpath.dirname(p), p
        while parent != child:  # up to "/" (or "" for a relative path, already an error)
            if parent in links:
                report.error(base, f"{what[str(base[1])]} path includes link in config")
                break
            parent, child = posixpath.dirname(parent), parent
    for i, link in enumerate(storage.get("links", [])):
        if link.get("hard") and link.get("target") in dirs:
            report.error(("storage", "links", i), "hard link target is a directory")

    units = cfg.get("systemd", {}).get("units", [])
    unit_paths = set()
    for i, unit in enumerate(units):
        base = ("systemd", "units", i)
        name = unit["name"]
        if not name.endswith(tuple(UNIT_SUFFIXES)):
            report.error(base + ("name",), f"invalid systemd unit extension: {name!r}")
        if unit.get("contents"):
            unit_paths.add(f"/etc/systemd/system/{name}")
            err = unit_syntax_error(unit["contents"])
            if err:
                report.error(base + ("contents",), err)
        elif unit.get("enabled") and not known_unit(name) and not unit.get("dropins"):
            report.warn(
                base,
                f"unit {name!r} is enabled but has no contents and is not a known "
                "upstream unit; enabling fails at boot unless the image ships it",
            )
        dropins = unit.get("dropins", [])
        for j, dropin in enumerate(dropins):
            if not dropin["name"].endswith(".conf"):
                report.error(
                    base + ("dropins", j, "name"),
                    f"invalid systemd drop-in extension: {dropin['name']!r}",
                )
            if dropin.get("contents"):
                unit_paths.add(f"/etc/systemd/system/{name}.d/{dropin['name']}")
                err = unit_syntax_error(dropin["contents"])
                if err:
                    report.error(base + ("dropins", j, "contents"), err)
        check_duplicates(
            [(d["name"], base + ("dropins", j)) for j, d in enumerate(dropins)], "drop-in", report
        )
    check_duplicates(
        [(u["name"], ("systemd", "units", i)) for i, u in enumerate(units)], "unit", report
    )
    for p, base in nodes:
        if p in unit_paths:
            report.error(base + ("path",), "path conflicts with systemd unit or dropin")
    flatcar.check(cfg, report)

    for i, fs in enumerate(storage.get("filesystems", [])):
        base = ("storage", "filesystems", i)
        check_path(fs["device"], base + ("device",), report)
        if fs.get("path"):
            check_path(fs["path"], base + ("path",), report)
        if fs.get("format") not in FS_FORMATS:
            report.error(base + ("format",), f"invalid filesystem format {fs['format']!r}")

    passwd = cfg.get("passwd", {})
    for kind in ("users", "groups"):
        check_duplicates(
            [(u["name"], ("passwd", kind, i)) for i, u in enumerate(passwd.get(kind, []))],
            kind[:-1],
            report,
        )
    kargs = cfg.get("kernelArguments", {})
    check_duplicates(
        [
            (a, ("kernelArguments", kind, i))
            for kind in ("shouldExist", "shouldNotExist")
            for i, a in enumerate(kargs.get(kind, []))
        ],
        "kernel argument",
        report,
    )


def check_config(cfg: Any, report: Report) -> str | None:
    """Validate an Ignition config into `report`; returns its spec version if recognised."""
    if not isinstance(cfg, dict):
        report.error((), f"expected a JSON object, got {json_type(cfg)}")
        return None
    ign = cfg.get("ignition")
    version = ign.get("version") if isinstance(ign, dict) else None
    if version is None:
        report.error(
            ("ignition",) if isinstance(ign, dict) else (),
            "missing required key 'version' in ignition",
        )
        return None
    if version not in SPECS:
        report.error(
            ("ignition", "version"),
            f"unsupported config version {version!r} (expected 3.3.0 or 3.4.0)",
        )
        return None
    root = schema(version)
    before = len(report.errors)
    check_schema(cfg, root, root, (), report)
    if len(report.errors) == before:  # semantics need a schema-valid config, nothing more:
        check_semantics(cfg, version, report)  # errors found before (a bad mode) add to them
    return version


# --- Debian's ignition-validate -----------------------------------------------------------------


def run_ignition_validate(path: str | Path) -> dict[str, Any]:
    """Run Ignition's own validator; verdict is ok, invalid, unsupported (spec too new) or
    missing. `messages` carries its output lines."""
    tool = which("ignition-validate")
    if tool is None:
        return {"verdict": "missing", "messages": [], "version": None}
    version = run([tool, "--version"], check=False).stdout.decode(errors="replace").strip()
    proc = run([tool, str(path)], check=False)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    messages = [line for line in out.splitlines() if line.strip()]
    if proc.returncode == 0:
        verdict = "ok"
    elif "unsupported config version" in out:
        verdict = "unsupported"
    else:
        verdict = "invalid"
    return {"verdict": verdict, "messages": messages, "version": version}
