"""YAML with positions: what yaml.safe_load returns, plus where each key and item was written.

The config loaders (Ignition YAML, the compose manifest, sysext bundles) name `file:line` in
their errors, and read some scalars as written (`mode: 0644` must not become the int 644
unnoticed). Parsing uses yaml.SafeLoader's constructors, so only plain Python types come
back; on top of safe_load, duplicate keys and non-string keys are refused (safe_load would
silently keep the last duplicate). Positions are 1-based (line, col), keyed by path:
`("storage", "files", 0, "mode")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


class BadKeyError(yaml.constructor.ConstructorError):
    """A duplicate or non-string key; `.problem` says which, `.problem_mark` where."""


@dataclass
class Located:
    data: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)  # of keys and items
    starts: dict[Path, tuple[int, int]] = field(default_factory=dict)  # of values
    raws: dict[Path, str] = field(default_factory=dict)  # scalar values' source text

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
        """The value at `path` as written (`0644`, `1.10`), if it is a scalar."""
        return self.raws.get(path)


def load(text: str) -> Located:
    """Parse one YAML document (None if empty). yaml.YAMLError on bad YAML, BadKeyError
    (one of those) on duplicate or non-string keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            loader.located.data = loader.build(node, ())
        return loader.located
    finally:
        loader.dispose()


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader's constructors, but maps and lists are built here to record their paths."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.located = Located(None)
        self.flattened: set[yaml.Node] = set()
        self.building: set[yaml.Node] = set()

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.located.starts[path] = _pos(node.start_mark)
        if node.tag not in (_MAP, _SEQ):  # scalars, and !!set, !!omap ... as safe_load does
            if isinstance(node, yaml.ScalarNode):
                self.located.raws[path] = node.value
            return self.construct_object(node, deep=True)
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
                key = self.construct_object(key_node, deep=True)
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
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise BadKeyError(None, None, "keys must be strings", key_node.start_mark)
            if key in seen:
                raise BadKeyError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
