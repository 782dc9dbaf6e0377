"""`acl-compose compose` commands (placeholder until the issue lands)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
