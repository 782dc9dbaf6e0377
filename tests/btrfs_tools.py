"""What btrfs-progs itself says about a btrfs image (the independent view for the tests).

`fs_tree(image)` parses `btrfs inspect-internal dump-tree -t fs`: path -> inode flags and
xattrs; `mixed(image)` reads `dump-super`'s incompat flags; `check(image)` runs
`btrfs check --readonly`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

_KEY = re.compile(r"^\s*item \d+ key \((\d+) (\w+) (\d+)\)")


def _dump(args: list[str], image: Path) -> str:
    return subprocess.run(
        ["btrfs", "inspect-internal", *args, str(image)], capture_output=True, text=True, check=True
    ).stdout


def fs_tree(image: Path) -> dict[str, dict]:
    """path ("" = top directory) -> {"flags": int, "xattrs": {name: value}}."""
    inodes: dict[int, dict] = {}
    parents: dict[int, tuple[int, str]] = {}
    current: tuple[int, str, int] | None = None
    pending_name = None
    for line in _dump(["dump-tree", "-t", "fs"], image).splitlines():
        m = _KEY.match(line)
        if m:
            current = (int(m[1]), m[2], int(m[3]))
            inodes.setdefault(current[0], {"flags": 0, "xattrs": {}})
            continue
        if line.startswith(("leaf ", "node ", "fs uuid", "chunk uuid")) or line.strip().startswith(
            "key ("
        ):
            current = None  # a block header or a node's key pointer, not item content
        if current is None:
            continue
        number, kind, offset = current
        text = line.strip()
        if kind == "INODE_ITEM" and (f := re.match(r"sequence \d+ flags 0x([0-9a-f]+)", text)):
            inodes[number]["flags"] = int(f[1], 16)
        elif kind == "INODE_REF" and (n := re.search(r"name: (.*)$", text)):
            if number != offset:
                parents.setdefault(number, (offset, n[1]))
        elif kind == "XATTR_ITEM":
            if text.startswith("name: "):
                pending_name = text[6:]
            elif text.startswith("data ") and pending_name is not None:
                inodes[number]["xattrs"][pending_name] = text[5:]
                pending_name = None
    out = {}
    for number, info in inodes.items():
        parts, cur = [], number
        while cur in parents:
            cur, name = parents[cur]
            parts.append(name)
        out["/".join(reversed(parts))] = info
    return out


def mixed(image: Path) -> bool:
    text = _dump(["dump-super"], image)
    return "MIXED_GROUPS" in text


def super_field(image: Path, name: str) -> str:
    m = re.search(rf"^{name}\s+(\S+)", _dump(["dump-super"], image), re.M)
    assert m, name
    return m[1]


def check(image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["btrfs", "check", "--readonly", str(image)], capture_output=True, text=True
    )
