"""`acl-compose test`: JUnit handling (unit) and real runs against composed images (integration).

The integration tests boot the composed testbed under TCG (about a minute or more per boot
here), so they share session fixtures and keep boots few: one UEFI `--parallel 2` run and one
BIOS run where every qemu-test must pass, one run of the negative image
(tests/fixtures_negative.py) where exactly the expected qemu-tests must fail, one interrupted
boot.
"""

from __future__ import annotations

import json
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


SKIP_SUITE = """
import pytest

def test_passes(host):
    assert host.file("/").is_directory

def test_skips_on_its_own(host):
    pytest.skip("nothing to check here")

@pytest.mark.platform("no-such-platform", reason="needs that cloud's metadata service")
def test_elsewhere(host):
    raise AssertionError("must not run on this platform")
"""


@pytest.mark.parametrize("with_release", [True, False])
def test_skips_fail_unless_declared(tmp_path: Path, with_release: bool) -> None:
    """With a release.json an undeclared skip fails; a platform marker is recorded and allowed.

    Runs qemu-tests' conftest for real on testinfra's local backend (no VM).
    """
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text((QEMU_TESTS / "conftest.py").read_text())
    (suite / "test_rule.py").write_text(SKIP_SUITE)
    release = tmp_path / "release.json"
    release.write_text("{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACL_COMPOSE_")}
    if with_release:
        env["ACL_COMPOSE_RELEASE_JSON"] = str(release)
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite), "--hosts=local://", f"--junit-xml={junit}",
         "-o", "junit_family=xunit1", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    cases = _cases(junit)
    status = {n.removesuffix("[local]"): _status(c) for n, c in cases.items()}
    skips = {
        n.split("::")[1].removesuffix("[local]"): d for n, _, d in testing.skipped_cases(junit)
    }
    assert status["test_passes"] == "passed", proc.stdout
    assert status["test_elsewhere"] == "skipped"
    assert "applies to platform no-such-platform only" in skips["test_elsewhere"]
    assert "needs that cloud's metadata service" in skips["test_elsewhere"]
    if with_release:
        assert status["test_skips_on_its_own"] == "failure", proc.stdout
        assert proc.returncode == 1
        assert "skipped although a release.json was given" in proc.stdout
    else:
        assert status["test_skips_on_its_own"] == "skipped"
        assert skips["test_skips_on_its_own"] is None  # undeclared: the harness would fail it
        assert proc.returncode == 0


def test_qa_ignition_exercises_every_encoding() -> None:
    """The QA config the boot tests compose yields percent, base64 and gzip data URLs, a user
    with uid/home/shell/groups/keys, owned files, both kinds of link and an enabled unit."""
    from acl_compose import ignition

    config = ignition.load(REPO / "tests" / "data" / "boot" / "qa-ignition.yaml")
    files = {f["path"]: f["contents"] for f in config["storage"]["files"]}
    percent, b64, gz = (files[f"/etc/acl-qa/{n}"] for n in ("percent.conf", "base64.txt",
                                                              "gzip.txt"))  # fmt: skip
    assert percent["source"].startswith("data:,") and not percent.get("compression")
    assert b64["source"].startswith("data:;base64,") and not b64.get("compression")
    assert gz["source"].startswith("data:;base64,") and gz["compression"] == "gzip"
    user = config["passwd"]["users"][0]
    assert {"uid", "homeDir", "shell", "groups", "sshAuthorizedKeys", "primaryGroup"} <= set(user)
    assert {bool(link.get("hard")) for link in config["storage"]["links"]} == {True, False}
    assert config["systemd"]["units"][0]["enabled"] is True


def test_negative_grub_cfg_drops_verity_last() -> None:
    from tests.fixtures_negative import unverified_usr_grub_cfg

    cfg = unverified_usr_grub_cfg('set oem_id="qemu"\n', "7130C94A-213A-4E5A-8E26-6CCE9662F132")
    assert cfg.startswith('set oem_id="qemu"\n')
    last = cfg.splitlines()[-1]
    assert last == (
        'set linux_append="$linux_append verity.usr= verity.usrhash= '
        'mount.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132"'
    )


def test_default_suite_is_the_repositorys_qemu_tests() -> None:
    assert testing.default_suite_dir() == QEMU_TESTS
    assert (testing.default_suite_dir() / "conftest.py").is_file()


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


