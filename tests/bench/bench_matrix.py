"""Benchmark: matrix scaling (N cells on W workers vs (N/W) x one cell) and per-cell overhead.

    python tests/bench/bench_matrix.py [--cells=4] [--workers=2]

Uses the tiny guest (testbed kernel + busybox initramfs, tests/matrix/tinyguest.py) booted
under TCG with one vCPU, so W workers on this 2-core machine can really run W VMs at once.
1. Scaling: the same N-cell matrix on local:1 and on local:W. One cell's time is the mean
   task time on local:1; the target is span(local:W) <= 1.15 x (N/W) x that. The span runs
   from the first cell's start to the last cell's end (cluster start-up is reported apart).
2. Overhead with a no-op suite (a test that does not touch the guest), on local:1:
   - scheduler: (span - sum of task times) / N, the gap Dask leaves between cells;
   - harness: task time - boot - tests, per cell (image check, cell process, VM set-up,
     pytest start-up, teardown);
   - a bare Dask round trip of a no-op task asking for the `vm` resource, for reference.
Boots take the VM lock (flock /tmp/acl-vm.lock) while they run.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.matrix.tinyguest import build_tiny_image, find_kernel  # noqa: E402

SUITES = REPO / "tests" / "data" / "matrix"


def arg(name: str, default: int) -> int:
    for a in sys.argv[1:]:
        if a.startswith(f"--{name}="):
            return int(a.split("=", 1)[1])
    return default


def write_matrix(d: Path, image: Path, n: int, suite: Path) -> Path:
    p = d / f"m-{suite.name}-{n}.yaml"
    images = "".join(f"  - {{name: c{i}, path: {image}}}\n" for i in range(n))
    p.write_text(
        f"images:\n{images}firmwares: [kernel]\n"
        "platforms:\n  - {name: tiny, memory: 256, cpus: 1, accel: tcg}\n"
        f"suites:\n  - {{name: s, path: {suite}, transport: console}}\ntimeout: 300\n"
    )
    return p


def run(d: Path, matrix: Path, cluster: str) -> tuple[dict, float]:
    out = Path(tempfile.mkdtemp(prefix="res-", dir=d))
    out.rmdir()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "acl_compose", "--cache-dir", str(d / "cache"), "--json",
         "matrix", "run", str(matrix), "-o", str(out), "--cluster", cluster],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"matrix run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), wall


def span(summary: dict) -> float:
    tries = [t for c in summary["cells"] for t in c["tries"]]
    return max(t["finished_at"] for t in tries) - min(t["started_at"] for t in tries)


def dask_round_trip(n: int = 200) -> float:
    from distributed import Client, LocalCluster

    def noop(x: int) -> int:
        return x

    with LocalCluster(n_workers=1, threads_per_worker=1, resources={"vm": 1}, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        client.submit(noop, -1, resources={"vm": 1}).result()
        start = time.monotonic()
        for i in range(n):
            client.submit(noop, i, resources={"vm": 1}, pure=False).result()
        return (time.monotonic() - start) / n


def main() -> None:
    n, w = arg("cells", 4), arg("workers", 2)
    kernel = find_kernel()
    if kernel is None:
        raise SystemExit("no testbed kernel: run `acl-compose testbed build` first")
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        d = Path(tmp)
        image = build_tiny_image(d / "tiny.img", kernel)
        smoke = write_matrix(d, image, n, SUITES / "tiny-suite")
        noop = write_matrix(d, image, n, SUITES / "noop-suite")
        with open("/tmp/acl-vm.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            serial, wall1 = run(d, smoke, "local:1")
            parallel, wall_w = run(d, smoke, f"local:{w}")
            idle, wall_noop = run(d, noop, "local:1")
        rt = dask_round_trip()
    one = statistics.mean(t["seconds"] for c in serial["cells"] for t in c["tries"])
    one_w = statistics.mean(t["seconds"] for c in parallel["cells"] for t in c["tries"])
    target = (n / w) * one
    ratio = span(parallel) / target
    print(f"scaling: {n} cells, one cell {one:.1f}s (mean on local:1); load {load}")
    print(f"  local:1 span {span(serial):.1f}s (wall {wall1:.1f}s incl. cluster start-up)")
    print(f"  local:{w} span {span(parallel):.1f}s (wall {wall_w:.1f}s); (N/W) x one cell = "
          f"{target:.1f}s; ratio {ratio:.2f} (target <= 1.15)")  # fmt: skip
    # Where the time went: cells slowed by sharing the CPU, vs. the scheduler packing them.
    print(f"  one cell on local:{w} takes {one_w:.1f}s ({one_w / one:.2f}x: TCG guests share "
          f"{os.cpu_count()} cores); span / ((N/W) x that) = "
          f"{span(parallel) / ((n / w) * one_w):.2f} (the scheduler's packing)")  # fmt: skip
    tasks = [t for c in idle["cells"] for t in c["tries"]]
    sched = (span(idle) - sum(t["seconds"] for t in tasks)) / len(tasks)
    harness = statistics.mean(
        t["seconds"] - (t.get("boot_seconds") or 0) - (t.get("tests_seconds") or 0) for t in tasks
    )
    boot = statistics.mean(t.get("boot_seconds") or 0 for t in tasks)
    print(f"overhead, no-op suite on local:1 ({len(tasks)} cells, wall {wall_noop:.1f}s):")
    print(
        f"  scheduler gap per cell {sched * 1000:.0f} ms; harness per cell {harness:.2f}s "
        f"(boot {boot:.2f}s not included); bare Dask round trip {rt * 1000:.1f} ms/task"
    )


if __name__ == "__main__":
    main()
