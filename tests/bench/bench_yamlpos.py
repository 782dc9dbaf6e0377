"""Benchmark: how fast hostile YAML ends, through the real CLI, for every YAML input.

Each case is a 9-level alias bomb, a 10,000-level nesting or a 100 MB scalar given to
`ignition render`, `ignition validate`, `compose` (manifest) and `sysext build`
(sysext.yaml). The anchor is the same CLI doing nothing (`acl-compose --version`): the ratio
is the whole command over bare start-up, and `loader` is yamlpos alone, in process.
Run: .venv/bin/python tests/bench/bench_yamlpos.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from acl_compose import yamlpos  # noqa: E402
from tests.yaml_docs import bomb  # noqa: E402

DOCS = {
    "alias-bomb": bomb(9),
    "deep-10000": "x: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "scalar-100MB": None,
}
INPUTS = {
    "ignition render": ("cfg.yaml", lambda p, t: ["ignition", "render", p]),
    "ignition validate": ("cfg.yaml", lambda p, t: ["ignition", "validate", p]),
    "compose (manifest)": ("manifest.yaml", lambda p, t: ["compose", p, "-o", t / "out"]),
    "sysext build": ("b/sysext.yaml", lambda p, t: ["sysext", "build", p.parent, "-o", t / "o"]),
}


def cli(*args: object) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "acl_compose", *map(str, args)], capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-yaml-") as tmp:
        work = Path(tmp)
        big = work / "big.yaml"
        with open(big, "wb") as f:
            f.write(b"x: ")
            for _ in range(100):
                f.write(b"a" * (1 << 20))
        anchor = statistics.median(cli("--version") for _ in range(args.runs))
        print(f"anchor: acl-compose --version {anchor:.3f}s")
        print(f"{'input':20} {'document':14} {'cli s':>7} {'ratio':>6} {'loader s':>9}")
        for doc, text in DOCS.items():
            start = time.perf_counter()
            try:
                yamlpos.load(yamlpos.read(big) if text is None else text)
            except yaml.YAMLError:
                pass
            loader = time.perf_counter() - start
            for name, (rel, argv) in INPUTS.items():
                case = work / doc / name.replace(" ", "-")
                path = case / rel
                path.parent.mkdir(parents=True)
                if text is None:
                    os.link(big, path)
                else:
                    path.write_text(text)
                t = statistics.median(cli(*argv(path, case)) for _ in range(args.runs))
                print(f"{name:20} {doc:14} {t:7.3f} {t / anchor:6.2f} {loader:9.3f}")


if __name__ == "__main__":
    main()
