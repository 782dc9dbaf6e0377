"""Fixtures shared by the sysext tests: the release keys, the product bundles built once per
session (test_builder.py and test_checker.py both read them), and a base os-release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acl_compose import sysext
from acl_compose.trust import signing
from tests.conftest import REPO, run_cli

BUNDLES = ["azure-base", "container-runtime", "aks-node"]
BASE = "ID=flatcar\nSYSEXT_LEVEL=1.0\nVERSION_ID=3510.2.8\nFLATCAR_BOARD=amd64-usr\n"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An RSA release key (deterministic PKCS#1 v1.5 signatures) and an unrelated cert."""
    d = tmp_path_factory.mktemp("sysext-keys")
    key, cert = signing.generate(d / "release", rsa=True)
    _, other = signing.generate(d / "other")
    return {"key": key, "cert": cert, "other_cert": other}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[str, dict]:
    """Every bundle built twice (separate caches, so no cache hit) as a signed DDI, and once raw."""
    out: dict[str, dict] = {}
    for name in BUNDLES:
        d = tmp_path_factory.mktemp(f"sysext-{name}")
        runs = []
        for i in (1, 2):
            proc = run_cli(
                "--json", "--cache-dir", d / f"cache{i}", "sysext", "build", REPO / "sysext" / name,
                "-o", d / f"out{i}", "--key", keys["key"], "--cert", keys["cert"],
                check=True,
            )  # fmt: skip
            runs.append(json.loads(proc.stdout))
        raw = sysext.build(
            REPO / "sysext" / name, d / "raw", key=keys["key"], cert=keys["cert"], fmt="raw",
            cache_dir=d / "cache1",
        )  # fmt: skip
        out[name] = {"runs": runs, "raw": raw, "dir": d}
    return out


@pytest.fixture
def base(tmp_path: Path) -> Path:
    p = tmp_path / "os-release"
    p.write_text(BASE)
    return p
