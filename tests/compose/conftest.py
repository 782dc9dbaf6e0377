"""The compose tests' shared fixture: `mini_release`, the small Flatcar-shaped image
(tests/fixtures_compose.py) composed once per session with the product's bundles and
configs, which every file here reads (none may change it). CLI runs: tests/compose/runs.py."""

from __future__ import annotations

import json

import pytest

from tests.compose.runs import compose
from tests.fixtures_compose import BUNDLES, CONFIGS, write_manifest


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
