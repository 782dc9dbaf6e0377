"""Hostile YAML documents, shared by the loader's tests and its benchmark."""

from __future__ import annotations


def bomb(levels: int = 9) -> str:
    """The billion-laughs document: `levels` anchors of 9 aliases each, 9**levels leaves."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    prev = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
        prev = name
    return "\n".join(lines) + "\n"
