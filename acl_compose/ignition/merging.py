"""Ignition's config merge rules, for combining base configs (see ignition.merge).

Mirrors coreos/ignition config/merge: structs merge field by field (the child's non-null
value wins), keyed lists merge entries with the same key and append the child's new ones,
files/directories/links share one path space (a child's directory removes the parent's file
at that path), kernelArguments.shouldExist/shouldNotExist share one key space, and lists
like files[].append are concatenated.
"""

from __future__ import annotations

import json
from typing import Any

from acl_compose.errors import InputError
from acl_compose.ignition.locate import KeyPath
from acl_compose.ignition.validation import SPECS, resolve, schema

_KEYED: dict[KeyPath, str] = {
    ("ignition", "config", "merge"): "source",
    ("ignition", "security", "tls", "certificateAuthorities"): "source",
    ("storage", "disks"): "device",
    ("storage", "raid"): "name",
    ("storage", "luks"): "name",
    ("storage", "luks", "clevis", "tang"): "url",
    ("storage", "filesystems"): "device",
    ("storage", "files"): "path",
    ("storage", "directories"): "path",
    ("storage", "links"): "path",
    ("systemd", "units"): "name",
    ("systemd", "units", "dropins"): "name",
    ("passwd", "users"): "name",
    ("passwd", "groups"): "name",
}
_APPEND = {
    ("storage", "files", "append"),
    ("storage", "raid", "options"),
    ("storage", "luks", "options"),
    ("storage", "luks", "openOptions"),
    ("storage", "filesystems", "options"),
    ("storage", "filesystems", "mountOptions"),
}
# Lists that share one key space: an entry in one removes the parent's entry in the others.
_HANDLES: dict[KeyPath, dict[str, str]] = {
    ("storage",): {"files": "node", "directories": "node", "links": "node"},
    ("kernelArguments",): {"shouldExist": "karg", "shouldNotExist": "karg"},
}


def _key(sig: KeyPath, item: Any) -> str:
    if not isinstance(item, dict):
        return json.dumps(item)
    if sig == ("storage", "disks", "partitions"):
        if item.get("number"):
            return f"number:{item['number']}"
        return f"label:{item['label']}" if item.get("label") is not None else ""
    field = "name" if sig[-1] == "httpHeaders" else _KEYED.get(sig, "")
    return str(item.get(field) or "")


def _merge_obj(parent: dict[str, Any], child: dict[str, Any], sig: KeyPath) -> dict[str, Any]:
    handles = _HANDLES.get(sig, {})
    child_index: dict[tuple[str, str], tuple[str, Any]] = {}
    for name, val in child.items():
        if isinstance(val, list) and sig + (name,) not in _APPEND:
            for item in val:  # later entries with the same key win, as in Go's map
                child_index[(handles.get(name, name), _key(sig + (name,), item))] = (name, item)
    result: dict[str, Any] = {}
    for name in list(parent) + [k for k in child if k not in parent]:
        p, c = parent.get(name), child.get(name)
        if isinstance(p, list) and c is None and handles:
            c = []  # the child may still remove entries through a sibling list
        if c is None:
            result[name] = p
        elif p is None:
            result[name] = c
        elif isinstance(p, dict) and isinstance(c, dict):
            result[name] = _merge_obj(p, c, sig + (name,))
        elif isinstance(p, list) and isinstance(c, list):
            lsig = sig + (name,)
            if lsig in _APPEND:
                result[name] = p + c
                continue
            out = []
            for item in p:
                hit = child_index.get((handles.get(name, name), _key(lsig, item)))
                if hit is None:
                    out.append(item)
                elif hit[0] == name:  # same list: merge; another list: the child's wins there
                    citem = hit[1]
                    if isinstance(citem, dict):
                        if name == "httpHeaders" and citem.get("value") is None:
                            continue  # a null header value removes the parent's header
                        out.append(_merge_obj(item, citem, lsig))
                    else:
                        out.append(citem)
            parent_keys = {_key(lsig, item) for item in p}
            out += [item for item in c if _key(lsig, item) not in parent_keys]
            if out:  # Ignition omits empty lists
                result[name] = out
        else:
            result[name] = c
    return result


def merge(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge configs left to right with Ignition's rules: later entries win per path, unit,
    user, group...; files/directories/links share one path space; `append` lists concatenate;
    the last config's ignition.version wins."""
    if not configs:
        raise InputError("nothing to merge", hint="pass at least one config")
    result = configs[0]
    for child in configs[1:]:
        result = _merge_obj(result, child, ())
    version = result.get("ignition", {}).get("version")
    return canonical(result, version) if version in SPECS else result


def canonical(cfg: Any, version: str, node: dict[str, Any] | None = None) -> Any:
    """Keys in the schema's order, recursively: deterministic output for merged configs."""
    root = schema(version)
    node = resolve(node if node is not None else root, root)
    if isinstance(cfg, dict):
        props = node.get("properties", {})
        order = list(props)
        keys = sorted(cfg, key=lambda k: (order.index(k) if k in order else len(order), k))
        return {k: canonical(cfg[k], version, props[k]) if k in props else cfg[k] for k in keys}
    if isinstance(cfg, list) and "items" in node:
        return [canonical(v, version, node["items"]) for v in cfg]
    return cfg
