"""YAML with positions: what yaml.safe_load returns, plus where each key and item was written.

The config loaders (Ignition YAML, the compose manifest, sysext bundles) name `file:line` in
their errors, and read some scalars as written (`mode: 0644` must not become the int 644
unnoticed). Parsing uses yaml.SafeLoader's constructors, so only plain Python types come
back; on top of safe_load, duplicate keys and non-string keys are refused (safe_load would
silently keep the last duplicate). Positions are 1-based (line, col), keyed by path:
`("storage", "files", 0, "mode")`.

Every YAML input (manifest, sysext.yaml, Ignition YAML, matrix files) is read here and only
here (tests/test_yamlpos.py checks that no other module calls yaml's loaders), so one set of
limits holds for all of them: document size, scalar size, nesting depth and node count, with
aliases counted as the nodes they expand to. They are checked while the document is composed,
before anything is built, so an alias bomb or a 10,000-level nesting stops at the first event
over a limit, as a LimitError located there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

# Far above what a hand-written config needs (the product's largest is ~200 nodes, depth 7),
# low enough that the pure-Python parser refuses anything over them in a fraction of a second.
MAX_BYTES = 512 << 10  # the whole document
MAX_SCALAR = 256 << 10  # one scalar (Ignition inline contents); bigger files go by `local:`
MAX_DEPTH = 64  # nesting, aliases expanded
MAX_NODES = 20_000  # nodes the data will hold, aliases expanded

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


class BadKeyError(yaml.constructor.ConstructorError):
    """A duplicate or non-string key; `.problem` says which, `.problem_mark` where."""


class LimitError(yaml.MarkedYAMLError):
    """A document over one of the limits above; `.problem` says which, `.problem_mark` where."""

    hint = (
        f"YAML inputs are limited to {MAX_BYTES >> 10} KiB, scalars of {MAX_SCALAR >> 10} KiB, "
        f"{MAX_DEPTH} levels and {MAX_NODES} nodes (aliases expanded); split the file, "
        "or put large contents in a file (Ignition: contents.local)"
    )

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)


@dataclass
class Located:
    data: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)  # of keys and items
    starts: dict[Path, tuple[int, int]] = field(default_factory=dict)  # of values
    raws: dict[Path, str] = field(default_factory=dict)  # unquoted scalars' source text

    def position(self, path: Path) -> tuple[int, int]:
        """Where the key (or list item) at `path` was written; KeyError if nowhere."""
        return self.positions[path]

    def line(self, path: Path, default: int = 0) -> int:
        pos = self.positions.get(path)
        return pos[0] if pos else default

    def start(self, path: Path) -> tuple[int, int]:
        """Where the value at `path` begins (`()`: the document's first node)."""
        return self.starts[path]

    def raw(self, path: Path) -> str | None:
        """The value at `path` as written (`0644`, `1.10`), if it is an unquoted scalar."""
        return self.raws.get(path)


def read(path: str | os.PathLike[str]) -> str:
    """A YAML file's text, reading no further than MAX_BYTES (a 100 MB file costs nothing).
    OSError as open() raises it; a located yaml.MarkedYAMLError if too large or not UTF-8."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise LimitError(
            f"document larger than {MAX_BYTES} bytes", _mark_at(data, MAX_BYTES, str(path))
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise yaml.MarkedYAMLError(
            problem=f"not UTF-8 text (byte {data[e.start]:#04x})",
            problem_mark=_mark_at(data, e.start, str(path)),
        ) from None


def load(text: str) -> Located:
    """Parse one YAML document (None if empty). yaml.YAMLError on bad YAML, BadKeyError
    (one of those) on duplicate or non-string keys, LimitError (one too) over a limit."""
    if len(text) > MAX_BYTES:
        raise LimitError(f"document larger than {MAX_BYTES} characters", _mark_at(text, MAX_BYTES))
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:  # unmarked: carries an offset, not a line
        char = e.character if isinstance(e.character, str) else chr(e.character)
        raise yaml.MarkedYAMLError(
            problem=f"character {char!r} is not allowed in YAML",
            problem_mark=_mark_at(text, e.position),
        ) from None
    try:
        node = loader.get_single_node()
        if node is not None:
            loader.located.data = loader.build(node, ())
        return loader.located
    finally:
        loader.dispose()


def describe(error: yaml.YAMLError, filename: str | os.PathLike[str]) -> str:
    """`file:line:col: problem` for any error `read` or `load` raises."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else str(filename)
    if isinstance(error, LimitError | BadKeyError):
        return f"{where}: {error.problem}"
    if isinstance(error, yaml.MarkedYAMLError):
        return f"{where}: invalid YAML: {error.problem or error.context}"
    return f"{where}: invalid YAML: {error}"


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def _mark_at(text: str | bytes, offset: int, name: str = "<unicode string>") -> yaml.Mark:
    nl = "\n" if isinstance(text, str) else b"\n"
    line = text.count(nl, 0, offset)  # type: ignore[arg-type]
    column = offset - (text.rfind(nl, 0, offset) + 1)  # type: ignore[arg-type]
    return yaml.Mark(name, offset, line, column, None, None)


class _Loader(yaml.SafeLoader):
    """SafeLoader's constructors, but maps and lists are built here to record their paths."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.located = Located(None)
        self.flattened: set[yaml.Node] = set()
        self.building: set[yaml.Node] = set()
        self.nodes = 0  # composed so far, aliases counted as what they expand to
        self.heights: list[int] = []  # per open node: the tallest child composed so far
        self.shapes: dict[yaml.Node, tuple[int, int]] = {}  # anchored node -> (nodes, height)

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803
        """The scanner looks up to 1024 characters ahead for simple keys, at a cost that grows
        with the flow nesting: `[[[[...` is refused here, before the composer sees it."""
        if self.flow_level >= MAX_DEPTH:
            raise LimitError(f"document nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Composer.compose_node, with the limits checked at each event before it is used.
        Composing recurses per level, so depth is checked before the recursion can go deep."""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            # Not yet in shapes: an alias inside its own anchor, which build() refuses.
            size, height = self.shapes.get(node, (1, 1))
            self._count(size, event.start_mark, "aliases expand the document to more than")
            self._fit(len(self.heights) + height, event.start_mark, "aliases nest the document")
            if self.heights:
                self.heights[-1] = max(self.heights[-1], height)
            return node
        self._fit(len(self.heights) + 1, event.start_mark, "document nested")
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR:
            raise LimitError(f"scalar longer than {MAX_SCALAR} characters", event.start_mark)
        before = self.nodes
        self._count(1, event.start_mark, "document has more than")
        self.heights.append(0)
        node = super().compose_node(parent, index)
        height = self.heights.pop() + 1
        if self.heights:
            self.heights[-1] = max(self.heights[-1], height)
        if event.anchor is not None:
            self.shapes[node] = (self.nodes - before, height)
        return node

    def _count(self, n: int, mark: yaml.Mark, what: str) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise LimitError(f"{what} {MAX_NODES} nodes", mark)

    def _fit(self, depth: int, mark: yaml.Mark, what: str) -> None:
        if depth > MAX_DEPTH:
            raise LimitError(f"{what} deeper than {MAX_DEPTH} levels", mark)

    def construct(self, node: yaml.Node) -> Any:
        """construct_object, with the ValueErrors and co. that SafeConstructor lets out for
        bad scalars (`2001-13-45`, `!!int zz`, a 5000-digit int) turned into located errors."""
        try:
            return self.construct_object(node, deep=True)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError) as e:
            what = node.tag.rsplit(":", 1)[-1]
            shown = f"{node.value[:40]!r} " if isinstance(node, yaml.ScalarNode) else ""
            why = f": {e}" if isinstance(e, ValueError | OverflowError) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown}as {what}{why}", node.start_mark
            ) from None

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.located.starts[path] = _pos(node.start_mark)
        collection = (node.tag, type(node)) in ((_MAP, yaml.MappingNode), (_SEQ, yaml.SequenceNode))
        if not collection:  # scalars, !!set, !!omap ..., and `!!seq 1`: as safe_load does
            if isinstance(node, yaml.ScalarNode) and node.style is None:  # plain: as written
                self.located.raws[path] = node.value
            return self.construct(node)
        if node in self.building:  # an alias inside its own anchor
            raise yaml.constructor.ConstructorError(
                None, None, "found unconstructable recursive node", node.start_mark
            )
        self.building.add(node)
        data: Any
        if node.tag == _SEQ:
            data = []
            for i, item in enumerate(node.value):
                self.located.positions[path + (i,)] = _pos(item.start_mark)
                data.append(self.build(item, path + (i,)))
        else:
            data = {}
            self.flatten_mapping(node)
            for key_node, value_node in node.value:
                key = self.construct(key_node)
                self.located.positions[path + (key,)] = _pos(key_node.start_mark)
                data[key] = self.build(value_node, path + (key,))
        self.building.discard(node)
        return data

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """Resolve merge keys (`<<: *base`) and check the mapping's own keys, once per node
        (an alias revisits it, and it may override merged keys)."""
        if node in self.flattened:
            return
        self.flattened.add(node)
        own = sum(key_node.tag != _MERGE for key_node, _ in node.value)
        super().flatten_mapping(node)  # merged entries first, then the node's own
        seen = set()
        for key_node, _ in node.value[len(node.value) - own :]:
            key = self.construct(key_node)
            if not isinstance(key, str):
                raise BadKeyError(None, None, "keys must be strings", key_node.start_mark)
            if key in seen:
                raise BadKeyError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)


