"""`make demo`: the main job end to end, offline, on the embedded testbed.

1. build the testbed release (cached under ~/.cache/acl-compose/testbed),
2. serve it on loopback,
3. compose examples/manifest.yaml (the product bundles, both Ignition configs) with a demo key,
4. boot the result under QEMU and run qemu-tests against it (`acl-compose test`),
5. print a short report: release, sysexts, test results, timings, where everything is.

Every step runs the real `acl-compose` command line, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo-out"
sys.path.insert(0, str(REPO))


def acl(*args: object, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `acl-compose ARGS`; progress goes to the terminal, --json results are captured."""
    argv = [sys.executable, "-m", "acl_compose", *map(str, args)]
    print(f"$ acl-compose {' '.join(map(str, args))}", file=sys.stderr, flush=True)
    return subprocess.run(argv, cwd=REPO, text=True, stdout=subprocess.PIPE if capture else None)


def step(title: str) -> float:
    print(f"\n=== {title}", file=sys.stderr, flush=True)
    return time.monotonic()


def demo_manifest(keys: Path) -> Path:
    """examples/manifest.yaml with absolute paths and the demo's own signing key."""
    src = REPO / "examples" / "manifest.yaml"
    doc = yaml.safe_load(src.read_text())
    for field in ("sysexts", "ignition"):
        doc[field] = [str((src.parent / p).resolve()) for p in doc.get(field) or []]
    doc["signing"] = {"key": str(keys / "release.key"), "cert": str(keys / "release.crt")}
    out = OUT / "manifest.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def container_report(junit: Path) -> list[str]:
    """What qemu-tests/test_containers.py proved in the guest, one line per check."""
    import xml.etree.ElementTree as ET

    lines = []
    for xml in sorted(junit.parent.glob(junit.stem + "*.xml")):
        for case in ET.parse(xml).getroot().iter("testcase"):
            if not case.get("classname", "").endswith("test_containers"):
                continue
            status = next(
                (tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None),
                "passed",
            )
            name = case.get("name", "").split("[")[0].removeprefix("test_").replace("_", " ")
            lines.append(f"container: {status:7s} {name} ({float(case.get('time', 0)):.0f}s)")
    return lines or ["container: no container tests ran"]


def main() -> int:
    from acl_compose.fetch.httpserve import serve

    OUT.mkdir(exist_ok=True)
    timings: dict[str, float] = {}

    t = step("1/4 build the testbed release (cached)")
    proc = acl("--json", "testbed", "build")
    if proc.returncode:
        return proc.returncode
    testbed = json.loads(proc.stdout)
    timings["testbed"] = time.monotonic() - t

    keys = OUT / "keys"
    if not (keys / "release.key").is_file():
        if acl("keys", "generate", "-o", keys).returncode:
            return 1

    t = step("2/4 serve it on loopback and compose examples/manifest.yaml")
    with serve(testbed["release_dir"], "127.0.0.1", 0) as server:
        compose_dir = OUT / "release"
        proc = acl(
            "--json", "compose", demo_manifest(keys), "-o", compose_dir,
            "--base-url", server.url, "--trusted-key", testbed["fingerprint"],
            "--keyring", testbed["key_file"],
        )  # fmt: skip
    if proc.returncode:
        return proc.returncode
    release = json.loads(proc.stdout)
    timings["compose"] = time.monotonic() - t
    raw = compose_dir / next(o["file"] for o in release["outputs"] if o["format"] == "raw")

    t = step("3/4 verify the release offline")
    verified = acl("verify", compose_dir, "--cert", keys / "release.crt").returncode == 0
    timings["verify"] = time.monotonic() - t

    t = step("4/4 boot it under QEMU and run qemu-tests")
    junit = OUT / "test" / "junit.xml"
    proc = acl(
        "--json", "test", raw, "--release-json", compose_dir / "release.json",
        "--junit-xml", junit,
    )  # fmt: skip
    tests = json.loads(proc.stdout) if proc.stdout.strip() else {}
    timings["boot+tests"] = time.monotonic() - t

    print("\n=== report")
    base = (release.get("base") or {}).get("release") or {}
    base_version = base.get("version", "?") if isinstance(base, dict) else base
    print(f"release:   {release['name']} {release['version']} on base {base_version} ({raw.name})")
    print(f"/usr hash: {(release.get('usr') or {}).get('root_hash')}")
    for s in release.get("sysexts", []):
        print(
            f"sysext:    {s['name']} {s.get('version')} (root hash {str(s.get('root_hash'))[:16]}…)"
        )
    print(f"verify:    {'passed' if verified else 'FAILED'}")
    if tests:
        print(
            f"tests:     {tests['passed']} passed, {tests['failures']} failed, "
            f"{tests['errors']} errors, {tests['skipped']} skipped "
            f"({tests['accel']}, {tests['firmware']}; boot-to-SSH "
            f"{', '.join(f'{s:.0f}s' for s in tests['boot_to_ssh_seconds'])})"
        )
        for line in container_report(junit):
            print(line)
    else:
        print("tests:     did not run (see the errors above)")
    print("timings:   " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"artifacts: {compose_dir}")
    print(f"JUnit XML: {junit} (console log and journal beside it)")
    return 0 if verified and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
