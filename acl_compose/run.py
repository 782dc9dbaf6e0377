"""The one subprocess helper: every external tool call goes through `run`."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from acl_compose.errors import ToolError

log = logging.getLogger("acl_compose")

# Which Debian package provides a tool, for the hint when it is missing.
PACKAGES = {
    "veritysetup": "cryptsetup-bin",
    "gpg": "gnupg",
    "gpgv": "gpgv",
    "sgdisk": "gdisk",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mtype": "mtools",
    "mkfs.vfat": "dosfstools",
    "mkfs.erofs": "erofs-utils",
    "dump.erofs": "erofs-utils",
    "fsck.erofs": "erofs-utils",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.btrfs": "btrfs-progs",
    "btrfs": "btrfs-progs",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "mmdebstrap": "mmdebstrap",
    "grub-mkstandalone": "grub-common",
    "grub-mkimage": "grub-common",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "systemd-dissect": "systemd-container",
    "ignition-validate": "ignition",
    "lbzip2": "lbzip2",
    "bzip2": "bzip2",
    "zstd": "zstd",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "openssl": "openssl",
}


def which(tool: str) -> str | None:
    """Path of `tool` on PATH or in the sbin directories (root tools live there)."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(tool, path=path)


def require(tool: str) -> str:
    """Return the tool's path or raise a ToolError naming the Debian package."""
    found = which(tool)
    if not found:
        pkg = PACKAGES.get(tool, tool)
        raise ToolError(
            f"{tool} not found",
            hint=f"install it: apt-get install {pkg} (or run `make deps`)",
        )
    return found


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    capture: bool = True,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    hint: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool; on failure raise ToolError carrying the tool's stderr.

    stdout/stderr are captured (bytes) unless capture=False. `env` entries are
    added to the current environment rather than replacing it.
    """
    args = [str(a) for a in argv]
    args[0] = require(args[0]) if "/" not in args[0] else args[0]
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{Path(args[0]).name} timed out after {timeout:g}s", hint=hint) from e
    if check and proc.returncode != 0:
        stderr = (proc.stderr or b"").decode(errors="replace").strip()
        last = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
        raise ToolError(
            f"{Path(args[0]).name} failed: {last}",
            hint=hint or f"command was: {shlex.join(args)}",
        )
    return proc


# Long-running children (QEMU) get their own process group and die with us.
PR_SET_PDEATHSIG = 1


def set_pdeathsig() -> None:
    """In the child: die with the parent, so a SIGKILLed harness leaves no QEMU behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Terminate the process group led by `proc` (QEMU), escalating to SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
