"""Shared test fixtures. Stage-specific fixtures live in tests/fixtures_*.py plugins."""

from __future__ import annotations

import os
import subprocess
import sys
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
