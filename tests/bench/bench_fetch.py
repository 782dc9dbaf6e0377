"""Benchmark: `acl-compose fetch` against `curl -o` and against the anchor's own workflow, and
`fetch.decompress` against `bzip2 -dc` and `lbzip2 -dc`.

Not a test: it measures and prints, in the same run and alternating so every tool sees the
same load, median wall and CPU seconds over several rounds, with the load average beside
each figure (the machine is shared: rerun when it is busy).

- fetch: a 512 MiB published artifact (F, F.sig, F.DIGESTS, .DIGESTS.sig/.asc) from a loopback
  server, unthrottled and paced to a 100 MiB/s link. Anchors: `curl -o F`; and the workflow
  sysext-bakery and flatcar-install use: `curl -o F`, `curl -o F.sig`, `gpgv F.sig F`,
  `curl -o F.DIGESTS`, `sha512sum -c`. acl-compose's default checks the signed DIGESTS and
  F's SHA512; `--strict` adds F.sig (gpgv over the stream), shown for information.
- decompress: a 256 MiB disk-like image (half zero blocks) compressed with bzip2 -9 block
  size, to a sparse file; anchors `bzip2 -dc > /dev/null` and `lbzip2 -dc > /dev/null`, and
  for reading the ratio `lbzip2 -dc | cat > /dev/null`: what any reader of lbzip2's pipe
  costs before it looks at a byte (the copy through the pipe), the floor of a streaming
  decompressor that must inspect the data to leave holes.

Goals (issue 16): fetch <= 1.3x curl and <= 0.4x the anchor workflow on loopback, <= 1.05x
curl at 100 MiB/s, CPU < 1.2 s per 512 MiB; decompress <= 1.1x lbzip2.

    .venv/bin/python tests/bench/bench_fetch.py [--size-mib 512] [--runs 5] [--paced-runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from acl_compose.fetch.httpserve import RangeRequestHandler, serve  # noqa: E402
from tests.flatcar_tree import make_key, make_tree, publish  # noqa: E402

BIG = "flatcar_production_image_big.bin"


def compile_bytecode(repo: Path) -> None:
    """Byte-compile acl_compose first, as an installed tool is: this machine sets
    PYTHONDONTWRITEBYTECODE, and every timed start would otherwise compile ~60 modules."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo / "acl_compose")],
                   check=True)  # fmt: skip


def timed(argv: list[str], **kw) -> tuple[float, float, float]:
    """Wall seconds, user and sys CPU seconds of the process and all its children (sys apart:
    on this shared machine page-cache reclaim and lock contention show up there)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(map(str, argv))}")
    return wall, usage.ru_utime, usage.ru_stime


# CPU seconds of the server's sending threads (in this process). On loopback the kernel bills
# TCP work to whichever side happens to run it (an ACK can make the receiver transmit the
# sender's queued data in its own context), so a client's CPU alone varies from run to run
# with the timing; client + server is the transfer's real cost, comparable across tools.
_SERVED = [0.0]
_SERVED_LOCK = threading.Lock()


def served_cpu() -> float:
    with _SERVED_LOCK:
        return _SERVED[0]


def rotated(tools: dict[str, list[str]], r: int) -> list[tuple[str, list[str]]]:
    """The tools in round r's order: each takes each place in turn, so none always follows
    the one that just freed (and left to the host, see fetch.fetcher.WRITE) 512 MiB."""
    items = list(tools.items())
    k = r % len(items)
    return items[k:] + items[:k]


def load() -> float:
    return os.getloadavg()[0]


class Figures:
    """Samples per (section, tool) and the load seen while they were taken."""

    def __init__(self) -> None:
        # (wall, user, sys, CPU of the server's sending thread) per round
        self.samples: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
        self.loads: dict[str, list[float]] = {}

    def add(self, section: str, tool: str, sample: tuple[float, float, float, float]) -> None:
        self.samples.setdefault((section, tool), []).append(sample)
        self.loads.setdefault(section, []).append(load())
        wall, user, sys_, _ = sample
        n = len(self.samples[(section, tool)])
        print(f"round {n} {section}: {tool:28s} wall {wall:5.2f}s user {user:5.2f}s "
              f"sys {sys_:5.2f}s load {load():.2f}", flush=True)  # fmt: skip

    def median(self, section: str, tool: str) -> tuple[float, float, float, float, float]:
        """Median wall, CPU (user+sys), sys, CPU with the server's; and the best wall."""
        s = self.samples[(section, tool)]
        return (statistics.median(w for w, _, _, _ in s),
                statistics.median(u + y for _, u, y, _ in s),
                statistics.median(y for _, _, y, _ in s),
                statistics.median(u + y + v for _, u, y, v in s),
                min(w for w, _, _, _ in s))  # fmt: skip

    def ratio(self, section: str, tool: str, anchor: str) -> float:
        """Median over rounds of tool/anchor wall time, paired round by round."""
        a, b = self.samples[(section, tool)], self.samples[(section, anchor)]
        return statistics.median(x[0] / y[0] for x, y in zip(a, b, strict=True))

    def load_range(self, section: str) -> str:
        values = self.loads[section]
        return f"{min(values):.2f}-{max(values):.2f}"


