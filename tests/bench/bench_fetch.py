"""Benchmark: `acl-compose fetch` vs `curl -o`, and `fetch.decompress` vs `bzip2 -dc`.

Run: .venv/bin/python tests/bench/bench_fetch.py [--size-mib 512] [--runs 5]
Prints medians and ratios (goals: fetch/curl <= 1.1, decompress/bzip2 <= 0.6 with lbzip2).
The fetch includes what makes it safe: DIGESTS + its signature, sha512 and gpgv over the file.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from acl_compose.fetch.httpserve import RangeRequestHandler, serve  # noqa: E402
from tests.flatcar_tree import make_key, make_tree, publish  # noqa: E402

BIG = "flatcar_production_image_big.bin"


def timed(argv: list[str], **kw) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user+sys of the process and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, **kw)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def med(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def paced_handler(rate_mib: float) -> type[RangeRequestHandler]:
    """Sends bodies at `rate_mib` MiB/s, like a real link (0 = as fast as loopback goes)."""

    class Paced(RangeRequestHandler):
        def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
            if not rate_mib:
                return super().copyfile(source, outputfile)
            start, sent = time.perf_counter(), 0
            while chunk := source.read(1 << 20):
                outputfile.write(chunk)
                sent += len(chunk)
                ahead = sent / (rate_mib * 2**20) - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)

    return Paced


def make_big_tree(work: Path, size_mib: int):
    key = make_key(work / "gnupg", "Bench <bench@example.org>")
    tree = make_tree(work / "amd64-usr", key, raw=b"small")
    vdir = next(p for p in tree.iterdir() if p.is_dir() and not p.is_symlink())
    big = vdir / BIG
    with open(big, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(size_mib):
            f.write(block[i % 7 :] + block[: i % 7])
    publish(big, key)
    return key, tree, vdir


def bench_fetch(work: Path, built, runs: int, rate_mib: float) -> tuple[tuple[float, float], ...]:
    key, tree, vdir = built
    curl_t, ours_t = [], []
    with serve(tree, handler=paced_handler(rate_mib)) as server:
        url = f"{server.url}{vdir.name}/{BIG}"
        for _ in range(runs):
            out = work / "curl.out"
            curl_t.append(timed(["curl", "-sSf", "-o", str(out), url]))
            out.unlink()
            cache = work / "cache"
            argv = [
                sys.executable,
                "-m",
                "acl_compose",
                "--cache-dir",
                str(cache),
                "fetch",
                "--base-url",
                server.url,
                "--release",
                vdir.name,
                "--artifact",
                BIG,
                "--keyring",
                str(key.public),
                "--trusted-key",
                key.fingerprint,
            ]
            ours_t.append(timed(argv, stdout=subprocess.DEVNULL))
            shutil.rmtree(cache)
    return med(curl_t), med(ours_t)


def bench_decompress(work: Path, size_mib: int, runs: int) -> tuple[tuple[float, float], ...]:
    raw = work / "img.raw"
    # Disk-image-like: half zeros (holes), a quarter text-like, a quarter random.
    text = (b"usr/lib/systemd/system/some-unit.service 0644 root root\n" * 20000)[: 1 << 20]
    rnd = os.urandom(1 << 20)
    with open(raw, "wb") as f:
        for i in range(size_mib):
            f.write((bytes(1 << 20), text, bytes(1 << 20), rnd)[i % 4])
    src = work / "img.raw.bz2"
    with open(src, "wb") as f:
        subprocess.run(["lbzip2", "-c", "-1", str(raw)], stdout=f, check=True)
    bz, lb, py = [], [], []
    for _ in range(runs):
        with open(work / "bzip2.out", "wb") as f:
            bz.append(timed(["bzip2", "-dc", str(src)], stdout=f))
        lb.append(timed(_decompress_argv(src, work / "ours.raw", True)))
    assert (work / "ours.raw").stat().st_size == raw.stat().st_size
    py.append(timed(_decompress_argv(src, work / "ours-py.raw", False)))
    return med(bz), med(lb), med(py)


def _decompress_argv(src: Path, dest: Path, lbzip2: bool) -> list[str]:
    code = (
        "import sys; from acl_compose.fetch.fetcher import decompress;"
        f" decompress(sys.argv[1], sys.argv[2], use_lbzip2={lbzip2})"
    )
    return [sys.executable, "-c", code, str(src), str(dest)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--decompress-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--rate-mib", type=float, default=100.0, help="also measure over a link this fast (0: skip)"
    )
    args = ap.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-fetch-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        built = make_big_tree(work, args.size_mib)
        for rate in [0.0] + ([args.rate_mib] if args.rate_mib else []):
            curl, ours = bench_fetch(work, built, args.runs, rate)
            link = f"{rate:g} MiB/s link" if rate else "loopback, unthrottled"
            print(
                f"fetch {args.size_mib} MiB, {link} (median of {args.runs}; wall/cpu):"
                f" curl -o {curl[0]:.2f}s/{curl[1]:.2f}s,"
                f" acl-compose fetch {ours[0]:.2f}s/{ours[1]:.2f}s"
                f" -> wall ratio {ours[0] / curl[0]:.2f} (goal <= 1.1)"
            )
        bz, lb, py = bench_decompress(work, args.decompress_mib, args.runs)
        print(
            f"decompress {args.decompress_mib} MiB raw (wall/cpu): bzip2 -dc {bz[0]:.2f}s/"
            f"{bz[1]:.2f}s, decompress(lbzip2) {lb[0]:.2f}s/{lb[1]:.2f}s"
            f" -> wall ratio {lb[0] / bz[0]:.2f} (goal <= 0.6);"
            f" python bz2 {py[0]:.2f}s/{py[1]:.2f}s (ratio {py[0] / bz[0]:.2f})"
        )
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
