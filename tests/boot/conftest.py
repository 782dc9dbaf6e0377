"""The boot tests' temp dir is the test's own: a VM that fails keeps its console log and
command line in the temp dir (boot/evidence.py), and tests must leave nothing in /tmp."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))  # subprocesses (the CLI, pytest) too
    monkeypatch.setattr(tempfile, "tempdir", str(d))
