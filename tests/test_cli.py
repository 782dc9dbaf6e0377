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


def test_user_error_is_one_line_with_hint_and_no_traceback(cli, tmp_path):
    proc = cli("verity", "format", tmp_path / "missing", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: ") and "missing" in lines[0]
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_verbose_shows_the_traceback(cli, tmp_path):
    proc = cli("-v", "verity", "format", tmp_path / "missing", check=False)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "error: " in proc.stderr


def test_every_command_has_help(cli):
    from acl_compose.commands import LAZY_COMMANDS

    for name in LAZY_COMMANDS:
        proc = cli(name, "--help", check=True)
        assert f"acl-compose {name}" in proc.stdout
