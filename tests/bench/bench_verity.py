#!/usr/bin/env python3
"""Benchmark: `acl-compose verity format` against `veritysetup format` on a 1 GiB random file.

Not a test. Runs the two tools alternately (so both see the same machine load), checks they
agree on the root hash, and prints median wall times, the throughput ratio
(veritysetup time / acl-compose time; > 1 means acl-compose is faster), CPU time and peak RSS.
Goals: ratio >= 1.6 with --workers 2 (issue 16; issue 2 asked 1.5 with the default workers),
>= 0.9 with --workers 1, peak RSS < 100 MB. The load average seen by each tool's rounds is
printed beside its figures (the machine is shared: rerun when it is busy).

    .venv/bin/python tests/bench/bench_verity.py [--size-mib 1024] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UUID = "12345678-1234-5678-9abc-def012345678"
SALT = "5a" * 32


def compile_bytecode(repo: Path) -> None:
    """Byte-compile acl_compose first, as an installed tool is: this machine sets
    PYTHONDONTWRITEBYTECODE, and every timed start would otherwise compile ~60 modules."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo / "acl_compose")],
                   check=True)  # fmt: skip


def run_peak(argv: list[str]) -> tuple[float, float, float, str]:
    """Run argv; (wall s, CPU s and peak RSS MB of it and its reaped children, stdout)."""
    start = time.perf_counter()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        os.dup2(wfd, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 65536):
        chunks.append(chunk)
    os.close(rfd)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv[0]} failed with {os.waitstatus_to_exitcode(status)}: {argv}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, b"".join(chunks).decode()


def root_of(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith("Root hash:"):
            return line.split()[-1]
    return stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="scratch dir [default: /var/tmp]")
    args = ap.parse_args()

    repo = Path(__file__).resolve().parents[2]
    acl = [sys.executable, "-m", "acl_compose"]
    vs = shutil.which("veritysetup", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not vs:
        sys.exit("veritysetup not found: apt-get install cryptsetup-bin")
    os.chdir(repo)
    compile_bytecode(repo)

    with tempfile.TemporaryDirectory(prefix="bench-verity-", dir=args.dir or "/var/tmp") as tmp:
        data = Path(tmp) / "data.img"
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        # Warm the page cache for both tools alike. A small buffer: children forked from this
        # process start with its resident size as their peak-RSS floor.
        buf = bytearray(1 << 20)
        with open(data, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        print(f"data: {args.size_mib} MiB random, {os.cpu_count()} CPUs, "
              f"load average at start {os.getloadavg()[0]:.2f}")  # fmt: skip
        common = ["--salt", SALT, "--uuid", UUID]
        variants = {
            "veritysetup": [vs, "format", str(data), f"{tmp}/vs.hash", *common],
            "acl (default workers)": [*acl, "verity", "format", str(data), f"{tmp}/a.hash"]
            + common,
            "acl --workers 2": [
                *acl, "verity", "format", str(data), f"{tmp}/a2.hash", *common, "--workers", "2"
            ],
            "acl --workers 1": [
                *acl, "verity", "format", str(data), f"{tmp}/a1.hash", *common, "--workers", "1"
            ],
        }  # fmt: skip
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
        loads: dict[str, list[float]] = {k: [] for k in variants}
        roots: set[str] = set()
        for r in range(args.rounds):
            for name, argv in variants.items():
                wall, cpu, rss, out = run_peak(argv)
                roots.add(root_of(out))
                results[name].append((wall, cpu, rss))
                loads[name].append(os.getloadavg()[0])
                print(f"round {r + 1} {name:24s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  "
                      f"peak RSS {rss:6.1f} MB")  # fmt: skip
        if len(roots) != 1:
            sys.exit(f"root hashes differ: {roots}")
        a, b = Path(tmp, "vs.hash").read_bytes(), Path(tmp, "a.hash").read_bytes()
        print(f"root hash {roots.pop()} identical; hash files identical: {a == b}")
        startup = statistics.median(run_peak([*acl, "--version"])[0] for _ in range(3))
        print(f"acl-compose start-up alone (--version): {startup:.2f} s wall, included below")
        print(f"load average at end {os.getloadavg()[0]:.2f} (other processes share the CPUs)")
        vs_runs = results["veritysetup"]
        goals = {"acl --workers 2": ">= 1.6", "acl --workers 1": ">= 0.9"}
        print(f"{'tool':24s} {'median wall':>11s} {'MiB/s':>6s} {'ratio':>6s} {'goal':>6s} "
              f"{'cpu':>6s} {'cpu ratio':>9s} {'peak RSS':>9s}  load")  # fmt: skip
        for k, v in results.items():
            wall = statistics.median(w for w, _, _ in v)
            cpu = statistics.median(c for _, c, _ in v)
            # paired per round: both tools ran back to back under the same load
            ratio = statistics.median(b[0] / a[0] for a, b in zip(v, vs_runs, strict=True))
            cpu_ratio = statistics.median(b[1] / a[1] for a, b in zip(v, vs_runs, strict=True))
            rss = max(m for _, _, m in v)
            load = f"{min(loads[k]):.2f}-{max(loads[k]):.2f}"
            goal = goals.get(k, "")
            print(f"{k:24s} {wall:10.2f}s {args.size_mib / wall:6.0f} {ratio:6.2f} {goal:>6s} "
                  f"{cpu:5.2f}s {cpu_ratio:9.2f} {rss:7.1f}MB  {load}")  # fmt: skip
        print(
            "ratio = median over rounds of veritysetup wall / tool wall, > 1 is faster "
            "(peak RSS goal < 100 MB)"
        )


if __name__ == "__main__":
    main()
