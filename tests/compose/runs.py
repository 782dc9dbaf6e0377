"""The compose tests' CLI runs: `compose` and `verify` as real processes, and `flip`, which
corrupts one byte of a file in place."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import run_cli
from tests.fixtures_compose import SDE


def compose(
    manifest: Path, out: Path, cache: Path, check: bool | None = True
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "--cache-dir", cache, "--json", "compose", manifest, "-o", out, check=check, env=SDE
    )


def verify(out: Path, cert: Path, check: bool | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("--json", "verify", out, "--cert", cert, check=check)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))
