"""`acl-compose matrix run` end to end on real Dask clusters and real QEMU (the tiny guest).

The tiny guest boots in a few seconds under TCG, so these tests exercise the mechanics with
real boots and real processes: both VM slots used, images by path and by URL (downloaded
once per worker cache), an SSHCluster over a throwaway loopback sshd, a hanging guest killed
at its timeout and retried, a SIGKILLed worker whose cell reruns elsewhere, and --resume
after the client itself was SIGKILLed. Each test runs the CLI with its own TMPDIR, so a QEMU
left behind would be found by its overlay path.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from acl_compose.fetch import serve
from acl_compose.fetch.httpserve import RangeRequestHandler
from acl_compose.matrix import results, worker
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.integration

SUITES = REPO / "tests" / "data" / "matrix"


def qemus_under(path: Path) -> list[int]:
    """QEMU processes whose command line mentions `path` (their overlay lives there)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and str(path).encode() in cmd:
            out.append(int(d.name))
    return out


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if worker._proc_start(p) is not None]


def write_matrix(d: Path, images: str, suites: str, extra: str = "") -> Path:
    p = d / "matrix.yaml"
    p.write_text(
        f"images:\n{images}firmwares: [kernel]\n"
        "platforms:\n  - {name: tiny, memory: 256, cpus: 1, accel: tcg}\n"
        f"suites:\n{suites}{extra}"
    )
    return p


def console_suite(name: str, path: Path) -> str:
    return f"  - {{name: {name}, path: {path}, transport: console}}\n"


def matrix_cli(tmp: Path, *args: object, check: bool | None = None) -> subprocess.CompletedProcess:
    tmpdir = tmp / "t"
    tmpdir.mkdir(exist_ok=True)
    return run_cli("--cache-dir", tmp / "cache", "--json", "matrix", "run", *args,
                   env={"TMPDIR": str(tmpdir)}, check=check, timeout=600)  # fmt: skip


class Recording(RangeRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        Recording.seen.append(self.path)
        super().do_GET()


def four_cell_matrix(d: Path, tiny: Path, url: str) -> Path:
    sha = hashlib.sha256(tiny.read_bytes()).hexdigest()
    images = (f"  - {{name: shared, path: {tiny}, sha256: {sha}}}\n"
              f"  - {{name: fetched, url: '{url}', sha256: {sha}}}\n")  # fmt: skip
    suites = console_suite("dir", SUITES / "tiny-suite") + console_suite(
        "file", SUITES / "tiny-suite" / "test_tiny.py"
    )
    return write_matrix(d, images, suites, "timeout: 120\nretries: 1\n")


def check_four_cells(out: Path, summary: dict) -> None:
    assert summary["ok"] and summary["totals"] == {"cells": 4, "finished": 4, "passed": 4,
                                                   "failed": 0, "error": 0, "flaky": 0}  # fmt: skip
    ids = [c["cell"] for c in summary["cells"]]
    assert ids == ["fetched.kernel.tiny.none.dir", "fetched.kernel.tiny.none.file",
                   "shared.kernel.tiny.none.dir", "shared.kernel.tiny.none.file"]  # fmt: skip
    for c in summary["cells"]:
        assert c["counts"] == {"passed": 3, "failed": 0, "error": 0, "skipped": 0}, c
        assert len(c["tries"]) == 1 and 0 < c["boot_seconds"] < 60
        assert "sha256" in c["image_check"]
    merged = ET.parse(out / results.MERGED).getroot()
    assert sorted(s.get("name") for s in merged.findall("testsuite")) == ids
    assert len(merged.findall("testsuite/testcase")) == 12
    for cid in ids:
        assert "tiny guest: init started" in (out / "cells" / cid / "console.log").read_text()
        # Test ids do not depend on where a worker unpacked the suite.
        assert sorted(results.cases(out, cid)) == [
            "test_tiny::test_exit_status_and_stderr_travel",
            "test_tiny::test_kernel_is_debian",
            "test_tiny::test_os_release",
        ]


def max_overlap(cells: list[dict]) -> int:
    spans = [(t["started_at"], t["finished_at"]) for c in cells for t in c["tries"]]
    return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)


