"""`acl-compose diff OLD NEW`: what changed between two releases (or two disk images).

Compares the models `snapshot` reads: base version and packages (added, removed, version
changes), sysexts (added, removed; per sysext version, image hash, files added/removed/changed,
units), the Ignition config structurally (files, directories, links by path; units, users,
groups by name; everything else by key), output sizes, and the signer. The result is a JSON-able
dict; `format_text` renders it for people.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from acl_compose.provenance.snapshot import fill_from_disk, snapshot, units_of

# Ignition lists merged by a key (as Ignition merges them): section -> (path in the config, key)
IGNITION_LISTS = {
    "files": (("storage", "files"), "path"),
    "directories": (("storage", "directories"), "path"),
    "links": (("storage", "links"), "path"),
    "disks": (("storage", "disks"), "device"),
    "filesystems": (("storage", "filesystems"), "device"),
    "raid": (("storage", "raid"), "name"),
    "luks": (("storage", "luks"), "name"),
    "units": (("systemd", "units"), "name"),
    "users": (("passwd", "users"), "name"),
    "groups": (("passwd", "groups"), "name"),
}
MAX_DIFF_LINES = 60


def diff(old: str | Path, new: str | Path) -> dict[str, Any]:
    """Compare two releases/images; `result["changed"]` says whether anything differs."""
    a, b = snapshot(old), snapshot(new)
    need_files = any(s.get("files") is None for x in (a, b) for s in x["sysexts"].values())
    if (
        need_files
        or a.get("ignition_sha256") != b.get("ignition_sha256")
        or not a.get("ignition_sha256")
    ):
        for x in (a, b):
            fill_from_disk(x, need_files)
    result: dict[str, Any] = {
        "old": _summary(a),
        "new": _summary(b),
        "release": {k: [a[k], b[k]] for k in ("name", "version") if a[k] != b[k]},
        "base": _base(a["base"], b["base"]),
        "sysexts": _sysexts(a["sysexts"], b["sysexts"]),
        "ignition": _ignition(a, b),
        "outputs": _outputs(a["outputs"], b["outputs"]),
        "signer": _signer(a.get("signer"), b.get("signer")),
    }
    result["changed"] = any(
        bool(result[k]) for k in ("release", "base", "sysexts", "ignition", "outputs", "signer")
    )
    return result


def _summary(s: dict[str, Any]) -> dict[str, Any]:
    return {"kind": s["kind"], "path": s["path"], "name": s.get("name"),
            "version": s.get("version")}  # fmt: skip


def _added_removed(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(b) - set(a)), sorted(set(a) - set(b))


def _base(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if a["version"] != b["version"]:
        out["version"] = [a["version"], b["version"]]
    pa, pb = a.get("packages"), b.get("packages")
    if pa is not None and pb is not None:
        added, removed = _added_removed(pa, pb)
        changed = [{"name": n, "old": pa[n], "new": pb[n]}
                   for n in sorted(set(pa) & set(pb)) if pa[n] != pb[n]]  # fmt: skip
        pkgs = {
            "added": [{"name": n, "version": pb[n]} for n in added],
            "removed": [{"name": n, "version": pa[n]} for n in removed],
            "changed": changed,
        }
        if any(pkgs.values()):
            out["packages"] = pkgs
    elif (pa is None) != (pb is None):
        out["packages_note"] = "only one side lists its base packages (no SBOM or an image)"
    return out


def _files(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, list[str]]:
    if a is None or b is None:
        return {}
    added, removed = _added_removed(a, b)
    changed = [p for p in sorted(set(a) & set(b)) if a[p] != b[p]]
    return {k: v for k, v in (("added", added), ("removed", removed), ("changed", changed)) if v}


def _sysexts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    added, removed = _added_removed(a, b)
    changed = []
    for name in sorted(set(a) & set(b)):
        sa, sb = a[name], b[name]
        entry: dict[str, Any] = {"name": name}
        if sa.get("version") != sb.get("version"):
            entry["version"] = [sa.get("version"), sb.get("version")]
        if sa.get("sha256") != sb.get("sha256"):
            entry["sha256"] = [sa.get("sha256"), sb.get("sha256")]
        files = _files(sa.get("files"), sb.get("files"))
        if files:
            entry["files"] = files
        if sa.get("files") is not None and sb.get("files") is not None:
            ua, ub = units_of(sa["files"]), units_of(sb["files"])
            units = {"added": sorted(set(ub) - set(ua)), "removed": sorted(set(ua) - set(ub))}
            if any(units.values()):
                entry["units"] = {k: v for k, v in units.items() if v}
        if len(entry) > 1:
            changed.append(entry)
    out: dict[str, Any] = {}
    if added:
        out["added"] = [{"name": n, "version": b[n].get("version")} for n in added]
    if removed:
        out["removed"] = [{"name": n, "version": a[n].get("version")} for n in removed]
    if changed:
        out["changed"] = changed
    return out


def _get(cfg: dict[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        cfg = cfg.get(p) or {} if isinstance(cfg, dict) else {}
    return cfg or []


def _ignition(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    ca, cb = a.get("ignition"), b.get("ignition")
    if a.get("ignition_sha256") == b.get("ignition_sha256") and a.get("ignition_sha256"):
        return {}
    if ca is None and cb is None:
        return {}
    if ca is None or cb is None:
        return {"config": ["absent" if ca is None else "present",
                           "absent" if cb is None else "present"]}  # fmt: skip
    out: dict[str, Any] = {}
    for section, (path, key) in IGNITION_LISTS.items():
        la = {str(i.get(key)): i for i in _get(ca, path) if isinstance(i, dict)}
        lb = {str(i.get(key)): i for i in _get(cb, path) if isinstance(i, dict)}
        added, removed = _added_removed(la, lb)
        changed = []
        for k in sorted(set(la) & set(lb)):
            if la[k] == lb[k]:
                continue
            fields = sorted(f for f in set(la[k]) | set(lb[k]) if la[k].get(f) != lb[k].get(f))
            entry: dict[str, Any] = {key: k, "fields": fields}
            text_diff = _contents_diff(section, k, la[k], lb[k])
            if text_diff:
                entry["diff"] = text_diff
            changed.append(entry)
        part = {n: v for n, v in (("added", added), ("removed", removed), ("changed", changed))
                if v}  # fmt: skip
        if part:
            out[section] = part
    ra, rb = _rest(ca), _rest(cb)
    other = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
    if other:
        out["other"] = other
    return out


def _rest(cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything outside the keyed lists, flattened to dotted keys."""
    listed = {path for path, _ in IGNITION_LISTS.values()}
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if prefix in listed:
            return
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, (*prefix, k))
        else:
            out[".".join(prefix)] = json.dumps(node, sort_keys=True)

    walk(cfg, ())
    return out


