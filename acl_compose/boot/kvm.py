"""Choose the QEMU accelerator: KVM only when a short probe proves a guest really runs on it.

On these build machines /dev/kvm exists but nested KVM accepts a guest and then hangs, so
its presence proves nothing; the probe result is cached per host boot.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

from acl_compose.errors import InputError
from acl_compose.run import kill_group, require, set_pdeathsig
from acl_compose.ui import warn
from acl_compose.util import scratch_dir

ACCELS = ("auto", "kvm", "tcg")
PROBE_EXIT = 0x2A


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _probe_payload(path: Path) -> None:
    """A 64 KiB 'BIOS' whose reset vector runs x87 code, then exits QEMU via isa-debug-exit.

    The broken nested KVM here runs trivial real-mode code but fails to emulate the FPU
    (`KVM internal error ... emulation failure` and a hung guest), so the probe uses it.
    """
    code = bytes(
        [
            0x9B, 0xDB, 0xE3,  # fwait; fninit
            0x0F, 0xA2,  # cpuid
            0xB0, PROBE_EXIT,  # mov al, 0x2a
            0xE6, 0xF4,  # out 0xf4, al  -> qemu exits with (0x2a << 1) | 1
            0xF4, 0xEB, 0xFD,  # hlt; jmp back
        ]
    )  # fmt: skip
    rom = bytearray(b"\xf4" * 65536)
    rom[-16 : -16 + len(code)] = code
    path.write_bytes(bytes(rom))


def kvm_usable(cache_dir: Path | None = None, timeout: float = 5.0) -> tuple[bool, str]:
    """Probe once per host boot whether a KVM guest actually runs; (usable, reason)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    cache = (cache_dir / "qemu" / f"kvm-probe-{_boot_id()}.json") if cache_dir else None
    if cache and cache.is_file():
        with contextlib.suppress(ValueError, KeyError, OSError):
            data = json.loads(cache.read_text())
            return bool(data["usable"]), str(data["reason"])
    qemu = require("qemu-system-x86_64")
    with scratch_dir(prefix="acl-kvm-probe-") as tmp:
        rom = Path(tmp) / "probe.bin"
        _probe_payload(rom)
        argv = [qemu, "-accel", "kvm", "-bios", str(rom), "-display", "none", "-nodefaults"]
        argv += ["-m", "16", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=set_pdeathsig,  # a hung probe must not outlive a killed harness
        )
        try:
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode == (PROBE_EXIT << 1) | 1:
                usable, reason = True, "a probe guest ran under KVM"
            else:
                last = err.decode(errors="replace").strip().splitlines()
                usable, reason = (
                    False,
                    f"probe guest failed under KVM ({last[-1] if last else proc.returncode})",
                )
        except subprocess.TimeoutExpired:
            usable, reason = False, f"probe guest hung under KVM for {timeout:g}s"
        finally:
            kill_group(proc)  # also on Ctrl-C during the probe
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"usable": usable, "reason": reason}))
    return usable, reason


_said_accel: set[str] = set()


def choose_accel(accel: str = "auto", cache_dir: Path | None = None) -> str:
    """Resolve `auto` to kvm or tcg (saying once on stderr why TCG was chosen)."""
    if accel not in ACCELS:
        raise InputError(f"unknown accelerator {accel!r}", hint="use auto, kvm or tcg")
    if accel != "auto":
        return accel
    usable, reason = kvm_usable(cache_dir)
    chosen = "kvm" if usable else "tcg"
    if chosen == "tcg" and reason not in _said_accel:
        _said_accel.add(reason)
        warn(f"KVM not usable ({reason}); using TCG software emulation (slow)")
    return chosen
