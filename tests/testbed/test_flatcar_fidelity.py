"""Composed images behave as on Flatcar: an old (ext2 /usr) base, and a ROOT reset.

Three full-OS boots:
- the old flavour composed and run through every qemu-tests suite (one VM);
- the composed current testbed booted with `--firmware kernel` (the command line synthesized
  from the image), reset with `flatcar-reset` and powered off, then booted again from the
  same disk through UEFI and GRUB: the reset emptied ROOT, Ignition ran again, and every
  sysext (kept on the OEM partition) is linked, trusted and merged again.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from acl_compose.boot import testing
from acl_compose.boot.qemu import VM
from acl_compose.image import gpt, usr
from tests.conftest import run_cli


@pytest.mark.integration
def test_old_flavour_composes_verifies_and_passes_qemu_tests(
    composed_old_release: Any, testbed_old_build: dict[str, Any], tmp_path: Path
) -> None:
    rel = composed_old_release
    disk = gpt.read(rel.raw)
    assert disk.by_label("USR-A").size == 1 << 30 and disk.by_label("OEM").size == 128 << 20
    part = tmp_path / "usr.img"
    gpt.copy_out(rel.raw, disk.by_label("USR-A"), part)
    assert usr.filesystem(part) == "ext2"
    part.unlink()
    assert rel.release["os_release"]["VERSION_ID"] == testbed_old_build["version"]
    assert rel.release["usr"]["root_hash"] == testbed_old_build["root_hash"]
    proc = run_cli("--json", "verify", rel.out_dir, "--cert", rel.cert, check=True)
    assert json.loads(proc.stdout)["ok"] is True
    junit = tmp_path / "results" / "junit.xml"
    proc = run_cli("--cache-dir", tmp_path / "cache", "test", rel.raw, "--release-json",
                   rel.release_json, "--junit-xml", junit)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    counts, failed = testing.read_junit(junit)
    assert failed == [] and counts.failures == 0 and counts.errors == 0
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    for name in ("test_sysexts_merged", "test_usr_backed_by_dm_verity",
                 "test_etc_is_flatcars_overlay_with_root_upper", "test_oem_sysext_active",
                 "test_kernel_command_line_is_grubs"):  # fmt: skip
        case = cases[f"{name}[ssh://vm]"]
        assert case.find("skipped") is None and case.find("failure") is None, name


def _sh(vm: VM, command: str) -> str:
    proc = vm.ssh(command, timeout=120)
    assert proc.returncode == 0, (command, proc.stderr.decode(errors="replace"), vm.console_tail())
    return proc.stdout.decode()


def _merged(vm: VM) -> set[str]:
    """Extensions merged into /usr and /opt. systemd 252 prints a hierarchy's extensions one
    per line: the first beside the hierarchy, the others alone on continuation lines."""
    names = set()
    for line in _sh(vm, "systemd-sysext status --no-legend").splitlines():
        fields = line.split()
        if fields and fields[0].startswith("/"):
            names.update(fields[1:2])
        elif len(fields) == 1:
            names.add(fields[0])
    return names - {"none"}


def _state(vm: VM, release: dict[str, Any]) -> dict[str, Any]:
    links = {s["link"]: _sh(vm, f"readlink {s['link']}").strip() for s in release["sysexts"]}
    return {
        "merged": _merged(vm),
        "links": links,
        "cert": _sh(vm, f"sha256sum < {release['signing']['verity_d']}").split()[0],
        # Effects of the product's Ignition configs (ignition/base.yaml).
        "journald": _sh(vm, "cat /etc/systemd/journald.conf.d/10-acl-limits.conf"),
        "max_map_count": _sh(vm, "cat /proc/sys/vm/max_map_count").strip(),
        "machine_id": _sh(vm, "cat /etc/machine-id").strip(),
    }


@pytest.mark.integration
def test_sysexts_survive_a_root_reset(composed_release: Any, tmp_path: Path) -> None:
    release = composed_release.release
    names = {s["name"] for s in release["sysexts"]}
    cert_sha = __import__("hashlib").sha256(composed_release.cert.read_bytes()).hexdigest()
    first = VM(composed_release.raw, firmware="kernel", accel="tcg", name="reset-1", keep=True,
               console_log=tmp_path / "console-1.log")  # fmt: skip
    try:
        with first:
            result = first.wait_ssh()
            assert result.state == "running", result.failed_units
            before = _state(first, release)
            assert names | {"oem-qemu"} <= before["merged"], before
            assert before["links"] == {s["link"]: s["path"] for s in release["sysexts"]}
            assert before["cert"] == cert_sha and before["max_map_count"] == "262144"
            # State a reset must remove, on ROOT and in the /etc overlay's upper layer.
            _sh(first, "sudo sh -c 'echo x > /var/lib/acl-reset-marker; echo x > /etc/acl-marker'")
            out = _sh(first, "sudo flatcar-reset")
            assert "Staged OS reset" in out
            assert _sh(first, "cat /selective-os-reset").startswith("(")
            first.ssh("sudo systemctl poweroff", timeout=30)
            assert first.proc is not None
            first.proc.wait(timeout=600)
        disk = first.workdir / "disk.qcow2"  # type: ignore[operator]
        with VM(disk, accel="tcg", name="reset-2", console_log=tmp_path / "console-2.log") as vm:
            result = vm.wait_ssh()  # UEFI: GRUB sees flatcar/first_boot again
            assert result.state == "running", result.failed_units
            after = _state(vm, release)
            assert "flatcar.first_boot=detected" in _sh(vm, "cat /proc/cmdline")
            gone = _sh(vm, "ls /var/lib/acl-reset-marker /etc/acl-marker /selective-os-reset "
                           "2>/dev/null; true")  # fmt: skip
            assert gone == "", gone
            assert after["machine_id"] != before["machine_id"]  # a new first boot
            for key in ("merged", "links", "cert", "journald", "max_map_count"):
                assert after[key] == before[key], key
            assert "first_boot" not in _sh(vm, "ls /boot/flatcar")
    finally:
        if first.workdir is not None:
            shutil.rmtree(first.workdir, ignore_errors=True)
