"""Shared test fixtures. Stage-specific fixtures live in tests/fixtures_*.py plugins."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]

# Property tests (marker `property`): a fixed-seed, time-boxed run in `make test`, a longer
# random one in `make fuzz` (HYPOTHESIS_PROFILE=fuzz). `deadline` bounds each example's time:
# generous, because this machine is shared, but a parser that spins fails it.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=3000,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# Independent reference data (never used by the shipped package); origins in its README.
REFERENCE = REPO / "tests" / "data" / "reference"

# Suites under tests/data/ run inside guests (the matrix tests ship them to workers).
collect_ignore = ["data"]

pytest_plugins = [
    "tests.fixtures_sources",
    "tests.fixtures_testbed",
    "tests.fixtures_compose",
    "tests.fixtures_negative",
]
# CI (.ci/run) sets this: an integration test that cannot run (not root, a missing tool...)
# is then a failure, not a skip, so a green CI run means every integration test ran.
STRICT_SKIPS = "ACL_COMPOSE_STRICT_SKIPS"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get(STRICT_SKIPS) == "1"
        and item.get_closest_marker("integration") is not None
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"integration test skipped while {STRICT_SKIPS}=1 (CI): {reason}"


def pytest_configure(config: pytest.Config) -> None:
    # Tests press Ctrl-C on child processes. A shell without job control starts background
    # jobs with SIGINT ignored, and children inherit that: they would never see the Ctrl-C.
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# Free space a run needs where it writes (a full run peaked at 8 GiB under /tmp; margin for
# more images): running out midway fails dozens of tests with errors that do not say why.
NEEDED_GIB = {"integration": 20, "unit": 2}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop before the first test, naming the folder, when the disk cannot hold the run."""
    import shutil
    import tempfile

    if session.config.option.collectonly or not session.items:
        return
    kind = "unit"
    if any(item.get_closest_marker("integration") for item in session.items):
        kind = "integration"
    base = Path(session.config.option.basetemp or tempfile.gettempdir()).absolute()
    while not base.exists():  # --basetemp is created later
        base = base.parent
    free = shutil.disk_usage(base).free / 2**30
    if free < NEEDED_GIB[kind]:
        pytest.exit(
            f"only {free:.1f} GiB free under {base}; the {kind} tests need "
            f"{NEEDED_GIB[kind]} GiB there: free space or point --basetemp elsewhere",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def run_cli(
    *args: str | os.PathLike[str],
    check: bool | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 1800,
) -> subprocess.CompletedProcess[str]:
    """Run `acl-compose ARGS` as a real process; check=True asserts exit 0, False asserts != 0."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "acl_compose", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=timeout,
    )
    if check is True:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    elif check is False:
        assert proc.returncode != 0, f"unexpectedly succeeded\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data missing at {REFERENCE}")
    return REFERENCE


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A private cache dir so unit tests never touch ~/.cache/acl-compose."""
    d = tmp_path / "cache"
    d.mkdir()
    return d


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real filesystem that fills up (needs root, as CI runs)."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "--lazy", mnt], check=True)


# ------------------------------------------------------------------ nothing left running


def processes_naming(path: str | os.PathLike[str]) -> dict[int, str]:
    """Live processes (not this one, nor its ancestors) whose command line names `path`:
    what a test started there and did not stop (a gpg-agent for a GNUPGHOME, a server)."""
    needle = os.fsencode(path)
    mine, pid = set(), os.getpid()
    while pid > 1:  # pytest's own command line may name --basetemp
        mine.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in mine:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        # The folder itself or below it: pytest-1 must not match another session's pytest-12.
        named = needle + b"/" in cmdline or needle + b"\0" in cmdline or cmdline.endswith(needle)
        if named and state != "Z":
            found[int(proc.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def stop_left_behind(found: dict[int, str]) -> None:
    """gpg-agents through gpgconf (they then remove their sockets), the rest by SIGTERM."""
    import re
    import signal

    for pid, cmd in found.items():
        home = re.search(r"gpg-agent .*--homedir (\S+)", cmd)
        if home:
            subprocess.run(["gpgconf", "--homedir", home[1], "--kill", "all"], check=False,
                           capture_output=True)  # fmt: skip
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The session fails if a test leaves a process behind that names pytest's temp folder
    (e.g. a gpg-agent whose --homedir is a fixture's GNUPGHOME): fixtures stop what they
    start. Torn down last (autouse, session scope, defined first), after every fixture."""
    yield
    base = tmp_path_factory.getbasetemp()
    deadline = time.monotonic() + 10  # a process told to stop may take a moment to go
    while (found := processes_naming(base)) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_left_behind(found)
    assert not found, "processes left running by the tests:\n" + "\n".join(
        f"  {pid}: {cmd}" for pid, cmd in sorted(found.items())
    )
