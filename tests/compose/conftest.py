"""The compose tests' shared parts: the product's bundles and configs, `compose` and `verify`
as real CLI runs, and `mini_release`, the small Flatcar-shaped image (tests/fixtures_compose.py)
composed once per session with them, which every file here reads (none may change it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.fixtures_compose import BUNDLES, CONFIGS, SDE, write_manifest


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


@pytest.fixture(scope="session")
def mini_release(mini_flatcar, release_key, tmp_path_factory):
    key, cert = release_key
    d = tmp_path_factory.mktemp("mini-release")
    m = write_manifest(d / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=BUNDLES, ignition=CONFIGS)  # fmt: skip
    cache = d / "cache"
    proc = compose(m, d / "out", cache)
    return {"dir": d, "out": d / "out", "manifest": m, "cache": cache, "cert": cert, "key": key,
            "release": json.loads(proc.stdout), "stderr": proc.stderr}  # fmt: skip
