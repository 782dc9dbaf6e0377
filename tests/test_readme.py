"""README.md's command sequences, run as written (the rule is README.md's "Reading the examples").

Every ```sh block runs, in file order, in one bash with `set -e`, except blocks with a line
starting with `make`, `pytest`, `acl-compose boot` or `acl-compose test` (they boot VMs or run
the test suite). ```text blocks are synopses and are not run, but every option they and the sh
blocks show must exist on the command they name (a unit test, no testbed needed).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import fixtures_testbed
from tests.conftest import REPO

README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
# A line that boots a VM or runs the test suite (after optional VAR=value assignments).
BOOTS = re.compile(r"^\s*(?:[A-Za-z_]\w*=\S*\s+)*(?:make|pytest|acl-compose\s+(?:boot|test))\b")
PORT = "8000"  # README's port (examples/manifest.yaml's default), replaced by a free one


def blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number of the first line inside the fence, language, body) of every block."""
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(1), m.group(2)) for m in FENCE.finditer(text)
    ]


def runnable(text: str) -> list[tuple[int, str]]:
    return [
        (line, body)
        for line, lang, body in blocks(text)
        if lang == "sh" and not any(BOOTS.match(ln) for ln in body.splitlines())
    ]


def test_the_skip_rule_is_the_one_readme_states() -> None:
    text = README.read_text()
    rule = " ".join(text[text.index("## Reading the examples") :].split("## Command")[0].split())
    assert "starts with `make`, `pytest`, `acl-compose boot` or `acl-compose test`" in rule
    sh = [(line, body) for line, lang, body in blocks(text) if lang == "sh"]
    run = runnable(text)
    skipped = [b for b in sh if b not in run]
    assert len(run) >= 7, "most sh blocks run"
    for _line, body in skipped:
        assert re.search(r"^(make|pytest|acl-compose (boot|test))\b", body, re.M), body
    for _line, body in run:
        assert "acl-compose boot" not in body and "acl-compose test " not in body
    assert not [b for _, lang, b in blocks(text) if lang not in ("sh", "text", "")], "sh or text"


def _invocations(body: str) -> list[list[str]]:
    """Every `acl-compose ...` command line of a block, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0]
        for m in re.finditer(r"acl-compose((?:\s+[^|;&>\n]+)*)", line):
            try:
                out.append(shlex.split(m.group(1)))
            except ValueError:  # unbalanced quotes in a synopsis
                out.append(m.group(1).split())
    return out


def test_every_option_the_readme_shows_exists() -> None:
    """`acl-compose X Y --opt` in any block (sh or text): the command and the option exist."""
    from tests.cli_tools import all_commands

    commands = {name.removeprefix("acl-compose").strip(): cmd for name, cmd in all_commands()}
    from acl_compose.cli import cli

    top = {o for p in cli.params for o in p.opts}
    bad = []
    for line, lang, body in blocks(README.read_text()):
        if lang not in ("sh", "text"):  # the layout diagram, prose
            continue
        for argv in _invocations(body):
            words = [w for w in argv if not w.startswith("-")]
            name = next(
                (" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in commands), None
            )
            if name is None:
                if argv and argv[0] not in ("--json", "-v", "--help", "--version"):
                    bad.append(f"README.md:{line}: no command in `acl-compose {' '.join(argv)}`")
                continue
            have = {o for p in commands[name].params for o in p.opts} | top
            for w in argv:
                opt = w.split("=", 1)[0]
                if re.fullmatch(r"--[a-z][a-z0-9-]*|-[a-zA-Z]", opt) and opt not in have:
                    bad.append(f"README.md:{line}: `acl-compose {name}` has no {opt}")
    assert not bad, "\n".join(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(text: str) -> tuple[str, list[int]]:
    """The bash session and, per script line, the README line it came from (0: prelude)."""
    lines = [
        "set -e -o pipefail",
        "trap 'echo \"doctest: failed at script line $LINENO\" >&2' ERR",
        "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",
    ]
    where = [0] * len(lines)
    for first, body in runnable(text):
        for i, ln in enumerate(body.splitlines()):
            lines.append(ln)
            where.append(first + i)
    return "\n".join(lines) + "\n", where


@pytest.mark.integration
def test_readme_sh_blocks_run_as_written(testbed_build: dict, tmp_path: Path) -> None:
    port = str(_free_port())
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(REPO / "examples", work / "examples", ignore=shutil.ignore_patterns("keys"))
    manifest = work / "examples" / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace(f":{PORT}/", f":{port}/"))
    for d in ("sysext", "ignition"):
        (work / d).symlink_to(REPO / d)
    # A private cache, but the testbed's build is the shared, warm one.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "testbed").symlink_to(fixtures_testbed.testbed_cache_dir() / "testbed")
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    text = README.read_text().replace(PORT, port)
    script, where = _script(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACL_", "SOURCE_DATE"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        ACL_COMPOSE_CACHE_DIR=str(cache),
        GNUPGHOME=str(gnupg),
        ACL_COMPOSE_RETRIES="5",
    )
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", script], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:  # the whole session, background servers included
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.monotonic() - start
    print(f"\nREADME doc test: {len(runnable(text))} blocks in {seconds:.0f}s")
    m = re.search(r"doctest: failed at script line (\d+)", err)
    readme_line = where[int(m[1]) - 1] if m and int(m[1]) <= len(where) else "?"
    assert proc.returncode == 0, (
        f"README.md:{readme_line} failed (exit {proc.returncode}):\n{err[-4000:]}"
    )
    # What the blocks claim, checked beyond their exit status.
    assert "refused: error: data block 2 is corrupted" in out
    assert "error: data block 2 is corrupted" in err
    assert (work / "out" / "release.json").is_file() and (
        work / "out-local" / "release.json"
    ).is_file()
    assert "no differences" in out
    assert not list(tmp_path.glob("**/.*.tmp"))  # no staging folder left behind
    # Nothing of the session keeps running.
    assert subprocess.run(["pgrep", "-f", f"testbed serve tb --port {port}"],
                          capture_output=True).returncode == 1  # fmt: skip