# ----------------------------------------------------------------- scalars with one meaning
# Every YAML the project reads (manifest, sysext.yaml, Ignition YAML) reads these the same way.


class ScalarError(ValueError):
    """A scalar of the wrong kind; the message says what to write instead."""


def text(value: Any, raw: str | None, key: str) -> str:
    """A version or a name: it must be a YAML string. An unquoted `0.10` is the float 0.1 and
    `1.0` the float 1.0, so a number is refused with the advice to quote it, never guessed."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        raise ScalarError(
            f"expected text, not a {'mapping' if isinstance(value, dict) else 'list'}"
        )
    if value is None:
        raise ScalarError("has no value: write it, quoted if it looks like a number")
    written = raw if raw is not None else str(value)
    kind = "true/false" if isinstance(value, bool) else "a number"
    shown = f" ({value!r})" if kind == "a number" and str(value) != written else ""
    raise ScalarError(f'{written} is {kind}{shown} in YAML, not text: quote it, {key}: "{written}"')


# Decimal spellings of common modes that happen to use only digits 0-7: meant as written.
_DECIMAL_SPELLINGS = {420: "0644", 416: "0640", 365: "0555", 511: "0777", 256: "0400"}


def file_mode(value: Any, raw: str | None) -> tuple[int, str | None]:
    """A file mode, by Butane's rule: an unquoted integer, taken as written. `0644` and
    `0o644` are octal (420); `420` is decimal. A decimal that looks octal (`644`, `4755`) is
    taken as decimal (644 = 0o1204), with a warning to write `0644`. Quoted modes are
    refused. Returns (mode, warning or None); ScalarError if it is no mode."""
    if isinstance(value, str) and raw is not None and raw.lower().startswith("0o"):
        try:  # YAML 1.2's octal spelling (PyYAML, YAML 1.1, reads it as a string)
            value = int(raw[2:], 8)
        except ValueError:
            raise ScalarError(f"{raw} is not an octal number (digits 0-7)") from None
    elif isinstance(value, str) and raw is not None:
        if raw.startswith("0") and raw.isdigit():
            raise ScalarError(f"{raw} is not an octal number (digits 0-7 after the 0)")
        raise ScalarError(f"{raw} is not a number; write a mode like 0644")
    elif isinstance(value, str):
        raise ScalarError(f"{value!r} is quoted: write the number without quotes, e.g. mode: 0644")
    elif isinstance(value, bool) or not isinstance(value, int):
        shown = raw if raw is not None else repr(value)
        raise ScalarError(f"{shown} is not an integer like 0644")
    written = raw if raw is not None else str(value)
    looks_octal = (
        written.isdigit()
        and len(written) in (3, 4)
        and written[0] != "0"
        and set(written) <= set("01234567")
        and value not in _DECIMAL_SPELLINGS
    )
    if not 0 <= value <= 0o7777:
        advice = f"; for octal permissions write 0{written}" if looks_octal else ""
        raise ScalarError(f"{written} is out of range (0 to 07777 octal, 4095){advice}")
    warning = None
    if looks_octal:
        warning = (
            f"mode {written} is decimal (octal 0{value:o}); write 0{written} for octal permissions"
        )
    return value, warning
