"""Console output: results on stdout (text or --json), progress and warnings on stderr."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
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
    """A nested progress step: prints `title`, then `done in N.Ns` when it succeeded."""
    global _depth
    info(f"» {title}")
    start = time.monotonic()
    _depth += 1
    try:
        yield
        info(f"done in {time.monotonic() - start:.1f}s")
    finally:
        _depth -= 1


def setup_logging(verbose: bool) -> None:
    """Idempotent: -v after the command name turns debug logging on after the group ran."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)


# ----------------------------------------------------------------- options named in hints


def option_names(command: click.Command) -> set[str]:
    """Every `--long` and `-s` spelling the command accepts."""
    names: set[str] = set()
    for p in command.params:
        names.update(p.opts)
        names.update(p.secondary_opts)
    return names


def opt(flag: str, otherwise: str) -> str:
    """Name an option in a message only if the running command has it.

    `flag` is how the standalone command spells it (`--files-dir DIR`). A command whose users
    set the same thing elsewhere maps it with `spelled()` (compose: manifest fields); any other
    command gets `otherwise`, words that name no option. Outside a command (library use) the
    flag itself is the best guess. tests/test_hints.py checks every call against every command.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return flag
    return render_opt(ctx.command, flag, otherwise)


def render_opt(command: click.Command, flag: str, otherwise: str) -> str:
    name = flag.split()[0]
    if name in option_names(command):
        return flag
    spelled_as: dict[str, str] = getattr(command, "acl_spelled", {})
    return spelled_as.get(name, otherwise)


def spelled(mapping: dict[str, str]) -> Callable[[click.Command], click.Command]:
    """Decorate a click command: how its users set what other commands take as options,
    e.g. `{"--release": "base.release in the manifest"}`."""

    def deco(command: click.Command) -> click.Command:
        command.acl_spelled = dict(mapping)  # type: ignore[attr-defined]
        return command

    return deco
