"""Boot an image under QEMU and reach it over SSH; always tear the VM down.

`VM` is a context manager: the image is never written (a qcow2 overlay per VM in a temporary
directory), UEFI firmware by default (OVMF with a private copy of its variables), KVM only
when a short probe proved a guest really runs on it (nested KVM here accepts guests and then
hangs), the Ignition user config passed by fw_cfg, an ephemeral SSH key for user `core` and a
port forward on 127.0.0.1. The guest's network is QEMU user networking with restrict=on: it
reaches only what is forwarded. The serial console is watched while waiting, so a panic, an
emergency shell, a failed initrd target or dm-verity corruption fails the boot at once with
the lines that matter. QEMU runs in its own process group, which is killed on exit, Ctrl-C,
SIGTERM and (via PR_SET_PDEATHSIG) when this process dies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acl_compose.boot.access import (
    PREAUTH_FAILURES,
    add_ssh_key,
    generate_ssh_key,
    load_user_config,
    ssh_config_text,
)
from acl_compose.boot.evidence import keep_failure
from acl_compose.boot.kvm import choose_accel
from acl_compose.errors import AclComposeError, InputError, ToolError
from acl_compose.image.bootfiles import kernel_boot_files
from acl_compose.run import kill_group, require, run, set_pdeathsig
from acl_compose.ui import info, opt, warn
from acl_compose.util import signals_held

log = logging.getLogger("acl_compose")

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
FW_CFG_NAMES = ("opt/org.flatcar-linux/config", "opt/com.coreos/config")
FIRMWARES = ("uefi", "bios", "kernel")
# How the guest gets its config: qemu by fw_cfg; azure as on Azure (a DVD; see boot.azure).
PLATFORMS = ("qemu", "azure")
# Seconds to reach SSH; TCG emulates every instruction, so it gets far more room.
BOOT_TIMEOUT = {"kvm": 240.0, "tcg": 900.0}
# Console lines after which waiting longer for SSH is pointless, and what they mean. systemd
# shortens unit names on the console ("init…arget"), so initrd targets match by description too.
FATAL_CONSOLE = (
    ("kernel panic", re.compile(r"Kernel panic - not syncing")),
    (
        "emergency shell",
        re.compile(
            r"Entering emergency mode|You are in emergency mode"
            r"|Reached target .*(emergency\.target|Emergency Mode)"
            r'|Generating "/run/initramfs/rdsosreport\.txt"'
        ),
    ),
    (
        "initrd target failed, the emergency shell follows",
        re.compile(r"Dependency failed for .*(initrd[-\w]*\.target|Initrd )"),
    ),
    (
        "dm-verity corruption",
        re.compile(r"device-mapper: verity: .*(data|metadata) block \d+ is corrupted"),
    ),
)
# Lines worth showing with a fatal one: what failed on the way there.
CONSOLE_CONTEXT = re.compile(
    r"\[FAILED\]|\[DEPEND\]|Failed to |corrupted|Kernel panic|Call Trace|BUG:|emergency"
)
_ANSI = re.compile(rb"\x1b\[[0-9;?=]*[A-Za-z]")


class BootError(AclComposeError):
    """The VM did not come up (QEMU died, timed out, or the system is not healthy)."""

    hint = "see the console log named in the message"


class BootTimeout(BootError):
    """No healthy SSH in time: an infrastructure failure worth a retry (the matrix does)."""


@dataclass
class BootResult:
    """What `VM.wait_ssh` learned: how long it took and the system state."""

    seconds: float
    state: str
    failed_units: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; QEMU may still lose a race, so callers retry."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def image_format(image: Path) -> str:
    out = run(["qemu-img", "info", "--output=json", str(image)]).stdout
    return str(json.loads(out)["format"])


# ---------------------------------------------------------------------------------------------
# The VM


class VM:
    """One QEMU guest booted from `image`; use as `with VM(image) as vm: vm.wait_ssh()`.

    Start it from a thread that outlives it: PR_SET_PDEATHSIG fires when the starting
    thread ends (waiting from other threads is fine, as `testing` does for --parallel).
    """

    def __init__(
        self,
        image: str | os.PathLike[str],
        *,
        firmware: str = "uefi",
        accel: str = "auto",
        memory: int = 2048,
        cpus: int = 2,
        ignition: str | os.PathLike[str] | dict[str, Any] | None = None,
        ssh: bool = True,
        cache_dir: Path | None = None,
        console_log: str | os.PathLike[str] | None = None,
        keep: bool = False,
        name: str = "vm",
        boot_timeout: float | None = None,
        extra_args: list[str] | None = None,
        net_options: list[str] | None = None,
        platform: str = "qemu",
    ) -> None:
        self.image = Path(image).resolve()
        if platform not in PLATFORMS:
            raise InputError(f"unknown platform {platform!r}", hint="use qemu or azure")
        self.platform = platform
        self.azure: Any = None  # boot.azure.Endpoints while an azure VM runs
        self.azure_env: dict[str, str] = {}  # what qemu-tests learn about the azure boot
        if not self.image.is_file():
            raise InputError(f"{image}: image not found", hint="pass a disk image file")
        if firmware not in FIRMWARES:
            raise InputError(f"unknown firmware {firmware!r}", hint="use uefi, bios or kernel")
        self.firmware = firmware
        self.accel_request = accel
        self.memory = memory
        self.cpus = cpus
        self.ignition = ignition
        self.want_ssh = ssh
        self.cache_dir = cache_dir
        self.keep = keep
        self.name = name
        self.boot_timeout = boot_timeout
        self.extra_args = list(extra_args or [])
        # Extra `-netdev user` options (e.g. a guestfwd to a loopback stand-in); the guest
        # stays restricted to what is forwarded, so nothing may turn restrict off.
        self.net_options = list(net_options or [])
        if any(o.replace(" ", "").startswith("restrict=") for o in self.net_options):
            raise InputError("net_options may not set restrict=", hint="guests stay isolated")
        self.workdir: Path | None = None
        self.console_log = Path(console_log).resolve() if console_log else None
        self.accel = ""
        self.port = 0
        self.key: Path | None = None
        self.ssh_config: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.argv: list[str] = []
        self._base_argv: list[str] = []
        self.result: BootResult | None = None
        self._old_sigterm: Any = None
        self._console_pos = 0
        self._console_context: deque[str] = deque(maxlen=12)
        self.fatal_line: str | None = None
        self.fatal_kind = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> VM:
        try:
            self.start()
        except BaseException as e:
            self.stop(failure=e)
            raise
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.stop(failure=exc)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Prepare the overlay, firmware, key and config, and launch QEMU (does not wait)."""
        self._install_sigterm()
        with signals_held():  # a Ctrl-C right after mkdtemp still finds the folder (stop())
            self.workdir = Path(tempfile.mkdtemp(prefix=f"acl-{self.name}-"))
        if self.console_log is None:
            self.console_log = self.workdir / "console.log"
        self.accel = choose_accel(self.accel_request, self.cache_dir)
        qemu = require("qemu-system-x86_64")
        overlay = self.workdir / "disk.qcow2"
        fmt = image_format(self.image)
        run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                fmt,
                "-b",
                str(self.image),
                str(overlay),
            ]
        )
        argv = [qemu, "-name", self.name, "-machine", "q35", "-m", str(self.memory)]
        argv += ["-smp", str(self.cpus), "-nodefaults", "-display", "none", "-no-reboot"]
        if self.accel == "kvm":
            argv += ["-accel", "kvm", "-cpu", "host"]
        else:
            argv += ["-accel", "tcg,thread=multi", "-cpu", "max"]
        argv += self._firmware_args()
        argv += ["-drive", f"if=virtio,file={overlay},format=qcow2,discard=unmap"]
        argv += ["-device", "virtio-rng-pci"]
        argv += ["-chardev", f"file,id=ser0,path={self.console_log}", "-serial", "chardev:ser0"]
        argv += self._ignition_args()
        argv += self.extra_args
        self._base_argv = argv
        self._launch()

    def _firmware_args(self) -> list[str]:
        assert self.workdir
        if self.firmware == "uefi":
            for f in (OVMF_CODE, OVMF_VARS):
                if not f.is_file():
                    raise ToolError(f"{f} not found", hint="install it: apt-get install ovmf")
            vars_copy = self.workdir / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            return [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            ]  # fmt: skip
        if self.firmware == "bios":
            return []  # QEMU's default firmware is SeaBIOS
        if image_format(self.image) != "raw":
            raise InputError(
                f"{self.image}: {opt('--firmware kernel', 'a direct kernel boot')} needs a raw "
                "image",
                hint="convert it first: qemu-img convert -O raw IMAGE IMAGE.bin",
            )
        warn(f"{opt('--firmware kernel', 'a direct kernel boot')} boots the ESP's kernel "
             "directly: firmware and GRUB are skipped (the command line GRUB would build is "
             "synthesized from the image)")  # fmt: skip
        kernel, initrd, cmdline = kernel_boot_files(self.image, self.workdir)
        args = ["-kernel", str(kernel), "-append", cmdline]
        if initrd:
            args += ["-initrd", str(initrd)]
        return args

    def _ignition_args(self) -> list[str]:
        assert self.workdir
        if isinstance(self.ignition, dict):
            config = self.ignition
        else:
            config = load_user_config(Path(self.ignition) if self.ignition else None)
        if self.want_ssh:
            self.key, pubkey = generate_ssh_key(self.workdir)
            config = add_ssh_key(config, pubkey)
        if self.platform == "azure":
            return self._azure_args(config)
        if not self.want_ssh and self.ignition is None:
            return []
        ign = self.workdir / "user.ign"
        ign.write_text(json.dumps(config, separators=(",", ":")))
        args: list[str] = []
        for name in FW_CFG_NAMES:
            args += ["-fw_cfg", f"name={name},file={ign}"]
        return args

    def _azure_args(self, config: dict[str, Any]) -> list[str]:
        """No fw_cfg: the config (core's key with it) is Azure's custom data (boot.azure)."""
        from acl_compose.boot import azure

        assert self.workdir
        (self.workdir / "admin").mkdir()
        admin = generate_ssh_key(self.workdir / "admin")
        self.azure, args, self.azure_env = azure.attach(self.workdir, f"acl-{self.name}",
                                                        config, admin)  # fmt: skip
        self.net_options += self.azure.wire_net_options()  # on net0, with SSH's forward
        return args

    def _launch(self, attempts: int = 8) -> None:
        """Start QEMU with a port forward, retrying on a port lost to another process."""
        assert self.workdir and self.console_log
        stderr_path = self.workdir / "qemu.stderr"
        for _ in range(attempts):
            argv = list(self._base_argv)
            if self.want_ssh or self.net_options:
                # restrict=on: the guest reaches nothing but the forwards (no DNS, NTP or
                # HTTP leaves the host; connections elsewhere are reset at once).
                netdev = ["user", "id=net0", "restrict=on"]
                if self.want_ssh:
                    self.port = free_port()
                    netdev.append(f"hostfwd=tcp:127.0.0.1:{self.port}-:22")
                netdev += self.net_options
                argv += ["-netdev", ",".join(netdev), "-device", "virtio-net-pci,netdev=net0"]
            log.debug("qemu: %s", " ".join(argv))
            self.console_log.write_bytes(b"")
            with open(stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,  # its own process group, killed as a whole
                    preexec_fn=set_pdeathsig,
                )
            self.started = time.monotonic()
            self.argv = argv
            # A clashing hostfwd makes QEMU exit at once; give it a moment to say so.
            try:
                self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if self.want_ssh:
                    self.ssh_config = self.workdir / "ssh_config"
                    self.ssh_config.write_text(ssh_config_text(self.port, self.key))  # type: ignore[arg-type]
                return
            err_text = stderr_path.read_text(errors="replace")
            # QEMU echoes the whole -netdev, so match its clash message, not "hostfwd".
            if "host forwarding rule" in err_text:
                log.debug("port %d clashed, retrying", self.port)
                continue
            raise BootError(f"qemu exited at start: {err_text.strip().splitlines()[-1:]}")
        raise BootError(f"no free port for SSH after {attempts} attempts")

    def stop(self, failure: BaseException | None = None) -> None:
        """Kill QEMU's process group and remove the temporary directory (unless keep).

        After a `failure` (not Ctrl-C) the console log, command line and QEMU's stderr are
        kept and the error names them (evidence.py)."""
        try:
            if self.proc is not None:
                kill_group(self.proc)
            if self.azure is not None:
                self.azure.__exit__(None, None, None)
            self.azure = None
        finally:
            keep_failure(self, failure)
            if self.workdir and not self.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self._restore_sigterm()

    def _install_sigterm(self) -> None:
        # SIGTERM would otherwise end Python without running __exit__ (SIGINT raises already).
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        self._old_sigterm = signal.signal(signal.SIGTERM, handler)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # -- interaction -------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console_tail(self, lines: int = 30) -> str:
        if not self.console_log or not self.console_log.exists():
            return ""
        with open(self.console_log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            text = f.read().decode(errors="replace")
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def console_fatal(self) -> str | None:
        """The first fatal console line (see FATAL_CONSOLE); once seen, always returned."""
        if self.fatal_line is not None:
            return self.fatal_line
        if not self.console_log or not self.console_log.exists():
            return None
        with open(self.console_log, "rb") as f:
            f.seek(self._console_pos)
            chunk = f.read()
        # Keep a partial last line for the next scan.
        cut = chunk.rfind(b"\n") + 1
        self._console_pos += cut
        text = _ANSI.sub(b"", chunk[:cut]).decode(errors="replace")
        for raw in text.splitlines():
            line = raw.strip()
            kind = next((k for k, pattern in FATAL_CONSOLE if pattern.search(line)), None)
            if kind:
                self._console_context.append(line)
                self.fatal_line, self.fatal_kind = line, kind
                return line
            if CONSOLE_CONTEXT.search(line):
                self._console_context.append(line)
        return None

    def console_lines(self) -> list[str]:
        """The console lines that explain a failed boot: what failed, then the fatal line."""
        return list(self._console_context)

    def _fatal_error(self) -> BootError:
        seconds = time.monotonic() - self.started
        shown = "".join(f"\n  | {line}" for line in self.console_lines())
        return BootError(
            f"guest failed to boot after {seconds:.0f}s ({self.fatal_kind}): {self.fatal_line!r}; "
            f"console: {self.console_log}{shown}"
        )

    def ssh(
        self,
        command: str,
        *,
        timeout: float = 60,
        check: bool = False,
        connect_timeout: int | None = None,
        retries: int = 2,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `command` in the guest as core over the VM's ssh_config.

        A connection that fails before authentication (under TCG a busy guest can miss the
        banner deadline) never ran the command, so it is retried `retries` times.
        """
        if not self.ssh_config:
            raise BootError("the VM was started without SSH", hint="start it with ssh=True")
        extra = ["-o", f"ConnectTimeout={connect_timeout}"] if connect_timeout else []
        argv = ["ssh", "-F", str(self.ssh_config), *extra, "vm", command]
        for attempt in range(retries + 1):
            proc = run(argv, check=False, timeout=timeout)
            preauth = proc.returncode == 255 and any(m in proc.stderr for m in PREAUTH_FAILURES)
            if not preauth or attempt == retries:
                break
            time.sleep(2)
        if check and proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise ToolError(
                f"ssh {command!r} failed: {err[-1] if err else f'exit {proc.returncode}'}",
                hint=f"console log: {self.console_log}",
            )
        return proc

    def wait_ssh(self, timeout: float | None = None, poll: float = 1.0) -> BootResult:
        """Wait until SSH answers and `systemctl is-system-running` says running or degraded."""
        timeout = timeout or self.boot_timeout or BOOT_TIMEOUT.get(self.accel, 900.0)
        deadline = self.started + timeout
        state = ""
        while True:
            alive = self.alive()  # before the scan, so a dying guest's last lines are read
            if self.console_fatal():
                raise self._fatal_error()
            if not alive:
                shown = "".join(f"\n  | {line}" for line in self.console_lines())
                raise BootError(
                    f"qemu exited with status {self.proc.returncode if self.proc else '?'} "
                    f"before SSH answered; console: {self.console_log}{shown}",
                )
            if time.monotonic() > deadline:
                raise BootTimeout(
                    f"no healthy SSH after {timeout:g}s under {self.accel} (last state "
                    f"{state or 'unreachable'}); console: {self.console_log}"
                )
            # slirp accepts at once and the banner never comes while the guest boots:
            # bound each attempt by the time left.
            state = self._probe_state(int(max(1, min(10, deadline - time.monotonic()))))
            if state in ("running", "degraded"):
                break
            if state in ("maintenance", "stopping", "offline"):
                raise BootError(f"guest reached state {state!r}; console: {self.console_log}")
            time.sleep(poll)
        seconds = time.monotonic() - self.started
        failed: list[str] = []
        if state == "degraded":
            out = self.ssh("systemctl --failed --plain --no-legend --no-pager", timeout=30)
            failed = [ln.split()[0] for ln in out.stdout.decode().splitlines() if ln.split()]
        self.result = BootResult(seconds=seconds, state=state, failed_units=failed)
        return self.result

    def _probe_state(self, connect_timeout: int) -> str:
        """`systemctl is-system-running` over SSH, or "" while SSH does not answer.

        A Popen polled here rather than run(): the console is watched while ssh waits, so a
        guest that drops to the emergency shell fails the boot at once, not after the attempt.
        """
        argv = ["ssh", "-F", str(self.ssh_config), "-o", f"ConnectTimeout={connect_timeout}"]
        argv += ["vm", "systemctl is-system-running"]
        deadline = time.monotonic() + connect_timeout + 30
        with subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        ) as proc:
            while proc.poll() is None:
                if self.console_fatal() or not self.alive() or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    return ""
                time.sleep(0.25)
            out = proc.stdout.read() if proc.stdout else b""
        return out.decode(errors="replace").strip()

    def write_ssh_config(self, path: str | os.PathLike[str], host: str = "vm") -> Path:
        """Copy the VM's ssh_config (pointing at the key in the VM's temp dir) to `path`."""
        if not self.key:
            raise BootError("the VM was started without SSH", hint="start it with ssh=True")
        path = Path(path)
        path.write_text(ssh_config_text(self.port, self.key, host=host))
        return path


def boot_and_wait(vm: VM) -> BootResult:
    """Wait for `vm` and print a one-line progress note; failed units become a warning."""
    info(f"booting {vm.image.name} ({vm.firmware}, {vm.accel}, ssh port {vm.port})")
    result = vm.wait_ssh()
    info(f"{vm.name}: SSH after {result.seconds:.1f}s, system {result.state}")
    if result.failed_units:
        warn(f"{vm.name}: failed units: {', '.join(result.failed_units)}")
    return result
