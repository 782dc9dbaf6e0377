"""Shared test fixtures. Stage-specific fixtures live in tests/fixtures_*.py plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Independent reference data (never used by the shipped package); origins in its README.
REFERENCE = REPO / "tests" / "data" / "reference"

pytest_plugins = [
    "tests.fixtures_testbed",
    "tests.fixtures_compose",
]


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
