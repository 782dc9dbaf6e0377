"""Run pytest + testinfra suites against booted VMs: JUnit XML, console and journal kept.

`run_suites` boots one VM per parallel slot (ports never clash: each VM binds its own), writes
an ssh_config per VM, runs pytest with testinfra's `--hosts=ssh://vm --ssh-config=F` (testinfra
drops `--ssh-extra-args`, so every option lives in the ssh_config), and tears every VM down
whatever happens. Test files are dealt round-robin across the VMs and the JUnit files merged.
The suites learn the release, firmware and boot time through environment variables, so a suite
folder without qemu-tests' conftest still runs (it just gets testinfra's `host`).

With a release.json every collected test must pass: a skip fails the run unless the test
declared why it does not apply, which qemu-tests' conftest records as the JUnit property
`not_applicable` (e.g. from `@pytest.mark.platform("azure")`); those are listed, not failed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acl_compose.boot import qemu
from acl_compose.errors import InputError, ToolError
from acl_compose.image import firmware as firmware_check
from acl_compose.ui import info, opt, warn

ENV_RELEASE = "ACL_COMPOSE_RELEASE_JSON"
ENV_BOOT_SECONDS = "ACL_COMPOSE_BOOT_SECONDS"
ENV_IMAGE = "ACL_COMPOSE_IMAGE"
ENV_CONSOLE = "ACL_COMPOSE_CONSOLE_LOG"
ENV_FAILED_UNITS = "ACL_COMPOSE_FAILED_UNITS"
ENV_FIRMWARE = "ACL_COMPOSE_FIRMWARE"  # what booted the guest: uefi, bios or kernel
# The JUnit <property> of a test that declared why it does not apply to this guest.
NOT_APPLICABLE = "not_applicable"


def default_suite_dir() -> Path:
    """The repository's `qemu-tests/` (beside the package in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "qemu-tests"


@dataclass
class Counts:
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped

    def to_json(self) -> dict[str, int]:
        return {
            "tests": self.tests,
            "passed": self.passed,
            "failures": self.failures,
            "errors": self.errors,
            "skipped": self.skipped,
        }


@dataclass
class SuiteResult:
    junit_xml: Path
    counts: Counts
    returncode: int
    boot_seconds: list[float] = field(default_factory=list)
    failed_units: list[str] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    failed_tests: list[str] = field(default_factory=list)
    undeclared_skips: list[str] = field(default_factory=list)
    not_applicable: list[str] = field(default_factory=list)
    accel: str = ""
    firmware: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.returncode == 0
            and not self.counts.failures
            and not self.counts.errors
            and not self.undeclared_skips
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "junit_xml": str(self.junit_xml),
            **self.counts.to_json(),
            "failed_tests": self.failed_tests,
            "undeclared_skips": self.undeclared_skips,
            "not_applicable": self.not_applicable,
            "boot_to_ssh_seconds": [round(s, 1) for s in self.boot_seconds],
            "failed_units": self.failed_units,
            "artifacts": [str(a) for a in self.artifacts],
            "accel": self.accel,
            "firmware": self.firmware,
            "seconds": round(self.seconds, 1),
        }


def read_junit(path: Path) -> tuple[Counts, list[str]]:
    """Counts and failed test names from a JUnit XML file (pytest)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = Counts()
    failed: list[str] = []
    for s in suites:
        counts.tests += int(s.get("tests", 0))
        counts.failures += int(s.get("failures", 0))
        counts.errors += int(s.get("errors", 0))
        counts.skipped += int(s.get("skipped", 0))
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    return counts, failed


def skipped_cases(path: Path) -> list[tuple[str, str, str | None]]:
    """(test, skip message, declared reason or None) for every skipped test in a JUnit file."""
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None:
            continue
        declared = next(
            (p.get("value") for p in case.iter("property") if p.get("name") == NOT_APPLICABLE),
            None,
        )
        message = skipped.get("message") or (skipped.text or "").strip()
        out.append((f"{case.get('classname')}::{case.get('name')}", message, declared))
    return out


def merge_junit(parts: list[Path], dest: Path) -> None:
    """One <testsuites> document holding every part's <testsuite> elements."""
    merged = ET.Element("testsuites")
    for p in parts:
        root = ET.parse(p).getroot()
        for s in [root] if root.tag == "testsuite" else root.findall("testsuite"):
            merged.append(s)
    ET.ElementTree(merged).write(dest, encoding="utf-8", xml_declaration=True)