def test_four_cells_on_local_2(tiny_images, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    os.link(tiny_images.ok, site / "tiny.img")
    Recording.seen = []
    with serve(site, handler=Recording) as server:
        matrix = four_cell_matrix(tmp_path, tiny_images.ok, f"{server.url}tiny.img")
        out = tmp_path / "results"
        proc = matrix_cli(tmp_path, matrix, "-o", out, "--cluster", "local:2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    check_four_cells(out, summary)
    # Two workers with one VM slot each: both used, never more than two VMs at once.
    assert len({c["worker"] for c in summary["cells"]}) == 2
    assert max_overlap(summary["cells"]) == 2
    # The URL image went through the scheduler as a reference: fetched once, then cached.
    assert Recording.seen == ["/tiny.img"]
    assert not qemus_under(tmp_path) and not list((tmp_path / "t").glob("acl-*"))  # cleaned up
    # A second run into the same directory is refused; nothing there is touched.
    before = (out / results.JOURNAL).read_bytes()
    proc = matrix_cli(tmp_path, matrix, "-o", out, "--cluster", "local:1", check=False)
    assert proc.returncode == 1 and "already holds a matrix run" in proc.stderr
    assert (out / results.JOURNAL).read_bytes() == before


def test_same_four_cells_on_ssh_cluster(tiny_images, loopback_sshd, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    os.link(tiny_images.ok, site / "tiny.img")
    with serve(site) as server:
        matrix = four_cell_matrix(tmp_path, tiny_images.ok, f"{server.url}tiny.img")
        out = tmp_path / "results"
        proc = matrix_cli(
            tmp_path, matrix, "-o", out, "--cluster", f"ssh://root@127.0.0.1:{loopback_sshd.port}",
            "--vms-per-worker", "2", "--ssh-identity", loopback_sshd.identity,
            "--ssh-known-hosts", loopback_sshd.known_hosts,
            "--worker-cache-dir", tmp_path / "worker-cache",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:] + loopback_sshd.log.read_text()[-2000:]
    summary = json.loads(proc.stdout)
    check_four_cells(out, summary)
    # One worker process started over SSH, with two VM slots, both used.
    assert {c["worker"].rsplit(":", 1)[0] for c in summary["cells"]} == {"tcp://127.0.0.1"}
    assert len({(c["worker"], c["tries"][0]["pid"]) for c in summary["cells"]}) == 1
    assert max_overlap(summary["cells"]) == 2
    log = loopback_sshd.log.read_text()
    assert log.count("Accepted publickey for root") >= 2, log[-3000:]  # scheduler + worker
    assert list((tmp_path / "worker-cache").rglob("tiny.img"))  # the worker's own cache
    assert not qemus_under(tmp_path / "worker-cache")


def test_hanging_guest_killed_at_timeout_retried_then_error(tiny_images, tmp_path: Path) -> None:
    images = (
        f"  - {{name: ok, path: {tiny_images.ok}}}\n  - {{name: hang, path: {tiny_images.hang}}}\n"
    )
    matrix = write_matrix(tmp_path, images, console_suite("smoke", SUITES / "tiny-suite"),
                          "timeout: 8\nretries: 1\n")  # fmt: skip
    out = tmp_path / "results"
    start = time.monotonic()
    proc = matrix_cli(tmp_path, matrix, "-o", out, "--cluster", "local:2")
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: 1 of 2 cells did not pass: hang.kernel.tiny.none.smoke" in proc.stderr
    cells = {c["cell"]: c for c in json.loads(proc.stdout)["cells"]}
    hang = cells["hang.kernel.tiny.none.smoke"]
    assert hang["status"] == "error" and hang["message"].startswith(
        "infrastructure failure after 2 tries: timed out after 8s while booting"
    )
    assert [t["outcome"] for t in hang["tries"]] == ["infra", "infra"]
    for t in hang["tries"]:
        assert 8 <= t["seconds"] < 8 + worker.KILL_GRACE + 10, t  # killed at the deadline
    attempt1 = out / "cells" / hang["cell"] / "console.attempt1.log"
    assert "hanging on purpose" in attempt1.read_text()
    assert cells["ok.kernel.tiny.none.smoke"]["status"] == "passed"
    assert not qemus_under(tmp_path), "a timed-out VM outlived its cell"
    assert elapsed < 120


def _children(pid: int) -> list[int]:
    return [p for p, _ in worker.descendants(pid) if worker._proc_start(p)[0] == pid]


def _journal(out: Path) -> list[dict]:
    path = out / results.JOURNAL
    return results.read_journal(path) if path.exists() else []


def _wait(what: str, cond, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _popen_cli(tmp: Path, *args: object) -> subprocess.Popen:
    tmpdir = tmp / "t"
    tmpdir.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "acl_compose", "--cache-dir", str(tmp / "cache"), "--json",
            "matrix", "run", *map(str, args)]  # fmt: skip
    return subprocess.Popen(argv, env=dict(os.environ, TMPDIR=str(tmpdir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_sigkilled_worker_has_its_cell_rerun_elsewhere(tiny_images, tmp_path: Path) -> None:
    images = f"  - {{name: a, path: {tiny_images.ok}}}\n  - {{name: b, path: {tiny_images.ok}}}\n"
    matrix = write_matrix(tmp_path, images, console_suite("slow", SUITES / "slow-suite"),
                          "timeout: 120\nretries: 0\n")  # fmt: skip
    out = tmp_path / "results"
    proc = _popen_cli(tmp_path, matrix, "-o", out, "--cluster", "local:2")
    try:
        qemu = _wait("a VM", lambda: qemus_under(tmp_path / "t"))[0]
        cellproc = worker._proc_start(qemu)[0]
        victim = worker._proc_start(cellproc)[0]  # the Dask worker process running the cell
        time.sleep(2)  # mid-cell: booted or booting, the suite not finished
        os.kill(victim, signal.SIGKILL)
        _wait("the killed worker's VM to die", lambda: not alive([qemu, cellproc]), 15)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-4000:]
    summary = json.loads(stdout)
    rerun = [c for c in summary["cells"] if len(c["tries"]) > 1]
    assert len(rerun) == 1, summary["cells"]
    cell = rerun[0]
    lost, last = cell["tries"][0], cell["tries"][-1]
    assert lost["outcome"] == "infra" and "lost mid-cell" in lost["message"]
    assert lost["pid"] == victim and last["outcome"] == "passed"
    assert last["worker"] != lost["worker"] and last["pid"] != victim  # rerun elsewhere
    assert cell["flaky"] and summary["totals"]["flaky"] == 1
    assert not qemus_under(tmp_path)


def test_resume_after_killing_the_client_runs_only_unfinished_cells(
    tiny_images, tmp_path: Path
) -> None:
    images = "".join(f"  - {{name: c{i}, path: {tiny_images.ok}}}\n" for i in range(3))
    matrix = write_matrix(tmp_path, images, console_suite("smoke", SUITES / "tiny-suite"),
                          "timeout: 120\n")  # fmt: skip
    out = tmp_path / "results"
    proc = _popen_cli(tmp_path, matrix, "-o", out, "--cluster", "local:1")
    try:
        _wait("a finished cell", lambda: any(e["event"] == "done" for e in _journal(out)))
        tree = [p for p, _ in worker.descendants(proc.pid)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The client's workers notice their scheduler is gone and end, taking their VMs along.
    _wait("the dead client's workers and VMs to exit", lambda: not alive(tree), 90)
    assert not qemus_under(tmp_path)
    first = _journal(out)
    done1 = {e["cell"] for e in first if e["event"] == "done"}
    assert 1 <= len(done1) < 3
    proc2 = matrix_cli(tmp_path, matrix, "-o", out, "--cluster", "local:1", "--resume")
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "already finished" in proc2.stderr
    entries = _journal(out)
    runs = [e for e in entries if e["event"] == "run"]
    assert len(runs) == 2
    second = runs[1]["run_id"]
    started2 = {e["cell"] for e in entries if e["event"] == "start" and e["run_id"] == second}
    assert started2 == set(runs[0]["cells"]) - done1 == set(runs[1]["todo"])
    summary = json.loads(proc2.stdout)
    assert summary["ok"] and summary["totals"]["passed"] == 3
    assert not qemus_under(tmp_path)
