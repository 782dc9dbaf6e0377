"""Helpers for the parsers' property tests: only the project's errors, bounded allocation."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from acl_compose.errors import AclComposeError


def outcome(fn: Callable[..., Any], *args: Any, errors: type | tuple = AclComposeError) -> Any:
    """fn(*args), or the error it raised if that is one of `errors`; any other exception
    (IndexError, RecursionError, MemoryError ...) propagates and fails the property."""
    try:
        return fn(*args)
    except errors as e:
        return e


def peak_allocation(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, int]:
    """(outcome, peak bytes Python allocated while it ran)."""
    tracemalloc.start()
    try:
        result = outcome(fn, *args, **kw)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def u32() -> st.SearchStrategy[int]:
    """Any u32, with the edges (0, 1, 2**31, 2**32-1) drawn often."""
    return st.one_of(
        st.sampled_from([0, 1, 2, 127, 128, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1)
    )


def u64() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, 2, 34, 2**32, 2**62, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)
    )


@st.composite
def mutated(draw: st.DrawFn, base: bytes | str, alphabet: bytes | str | None = None) -> Any:
    """`base` with a few random edits: overwrite, insert, delete, duplicate or truncate."""
    data = bytearray(base.encode() if isinstance(base, str) else base)
    text = isinstance(base, str)
    pool = alphabet if alphabet is not None else (None if not text else "")
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["set", "insert", "delete", "dup", "truncate"]))
        if pool:
            chunk = draw(st.text(pool, min_size=1, max_size=8)).encode()
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
        if op == "set":
            data[i : i + len(chunk)] = chunk
        elif op == "insert":
            data[i:i] = chunk
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "dup":
            j = draw(st.integers(i, min(len(data), i + 256)))
            data[i:i] = data[i:j]
        else:
            del data[i:]
    return bytes(data).decode(errors="replace") if text else bytes(data)
