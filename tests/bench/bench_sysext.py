"""Benchmark: `acl-compose sysext build` (signed erofs DDI) vs mkfs.erofs + veritysetup format.

A ~200 MB tree (half random binaries, half text files). Each side starts cold (fresh
acl-compose cache) and is timed best-of-N as whole processes, i.e. what a user waits for.
Run: .venv/bin/python tests/bench/bench_sysext.py [--mb 200] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from acl_compose.trust import signing


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


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(*argvs: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of running the commands one after another.

    CPU (user+sys of the processes and their children) is reported beside wall time
    because this machine is shared: wall time swings with other load, CPU time less so.
    """
    start, cpu = time.perf_counter(), _cpu()
    for argv in argvs:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, _cpu() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--compression", action="append", choices=["none", "lz4", "lz4hc"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sysext."))
    try:
        bundle = work / "bundle"
        make_tree(bundle / "files/tree", args.mb)
        keys = signing.generate(work / "keys")
        src = bundle / "files/tree"
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        print(f"tree: {size / 1e6:.0f} MB in {sum(1 for _ in src.rglob('*'))} entries")
        for comp in args.compression or ["none", "lz4"]:
            (bundle / "sysext.yaml").write_text(
                f"name: bench\nversion: '1'\ncompression: {comp}\n"
                "files:\n  - path: /usr\n    from: files/tree/usr\n"
            )
            ours, base, warm = [], [], []
            for i in range(args.runs):
                cache = work / f"cache-{comp}-{i}"
                argv = [sys.executable, "-m", "acl_compose", "--cache-dir", str(cache)]
                argv += ["sysext", "build", str(bundle), "-o", str(work / "out")]
                argv += ["--key", str(keys[0]), "--cert", str(keys[1])]
                ours.append(timed(argv))
                warm.append(timed(argv))  # same cache: what compose's repeated builds cost
                fs, tree = work / "plain.erofs", work / "plain.verity"
                for p in (fs, tree):
                    p.unlink(missing_ok=True)
                mkfs = ["mkfs.erofs", "--quiet"] + ([] if comp == "none" else [f"-z{comp}"])
                base.append(
                    timed([*mkfs, str(fs), str(src)], ["veritysetup", "format", str(fs), str(tree)])
                )
                shutil.rmtree(cache)
            (ow, oc), (bw, bc) = min(ours), min(base)
            out = work / "out/bench.raw"
            print(
                f"compression={comp}: acl-compose sysext build {ow:.2f}s wall / {oc:.2f}s CPU; "
                f"mkfs.erofs + veritysetup format {bw:.2f}s wall / {bc:.2f}s CPU; "
                f"ratio {ow / bw:.2f} wall, {oc / bc:.2f} CPU (goal <= 1.2); "
                f"DDI {out.stat().st_size / 1e6:.0f} MB; cached rebuild {min(warm)[0]:.2f}s wall"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
