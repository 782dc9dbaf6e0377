"""Benchmark: `acl-compose sysext build` (signed erofs DDI) vs `mkfs.erofs` + `veritysetup format`.

Not a test. A ~210 MB tree (half random binaries, half text files), built uncompressed and
with lz4. Per round, alternating so both see the same load: a cold build (fresh cache dir),
a warm rebuild (same cache: what compose's repeated builds cost), and the anchor, the two
tools a user would otherwise run on the same tree. Prints medians of wall and CPU seconds,
the paired median ratio and the load average while they ran (the machine is shared).
Goals (issue 16): cold build <= 1.3x the tools uncompressed, <= 1.15x with lz4.

    .venv/bin/python tests/bench/bench_sysext.py [--mb 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from acl_compose.trust import signing  # noqa: E402


def compile_bytecode(repo: Path) -> None:
    """Byte-compile acl_compose first, as an installed tool is: this machine sets
    PYTHONDONTWRITEBYTECODE, and every timed start would otherwise compile ~60 modules."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo / "acl_compose")],
                   check=True)  # fmt: skip


def make_tree(root: Path, mb: int) -> None:
    rnd = random.Random(1)
    half = mb * (1 << 20) // 2
    bins = root / "usr/share/bench/bin"
    text = root / "usr/share/bench/doc"
    bins.mkdir(parents=True)
    text.mkdir(parents=True)
    for i in range(half // (2 << 20)):
        (bins / f"blob{i:03d}").write_bytes(os.urandom(2 << 20))
    words = [f"word{i}" for i in range(5000)]
    n = half // (50 << 10)
    for i in range(n):
        body = " ".join(rnd.choice(words) for _ in range(8000))[: 50 << 10]
        (text / f"page{i:04d}.txt").write_text(body + "\n")


def timed(*argvs: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of running the commands one after another (CPU: user+sys of the
    processes and their children; steadier than wall when others share the cores)."""
    start, cpu = time.perf_counter(), 0.0
    for argv in argvs:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"failed: {' '.join(map(str, argv))}")
        cpu += usage.ru_utime + usage.ru_stime
    return time.perf_counter() - start, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--compression", action="append", choices=["none", "lz4", "lz4hc"])
    args = ap.parse_args()
    goals = {"none": "<= 1.3", "lz4": "<= 1.15"}
    compile_bytecode(REPO)
    work = Path(tempfile.mkdtemp(prefix="bench-sysext.", dir=os.environ.get("TMPDIR")))
    rows = []
    try:
        bundle = work / "bundle"
        make_tree(bundle / "files/tree", args.mb)
        keys = signing.generate(work / "keys")
        src = bundle / "files/tree"
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        print(f"tree: {size / 1e6:.0f} MB in {sum(1 for _ in src.rglob('*'))} entries; "
              f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}")  # fmt: skip
        # Part of every build, for reading the ratios: the interpreter and imports alone.
        version = [sys.executable, "-m", "acl_compose", "--version"]
        startup = statistics.median(timed(version)[0] for _ in range(5))
        print(f"acl-compose start-up alone (--version): {startup:.2f} s wall")
        for comp in args.compression or ["none", "lz4"]:
            (bundle / "sysext.yaml").write_text(
                f"name: bench\nversion: '1'\ncompression: {comp}\n"
                "files:\n  - path: /usr\n    from: files/tree/usr\n"
            )
            cold, warm, base, loads = [], [], [], []
            for i in range(args.runs):
                cache = work / f"cache-{comp}-{i}"
                argv = [sys.executable, "-m", "acl_compose", "--cache-dir", str(cache)]
                argv += ["sysext", "build", str(bundle), "-o", str(work / "out")]
                argv += ["--key", str(keys[0]), "--cert", str(keys[1])]
                fs, tree = work / "plain.erofs", work / "plain.verity"
                for p in (fs, tree):
                    p.unlink(missing_ok=True)
                mkfs = ["mkfs.erofs", "--quiet"] + ([] if comp == "none" else [f"-z{comp}"])
                tools = ([*mkfs, str(fs), str(src)], ["veritysetup", "format", str(fs), str(tree)])

                def ours(argv: list[str] = argv) -> tuple[float, float]:
                    # Without its earlier output, as the tools run without theirs (above):
                    # replacing a 217 MB file would free its page cache inside the timed run.
                    shutil.rmtree(work / "out", ignore_errors=True)
                    return timed(argv)

                if i % 2:  # every other round the tools go second: neither always follows
                    cold.append(ours())  # the other's freed page cache
                    warm.append(ours())
                    base.append(timed(*tools))
                else:
                    base.append(timed(*tools))
                    cold.append(ours())
                    warm.append(ours())
                loads.append(os.getloadavg()[0])
                shutil.rmtree(cache)
            ratio = statistics.median(c[0] / b[0] for c, b in zip(cold, base, strict=True))
            cpu_ratio = statistics.median(c[1] / b[1] for c, b in zip(cold, base, strict=True))
            ddi = (work / "out/bench.raw").stat().st_size / 1e6
            load = f"{min(loads):.2f}-{max(loads):.2f}"
            for name, samples in (("mkfs.erofs + veritysetup format", base),
                                  ("acl-compose sysext build, cold", cold),
                                  ("acl-compose sysext build, warm", warm)):  # fmt: skip
                wall = statistics.median(s[0] for s in samples)
                cpu = statistics.median(s[1] for s in samples)
                rows.append((f"sysext {comp}: {name} (n={len(samples)})", wall, cpu, "", "", load))
            rows.append((f"sysext {comp}: cold build / tools (DDI {ddi:.0f} MB)", None, None,
                         f"{ratio:.2f}", goals.get(comp, ""), load))  # fmt: skip
            rows.append((f"sysext {comp}: cold build / tools, CPU", None, None,
                         f"{cpu_ratio:.2f}", "", load))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'figure (medians)':58s} {'wall':>7s} {'cpu':>6s} {'ratio':>6s} {'goal':>8s}  load")
    for name, wall, cpu, ratio, goal, load in rows:
        w = f"{wall:6.2f}s" if wall is not None else ""
        c = f"{cpu:5.2f}s" if cpu is not None else ""
        print(f"{name:58s} {w:>7s} {c:>6s} {ratio:>6s} {goal:>8s}  {load}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
