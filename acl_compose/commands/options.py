"""Options shared by several commands, spelled and explained the same way everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from acl_compose.ui import opt

F = TypeVar("F", bound=Callable[..., Any])


def output_dir(help_text: str, required: bool = True) -> Callable[[F], F]:
    """`-o/--output DIR`, following the output-folder rule (util.OutputDir)."""
    return click.option(
        "-o",
        "--output",
        "out_dir",
        required=required,
        type=click.Path(file_okay=False, path_type=Path),
        help=help_text,
    )


FORCE = click.option(
    "--force",
    is_flag=True,
    help="Write into a non-empty folder that is not a previous output of this command (files "
    "acl-compose did not write are still never replaced or deleted).",
)


def passphrase(fn: F) -> F:
    """`--passphrase-file FILE` / `--passphrase-env VAR`: never on the command line."""
    fn = click.option(
        "--passphrase-env",
        metavar="VAR",
        help="Environment variable holding the key passphrase.",
    )(fn)
    return click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="File whose first line is the key passphrase.",
    )(fn)


def read_passphrase(file: Path | None, env_var: str | None) -> bytes | None:
    if file is not None and env_var is not None:
        raise click.UsageError(
            f"give only one of {opt('--passphrase-file', 'a passphrase file')} and "
            f"{opt('--passphrase-env', 'a passphrase variable')}"
        )
    if file is None and env_var is None:
        return None
    from acl_compose.trust import signing  # cryptography is slow to import: only when used

    return signing.read_passphrase(file, env_var)


Callback = Callable[[click.Context, click.Parameter, Any], Any]


def usage_check(check: Callable[[Any], Any]) -> Callback:
    """A click callback turning the library's InputError for a bad value into a usage error
    (exit 2), with the library's own message; `check` returns the normalized value."""
    from acl_compose.errors import InputError

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except InputError as e:
            raise click.BadParameter(e.message + (f" ({e.hint})" if e.hint else "")) from None

    return callback
