"""CLI conventions shared by every command."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import click

from acl_compose import __version__
from tests.cli_tools import all_commands


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
    proc = cli("verity", "format", tmp_path / "missing", tmp_path / "hash", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: ") and "missing" in lines[0]
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_verbose_shows_the_traceback(cli, tmp_path):
    proc = cli("-v", "verity", "format", tmp_path / "missing", tmp_path / "hash", check=False)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "error: " in proc.stderr


def test_every_command_has_help(cli):
    from acl_compose.commands import LAZY_COMMANDS

    for name in LAZY_COMMANDS:
        proc = cli(name, "--help", check=True)
        assert f"acl-compose {name}" in proc.stdout


# --------------------------------------------------------------- every command, every option


def test_every_option_has_help_and_shows_its_real_default() -> None:
    """What `--help` renders for each option (click's help record): a text, and the default
    whenever there is one."""
    unset = (None, (), getattr(click.core, "UNSET", None))
    missing, no_default = [], []
    for name, cmd in all_commands():
        ctx = click.Context(cmd, info_name=name)
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.hidden:
                continue
            record = p.get_help_record(ctx)
            text = record[1] if record else ""
            if not p.help or not text.strip():
                missing.append(f"{name} {p.opts[0]}")
            if not p.is_flag and p.default not in unset and "[default:" not in text:
                no_default.append(f"{name} {p.opts[0]} (default {p.default!r})")
    assert not missing, "options without help text:\n" + "\n".join(missing)
    assert not no_default, "defaults not shown:\n" + "\n".join(no_default)


def test_help_of_every_command_lists_every_option(cli) -> None:
    """One real `--help` per command, as a user runs it."""
    for name, cmd in all_commands():
        text = cli(*name.split()[1:], "--help", check=True).stdout
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert re.search(rf"^\s+{re.escape(', '.join(p.opts))}\b", text, re.M), (
                    name,
                    p.opts,
                )


def test_verify_help_does_not_claim_random_defaults(cli) -> None:
    text = " ".join(cli("verity", "verify", "--help", check=True).stdout.split())
    assert "random" not in text
    assert "--salt TEXT Salt as hex, '-' for none [default: from the superblock;" in text
    assert "--uuid TEXT UUID the superblock must carry [default: any]" in text
    text = " ".join(cli("verity", "format", "--help", check=True).stdout.split())
    assert "[default: 32 random bytes]" in text and "[default: a random UUID]" in text


def test_global_options_before_or_after_the_command(cli, tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.write_bytes(os.urandom(8 * 4096))
    for argv in (
        ["--json", "verity", "format", data, tmp_path / "h1"],
        ["verity", "format", "--json", data, tmp_path / "h2"],
        ["verity", "format", data, tmp_path / "h3", "--json"],
    ):
        proc = cli(*argv, check=True)
        assert json.loads(proc.stdout)["data_blocks"] == 8
    proc = cli("inspect", "--json", tmp_path / "nothing.bin")  # was: No such option '--json'
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    proc = cli("verity", "format", tmp_path / "missing", tmp_path / "h", "-v")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    # --cache-dir after the command: fetch --offline looks there (and finds nothing).
    cache = tmp_path / "elsewhere-cache"
    proc = cli("fetch", "--offline", "--cache-dir", cache)
    assert proc.returncode == 1 and "not in the cache (--offline)" in proc.stderr
    proc = cli("fetch", "--offline", "--cache-dir", cache, env={"ACL_COMPOSE_CACHE_DIR": "/x"})
    assert "/x" not in proc.stderr  # the option wins over the environment


def test_usage_errors_exit_2(cli, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.write_bytes(bytes(4096 * 4))
    cases = [
        ["verity", "format", d],  # no HASH and not --in-place
        ["verity", "format", d, tmp_path / "h", "--workers", "0"],
        ["verity", "sign", "--key", d, "--cert", d, "-o", tmp_path / "s"],  # no root hash
        ["sysext", "build", tmp_path, "-o", tmp_path / "o", "--key", d],  # --key without --cert
        [
            "sysext",
            "build",
            tmp_path,
            "-o",
            tmp_path / "o",
            "--passphrase-file",
            d,
            "--passphrase-env",
            "X",
        ],  # fmt: skip
        ["keys", "generate", "-o", tmp_path / "k", "--common-name", " "],
        ["testbed", "serve", tmp_path, "--port", "70000"],
        ["testbed", "build", "--version", "nine"],
        ["fetch", "--release", "latest"],
        ["boot", d, "--cpus", "0"],
        [
            "compose",
            tmp_path / "m.yaml",
            "-o",
            tmp_path / "o",
            "--passphrase-file",
            d,
            "--passphrase-env",
            "X",
        ],  # fmt: skip
    ]
    for argv in cases:
        proc = cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_serve_on_a_taken_port_is_one_error_line(cli, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = cli("testbed", "serve", tmp_path, "--port", port, timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == f"error: cannot serve on 127.0.0.1:{port}: Address already in use"
    assert lines[1].startswith("hint: choose another --port (0 picks a free one) or --bind")
    assert len(lines) == 2 and proc.stdout == ""
    proc = cli("testbed", "serve", tmp_path, "--bind", "192.0.2.1", "--port", "0", timeout=30)
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot serve on 192.0.2.1:0")


def test_full_disk_is_one_line_naming_the_filesystem(cli, tmp_path: Path, small_tmpfs) -> None:
    """ENOSPC is the host's problem, not a bug: one line naming the full filesystem, a
    hint, exit 1, no traceback, and nothing of the build left on the full filesystem."""
    bundle = tmp_path / "big"
    (bundle / "files").mkdir(parents=True)
    (bundle / "files" / "blob").write_bytes(os.urandom(8 << 20))  # twice the tmpfs
    (bundle / "sysext.yaml").write_text(
        "name: big\nversion: 1.0.0\nos: flatcar\narchitecture: x86-64\n"
        "files:\n  - path: /usr/lib/big/blob\n    from: files/blob\n"
    )
    # The output on the full tmpfs. Cold cache: the DDI built in the cache is copied out.
    out = small_tmpfs / "out"
    proc = cli("sysext", "build", bundle, "-o", out, "--cache-dir", tmp_path / "cache")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    error, hint = proc.stderr.splitlines()[-2:]
    full = re.escape(str(small_tmpfs))
    assert re.fullmatch(rf"error: no space left on {full} \(writing {full}/\S+\)", error)
    assert hint.startswith("hint: free space there")
    assert os.listdir(small_tmpfs) == []
    # Warm cache: the DDI is written straight to an open descriptor, and such an error
    # carries no file name; the full filesystem is still named.
    proc = cli("sysext", "build", bundle, "-o", out, "--cache-dir", tmp_path / "cache")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    error = proc.stderr.splitlines()[-2]
    assert error == f"error: no space left while writing (nearly full: {small_tmpfs})"
    assert os.listdir(small_tmpfs) == []


def test_only_the_hosts_os_errors_become_user_errors() -> None:
    from acl_compose.errors import from_os_error

    denied = from_os_error(PermissionError(13, "Permission denied", "/srv/out"))
    assert denied is not None and denied.message == "/srv/out: permission denied"
    # Anything else is a bug of ours and keeps its traceback.
    assert from_os_error(FileNotFoundError(2, "No such file or directory", "/x")) is None
    assert from_os_error(PermissionError(13, "Permission denied")) is None  # names nothing
