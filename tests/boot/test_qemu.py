"""The QEMU harness: Ignition/SSH plumbing, the KVM probe, and teardown that always happens.

Unit tests start real QEMU processes on a blank disk (firmware only, no guest OS), which is
enough to prove overlays, port forwards and teardown. The integration test boots the testbed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from acl_compose.boot import kvm, qemu
from acl_compose.errors import InputError
from acl_compose.util import sha256_file
from tests.conftest import REPO, run_cli


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def blank_image(tmp_path: Path) -> Path:
    img = tmp_path / "blank.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    return img


def test_add_ssh_key_creates_core_and_keeps_config() -> None:
    config = {"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "/etc/x"}]}}
    out = qemu.add_ssh_key(config, "ssh-ed25519 AAAA k1")
    assert out["passwd"]["users"] == [
        {"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA k1"]}
    ]
    assert out["storage"] == config["storage"]
    assert "passwd" not in config, "the caller's config must not be modified"
    again = qemu.add_ssh_key(out, "ssh-ed25519 BBBB k2")
    assert again["passwd"]["users"][0]["sshAuthorizedKeys"] == [
        "ssh-ed25519 AAAA k1",
        "ssh-ed25519 BBBB k2",
    ]


def test_load_user_config_json_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "c.ign"
    good.write_text(json.dumps({"ignition": {"version": "3.3.0"}}))
    assert qemu.load_user_config(good)["ignition"]["version"] == "3.3.0"
    assert qemu.load_user_config(None) == {"ignition": {"version": "3.3.0"}}
    bad = tmp_path / "bad.ign"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.ign"):
        qemu.load_user_config(bad)
    with pytest.raises(InputError, match="no 'ignition' key"):
        (tmp_path / "n.ign").write_text("{}")
        qemu.load_user_config(tmp_path / "n.ign")


def test_ssh_config_has_everything_testinfra_needs(tmp_path: Path) -> None:
    text = qemu.ssh_config_text(2222, tmp_path / "k")
    for line in (
        "Host vm",
        "HostName 127.0.0.1",
        "Port 2222",
        "User core",
        f"IdentityFile {tmp_path / 'k'}",
        "StrictHostKeyChecking no",
        "UserKnownHostsFile /dev/null",
        "LogLevel ERROR",
    ):
        assert line in text
    # ssh itself accepts it.
    cfg = tmp_path / "cfg"
    cfg.write_text(text)
    out = subprocess.run(["ssh", "-G", "-F", str(cfg), "vm"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "port 2222" in out.stdout and "user core" in out.stdout


def test_free_port_is_bindable() -> None:
    port = qemu.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_kvm_probe_is_cached_per_boot(tmp_path: Path) -> None:
    usable, reason = kvm.kvm_usable(tmp_path)
    assert isinstance(usable, bool) and reason
    cached = list((tmp_path / "qemu").glob("kvm-probe-*.json"))
    assert len(cached) == 1 and kvm._boot_id() in cached[0].name
    assert json.loads(cached[0].read_text()) == {"usable": usable, "reason": reason}
    start = time.monotonic()
    assert kvm.kvm_usable(tmp_path) == (usable, reason)
    assert time.monotonic() - start < 0.5, "second probe was not served from the cache"


def test_probe_payload_runs_under_tcg(tmp_path: Path) -> None:
    """The probe guest itself is sound: TCG runs it to the debug-exit port."""
    rom = tmp_path / "probe.bin"
    kvm._probe_payload(rom)
    proc = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-bios", str(rom), "-display", "none",
         "-nodefaults", "-m", "16", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        timeout=30,
    )  # fmt: skip
    assert proc.returncode == (kvm.PROBE_EXIT << 1) | 1


def test_vm_overlay_leaves_image_untouched_and_teardown(blank_image: Path, tmp_path: Path) -> None:
    before = blank_image.stat().st_mtime_ns, sha256_file(blank_image)
    with qemu.VM(blank_image, accel="tcg", cache_dir=tmp_path) as vm:
        assert vm.alive() and vm.pid
        pid, workdir, port = vm.pid, vm.workdir, vm.port
        assert workdir and (workdir / "disk.qcow2").is_file()
        assert (workdir / "OVMF_VARS.fd").is_file() and (workdir / "user.ign").is_file()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        netdev = next(a for a in cmd if a.startswith(b"user,id=net0,"))
        assert netdev == f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22".encode()
        assert os.getpgid(pid) == pid, "qemu must lead its own process group"
        ign = json.loads((workdir / "user.ign").read_text())
        assert ign["passwd"]["users"][0]["name"] == "core"
        assert (
            b"name=opt/org.flatcar-linux/config,file=" + str(workdir / "user.ign").encode() in cmd
        )
        assert b"name=opt/com.coreos/config,file=" + str(workdir / "user.ign").encode() in cmd
    assert not _alive(pid)
    shutil.rmtree(workdir, ignore_errors=True)  # nothing can clean up after SIGKILL
    assert not workdir.exists()
    assert (blank_image.stat().st_mtime_ns, sha256_file(blank_image)) == before


def test_net_options_extend_the_restricted_netdev(blank_image: Path) -> None:
    """Forwards to loopback stand-ins are added to the netdev; isolation cannot be turned off."""
    with socket.socket() as stand_in:  # QEMU connects a tcp: guestfwd at start
        stand_in.bind(("127.0.0.1", 0))
        stand_in.listen()
        fwd = f"guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:{stand_in.getsockname()[1]}"
        with qemu.VM(blank_image, accel="tcg", net_options=[fwd]) as vm:
            cmd = Path(f"/proc/{vm.pid}/cmdline").read_bytes().split(b"\0")
            netdev = next(a for a in cmd if a.startswith(b"user,id=net0,")).decode()
            assert netdev.split(",")[2] == "restrict=on" and netdev.endswith("," + fwd)
    # A guestfwd QEMU cannot open is reported as such, not retried as a port clash.
    with pytest.raises(qemu.BootError, match="guest forwarding"):
        with qemu.VM(blank_image, accel="tcg", net_options=[fwd]):
            pass
    with pytest.raises(InputError, match="restrict"):
        qemu.VM(blank_image, net_options=["restrict=off"])


@pytest.mark.parametrize(
    "line",
    [
        "[   12.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
        "Entering emergency mode. Exit the shell to continue.",
        'Generating "/run/initramfs/rdsosreport.txt"',
        'You are in emergency mode. After logging in, type "journalctl -xb" to view',
        "[  OK  ] Reached target emergency.target - Emergency Mode.",
        "[DEPEND] Dependency failed for initrd-root-fs.target - Initrd Root File System.",
        "[DEPEND] Dependency failed for Initrd Root Device.",
        "[   30.4] device-mapper: verity: 254:0: data block 13 is corrupted",
        "[   30.4] device-mapper: verity: 254:0: metadata block 260100 is corrupted",
    ],
)
def test_fatal_console_lines_are_recognised(blank_image: Path, tmp_path: Path, line: str) -> None:
    """Each way a boot cannot reach SSH is recognised, with what failed before it (no QEMU)."""
    vm = qemu.VM(blank_image, console_log=tmp_path / "console.log")
    (tmp_path / "console.log").write_bytes(
        b"[    0.0] Linux version 6.1.0\n"
        b"[    5.0] \x1b[0;1;31mFAILED\x1b[0m] Failed to start ignition-fetch.service\n"
        b"[    5.1] systemd[1]: Started dracut pre-mount hook.\n" + line.encode() + b"\nafter\n"
    )
    assert vm.console_fatal() == line
    assert vm.console_lines() == ["[    5.0] FAILED] Failed to start ignition-fetch.service", line]
    message = vm._fatal_error().message
    assert line in message and "| [    5.0] FAILED] Failed to start" in message
    assert vm.console_fatal() == line  # stays known once seen


def test_healthy_console_is_not_fatal(blank_image: Path, tmp_path: Path) -> None:
    vm = qemu.VM(blank_image, console_log=tmp_path / "console.log")
    (tmp_path / "console.log").write_bytes(
        b"[  OK  ] Reached target initrd.target - Initrd Default Target.\n"
        b"[   30.4] device-mapper: table: 254:1: verity: Root hash verification failed (-ENOENT)\n"
        b"[  OK  ] Started emergency-net.service - Not an emergency.\n"
    )
    assert vm.console_fatal() is None


def test_parallel_vms_get_distinct_ports(blank_image: Path, tmp_path: Path) -> None:
    with qemu.VM(blank_image, accel="tcg") as a, qemu.VM(blank_image, accel="tcg") as b:
        assert a.port != b.port and a.alive() and b.alive()


def test_port_clash_is_retried(blank_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port taken between the bind check and QEMU's start makes the harness pick another."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, qemu.free_port()])
        monkeypatch.setattr(qemu, "free_port", lambda host="127.0.0.1": next(ports))
        with qemu.VM(blank_image, accel="tcg") as vm:
            assert vm.port != busy and vm.alive()


def test_qemu_dying_is_reported_fast(blank_image: Path) -> None:
    """A guest that never boots (blank disk) fails wait_ssh with the console log named."""
    with qemu.VM(blank_image, accel="tcg", firmware="bios", boot_timeout=3) as vm:
        with pytest.raises(qemu.BootError, match="console"):
            vm.wait_ssh()


def test_emergency_shell_on_console_fails_fast(blank_image: Path, tmp_path: Path) -> None:
    with qemu.VM(blank_image, accel="tcg", boot_timeout=600) as vm:
        with open(vm.console_log, "ab") as f:  # type: ignore[arg-type]
            f.write(b"\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39memergency.target\n")
        start = time.monotonic()
        with pytest.raises(qemu.BootError, match="emergency") as e:
            vm.wait_ssh()
        assert time.monotonic() - start < 15  # noticed while the SSH probe waits, not after
        assert "Reached target emergency.target" in e.value.message


_CHILD = textwrap.dedent(
    """
    import sys, time
    from acl_compose.boot.qemu import VM
    with VM(sys.argv[1], accel="tcg") as vm:
        print(vm.pid, vm.workdir, flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_tears_down(blank_image: Path, sig: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(blank_image)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid_s, workdir = child.stdout.readline().split()  # type: ignore[union-attr]
        pid = int(pid_s)
        assert _alive(pid) and Path(workdir).is_dir()
        child.send_signal(sig)
        child.wait(timeout=30)
        assert not _alive(pid), f"qemu {pid} survived {sig.name}"
        assert not Path(workdir).exists(), f"{workdir} left behind"
    finally:
        child.kill()
        child.wait()


def test_sigkill_of_harness_kills_qemu(blank_image: Path) -> None:
    """Even a SIGKILLed harness leaves no QEMU: PR_SET_PDEATHSIG takes it down."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(blank_image)], stdout=subprocess.PIPE, text=True
    )
    pid_s, workdir = child.stdout.readline().split()  # type: ignore[union-attr]
    pid = int(pid_s)
    child.kill()
    child.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)
    shutil.rmtree(workdir, ignore_errors=True)  # nothing can clean up after SIGKILL


def test_boot_cli_refuses_missing_image(tmp_path: Path) -> None:
    proc = run_cli("boot", tmp_path / "missing.bin", check=False)
    assert proc.returncode == 2 and "missing.bin" in proc.stderr


@pytest.mark.integration
def test_pytest_plugin_direct_kernel_boot(composed_release, tmp_path: Path) -> None:
    """`pytest qemu-tests/ --image` boots once itself; `--firmware kernel` still seals /usr.

    The ESP's kernel is booted with the arguments GRUB would build (synthesized), so the /usr root
    hash on the command line must be release.json's and /usr a dm-verity device.
    """
    junit = tmp_path / "junit.xml"
    before = set(Path(tempfile.gettempdir()).glob("acl-qemu-tests-*"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "qemu-tests/test_immutable.py",
         "qemu-tests/test_health.py",
         "qemu-tests/test_flatcar_layout.py::test_booted_by_the_requested_firmware",
         "--image", str(composed_release.raw), "--firmware",
         "kernel", "--release-json", str(composed_release.release_json),
         f"--junit-xml={junit}", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"],
        capture_output=True, text=True, cwd=REPO, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    root = ET.parse(junit).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    must_pass = ["test_usr_root_hash_matches_release_and_kernel", "test_usr_backed_by_dm_verity",
                 "test_no_failed_units", "test_booted_by_the_requested_firmware"]  # fmt: skip
    assert {f"{n}[ssh://vm]" for n in must_pass} <= set(cases)
    # With a release.json nothing may skip: every case passed.
    for name, case in cases.items():
        assert all(case.find(t) is None for t in ("skipped", "failure", "error")), name
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert float(props["boot_to_ssh_seconds"]) > 0
    left = set(Path(tempfile.gettempdir()).glob("acl-qemu-tests-*")) - before
    assert not left, f"temporary directories left behind: {left}"


@pytest.mark.integration
def test_emergency_shell_boot_fails_within_a_minute(testbed_image: Path, tmp_path: Path) -> None:
    """A real boot that drops to the emergency shell (Ignition refuses the user config's
    version in the initrd) is reported in under a minute, with the console lines that say why,
    instead of after the 15-minute SSH timeout."""
    broken = REPO / "tests" / "data" / "boot" / "broken-ignition.ign"
    start = time.monotonic()
    proc = run_cli(
        "--cache-dir", tmp_path / "cache", "boot", testbed_image, "--accel", "tcg",
        "--ignition", broken, "--run", "true", timeout=600,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    print(f"\nemergency shell reported after {elapsed:.0f}s")
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = proc.stderr[proc.stderr.index("error: ") :]
    assert error.startswith("error: guest failed to boot after"), error
    assert "emergency" in error.splitlines()[0], error
    shown = [ln for ln in error.splitlines() if ln.startswith("  | ")]
    assert shown, error  # the console lines that decided it
    # Flatcar's command line ends with console=tty0, so systemd's unit status lines (Ignition's
    # failure) go to the VGA console, not the serial log: the log kept shows the initrd ran
    # Ignition's units and then the emergency shell.
    log = Path(re.search(r"console: (\S+console\.log)", error)[1])
    text = log.read_text(errors="replace")
    assert "ignition-setup-pre.service" in text and "Entering emergency mode" in text
    assert elapsed < 60, f"reported after {elapsed:.0f}s"