def split_suites(suites: list[Path], n: int) -> list[list[Path]]:
    """Deal test files round-robin over `n` VMs (whole folders when n is 1)."""
    if n <= 1:
        return [suites]
    files: list[Path] = []
    for s in suites:
        files += sorted(s.rglob("test_*.py")) if s.is_dir() else [s]
    groups: list[list[Path]] = [[] for _ in range(min(n, max(1, len(files))))]
    for i, f in enumerate(files):
        groups[i % len(groups)].append(f)
    return groups


def _collect_journal(vm: qemu.VM, dest: Path) -> None:
    """`journalctl -b` of the guest (via sudo when core may use it) into `dest`."""
    with contextlib.suppress(Exception):
        proc = vm.ssh(
            "sudo -n journalctl -b --no-pager 2>/dev/null || journalctl -b --no-pager",
            timeout=120,
        )
        dest.write_bytes(proc.stdout)


def run_suites(
    image: Path,
    *,
    suites: list[Path] | None = None,
    release_json: Path | None = None,
    junit_xml: Path = Path("qemu-tests.junit.xml"),
    parallel: int = 1,
    keyword: str | None = None,
    firmware: str = "uefi",
    accel: str = "auto",
    memory: int = 2048,
    cpus: int = 2,
    ignition: Path | None = None,
    cache_dir: Path | None = None,
    boot_timeout: float | None = None,
    pytest_args: list[str] | None = None,
    on_booted: Callable[[list[qemu.BootResult]], None] | None = None,
    platform: str = "qemu",
) -> SuiteResult:
    """Boot `parallel` VMs of `image`, run the suites against them, always tear down.

    `on_booted` is called once every VM answered, before the tests start (the matrix uses it
    to tell a boot that hangs from tests that hang).
    """
    start = time.monotonic()
    for module, package in (("pytest", "pytest"), ("testinfra", "pytest-testinfra")):
        if importlib.util.find_spec(module) is None:
            raise ToolError(
                f"{module} is not installed", hint=f"pip install {package} (or `make deps`)"
            )
    image = Path(image).resolve()
    if not image.is_file():
        raise InputError(f"{image}: image not found", hint="pass a composed disk image")
    # An image this firmware cannot boot is refused now, with the reason, not after a timeout.
    firmware_check.require(image, firmware)
    suites = [Path(s).resolve() for s in (suites or [default_suite_dir()])]
    for s in suites:
        if not s.exists():
            raise InputError(f"{s}: suite not found", hint="pass a folder or file of pytest tests")
    if release_json is not None:
        release_json = Path(release_json).resolve()
        if not release_json.is_file():
            raise InputError(f"{release_json}: release.json not found", hint="pass compose's")
    if parallel < 1:
        raise InputError(f"{opt('--parallel', 'the number of VMs')} must be at least 1")
    junit_xml = Path(junit_xml).resolve()
    junit_xml.parent.mkdir(parents=True, exist_ok=True)
    stem = junit_xml.name.removesuffix(".xml")
    groups = split_suites(suites, parallel)
    n = len(groups)

    def artifact(i: int, what: str) -> Path:  # a failed boot's evidence joins the console log
        return junit_xml.parent / (f"{stem}.{what}" if n == 1 else f"{stem}.vm{i + 1}.{what}")

    result = SuiteResult(junit_xml=junit_xml, counts=Counts(), returncode=1, firmware=firmware)
    with contextlib.ExitStack() as stack:
        vms: list[qemu.VM] = []
        for i in range(n):
            vm = qemu.VM(
                image,
                firmware=firmware,
                accel=accel,
                memory=memory,
                cpus=cpus,
                ignition=ignition,
                cache_dir=cache_dir,
                console_log=artifact(i, "console.log"),
                name=f"vm{i + 1}",
                boot_timeout=boot_timeout,
                platform=platform,
            )
            stack.enter_context(vm)  # started here, in the main thread (see PR_SET_PDEATHSIG)
            vms.append(vm)
            result.artifacts.append(artifact(i, "console.log"))
        result.accel = vms[0].accel
        info(f"booting {n} VM(s) of {image.name} ({firmware}, {result.accel})")
        boots = _wait_all(vms)
        result.boot_seconds = [b.seconds for b in boots]
        if on_booted is not None:
            on_booted(boots)
        for vm, b in zip(vms, boots, strict=True):
            info(f"{vm.name}: SSH after {b.seconds:.1f}s (system {b.state})")
            if b.failed_units:
                warn(f"{vm.name}: failed units: {', '.join(b.failed_units)}")
                result.failed_units += b.failed_units

        procs: list[tuple[subprocess.Popen, Path, Path | None]] = []
        for i, (vm, group) in enumerate(zip(vms, groups, strict=True)):
            cfg = vm.write_ssh_config(artifact(i, "ssh_config"))
            part_xml = junit_xml if n == 1 else artifact(i, "junit.xml")
            argv = [sys.executable, "-m", "pytest", *map(str, group), "-p", "no:cacheprovider"]
            argv += ["--hosts=ssh://vm", f"--ssh-config={cfg}", f"--junit-xml={part_xml}"]
            argv += ["-o", "junit_family=xunit1", "-o", f"junit_suite_name=qemu-tests-{vm.name}"]
            argv += ["-rfEs", "--tb=short"]
            if keyword:
                argv += ["-k", keyword]
            argv += pytest_args or []
            env = dict(os.environ)
            env[ENV_BOOT_SECONDS] = f"{boots[i].seconds:.1f}"
            env[ENV_IMAGE] = str(image)
            env[ENV_CONSOLE] = str(vm.console_log)
            env[ENV_FAILED_UNITS] = " ".join(boots[i].failed_units)
            env[ENV_FIRMWARE] = firmware
            env.update(vm.azure_env)  # an azure boot: what ovf-env.xml said, the stand-in's record
            if release_json:
                env[ENV_RELEASE] = str(release_json)
            else:
                env.pop(ENV_RELEASE, None)
            # One VM: pytest talks straight to the terminal; several: one log each.
            log_path = None if n == 1 else artifact(i, "pytest.log")
            out = sys.stderr if log_path is None else open(log_path, "wb")  # noqa: SIM115
            procs.append(
                (
                    subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT),
                    part_xml,
                    log_path,
                )
            )
            if log_path is not None:
                out.close()
                result.artifacts.append(log_path)
        try:
            codes = [p.wait() for p, _, _ in procs]
        finally:
            for p, _, _ in procs:  # interrupted: pytest must not outlive its VM
                if p.poll() is None:
                    p.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(timeout=10)
                    if p.poll() is None:
                        p.kill()
        for i, vm in enumerate(vms):
            _collect_journal(vm, artifact(i, "journal.txt"))
            result.artifacts.append(artifact(i, "journal.txt"))
            if vm.azure is not None:  # the stand-ins' record outlives the VM's directory
                from acl_compose.boot import azure

                assert vm.workdir
                result.artifacts += azure.keep_record(vm.workdir, artifact(i, ""))
        for _, _, log_path in procs:
            if log_path is not None:
                sys.stderr.write(log_path.read_text(errors="replace"))
        parts = [x for _, x, _ in procs]
        missing = [x for x in parts if not x.is_file()]
        if missing:
            raise qemu.BootError(
                f"pytest wrote no JUnit XML ({missing[0]})",
                hint="see pytest's output above (collection or usage error)",
            )
        if n > 1:
            merge_junit(parts, junit_xml)
        result.counts, result.failed_tests = read_junit(junit_xml)
        for name, message, declared in skipped_cases(junit_xml):
            if declared:
                result.not_applicable.append(f"{name}: {declared}")
            elif release_json is not None:  # a release says what must hold: no skipping it
                result.undeclared_skips.append(f"{name}: {message}")
        result.returncode = max(codes)
        if not result.ok:
            for vm in vms:
                tail = vm.console_tail(25)
                if tail:
                    sys.stderr.write(f"--- {vm.name} console tail ({vm.console_log}) ---\n")
                    sys.stderr.write(tail + "\n")
    result.seconds = time.monotonic() - start
    return result


def _wait_all(vms: list[qemu.VM]) -> list[qemu.BootResult]:
    """Wait for every VM's SSH concurrently; the first failure is raised (all are torn down)."""
    if len(vms) == 1:
        return [vms[0].wait_ssh()]
    results: list[qemu.BootResult | BaseException | None] = [None] * len(vms)

    def wait(i: int) -> None:
        try:
            results[i] = vms[i].wait_ssh()
        except BaseException as e:  # handed to the main thread
            results[i] = e

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(len(vms))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)  # short joins keep Ctrl-C responsive in the main thread
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, qemu.BootResult)]
