"""Click commands, one module per concern; each module exports COMMANDS.

Modules are imported only when one of their commands runs: importing every command's
dependencies (cryptography, requests, ...) costs ~0.2 s CPU on every invocation.
"""

from __future__ import annotations

import importlib

import click

# top-level command name -> module under acl_compose.commands
LAZY_COMMANDS = {
    "verity": "verity",
    "keys": "keys",
    "fetch": "fetch",
    "sysext": "sysext",
    "ignition": "ignition",
    "testbed": "testbed",
    "compose": "compose",
    "inspect": "compose",
    "verify": "compose",
    "boot": "boot",
    "test": "boot",
    "sbom": "provenance",
    "diff": "provenance",
    "matrix": "matrix",
}


def load(name: str) -> click.Command | None:
    module = LAZY_COMMANDS.get(name)
    if module is None:
        return None
    mod = importlib.import_module(f"acl_compose.commands.{module}")
    return next(c for c in mod.COMMANDS if c.name == name)