def paced_handler(rate_mib: float) -> type[RangeRequestHandler]:
    """Sends bodies at `rate_mib` MiB/s, like a real link (0 = as fast as loopback goes)."""

    class Paced(RangeRequestHandler):
        def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
            start = time.thread_time()
            try:
                self._send(source, outputfile)
            finally:
                with _SERVED_LOCK:
                    _SERVED[0] += time.thread_time() - start

        def _send(self, source, outputfile) -> None:
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
    # gpgv wants a binary keyring; made once, outside the timings.
    keyring = work / "trusted.gpg"
    keyring.write_bytes(key.gpg("--export", key.fingerprint).stdout)
    key.stop_agent()  # nothing is signed after this (gpg would start it again if it were)
    return key, tree, vdir, keyring


ANCHOR = """set -e
cd "$1"; url="$2"; f="$3"
curl -sSf -o "$f" "$url"
curl -sSf -o "$f.sig" "$url.sig"
gpgv --quiet --keyring "$4" "$f.sig" "$f" 2>/dev/null
curl -sSf -o "$f.DIGESTS" "$url.DIGESTS"
grep -A1 '^# SHA512 HASH' "$f.DIGESTS" | tail -n1 > "$f.sha512"
sha512sum --quiet -c "$f.sha512"
"""


def bench_fetch(work: Path, built, figures: Figures, runs: int, rate_mib: float) -> str:
    key, tree, vdir, keyring = built
    section = f"fetch {rate_mib:g} MiB/s" if rate_mib else "fetch loopback"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with serve(tree, handler=paced_handler(rate_mib)) as server:
        url = f"{server.url}{vdir.name}/{BIG}"

        def ours(*flags: str) -> list[str]:
            cli = [sys.executable, "-m", "acl_compose", "--cache-dir", str(work / "cache")]
            return [*cli, "fetch", "--base-url", server.url, "--release", vdir.name,
                    "--artifact", BIG, "--keyring", str(key.public),
                    "--trusted-key", key.fingerprint, *flags]  # fmt: skip

        tools = {
            "curl -o": ["curl", "-sSf", "-o", str(work / "curl.out"), url],
            "anchor workflow": [
                "bash",
                "-c",
                ANCHOR,
                "-",
                str(work / "anchor"),
                url,
                BIG,
                str(keyring),
            ],  # fmt: skip
            "acl-compose fetch": ours(),
            "acl-compose fetch --strict": ours("--strict"),
        }
        (work / "anchor").mkdir(exist_ok=True)
        for r in range(runs):
            for name, argv in rotated(tools, r):
                served = served_cpu()
                wall, user, sys_ = timed(argv, **quiet)
                figures.add(section, name, (wall, user, sys_, served_cpu() - served))
                shutil.rmtree(work / "cache", ignore_errors=True)
                for p in (work / "curl.out", *(work / "anchor").iterdir()):
                    p.unlink(missing_ok=True)
    return section


