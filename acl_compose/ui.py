"""Console output: results on stdout (text or --json), progress and warnings on stderr."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from acl_compose.util import default_cache_dir

log = logging.getLogger("acl_compose")


@dataclass
class App:
    """Global options, passed to every command as click's context object."""

    verbose: bool = False
    json: bool = False
    cache_dir: Path = field(default_factory=default_cache_dir)

    def emit(self, data: Any, text: str | Iterable[str] | None = None) -> None:
        """Print the command's result: `data` as JSON under --json, else `text` lines."""
        if self.json:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
            return
        if text is None:
            return
        if isinstance(text, str):
            click.echo(text)
        else:
            for line in text:
                click.echo(line)

    @property
    def interactive(self) -> bool:
        """Progress bars only for a human at a terminal, never under --json."""
        return not self.json and sys.stderr.isatty()


pass_app = click.make_pass_decorator(App, ensure=True)

_depth = 0


def info(msg: str) -> None:
    click.echo(("  " * _depth) + msg, err=True)


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'; exact bytes below 1 KiB."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024  # type: ignore[assignment]
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def warn(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """A nested progress step: prints `title`, then the elapsed time when done."""
    global _depth
    info(f"» {title}")
    start = time.monotonic()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    log.debug("%s: %.1fs", title, time.monotonic() - start)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
