"""One cell's boot and tests, in a process of its own: `python -m acl_compose.matrix.cellproc SPEC`.

The worker task starts this in a new session and kills that session (and QEMU's own process
group) at the cell's timeout, so nothing here needs to watch the clock. It records its phase
(`boot`, then `test`) so the worker can tell a boot that hangs (infrastructure: retried) from
tests that hang (the cell's own failure: not retried), and writes `result.json`:
`outcome` passed | failed | error | infra, `message`, `boot_seconds`, `tests_seconds`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from acl_compose.boot import qemu
from acl_compose.errors import AclComposeError
from acl_compose.matrix import console
from acl_compose.run import set_pdeathsig
from acl_compose.util import atomic_write

JUNIT = "junit.xml"
CONSOLE = "console.log"


def _phase(out: Path, phase: str) -> None:
    atomic_write(out / "phase", phase.encode())


def _guest_fault(console_log: Path) -> str | None:
    """The fatal console line (panic, emergency shell) if the guest itself failed."""
    try:
        text = console_log.read_bytes()[-256 * 1024 :].decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if any(pattern.search(line) for _, pattern in qemu.FATAL_CONSOLE):
            return line.strip()
    return None


def _ssh_cell(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    from acl_compose.boot import run_suites

    booted: dict[str, float] = {}

    def on_booted(boots: list[qemu.BootResult]) -> None:
        booted["boot"] = boots[0].seconds
        booted["at"] = time.monotonic()
        _phase(out, "test")

    p = spec["platform"]
    result = run_suites(
        Path(spec["image"]),
        suites=[Path(spec["suite_path"])],
        release_json=Path(spec["release_json"]) if spec.get("release_json") else None,
        junit_xml=out / JUNIT,
        keyword=spec.get("keyword"),
        firmware=spec["firmware"],
        accel=p["accel"],
        memory=p["memory"],
        cpus=p["cpus"],
        ignition=Path(spec["ignition"]) if spec.get("ignition") else None,
        cache_dir=Path(spec["cache_dir"]),
        boot_timeout=spec.get("boot_timeout"),
        on_booted=on_booted,
    )
    (out / "junit.console.log").replace(out / CONSOLE)
    return {
        "outcome": "passed" if result.ok else "failed",
        "message": ", ".join(result.failed_tests[:5]),
        "boot_seconds": booted.get("boot"),
        "tests_seconds": time.monotonic() - booted.get("at", time.monotonic()),
        "accel": result.accel,
    }


def _console_cell(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    p = spec["platform"]
    sock = out / "agent.sock"
    vm = qemu.VM(
        spec["image"],
        firmware=spec["firmware"],
        accel=p["accel"],
        memory=p["memory"],
        cpus=p["cpus"],
        ignition=spec.get("ignition"),
        ssh=False,
        cache_dir=Path(spec["cache_dir"]),
        console_log=out / CONSOLE,
        name=spec["name"],
        extra_args=console.agent_args(sock),
    )
    with vm:
        # No boot_timeout: the cell's timeout (enforced by the worker) bounds the wait.
        limit = spec.get("boot_timeout") or spec["timeout"] + 60
        try:
            console.wait_agent(sock, vm.started + limit, vm.alive, vm.console_fatal)
        except console.AgentError as e:
            if "did not answer" in e.message:
                raise qemu.BootTimeout(f"{e.message} ({limit:g}s)") from e
            raise qemu.BootError(e.message) from e
        boot = time.monotonic() - vm.started
        _phase(out, "test")
        t0 = time.monotonic()
        argv = [
            sys.executable,
            "-m",
            "pytest",
            spec["suite_path"],
            "-p",
            "no:cacheprovider",
            "-p",
            "no:pytest11.testinfra",
            "-p",
            "acl_compose.matrix.pytest_console",
            f"--junit-xml={out / JUNIT}",
            "-o",
            "junit_family=xunit1",
            "-o",
            f"junit_suite_name={spec['name']}",
            "-rfEs",
            "--tb=short",
        ]
        if spec.get("keyword"):
            argv += ["-k", spec["keyword"]]
        env = dict(
            os.environ, **{console.ENV_SOCKET: str(sock), "ACL_COMPOSE_BOOT_SECONDS": f"{boot:.1f}"}
        )
        code = subprocess.run(argv, env=env, check=False).returncode  # cwd: the suite's root
    if not (out / JUNIT).is_file():
        return {
            "outcome": "error",
            "message": f"pytest wrote no JUnit XML (exit {code})",
            "boot_seconds": boot,
        }
    from acl_compose.boot.testing import read_junit

    counts, failed = read_junit(out / JUNIT)
    ok = code == 0 and not counts.failures and not counts.errors
    return {
        "outcome": "passed" if ok else "failed",
        "message": ", ".join(failed[:5]) or ("" if ok else f"pytest exit status {code}"),
        "boot_seconds": boot,
        "tests_seconds": time.monotonic() - t0,
        "accel": vm.accel,
    }


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out_dir"])
    _phase(out, "boot")
    try:
        if spec["transport"] == "console":
            result = _console_cell(spec, out)
        else:
            result = _ssh_cell(spec, out)
    except qemu.BootTimeout as e:
        result = {"outcome": "infra", "message": f"boot timeout: {e.message}"}
    except qemu.BootError as e:
        fault = _guest_fault(out / CONSOLE) or _guest_fault(out / "junit.console.log")
        if fault or "guest" in e.message or "JUnit" in e.message:
            result = {"outcome": "error", "message": e.message}
        else:  # QEMU itself failed: the host's problem, worth another try
            result = {"outcome": "infra", "message": f"qemu: {e.message}"}
    except AclComposeError as e:
        result = {"outcome": "error", "message": f"{e.message} (hint: {e.hint})"}
    except KeyboardInterrupt:
        return 130  # SIGTERM from the worker at the timeout: VMs are down by now
    except Exception as e:  # a bug: keep the traceback in the cell log
        traceback.print_exc()
        result = {"outcome": "error", "message": f"{type(e).__name__}: {e}"}
    for f in ("junit.console.log",):
        if (out / f).exists() and not (out / CONSOLE).exists():
            (out / f).replace(out / CONSOLE)
    atomic_write(out / "result.json", json.dumps(result).encode())
    return 0


if __name__ == "__main__":
    set_pdeathsig()  # belt and braces: the worker also started us with it
    sys.exit(main(sys.argv[1]))
