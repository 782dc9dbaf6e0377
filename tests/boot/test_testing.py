"""`acl-compose test`: JUnit handling (unit) and real runs against composed images (integration).

The integration tests boot the composed testbed under TCG through UEFI (about a minute or
more per boot here), so they share the compose helper's session fixture and keep boots few:
one `--parallel 2` run where everything must pass, one canary run that must fail (the
`canary_release` fixture is in tests/fixtures_compose.py), one
interrupted boot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from acl_compose.boot import testing
from tests.conftest import REPO, run_cli

QEMU_TESTS = REPO / "qemu-tests"

JUNIT_A = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="a" errors="0"
failures="1" skipped="1" tests="3"><testcase classname="test_x" name="test_one"/>
<testcase classname="test_x" name="test_two"><failure message="boom"/></testcase>
<testcase classname="test_x" name="test_three"><skipped/></testcase></testsuite></testsuites>"""
JUNIT_B = """<?xml version="1.0" encoding="utf-8"?><testsuite name="b" errors="1" failures="0"
skipped="0" tests="2"><testcase classname="test_y" name="test_four"/>
<testcase classname="test_y" name="test_five"><error message="x"/></testcase></testsuite>"""


def test_default_suites_are_the_repositorys_qemu_tests() -> None:
    # Found relative to the package: moving modules must not lose the suites.
    assert testing.default_suite_dir() == QEMU_TESTS
    assert (QEMU_TESTS / "conftest.py").is_file()


def test_read_and_merge_junit(tmp_path: Path) -> None:
    a, b = tmp_path / "a.xml", tmp_path / "b.xml"
    a.write_text(JUNIT_A)
    b.write_text(JUNIT_B)
    counts, failed = testing.read_junit(a)
    assert (counts.tests, counts.failures, counts.skipped, counts.passed) == (3, 1, 1, 1)
    assert failed == ["test_x::test_two"]
    merged = tmp_path / "m.xml"
    testing.merge_junit([a, b], merged)
    counts, failed = testing.read_junit(merged)
    assert counts.to_json() == {"tests": 5, "passed": 2, "failures": 1, "errors": 1, "skipped": 1}
    assert failed == ["test_x::test_two", "test_y::test_five"]
    assert len(ET.parse(merged).getroot().findall("testsuite")) == 2


def test_split_suites_deals_files_round_robin(tmp_path: Path) -> None:
    for name in ("test_a.py", "test_b.py", "test_c.py", "helper.py"):
        (tmp_path / name).write_text("")
    assert testing.split_suites([tmp_path], 1) == [[tmp_path]]
    groups = testing.split_suites([tmp_path], 2)
    assert [[p.name for p in g] for g in groups] == [["test_a.py", "test_c.py"], ["test_b.py"]]
    # Never more VMs than test files.
    assert len(testing.split_suites([tmp_path], 8)) == 3