def _assert_every_qemu_test_passed(proc: subprocess.CompletedProcess, junit: Path,
                                   vms: int) -> None:  # fmt: skip
    """`acl-compose --json test` ran every collected qemu-test: each passed but the Azure-only
    ones (declared not applicable on a qemu guest), none failed or skipped otherwise, none left
    out; each of `vms` VMs ran a share and left its evidence."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(proc.stdout)
    # A qemu guest: exactly the Azure-only tests are declared not applicable, nothing else.
    azure = _azure_tests()
    assert result["undeclared_skips"] == []
    assert _short_names([e.split(": ", 1)[0] for e in result["not_applicable"]]) == azure
    counts, failed = testing.read_junit(junit)
    assert failed == [] and counts.failures == 0 and counts.errors == 0
    cases = _cases(junit)
    not_applicable = {name for name in cases if f"test_azure::{_short(name)}" in azure}
    not_passed = {n: _status(c) for n, c in cases.items() if _status(c) != "passed"}
    assert {n for n, s in not_passed.items() if s == "skipped"} == not_applicable, not_passed
    assert not set(not_passed) - not_applicable, not_passed
    assert counts.tests == len(cases) == len(_collected()), sorted(cases)
    assert counts.passed == len(cases) - len(azure)
    # Each suite records its boot-to-SSH time.
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert len(suites) == vms
    for s in suites:
        props = {p.get("name"): p.get("value") for p in s.iter("property")}
        assert float(props["boot_to_ssh_seconds"]) > 0
    stems = [f"junit.vm{i}" for i in range(1, vms + 1)] if vms > 1 else ["junit"]
    for stem in stems:
        assert (junit.parent / f"{stem}.console.log").stat().st_size > 0
        journal = (junit.parent / f"{stem}.journal.txt").read_text(errors="replace")
        assert "systemd" in journal


@pytest.mark.integration
def test_composed_image_passes_all_qemu_tests(composed_release, tmp_path: Path) -> None:
    """Every collected qemu-test passed under UEFI, split across two VMs."""
    junit = tmp_path / "results" / "junit.xml"
    proc = run_cli(
        "--cache-dir", tmp_path / "cache", "--json", "test", composed_release.raw,
        "--release-json", composed_release.release_json, "--junit-xml", junit,
        "--parallel", "2", "--cpus", "1",
    )  # fmt: skip
    _assert_every_qemu_test_passed(proc, junit, vms=2)
    assert "efi: EFI v" in (junit.parent / "junit.vm1.console.log").read_text(errors="replace")


@pytest.mark.integration
def test_composed_image_passes_all_qemu_tests_under_bios(composed_release, tmp_path: Path) -> None:
    """The same image, booted by SeaBIOS through GRUB's boot code in the MBR and its core image
    in BIOS-BOOT (as an Azure Generation 1 VM boots it): every qemu-test passes, in one VM."""
    junit = tmp_path / "results" / "junit.xml"
    proc = run_cli(
        "--cache-dir", tmp_path / "cache", "--json", "test", composed_release.raw,
        "--release-json", composed_release.release_json, "--junit-xml", junit,
        "--firmware", "bios",
    )  # fmt: skip
    _assert_every_qemu_test_passed(proc, junit, vms=1)
    assert json.loads(proc.stdout)["firmware"] == "bios"
    # In the guest, test_booted_by_the_requested_firmware (passed above) found SeaBIOS, no EFI
    # runtime and GRUB's BOOT_IMAGE=; the kernel's log agrees: no EFI system table, GRUB's line.
    console = (junit.parent / "junit.console.log").read_text(errors="replace")
    assert "efi: EFI v" not in console
    assert "Command line: BOOT_IMAGE=/flatcar/vmlinuz-a " in console, console[:3000]


def _collected() -> list[str]:
    """Every qemu-test pytest collects (testinfra's local backend; nothing runs)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(QEMU_TESTS), "--collect-only", "-q",
         "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    return [ln for ln in proc.stdout.splitlines() if "::" in ln]


# ---------------------------------------------------------------------------------------------
# Negative proofs: the known-bad image of tests/fixtures_negative.py, booted once. Each qemu-test
# below must be red on it, and nothing else may be.

EXPECTED_RED = {
    "test_immutable::test_usr_backed_by_dm_verity",
    "test_immutable::test_usr_root_hash_matches_release_and_kernel",
    "test_immutable::test_no_package_manager_on_path_or_in_usr_opt",
    "test_ignition::test_users_and_groups",
}
# No runtime bundle in the image: every container test must fail (and none error or skip).


def _suite_tests(suite: str) -> set[str]:
    """`test_x::test_y` for every test of qemu-tests/test_x.py."""
    return {
        f"{suite}::" + ln.split("::", 1)[1].removesuffix("[local]")
        for ln in _collected()
        if ln.startswith(f"qemu-tests/{suite}.py::")
    }


def _container_tests() -> set[str]:
    return _suite_tests("test_containers")


def _azure_tests() -> set[str]:
    """The tests `@pytest.mark.platform("azure")` declares not applicable on a qemu guest."""
    tests = _suite_tests("test_azure")
    assert len(tests) >= 5, tests
    return tests


@pytest.mark.integration
def test_negative_usr_without_verity_is_red(negative_run) -> None:
    """OEM grub.cfg mounts USR-A without dm-verity: the verity checks say what /usr is on."""
    for name in ("test_usr_backed_by_dm_verity", "test_usr_root_hash_matches_release_and_kernel"):
        assert negative_run.status(name) == "failure", negative_run.message(name)
        assert "not on a device-mapper device" in negative_run.message(name)
    assert negative_run.status("test_usr_mounted_read_only") == "passed"


@pytest.mark.integration
def test_negative_pip3_sysext_is_red(negative_run) -> None:
    """A sysext shipping /usr/bin/pip3: found, and attributed to its extension."""
    name = "test_no_package_manager_on_path_or_in_usr_opt"
    assert negative_run.status(name) == "failure"
    message = negative_run.message(name)
    assert "/usr/bin/pip3 (extension pkgmgr-canary)" in message, message
    assert "/usr/bin/dpkg (extension pkgmgr-canary)" in message, message
    # The extension itself is otherwise fine: merged through dm-verity like any other.
    assert negative_run.status("test_sysext_verity_activated") == "passed"


@pytest.mark.integration
def test_negative_wrong_uid_is_red(negative_run) -> None:
    """A user config gives the baked user acl-qa another uid than the declared one."""
    name = "test_users_and_groups"
    assert negative_run.status(name) == "failure"
    assert "user acl-qa: uid 1601, declared 1600" in negative_run.message(name)


@pytest.mark.integration
def test_negative_without_runtime_bundle_is_red(negative_run) -> None:
    """No container-runtime (nor aks-node) extension: every container test fails."""
    tests = _container_tests()
    assert len(tests) >= 5, tests
    for name in tests:
        assert negative_run.status(name.split("::")[1]) == "failure", negative_run.message(name)


@pytest.mark.integration
def test_negative_image_red_exactly_where_expected(negative_release, negative_run) -> None:
    """`acl-compose test` fails, names the red tests, and every other qemu-test passed; the
    same release passes `acl-compose verify`: only the boot tests catch what is wrong."""
    assert negative_run.returncode == 1, negative_run.stderr[-3000:]
    result = json.loads(negative_run.stdout) if negative_run.stdout.strip() else {}
    red = _short_names(result.get("failed_tests", []))
    assert red == EXPECTED_RED | _container_tests(), red
    assert result["undeclared_skips"] == []
    assert _short_names([e.split(": ", 1)[0] for e in result["not_applicable"]]) == _azure_tests()
    others = {n: negative_run.status(n) for n in negative_run.cases}
    expected = {n.split("::")[1] for n in EXPECTED_RED | _container_tests() | _azure_tests()}
    wrong = {n: s for n, s in others.items() if s != "passed" and _short(n) not in expected}
    assert not wrong, wrong
    assert "error: qemu-tests failed:" in negative_run.stderr
    verify = run_cli("verify", negative_release.out_dir, "--cert", negative_release.cert)
    assert verify.returncode == 0, verify.stderr


def _short(case_name: str) -> str:
    return case_name.removesuffix("[ssh://vm]")


def _short_names(failed: list[str]) -> set[str]:
    """`qemu-tests.test_x::test_y[ssh://vm]` (JUnit classname::name) -> `test_x::test_y`."""
    return {
        f"{cls.rsplit('.', 1)[-1]}::{_short(name)}"
        for cls, _, name in (f.partition("::") for f in failed)
    }


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
