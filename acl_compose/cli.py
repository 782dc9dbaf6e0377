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
from acl_compose.errors import AclComposeError
from acl_compose.ui import App, setup_logging
from acl_compose.util import default_cache_dir

_state = {"verbose": False}


class LazyGroup(click.Group):
    """Imports a command's module only when that command is used (fast start-up)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(commands.LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return commands.load(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="acl-compose")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and tracebacks.")
@click.option("--json", "json_", is_flag=True, help="Machine-readable result on stdout.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache directory [default: $XDG_CACHE_HOME/acl-compose].",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, json_: bool, cache_dir: Path | None) -> None:
    """Compose, sign and boot-test immutable Flatcar container hosts."""
    _state["verbose"] = verbose
    setup_logging(verbose)
    ctx.obj = App(verbose=verbose, json=json_, cache_dir=cache_dir or default_cache_dir())


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
    except AclComposeError as e:
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
