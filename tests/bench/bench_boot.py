"""Benchmark: boot-to-SSH through the harness (acl_compose.qemu.VM) vs a bare QEMU command line.

Both boot the same image with the same machine, firmware, accelerator, disk overlay and
fw_cfg Ignition config carrying an SSH key, and both stop the clock when
`systemctl is-system-running` over SSH says running/degraded (the harness's own milestone),
polled once a second. The overhead ratio harness/bare should be at most 1.1.

    python tests/bench/bench_boot.py [IMAGE] [--rounds=2]   # default: the testbed image

Boots run one at a time in alternating order (bare, harness, harness, bare, ...) and the
medians are compared, so load from other processes drifting over the run hits both sides.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from acl_compose.boot import kvm, qemu  # noqa: E402
from acl_compose.run import kill_group  # noqa: E402
from acl_compose.util import default_cache_dir  # noqa: E402


def testbed_image() -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "acl_compose", "--json", "testbed", "build"],
        cwd=REPO, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return Path(json.loads(proc.stdout)["image"])


def wait_healthy(ssh_config: Path, proc: subprocess.Popen, start: float, limit: float) -> float:
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            raise SystemExit(f"bare qemu exited with {proc.returncode}")
        out = subprocess.run(
            ["ssh", "-F", str(ssh_config), "vm", "systemctl is-system-running"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.stdout.strip() in ("running", "degraded"):
            return time.monotonic() - start
        time.sleep(1.0)
    raise SystemExit(f"bare boot: no SSH within {limit:g}s")


def bare_boot(image: Path, accel: str) -> float:
    """The same VM from a hand-written command line, polled with plain ssh."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-bare-"))
    proc = None
    try:
        fmt = qemu.image_format(image)
        overlay = tmp / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(image),
                        str(overlay)], check=True)  # fmt: skip
        shutil.copyfile(qemu.OVMF_VARS, tmp / "vars.fd")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "key")],
                       check=True)  # fmt: skip
        pub = (tmp / "key.pub").read_text().strip()
        ign = {"ignition": {"version": "3.3.0"},
               "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": [pub]}]}}  # fmt: skip
        (tmp / "user.ign").write_text(json.dumps(ign))
        port = qemu.free_port()
        (tmp / "ssh_config").write_text(qemu.ssh_config_text(port, tmp / "key"))
        cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else [
            "-accel", "tcg,thread=multi", "-cpu", "max"]  # fmt: skip
        argv = [
            "qemu-system-x86_64", "-machine", "q35", "-m", "2048", "-smp", "2", "-nodefaults",
            "-display", "none", *cpu,
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={qemu.OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={tmp / 'vars.fd'}",
            "-drive", f"if=virtio,file={overlay},format=qcow2",
            "-device", "virtio-rng-pci", "-serial", f"file:{tmp / 'console.log'}",
            "-fw_cfg", f"name=opt/org.flatcar-linux/config,file={tmp / 'user.ign'}",
            "-fw_cfg", f"name=opt/com.coreos/config,file={tmp / 'user.ign'}",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
        ]  # fmt: skip
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        return wait_healthy(tmp / "ssh_config", proc, start, qemu.BOOT_TIMEOUT[accel])
    finally:
        if proc is not None:
            kill_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


SETUP: list[float] = []


def harness_boot(image: Path, accel: str) -> float:
    """Timed like the bare boot: from the start of set-up (overlay, key, config) to SSH."""
    start = time.monotonic()
    with qemu.VM(image, accel=accel, name="bench") as vm:
        SETUP.append(vm.started - start)
        vm.wait_ssh()
        return time.monotonic() - start


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--rounds=")]
    rounds = int(next((a.split("=")[1] for a in sys.argv[1:] if a.startswith("--rounds=")), 2))
    image = Path(args[0]) if args else testbed_image()
    accel = kvm.choose_accel("auto", default_cache_dir())
    print(f"image {image}\naccelerator {accel}, firmware uefi (OVMF), 2 vCPUs, 2048 MiB")
    times: dict[str, list[float]] = {"bare": [], "harness": []}
    # Alternate the order (bare, harness, harness, bare, ...) so drifting load hits both.
    for r in range(rounds):
        order = ("bare", "harness") if r % 2 == 0 else ("harness", "bare")
        for kind in order:
            t = bare_boot(image, accel) if kind == "bare" else harness_boot(image, accel)
            times[kind].append(t)
            print(f"round {r + 1} {kind:8s} {t:6.1f}s to SSH (system running)", flush=True)
    bare, harness = statistics.median(times["bare"]), statistics.median(times["harness"])
    print(f"bare qemu + ssh poll (median): {bare:6.1f}s")
    print(f"acl_compose.boot.qemu.VM (median):  {harness:6.1f}s")
    print(f"harness set-up before QEMU runs (median): {statistics.median(SETUP):.2f}s")
    print(f"overhead ratio harness/bare: {harness / bare:.2f} (goal <= 1.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
