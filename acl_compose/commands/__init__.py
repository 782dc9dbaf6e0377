"""Click commands, one module per concern. Each module exports COMMANDS."""

from __future__ import annotations

import importlib

import click

_MODULES = ["verity", "keys", "fetch", "sysext", "ignition", "testbed", "compose", "boot"]

COMMANDS: list[click.Command] = []
for _name in _MODULES:
    COMMANDS.extend(importlib.import_module(f"acl_compose.commands.{_name}").COMMANDS)
