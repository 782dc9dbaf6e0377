"""The `acl-compose` command line: a thin click layer over the library modules.

Conventions for every command: results on stdout (`--json` for machine-readable),
progress on stderr, user errors as `error:`/`hint:` lines with exit 1, usage errors
exit 2, tracebacks only with -v.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from acl_compose import __version__, commands
from acl_compose.errors import AclComposeError, from_os_error
from acl_compose.ui import App, setup_logging
from acl_compose.util import default_cache_dir

_state: dict[str, object] = {"verbose": False}


VERBOSE_HELP = "Debug logging and tracebacks."
JSON_HELP = "Machine-readable result on stdout (and nothing else there)."
CACHE_HELP = "Cache directory [default: $XDG_CACHE_HOME/acl-compose]."
CACHE_ENV = "ACL_COMPOSE_CACHE_DIR"


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _state["verbose"] = True
        setup_logging(True)
        ctx.ensure_object(App).verbose = True


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(App).json = True


def _set_cache_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(App).cache_dir = value


def _global_options() -> list[click.Option]:
    """The group's options again, for every subcommand: `acl-compose inspect --json X` works
    as `acl-compose --json inspect X` does. They only set what was given (a flag before the
    command stays set)."""
    return [
        click.Option(["-v", "--verbose"], is_flag=True, expose_value=False,
                     callback=_set_verbose, help=VERBOSE_HELP),
        click.Option(["--json"], is_flag=True, expose_value=False, callback=_set_json,
                     help=JSON_HELP),
        click.Option(["--cache-dir"], type=click.Path(file_okay=False, path_type=Path),
                     expose_value=False, callback=_set_cache_dir, help=CACHE_HELP),
    ]  # fmt: skip


def add_global_options(command: click.Command) -> click.Command:
    """Attach the global options to `command` and, for a group, to everything under it."""
    if not getattr(command, "acl_globals", False):
        taken = {o for p in command.params for o in p.opts}
        command.params.extend(o for o in _global_options() if not taken & set(o.opts))
        command.acl_globals = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_global_options(sub)
    return command


class LazyGroup(click.Group):
    """Imports a command's module only when that command is used (fast start-up)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(commands.LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = commands.load(cmd_name)
        return add_global_options(command) if command is not None else None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="acl-compose")
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
@click.option("--json", "json_", is_flag=True, help=JSON_HELP)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar=CACHE_ENV,
    show_envvar=True,
    help=CACHE_HELP,
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, json_: bool, cache_dir: Path | None) -> None:
    """Compose, sign and boot-test immutable Flatcar container hosts.

    Global options may also follow the command: `acl-compose inspect --json IMAGE`.
    """
    _state["verbose"] = verbose
    _state["cache_dir"] = cache_dir
    setup_logging(verbose)
    ctx.obj = App(verbose=verbose, json=json_, cache_dir=cache_dir or default_cache_dir())


def _write_places(argv: list[str] | None) -> tuple[str, ...]:
    """Where a command may have been writing: its path arguments, the cache, scratch."""
    import os
    import tempfile

    args = sys.argv[1:] if argv is None else argv
    paths = [a.split("=", 1)[-1] for a in args if os.sep in a]
    cache = _state.get("cache_dir") or default_cache_dir()
    return (*paths, os.fspath(cache), tempfile.gettempdir(), os.getcwd())


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps exceptions to exit codes."""
    try:
        rv = cli.main(args=argv, prog_name="acl-compose", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as e:  # usage errors
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (AclComposeError, OSError) as e:
        if isinstance(e, OSError):
            converted = from_os_error(e, _write_places(argv))
            if converted is None:
                raise
            e = converted
        if _state["verbose"]:
            traceback.print_exc()
        click.echo(f"error: {e.message}", err=True)
        if e.hint:
            click.echo(f"hint: {e.hint}", err=True)
        sys.exit(getattr(e, "exit_code", 1))  # 1, except where a command says (diff: 2)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
