"""CLI conventions shared by every command."""

from __future__ import annotations

from acl_compose import __version__


def test_version(cli):
    proc = cli("--version", check=True)
    assert __version__ in proc.stdout


def test_help_lists_groups(cli):
    proc = cli("--help", check=True)
    assert "Usage:" in proc.stdout


def test_unknown_command_is_usage_error(cli):
    proc = cli("no-such-command")
    assert proc.returncode == 2
    assert "No such command" in proc.stderr
