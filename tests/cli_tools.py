"""Every acl-compose command and group, for the tests that go over all of them (options,
hints, the README)."""

from __future__ import annotations

import click


def all_commands() -> list[tuple[str, click.Command]]:
    """(`acl-compose sysext build`, command) for every leaf and group, globals attached."""
    from acl_compose.cli import add_global_options
    from acl_compose.commands import LAZY_COMMANDS, load

    out: list[tuple[str, click.Command]] = []

    def walk(name: str, cmd: click.Command) -> None:
        out.append((name, cmd))
        if isinstance(cmd, click.Group):
            for sub_name, sub in sorted(cmd.commands.items()):
                walk(f"{name} {sub_name}", sub)

    for name in sorted(LAZY_COMMANDS):
        walk(f"acl-compose {name}", add_global_options(load(name)))
    return out
