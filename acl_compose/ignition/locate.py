"""Where a key of an Ignition config came from: file, line, column and key path.

Every error message of the ignition stage is located through a `Locator`: JSON input by
`json_positions`, YAML input by the position-recording loader (`yamlpos`) plus the map from
rendered Ignition keys back to the Butane keys they came from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from acl_compose.errors import InputError

KeyPath = tuple[str | int, ...]


def dotted(path: KeyPath) -> str:
    """`("storage", "files", 2, "mode")` -> `storage.files[2].mode`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "$"


class IgnitionError(InputError):
    """An invalid config. `.errors` holds every located message; the first is the message."""

    hint = "fix the named key; see ignition/README.md for the accepted keys"

    def __init__(self, errors: list[str], hint: str | None = None) -> None:
        super().__init__(errors[0], hint)
        self.errors = list(errors)


@dataclass
class Locator:
    """Maps an Ignition key path back to its place in the source file.

    `positions` maps source key paths to (line, col), 1-based. `origin` (YAML input only)
    maps Ignition key paths to the YAML key path they were rendered from.
    """

    filename: str | None = None
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    origin: dict[KeyPath, KeyPath] | None = None

    def source_path(self, ipath: KeyPath) -> KeyPath:
        if self.origin is None:
            return ipath
        for n in range(len(ipath), -1, -1):
            if ipath[:n] in self.origin:
                rest = tuple(p if isinstance(p, int) else snake(p) for p in ipath[n:])
                return self.origin[ipath[:n]] + rest
        return ipath

    def where(self, spath: KeyPath) -> str:
        """`file:line:col: key.path` for a source key path (longest located prefix)."""
        pos = None
        for n in range(len(spath), -1, -1):
            if spath[:n] in self.positions:
                pos = self.positions[spath[:n]]
                break
        head = self.filename or ""
        if head and pos:
            head += f":{pos[0]}:{pos[1]}"
        return f"{head}: {dotted(spath)}" if head else dotted(spath)


@dataclass
class Report:
    locator: Locator
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, ipath: KeyPath, msg: str) -> None:
        self.errors.append(f"{self.locator.where(self.locator.source_path(ipath))}: {msg}")

    def warn(self, ipath: KeyPath, msg: str) -> None:
        self.warnings.append(f"{self.locator.where(self.locator.source_path(ipath))}: {msg}")

    def error_at_source(self, spath: KeyPath, msg: str) -> None:
        self.errors.append(f"{self.locator.where(spath)}: {msg}")

    def raise_if_errors(self, hint: str | None = None) -> None:
        if self.errors:  # in file order, whichever check found them
            raise IgnitionError(sorted(self.errors, key=_file_order), hint)


_WHERE = re.compile(r":(\d+):(\d+): ")


def _file_order(error: str) -> tuple[int, int]:
    m = _WHERE.search(error)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def snake(name: str) -> str:
    """Ignition's camelCase key -> Butane's snake_case (`sizeMiB` -> `size_mib`)."""
    name = name.replace("MiB", "Mib")
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WS = re.compile(r"[ \t\n\r]*")


def json_positions(text: str) -> dict[KeyPath, tuple[int, int]]:
    """(line, col) of every key and array item of an already-valid JSON document."""
    positions: dict[KeyPath, tuple[int, int]] = {}
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def linecol(offset: int) -> tuple[int, int]:
        lo, hi = 0, len(line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, offset - line_starts[lo] + 1

    def skip(i: int) -> int:
        return _WS.match(text, i).end()  # type: ignore[union-attr]

    def value(i: int, path: KeyPath) -> int:
        i = skip(i)
        ch = text[i]
        if ch == "{":
            i = skip(i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                i = skip(i)
                start = i
                key, i = json.decoder.scanstring(text, i + 1)
                positions[path + (key,)] = linecol(start)
                i = skip(i) + 1  # the colon
                i = skip(value(i, path + (key,)))
                if text[i] == "}":
                    return i + 1
                i += 1
        if ch == "[":
            i = skip(i + 1)
            if text[i] == "]":
                return i + 1
            n = 0
            while True:
                i = skip(i)
                positions[path + (n,)] = linecol(i)
                i = skip(value(i, path + (n,)))
                n += 1
                if text[i] == "]":
                    return i + 1
                i += 1
        if ch == '"':
            return json.decoder.scanstring(text, i + 1)[1]
        for lit in ("true", "false", "null"):
            if text.startswith(lit, i):
                return i + len(lit)
        return _NUMBER.match(text, i).end()  # type: ignore[union-attr]

    positions[()] = linecol(skip(0))
    value(0, ())
    return positions


# Ignition configs nest about 6 levels; json.loads and json_positions recurse per level.
MAX_DEPTH = 64
_JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep(text: str) -> int | None:
    """Offset of the first bracket nested deeper than MAX_DEPTH (strings skipped), or None."""
    depth = 0
    for m in _JSON_NESTING.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return m.start()
        elif c in "]}":
            depth -= 1
    return None


# Python's json reads NaN and Infinity, which JSON (and Ignition) does not, and refuses
# integers over 4300 digits with a bare ValueError; both are located by a scan that skips
# strings.
_BARE = re.compile(r'"(?:[^"\\]|\\.)*"|-?Infinity|NaN|-?[0-9]{4301,}')


class _Constant(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


def parse_json(text: str, filename: str) -> tuple[Any, Locator]:
    def error(offset: int, what: str) -> IgnitionError:
        line = text.count("\n", 0, offset) + 1
        col = offset - text.rfind("\n", 0, offset)
        return IgnitionError([f"{filename}:{line}:{col}: invalid JSON: {what}"])

    deep = _too_deep(text)
    if deep is not None:
        raise error(deep, f"nested deeper than {MAX_DEPTH} levels")
    try:
        cfg = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise IgnitionError([f"{filename}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}"]) from None
    except ValueError as e:
        bare = next((m for m in _BARE.finditer(text) if m.group()[0] != '"'), None)
        what = f"{e} is not a JSON value" if isinstance(e, _Constant) else f"number too long: {e}"
        raise error(bare.start() if bare else 0, what) from None
    return cfg, Locator(filename, json_positions(text))
