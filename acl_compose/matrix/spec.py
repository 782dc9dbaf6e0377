"""MATRIX.yaml: the axes, their cross product, `exclude:`/`include:` and per-cell limits.

Every error names `file:line`; unknown keys are refused; relative paths resolve against the
matrix file's folder. The schema is in README.md (`acl-compose matrix`). Cells get stable ids
built from their axis values, so a journal, a resume and a baseline/candidate comparison all
agree on what a cell is.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acl_compose import yamlpos
from acl_compose.boot import FIRMWARES
from acl_compose.errors import InputError

AXES = ("image", "firmware", "platform", "ignition", "suite")
TRANSPORTS = ("ssh", "console")
LIMITS = ("timeout", "boot_timeout", "retries")
DEFAULTS = {"timeout": 1800.0, "boot_timeout": None, "retries": 1}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
TOP_KEYS = {"images", "firmwares", "platforms", "ignition", "suites", "exclude", "include", *LIMITS}


@dataclass
class Cell:
    """One boot: an image x firmware x platform x Ignition config x suite, with its limits."""

    image: dict[str, Any]
    firmware: str
    platform: dict[str, Any]
    ignition: dict[str, Any]
    suite: dict[str, Any]
    timeout: float = 1800.0
    boot_timeout: float | None = None
    retries: int = 1

    @property
    def axes(self) -> dict[str, str]:
        return {
            "image": self.image["name"],
            "firmware": self.firmware,
            "platform": self.platform["name"],
            "ignition": self.ignition["name"],
            "suite": self.suite["name"],
        }

    @property
    def id(self) -> str:
        return ".".join(self.axes[a] for a in AXES)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "axes": self.axes, **asdict(self)}


@dataclass
class Matrix:
    path: Path
    cells: list[Cell] = field(default_factory=list)
    digest: str = ""

    def by_id(self) -> dict[str, Cell]:
        return {c.id: c for c in self.cells}


class _Ctx:
    def __init__(self, path: Path, loc: yamlpos.Located) -> None:
        self.path, self.loc = path, loc

    def err(self, ypath: tuple[str | int, ...], msg: str, hint: str | None = None) -> InputError:
        line = self.loc.line(ypath) or (self.loc.starts.get(ypath) or (0, 0))[0]
        where = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in ypath)
        where = where.replace(".[", "[")
        return InputError(
            f"{self.path}:{line}: {where}: {msg}",
            hint=hint or "see the MATRIX.yaml schema in README.md (acl-compose matrix)",
        )

    def mapping(self, node: Any, ypath: tuple[str | int, ...], allowed: set[str]) -> dict:
        if not isinstance(node, dict):
            raise self.err(ypath, f"expected a mapping, got {type(node).__name__}")
        for key in node:
            if key not in allowed:
                raise self.err(
                    (*ypath, key),
                    "unknown key",
                    hint=f"allowed keys here: {', '.join(sorted(allowed))}",
                )
        return node

    def name(self, node: dict, ypath: tuple[str | int, ...]) -> str:
        value = node.get("name")
        if not isinstance(value, str) or not _NAME.match(value):
            raise self.err(
                (*ypath, "name"), f"expected a name of letters, digits, . _ -, got {value!r}"
            )
        return value

    def path_of(self, value: Any, ypath: tuple[str | int, ...], *, must_exist: bool = True) -> Path:
        if not isinstance(value, str) or not value:
            raise self.err(ypath, f"expected a path, got {value!r}")
        p = (self.path.parent / value).resolve()
        if must_exist and not p.exists():
            raise self.err(
                ypath,
                f"{p} does not exist",
                hint="fix the path (relative paths resolve against the matrix file's folder)",
            )
        return p

    def number(self, node: dict, key: str, ypath: tuple[str | int, ...], kind: type) -> Any:
        value = node[key]
        if value is None and key == "boot_timeout":
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < 0
            or (kind is int and not isinstance(value, int))
        ):
            raise self.err((*ypath, key), f"expected a non-negative {kind.__name__}, got {value!r}")
        return kind(value)

    def limits(self, node: dict, ypath: tuple[str | int, ...]) -> dict[str, Any]:
        out = {}
        for key in LIMITS:
            if key in node:
                out[key] = self.number(node, key, ypath, int if key == "retries" else float)
        if out.get("timeout") == 0:
            raise self.err((*ypath, "timeout"), "must be more than 0 seconds")
        return out


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _image(ctx: _Ctx, node: Any, yp: tuple[str | int, ...]) -> dict[str, Any]:
    ctx.mapping(node, yp, {"name", "path", "url", "release", "sha256", "cert", "output"})
    name = ctx.name(node, yp)
    sources = [k for k in ("path", "url", "release") if k in node]
    if len(sources) != 1:
        raise ctx.err(
            yp,
            f"image {name!r} needs exactly one of path, url, release",
            hint="path: a local/shared disk image; url: http(s) + sha256; "
            "release: a compose output directory or its URL",
        )
    kind = sources[0]
    value = node[kind]
    sha = node.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha.lower())):
        raise ctx.err((*yp, "sha256"), "expected 64 hex digits")
    out: dict[str, Any] = {"name": name, "kind": kind, "sha256": sha.lower() if sha else None}
    if kind == "url":
        if not isinstance(value, str) or not _is_url(value):
            raise ctx.err((*yp, "url"), f"expected an http(s) URL, got {value!r}")
        if not sha:
            raise ctx.err(
                yp,
                "an image given by url needs its sha256",
                hint="add sha256: (sha256sum IMAGE) so workers can verify it",
            )
        out["location"] = value
    elif kind == "release" and isinstance(value, str) and _is_url(value):
        out["location"] = value if value.endswith("/") else value + "/"
    elif kind == "release":
        d = ctx.path_of(value, (*yp, "release"))
        if not (d / "release.json").is_file():
            raise ctx.err(
                (*yp, "release"),
                f"{d} has no release.json",
                hint="give the directory written by `acl-compose compose -o`",
            )
        out["location"] = str(d)
    else:
        p = ctx.path_of(value, (*yp, "path"))
        if not p.is_file():
            raise ctx.err((*yp, "path"), f"{p} is not a file")
        out["location"] = str(p)
    if "cert" in node:
        if kind != "release":
            raise ctx.err(
                (*yp, "cert"),
                "a certificate checks a release (release.json.p7s)",
                hint="use release: DIR with cert:, or drop cert:",
            )
        out["cert"] = str(ctx.path_of(node["cert"], (*yp, "cert")))
    if "output" in node:
        if node["output"] not in ("raw", "qcow2"):
            raise ctx.err((*yp, "output"), "expected raw or qcow2")
        out["output"] = node["output"]
    return out


def _platform(ctx: _Ctx, node: Any, yp: tuple[str | int, ...]) -> dict[str, Any]:
    ctx.mapping(node, yp, {"name", "memory", "cpus", "accel"})
    out = {"name": ctx.name(node, yp), "memory": 2048, "cpus": 2, "accel": "auto"}
    for key, low in (("memory", 128), ("cpus", 1)):
        if key in node:
            v = node[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ctx.err((*yp, key), f"expected an integer >= {low}, got {v!r}")
            out[key] = v
    if "accel" in node:
        if node["accel"] not in ("auto", "kvm", "tcg"):
            raise ctx.err((*yp, "accel"), "expected auto, kvm or tcg")
        out["accel"] = node["accel"]
    return out


def _ignition(ctx: _Ctx, node: Any, yp: tuple[str | int, ...]) -> dict[str, Any]:
    ctx.mapping(node, yp, {"name", "config"})
    out: dict[str, Any] = {"name": ctx.name(node, yp), "config": None}
    if node.get("config") is not None:
        out["config"] = str(ctx.path_of(node["config"], (*yp, "config")))
    return out


def _suite(ctx: _Ctx, node: Any, yp: tuple[str | int, ...]) -> dict[str, Any]:
    ctx.mapping(node, yp, {"name", "path", "transport", "keyword", *LIMITS})
    out: dict[str, Any] = {"name": ctx.name(node, yp)}
    out["path"] = str(ctx.path_of(node.get("path"), (*yp, "path")))
    out["transport"] = node.get("transport", "ssh")
    if out["transport"] not in TRANSPORTS:
        raise ctx.err(
            (*yp, "transport"),
            f"expected one of {', '.join(TRANSPORTS)}",
            hint="ssh: testinfra over SSH (full OS); console: the serial agent",
        )
    kw = node.get("keyword")
    if kw is not None and not isinstance(kw, str):
        raise ctx.err((*yp, "keyword"), "expected a pytest -k expression")
    out["keyword"] = kw
    out["limits"] = ctx.limits(node, yp)
    return out


def _axis(ctx: _Ctx, data: dict, key: str, parse: Any, default: list | None) -> list[dict]:
    if key not in data:
        if default is None:
            raise ctx.err((), f"required key {key!r} missing")
        return default
    items = data[key]
    if not isinstance(items, list) or not items:
        raise ctx.err((key,), "expected a non-empty list")
    out = [parse(ctx, item, (key, i)) for i, item in enumerate(items)]
    names = [o["name"] for o in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ctx.err((key, i), f"duplicate name {n!r}")
    return out


def load_matrix(path: str | Path) -> Matrix:
    """Read MATRIX.yaml and expand it into cells (InputError naming file:line on mistakes)."""
    path = Path(path).resolve()
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}", hint="pass an existing MATRIX.yaml") from e
    try:
        loc = yamlpos.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise InputError(
            f"{path}:{line}: not valid YAML: {getattr(e, 'problem', e)}", hint="fix the YAML syntax"
        ) from e
    ctx = _Ctx(path, loc)
    data = ctx.mapping(loc.data if loc.data is not None else {}, (), TOP_KEYS)
    images = _axis(ctx, data, "images", _image, None)
    suites = _axis(ctx, data, "suites", _suite, None)
    platforms = _axis(
        ctx,
        data,
        "platforms",
        _platform,
        [{"name": "qemu", "memory": 2048, "cpus": 2, "accel": "auto"}],
    )
    ignitions = _axis(ctx, data, "ignition", _ignition, [{"name": "none", "config": None}])
    firmwares = data.get("firmwares", ["uefi"])
    if (
        not isinstance(firmwares, list)
        or not firmwares
        or any(f not in FIRMWARES for f in firmwares)
    ):
        raise ctx.err(("firmwares",), f"expected a list of {', '.join(FIRMWARES)}")
    top = {**DEFAULTS, **ctx.limits(data, ())}
    by_axis: dict[str, dict[str, Any]] = {
        "image": {i["name"]: i for i in images},
        "firmware": {f: f for f in dict.fromkeys(firmwares)},
        "platform": {p["name"]: p for p in platforms},
        "ignition": {i["name"]: i for i in ignitions},
        "suite": {s["name"]: s for s in suites},
    }

    def make(choice: dict[str, str], extra: dict[str, Any]) -> Cell:
        suite = by_axis["suite"][choice["suite"]]
        limits = {**top, **suite["limits"], **extra}
        return Cell(
            by_axis["image"][choice["image"]],
            choice["firmware"],
            by_axis["platform"][choice["platform"]],
            by_axis["ignition"][choice["ignition"]],
            suite,
            **limits,
        )

    combos = [
        dict(zip(AXES, values, strict=True))
        for values in itertools.product(*(list(by_axis[a]) for a in AXES))
    ]
    for i, rule in enumerate(_rules(ctx, data, "exclude", by_axis)):
        before = len(combos)
        combos = [c for c in combos if not all(c[k] == v for k, v in rule[0].items())]
        if len(combos) == before:
            raise ctx.err(("exclude", i), "matches no cell", hint="check the axis names")
    cells = {c_id: make(c, {}) for c in combos if (c_id := ".".join(c[a] for a in AXES))}
    for i, (match, extra) in enumerate(_rules(ctx, data, "include", by_axis)):
        hits = [c for c in cells.values() if all(c.axes[k] == v for k, v in match.items())]
        if hits and extra:
            for c in hits:
                for k, v in extra.items():
                    setattr(c, k, v)
        elif not hits:
            missing = [a for a in AXES if a not in match and len(by_axis[a]) != 1]
            if missing:
                raise ctx.err(
                    ("include", i),
                    f"a new cell needs {', '.join(missing)}",
                    hint="name every axis with more than one value",
                )
            choice = {a: match.get(a, next(iter(by_axis[a]))) for a in AXES}
            cell = make(choice, extra)
            cells[cell.id] = cell
    if not cells:
        raise ctx.err((), "the matrix has no cells", hint="loosen exclude:")
    ordered = sorted(cells.values(), key=lambda c: c.id)
    digest = hashlib.sha256(
        json.dumps([c.to_json() for c in ordered], sort_keys=True).encode()
    ).hexdigest()
    return Matrix(path, ordered, digest)


def _rules(ctx: _Ctx, data: dict, key: str, by_axis: dict) -> list[tuple[dict, dict]]:
    """(axis values to match, limits to set) per exclude/include entry."""
    items = data.get(key) or []
    if not isinstance(items, list):
        raise ctx.err((key,), "expected a list of mappings")
    out = []
    for i, item in enumerate(items):
        allowed = set(AXES) | (set(LIMITS) if key == "include" else set())
        ctx.mapping(item, (key, i), allowed)
        match = {}
        for a in AXES:
            if a in item:
                v = str(item[a])
                if v not in by_axis[a]:
                    raise ctx.err(
                        (key, i, a), f"no {a} named {v!r}", hint=f"known: {', '.join(by_axis[a])}"
                    )
                match[a] = v
        if not match:
            raise ctx.err((key, i), "names no axis value")
        out.append((match, ctx.limits(item, (key, i))))
    return out