def bench_decompress(work: Path, figures: Figures, size_mib: int, runs: int) -> str:
    raw = work / "img.raw"
    # Disk-image-like: half zero blocks (holes), a quarter text-like, a quarter random.
    text = (b"usr/lib/systemd/system/some-unit.service 0644 root root\n" * 20000)[: 1 << 20]
    rnd = os.urandom(1 << 20)
    with open(raw, "wb") as f:
        for i in range(size_mib):
            f.write((bytes(1 << 20), text, bytes(1 << 20), rnd)[i % 4])
    src = work / "img.raw.bz2"
    with open(src, "wb") as f:
        subprocess.run(["lbzip2", "-c", "-9", str(raw)], stdout=f, check=True)
    ours = work / "ours.raw"
    code = "import sys; from acl_compose.fetch import decompress; decompress(*sys.argv[1:3])"
    tools = {
        "bzip2 -dc": ["sh", "-c", f"bzip2 -dc {src} > /dev/null"],
        "lbzip2 -dc": ["sh", "-c", f"lbzip2 -dc {src} > /dev/null"],
        "lbzip2 -dc | cat": ["sh", "-c", f"lbzip2 -dc {src} | cat > /dev/null"],
        "acl-compose decompress": [sys.executable, "-c", code, str(src), str(ours)],
    }
    section = "decompress"
    for r in range(runs):
        for name, argv in rotated(tools, r):
            figures.add(section, name, (*timed(argv), 0.0))
    if ours.read_bytes() != raw.read_bytes():
        sys.exit("decompress: output differs from the original")
    print(f"decompress: {size_mib} MiB raw, {ours.stat().st_blocks * 512 / 2**20:.0f} MiB "
          f"allocated in the sparse output, {src.stat().st_size / 2**20:.0f} MiB .bz2")  # fmt: skip
    return section


def report(figures: Figures, sections: list[str], args: argparse.Namespace) -> None:
    goals = {
        ("fetch loopback", "curl -o"): "<= 1.3",
        ("fetch loopback", "anchor workflow"): "<= 0.4",
        (f"fetch {args.rate_mib:g} MiB/s", "curl -o"): "<= 1.05",
        ("decompress", "lbzip2 -dc"): "<= 1.1",
    }
    print(
        f"\n{'figure (medians; best: fastest round)':52s} {'wall':>6s} {'best':>6s} "
        f"{'cpu':>6s} {'sys':>5s} {'+srv':>5s} {'ratio':>5s} {'best':>5s} {'goal':>7s}  load"
    )
    for sec in sections:
        ours = "acl-compose decompress" if sec == "decompress" else "acl-compose fetch"
        tools = [t for s, t in figures.samples if s == sec]
        load = figures.load_range(sec)
        for tool in tools:
            wall, cpu, sys_, with_server, best = figures.median(sec, tool)
            n = len(figures.samples[(sec, tool)])
            srv = f"{with_server:4.2f}s" if sec.startswith("fetch") else ""
            print(f"{f'{sec}: {tool} (n={n})':52s} {wall:5.2f}s {best:5.2f}s {cpu:5.2f}s "
                  f"{sys_:4.2f}s {srv:>5s} {'':5s} {'':5s} {'':7s}  {load}")  # fmt: skip
        for anchor in (t for t in tools if not t.startswith("acl-compose")):
            r = figures.ratio(sec, ours, anchor)
            best = figures.median(sec, ours)[4] / figures.median(sec, anchor)[4]
            goal = goals.get((sec, anchor), "")
            print(f"{f'{sec}: {ours} / {anchor}':52s} {'':6s} {'':6s} {'':6s} {'':5s} {'':5s} "
                  f"{r:5.2f} {best:5.2f} {goal:>7s}  {load}")  # fmt: skip
        if sec.startswith("fetch"):
            _, cpu, _, with_server, _ = figures.median(sec, ours)
            scale = 512 / args.size_mib
            print(
                f"{f'{sec}: {ours} CPU per 512 MiB':52s} {'':6s} {'':6s} {cpu * scale:5.2f}s "
                f"{'':5s} {with_server * scale:4.2f}s {'':5s} {'':5s} {'< 1.2s':>7s}  {load}"
            )
    print(
        "cpu: user+sys of the tool and its children; +srv: with the loopback server's sending"
        " thread (the kernel bills TCP work to either side)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--decompress-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--paced-runs", type=int, default=3)
    ap.add_argument("--rate-mib", type=float, default=100.0, help="paced link speed (0: skip)")
    ap.add_argument("--only", choices=["fetch", "decompress"])
    args = ap.parse_args()
    compile_bytecode(REPO)
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()}")
    figures = Figures()
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-fetch-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        if args.only != "decompress":
            built = make_big_tree(work, args.size_mib)
            sections.append(bench_fetch(work, built, figures, args.runs, 0))
            if args.rate_mib:
                sections.append(bench_fetch(work, built, figures, args.paced_runs, args.rate_mib))
        if args.only != "fetch":
            sections.append(bench_decompress(work, figures, args.decompress_mib, args.runs))
    report(figures, sections, args)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
