"""`matrix compare` on real runs: the upstream-vs-downstream check finds a planted regression.

Baseline: the composed testbed release; candidate: the same base composed with the
pkgmgr-canary sysext (ships /usr/bin/dpkg). Both go through the whole matrix path: a release
directory with its certificate (compose's verify on the worker), one full-OS boot each under
UEFI on a local Dask cluster, the suite narrowed to qemu-tests/test_immutable.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

REGRESSION = "test_immutable::test_no_package_manager_on_path_or_in_usr_opt[ssh://vm]"


def _matrix(d: Path, name: str, release: Path, cert: Path) -> Path:
    p = d / f"{name}.yaml"
    p.write_text(
        f"images:\n  - {{name: {name}, release: {release}, cert: {cert}}}\n"
        "firmwares: [uefi]\n"
        f"suites:\n  - {{name: immutable, path: {REPO / 'qemu-tests' / 'test_immutable.py'}}}\n"
        "timeout: 1800\nretries: 1\n"
    )
    return p


@pytest.mark.integration
def test_compare_finds_the_canary_regression(composed_release, canary_release,
                                             tmp_path: Path) -> None:  # fmt: skip
    cert = composed_release.cert
    runs = {}
    for name, release in (("upstream", composed_release.out_dir), ("canary", canary_release)):
        out = tmp_path / name
        proc = run_cli("--cache-dir", tmp_path / "cache", "--json", "matrix", "run",
                       _matrix(tmp_path, name, release, cert), "-o", out,
                       "--cluster", "local:1", timeout=3600)  # fmt: skip
        runs[name] = (proc, out)
    base_proc, base = runs["upstream"]
    cand_proc, cand = runs["canary"]
    assert base_proc.returncode == 0, base_proc.stderr[-5000:]
    assert cand_proc.returncode == 1, cand_proc.stderr[-5000:]
    for proc in (base_proc, cand_proc):
        (cell,) = json.loads(proc.stdout)["cells"]
        assert cell["image_check"] == "release verified with release.crt"
        assert cell["counts"]["passed"] >= 4  # the suite really ran against the release
        assert len(cell["tries"]) == 1  # a failed test is never retried
    proc = run_cli("--json", "matrix", "compare", base, cand)
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    assert [r["test"] for r in rep["regressions"]] == [REGRESSION]
    assert rep["regressions"][0]["cell"] == "uefi.qemu.none.immutable"
    assert "/usr/bin/dpkg" in rep["regressions"][0]["message"]
    assert rep["fixed"] == [] and rep["new"] == [] and rep["missing_cells"] == []
    assert "error: 1 regression(s)" in proc.stderr
    # The other way round the canary's failure is "fixed", and nothing regressed.
    proc = run_cli("matrix", "compare", cand, base, check=True)
    assert f"fixed: uefi.qemu.none.immutable: {REGRESSION} (failed -> passed)" in proc.stdout
