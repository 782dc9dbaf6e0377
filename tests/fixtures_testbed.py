"""Session fixtures for the testbed release (built once, cached under ~/.cache/acl-compose).

The build goes through the real CLI (`acl-compose --json testbed build`); a warm cache makes
it take seconds, so every test session and helper share one build. Set ACL_TESTBED_CACHE to
use another cache directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from acl_compose.util import default_cache_dir


def testbed_cache_dir() -> Path:
    return Path(os.environ.get("ACL_TESTBED_CACHE") or default_cache_dir())


@pytest.fixture(scope="session")
def testbed_build() -> dict[str, Any]:
    """build.json of the testbed (plus paths): image, release_dir, fingerprint, root_hash..."""
    from tests.conftest import run_cli

    if os.geteuid() != 0:
        pytest.skip("building the testbed needs root (mmdebstrap, chroot)")
    proc = run_cli("--json", "--cache-dir", testbed_cache_dir(), "testbed", "build", check=True)
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def testbed_release(testbed_build: dict[str, Any]) -> Path:
    """The release tree: <version>/, current -> <version>, testbed-signing-key.asc."""
    return Path(testbed_build["release_dir"])


@pytest.fixture(scope="session")
def testbed_key(testbed_release: Path) -> Path:
    return testbed_release / "testbed-signing-key.asc"


@pytest.fixture(scope="session")
def testbed_fingerprint(testbed_build: dict[str, Any]) -> str:
    return str(testbed_build["fingerprint"])


@pytest.fixture(scope="session")
def testbed_image(testbed_build: dict[str, Any]) -> Path:
    """The decompressed raw disk image (sparse, in the cache): boot it through an overlay only."""
    return Path(testbed_build["image"])


@pytest.fixture(scope="session")
def testbed_server(testbed_release: Path) -> Iterator[str]:
    """Base URL (ending in '/') of the release tree served over HTTP on loopback."""
    from acl_compose.fetch.httpserve import serve

    with serve(testbed_release, "127.0.0.1", 0) as server:
        yield server.url


@pytest.fixture(scope="session")
def testbed_old_build() -> dict[str, Any]:
    """build.json of the old flavour (ext2 /usr, 128 MiB ESP/OEM, 1 GiB USR: before 3815)."""
    from tests.conftest import run_cli

    if os.geteuid() != 0:
        pytest.fail("building the testbed needs root (mmdebstrap, chroot)")
    proc = run_cli("--json", "--cache-dir", testbed_cache_dir(), "testbed", "build", "--flavor",
                   "old", check=True)  # fmt: skip
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def testbed_old_server(testbed_old_build: dict[str, Any]) -> Iterator[str]:
    from acl_compose.fetch.httpserve import serve

    with serve(Path(testbed_old_build["release_dir"]), "127.0.0.1", 0) as server:
        yield server.url