def _contents_diff(section: str, key: str, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """A unified diff of a changed file's (or unit's) text, when both sides are inline text."""
    from acl_compose.ignition import resource_bytes

    def text(item: dict[str, Any]) -> str | None:
        if section == "units":
            return item.get("contents")
        res = item.get("contents")
        if section != "files" or not isinstance(res, dict) or not res.get("source"):
            return None
        try:
            return resource_bytes(res).decode()
        except (ValueError, UnicodeDecodeError, OSError):
            return None

    ta, tb = text(a), text(b)
    if ta is None or tb is None or ta == tb:
        return []
    lines = list(difflib.unified_diff(ta.splitlines(), tb.splitlines(), f"a{key}", f"b{key}",
                                      lineterm="", n=1))  # fmt: skip
    if len(lines) > MAX_DIFF_LINES:
        lines = lines[:MAX_DIFF_LINES] + [f"... ({len(lines) - MAX_DIFF_LINES} more lines)"]
    return lines


def _outputs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    added, removed = _added_removed(a, b)
    sizes = [{"format": f, "old": a[f]["size"], "new": b[f]["size"]}
             for f in sorted(set(a) & set(b)) if a[f]["size"] != b[f]["size"]]  # fmt: skip
    out: dict[str, Any] = {}
    if added:
        out["added"] = [b[f]["file"] for f in added]
    if removed:
        out["removed"] = [a[f]["file"] for f in removed]
    if sizes:
        out["size"] = sizes
    return out


def _signer(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    fa = (a or {}).get("fingerprint")
    fb = (b or {}).get("fingerprint")
    if fa == fb:
        return {}
    return {"old": a, "new": b}


# --------------------------------------------------------------------------- text


def format_text(r: dict[str, Any]) -> list[str]:
    o, n = r["old"], r["new"]
    lines = [f"--- {o['path']} ({_what(o)})", f"+++ {n['path']} ({_what(n)})"]
    if not r["changed"]:
        return [*lines, "no differences"]
    for k, (va, vb) in r["release"].items():
        lines.append(f"release {k}: {va} -> {vb}")
    base = r["base"]
    if "version" in base:
        lines.append(f"base version: {base['version'][0]} -> {base['version'][1]}")
    pk = base.get("packages") or {}
    lines += [f"base package + {p['name']} {p['version']}" for p in pk.get("added", [])]
    lines += [f"base package - {p['name']} {p['version']}" for p in pk.get("removed", [])]
    lines += [f"base package ~ {p['name']} {p['old']} -> {p['new']}" for p in pk.get("changed", [])]
    if base.get("packages_note"):
        lines.append(f"base packages: {base['packages_note']}")
    sx = r["sysexts"]
    lines += [f"sysext + {s['name']} {s['version']}" for s in sx.get("added", [])]
    lines += [f"sysext - {s['name']} {s['version']}" for s in sx.get("removed", [])]
    for s in sx.get("changed", []):
        head = f"sysext ~ {s['name']}"
        if "version" in s:
            head += f": version {s['version'][0]} -> {s['version'][1]}"
        elif "sha256" in s:
            head += f": image {s['sha256'][0][:12]}… -> {s['sha256'][1][:12]}…"
        lines.append(head)
        for kind, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
            lines += [f"    {sign} {p}" for p in s.get("files", {}).get(kind, [])]
        for kind, sign in (("added", "+"), ("removed", "-")):
            lines += [f"    unit {sign} {u}" for u in s.get("units", {}).get(kind, [])]
    ign = r["ignition"]
    for section, part in ign.items():
        if section == "other":
            lines += [f"ignition ~ {k}" for k in part]
            continue
        if section == "config":
            lines.append(f"ignition config: {part[0]} -> {part[1]}")
            continue
        what = section.rstrip("s")
        lines += [f"ignition {what} + {k}" for k in part.get("added", [])]
        lines += [f"ignition {what} - {k}" for k in part.get("removed", [])]
        for c in part.get("changed", []):
            key = next(v for k, v in c.items() if k not in ("fields", "diff"))
            lines.append(f"ignition {what} ~ {key} ({', '.join(c['fields'])})")
            lines += [f"    {d}" for d in c.get("diff", [])]
    out = r["outputs"]
    lines += [f"output + {f}" for f in out.get("added", [])]
    lines += [f"output - {f}" for f in out.get("removed", [])]
    lines += [f"output {s['format']} size: {s['old']} -> {s['new']} bytes"
              for s in out.get("size", [])]  # fmt: skip
    if r["signer"]:
        a, b = r["signer"]["old"] or {}, r["signer"]["new"] or {}
        lines.append(f"signer: {_cert(a)} -> {_cert(b)}")
    return lines


def _what(s: dict[str, Any]) -> str:
    if s["kind"] == "release":
        return f"release {s.get('name')} {s.get('version')}"
    return "disk image"


def _cert(c: dict[str, Any]) -> str:
    if not c:
        return "none"
    fpr = str(c.get("fingerprint") or "?")
    return f"{c.get('subject') or '?'} (sha256 {fpr[:16]}…)"