def test_qemu_tests_collect_without_a_vm() -> None:
    """The suites import and collect (testinfra's local backend; nothing runs)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(QEMU_TESTS), "--collect-only", "-q",
         "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("test_no_package_manager_on_path_or_in_usr_opt", "test_sysexts_merged",
                 "test_no_failed_units"):  # fmt: skip
        assert name in proc.stdout


def test_missing_image_is_an_input_error(tmp_path: Path) -> None:
    proc = run_cli("test", tmp_path / "nope.bin", check=False)
    assert proc.returncode == 2 and "nope.bin" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Integration: real boots of the composed testbed


def _cases(junit: Path) -> dict[str, ET.Element]:
    root = ET.parse(junit).getroot()
    return {c.get("name", ""): c for c in root.iter("testcase")}


def _status(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return tag
    return "passed"


@pytest.mark.integration
def test_composed_image_passes_all_qemu_tests(composed_release, tmp_path: Path) -> None:
    junit = tmp_path / "results" / "junit.xml"
    proc = run_cli(
        "--cache-dir", tmp_path / "cache", "--json", "test", composed_release.raw,
        "--release-json", composed_release.release_json, "--junit-xml", junit,
        "--parallel", "2", "--cpus", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    counts, failed = testing.read_junit(junit)
    assert failed == [] and counts.failures == 0 and counts.errors == 0
    cases = _cases(junit)
    # The release-specific checks ran (not skipped): they had a release.json to read.
    must_pass = [
        "test_no_package_manager_on_path_or_in_usr_opt[ssh://vm]",
        "test_no_package_databases[ssh://vm]",
        "test_usr_backed_by_dm_verity[ssh://vm]",
        "test_usr_mounted_read_only[ssh://vm]",
        "test_sysexts_merged[ssh://vm]",
        "test_sysext_files_visible[ssh://vm]",
        "test_sysext_verity_activated[ssh://vm]",
        "test_sysext_images_placed_and_intact[ssh://vm]",
        "test_no_failed_units[ssh://vm]",
        # The node runs containers (qemu-tests/test_containers.py).
        "test_containerd_active[ssh://vm]",
        "test_containerd_configured_for_kubernetes[ssh://vm]",
        "test_preloaded_images_imported_and_run[ssh://vm]",
        "test_container_writes_to_bind_mount[ssh://vm]",
        "test_container_with_read_only_root[ssh://vm]",
        "test_container_storage_on_root_not_usr[ssh://vm]",
    ]
    for name in must_pass:
        assert name in cases and _status(cases[name]) == "passed", (name, sorted(cases))
    # Both VMs ran a share, and each suite records its boot-to-SSH time.
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert len(suites) == 2
    for s in suites:
        props = {p.get("name"): p.get("value") for p in s.iter("property")}
        assert float(props["boot_to_ssh_seconds"]) > 0
    for vm in ("vm1", "vm2"):
        assert (junit.parent / f"junit.{vm}.console.log").stat().st_size > 0
        journal = (junit.parent / f"junit.{vm}.journal.txt").read_text(errors="replace")
        assert "systemd" in journal


@pytest.mark.integration
def test_package_manager_canary_fails_the_immutable_suite(canary_release, tmp_path: Path) -> None:
    raw = next(canary_release.glob("*.bin"))
    junit = tmp_path / "junit.xml"
    proc = run_cli(
        "--cache-dir", tmp_path / "cache", "test", raw,
        "--release-json", canary_release / "release.json",
        "--suite", QEMU_TESTS / "test_immutable.py", "--junit-xml", junit,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr[-4000:]
    assert "test_no_package_manager_on_path_or_in_usr_opt" in proc.stderr
    counts, failed = testing.read_junit(junit)
    assert len(failed) == 1
    assert failed[0].endswith(
        "test_immutable::test_no_package_manager_on_path_or_in_usr_opt[ssh://vm]"
    )
    assert counts.failures == 1 and counts.errors == 0
    assert counts.tests == len(_cases(junit)) and counts.passed >= 4
    message = _cases(junit)["test_no_package_manager_on_path_or_in_usr_opt[ssh://vm]"]
    assert "/usr/bin/dpkg" in ET.tostring(message, encoding="unicode")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.integration
def test_sigint_mid_boot_leaves_no_qemu_and_no_temp_dir(composed_release, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "acl_compose", "--cache-dir", str(tmp_path / "cache"), "test",
         str(composed_release.raw), "--junit-xml", str(tmp_path / "junit.xml"), "--accel", "tcg"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        qemu_pid, deadline = None, time.monotonic() + 120
        while qemu_pid is None and time.monotonic() < deadline:
            for child in _children(proc.pid):
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"qemu-system" in cmd and b"if=virtio,file=" in cmd:  # the VM itself
                    qemu_pid = child
            time.sleep(0.2)
        assert qemu_pid, "acl-compose test never started qemu"
        cmdline = Path(f"/proc/{qemu_pid}/cmdline").read_bytes().split(b"\0")
        overlay = next(a for a in cmdline if a.startswith(b"if=virtio,file=")).split(b",")[1]
        workdir = Path(overlay.decode().removeprefix("file=")).parent
        assert workdir.is_dir()
        console = tmp_path / "junit.console.log"
        while console.stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # firmware is running: we are mid-boot
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert not Path(f"/proc/{qemu_pid}").exists(), f"qemu {qemu_pid} survived Ctrl-C"
        assert not workdir.exists(), f"{workdir} left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
