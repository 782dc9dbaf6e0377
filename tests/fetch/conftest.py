"""The fetch tests' site: a real loopback HTTP server serving a signed Flatcar-shaped tree.

The tree is signed by a throwaway ed25519 key (certify-only primary + signing subkey) made
once per session; every case gets its own copy of the tree and cache dir, and `Site.fetch`
runs the real CLI in a subprocess. Shared by test_fetcher.py, test_cache.py and
test_transport.py.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from acl_compose.fetch.httpserve import serve
from tests.conftest import run_cli
from tests.flatcar_tree import (
    VERSION,
    Faults,
    Key,
    copy_tree,
    fault_handler,
    key_fixture,
    make_tree,
)

FAST = {"ACL_COMPOSE_BACKOFF": "0.05", "ACL_COMPOSE_RETRIES": "3"}


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Key]:
    yield from key_fixture(
        tmp_path_factory.mktemp("gnupg-release"), "Test Release <rel@example.org>"
    )


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Key]:
    yield from key_fixture(tmp_path_factory.mktemp("gnupg-other"), "Mallory <m@example.org>")


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory, signing_key: Key) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree") / "amd64-usr", signing_key)


@dataclass
class Site:
    root: Path
    url: str
    faults: Faults
    key: Key
    cache: Path

    @property
    def vdir(self) -> Path:
        return self.root / VERSION

    def fetch(
        self,
        *args: str,
        check: bool | None = None,
        env: dict[str, str] | None = None,
        key: Key | None = None,
        json_out: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        key = key or self.key
        pre = ["--cache-dir", str(self.cache)] + (["--json"] if json_out else [])
        return run_cli(
            *pre,
            "fetch",
            "--base-url",
            self.url,
            "--keyring",
            str(key.public),
            "--trusted-key",
            key.fingerprint,
            *args,
            check=check,
            env={**FAST, **(env or {})},
            timeout=120,
        )

    def assert_refused(self, proc: subprocess.CompletedProcess[str], *needles: str) -> None:
        """Exit 1, one `error:` line naming the URL/file, nothing usable left in the cache."""
        assert proc.returncode == 1, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        for needle in needles:
            assert needle in errors[0], errors[0]
        assert not list((self.cache / "tmp").glob("*")) if (self.cache / "tmp").exists() else True
        # Only version.txt (verified before the failure) may have entered the store.
        allowed = {sha512(self.vdir / "version.txt")}
        assert {p.name for p in self.cache.glob("blobs/sha512/*/*")} <= allowed
        offline = self.fetch("--release", VERSION, "--offline")
        assert offline.returncode == 1, offline.stdout


@pytest.fixture
def site(tmp_path: Path, pristine: Path, signing_key: Key, cache_dir: Path):
    root = copy_tree(pristine, tmp_path / "amd64-usr")
    faults = Faults()
    with serve(root, handler=fault_handler(faults)) as server:
        yield Site(root, server.url, faults, signing_key, cache_dir)


def sha512(path: Path) -> str:
    return hashlib.sha512(path.read_bytes()).hexdigest()
