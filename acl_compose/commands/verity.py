"""`acl-compose verity` commands (placeholder until the issue lands)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
