"""Benchmark: cold and warm `acl-compose compose` of the testbed base, wall time and peak RSS.

Cold: an empty cache dir (download over loopback, gpgv, decompress, /usr verity, sysext builds).
Warm: the same manifest again with the same cache dir (nothing changed): the fetched base,
the decompressed image + its verification record and the built sysexts come from the
content-addressed caches; the outputs (copy, qemu-img, hashes) are still written in full.
Anchor in the same run: `lbzip2 -dc` of the base artifact, the cheapest thing a cold compose
must do anyway. Goals (issue 7): warm <= 0.2x cold; peak RSS <= 200 MB.

    .venv/bin/python tests/bench/bench_compose.py [--mini]   (--mini: the small synthetic base)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from acl_compose.fetch.httpserve import serve  # noqa: E402
from acl_compose.trust import signing  # noqa: E402
from tests.fixtures_compose import build_mini_flatcar, write_manifest  # noqa: E402

BUNDLES = [REPO / "sysext" / "azure-base", REPO / "sysext" / "aks-node"]
CONFIGS = [REPO / "ignition" / "base.yaml", REPO / "ignition" / "aks-node.yaml"]


def timed(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user+sys) and peak RSS in MB of the process tree's largest
    member. CPU time is the steadier figure when other jobs share the two cores."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(argv)}\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mini", action="store_true", help="use the small synthetic base image")
    ap.add_argument("--release-dir", type=Path, help="an already built testbed release tree")
    ap.add_argument("--fingerprint", help="its signing key fingerprint (with --release-dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-compose-", dir="/var/tmp") as tmpd:
        tmp = Path(tmpd)
        key, cert = signing.generate(tmp / "keys")
        if args.mini:
            mini = build_mini_flatcar(tmp / "flatcar_production_image.bin", tmp / "work")
            base = {"path": mini.path}
            artifact = None
            server = None
        else:
            if args.release_dir:
                rd = args.release_dir.resolve()
                version = (rd / "current" / "version.txt").resolve().parent.name
                key_file = str(rd / "testbed-signing-key.asc")
                info = {"release_dir": str(rd), "fingerprint": args.fingerprint,
                        "key_file": key_file, "version": version}  # fmt: skip
            else:
                from acl_compose.testbed import DEFAULT_VERSION, build

                info = build(Path.home() / ".cache" / "acl-compose", DEFAULT_VERSION)
            server = serve(Path(info["release_dir"]), "127.0.0.1", 0)
            server.__enter__()
            base = {"base_url": server.url, "release": "current", "keyring": info["key_file"],
                    "trusted_key": info["fingerprint"]}  # fmt: skip
            artifact = (
                Path(info["release_dir"]) / info["version"] / "flatcar_production_image.bin.bz2"
            )
        manifest = write_manifest(tmp / "m.yaml", base=base, key=key, cert=cert, name="bench",
                                  sysexts=BUNDLES, ignition=CONFIGS)  # fmt: skip
        cache = tmp / "cache"
        cli = [
            sys.executable,
            "-m",
            "acl_compose",
            "--cache-dir",
            str(cache),
            "compose",
            str(manifest),
        ]
        try:
            cold, cold_cpu, cold_rss = timed([*cli, "-o", str(tmp / "out-cold")])
            warm, warm_cpu, warm_rss = timed([*cli, "-o", str(tmp / "out-warm")])
        finally:
            if server is not None:
                server.__exit__(None, None, None)
        anchor = None
        if artifact is not None and artifact.exists():
            anchor, anchor_cpu, _ = timed(["sh", "-c", f"lbzip2 -dc {artifact} > /dev/null"])
        image = tmp / "out-cold" / "bench-1.0.0.bin"
        size = image.stat().st_size
        data = image.stat().st_blocks * 512
        print(f"base image: {size / 2**20:.0f} MiB virtual, {data / 2**20:.0f} MiB data")
        load = os.getloadavg()[0]
        print(f"load average during the run: {load:.1f} on {os.cpu_count()} CPUs")
        print(
            f"cold compose: {cold:6.1f} s wall {cold_cpu:6.1f} s CPU   peak RSS {cold_rss:6.1f} MB"
        )
        print(
            f"warm compose: {warm:6.1f} s wall {warm_cpu:6.1f} s CPU   peak RSS {warm_rss:6.1f} MB"
        )
        print(
            f"warm/cold:    {warm / cold:6.2f}x wall {warm_cpu / cold_cpu:5.2f}x CPU (goal <= 0.2x)"
        )
        if anchor is not None:
            print(f"anchor lbzip2 -dc base: {anchor:.1f} s wall {anchor_cpu:.1f} s CPU; "
                  f"cold/anchor {cold / anchor:.1f}x wall")  # fmt: skip
        print(f"peak RSS goal <= 200 MB: {'met' if max(cold_rss, warm_rss) <= 200 else 'MISSED'}")


if __name__ == "__main__":
    main()
