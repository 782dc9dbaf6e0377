"""Benchmark: `acl-compose ignition render` of a large local file vs `gzip -9 -n | base64`.

Rendering a big `contents.local` is dominated by choosing its data URL (gzip level 9, as
Butane does, plus base64), so the anchor is the same work done by the C tools. Validation of
the result is compared with Debian's `ignition-validate` on the same file.
Run: .venv/bin/python tests/bench/bench_ignition.py [--mib 32] [--runs 3]
"""

from __future__ import annotations

import argparse
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

from acl_compose import ignition  # noqa: E402


def make_input(work: Path, mib: int) -> Path:
    """Half log-like text (compressible), half random bytes."""
    rnd = random.Random(6)
    files = work / "files"
    files.mkdir()
    with open(files / "big.bin", "wb") as f:
        for i in range(mib):
            if i % 2:
                f.write(rnd.randbytes(1 << 20))
            else:
                line = f"2026-11-26T12:00:{i % 60:02d}Z node-{i:04d} kubelet: probe ok\n".encode()
                f.write((line * ((1 << 20) // len(line) + 1))[: 1 << 20])
    (work / "big.yaml").write_text(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n"
        "    - path: /opt/big.bin\n      contents:\n        local: big.bin\n"
    )
    return files


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ign-") as tmp:
        work = Path(tmp)
        files = make_input(work, args.mib)
        out = work / "big.ign"
        ours = [
            timed(
                lambda: subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "acl_compose",
                        "ignition",
                        "render",
                        work / "big.yaml",
                        "--files-dir",
                        files,
                        "-o",
                        out,
                    ],
                    check=True,
                    capture_output=True,
                )
            )
            for _ in range(args.runs)
        ]
        anchor = [
            timed(
                lambda: subprocess.run(
                    f"gzip -9 -n -c {files / 'big.bin'} | base64 -w0 > {work / 'anchor.b64'}",
                    shell=True,
                    check=True,
                )
            )
            for _ in range(args.runs)
        ]
        r_ours, r_anchor = statistics.median(ours), statistics.median(anchor)
        print(
            f"render {args.mib} MiB local file: acl-compose {r_ours:.2f}s, "
            f"gzip -9 | base64 {r_anchor:.2f}s, ratio {r_ours / r_anchor:.2f}"
        )
        config = ignition.load(out)
        v_ours = statistics.median(
            timed(lambda: ignition.validate(config)) for _ in range(args.runs)
        )
        if shutil.which("ignition-validate"):
            v_tool = statistics.median(
                timed(lambda: subprocess.run(["ignition-validate", out], check=True))
                for _ in range(args.runs)
            )
            print(
                f"validate: acl-compose (library) {v_ours:.2f}s, ignition-validate "
                f"{v_tool:.2f}s, ratio {v_ours / v_tool:.2f}"
            )
        else:
            print(f"validate: acl-compose (library) {v_ours:.2f}s (ignition-validate missing)")


if __name__ == "__main__":
    main()
