"""A tiny guest for the matrix tests: a Debian kernel + a busybox initramfs on a GPT disk.

It boots to userspace in seconds under TCG, so the matrix mechanics (timeouts, retries, lost
workers, resume, clusters) are tested on real QEMU boots without the full OS. The disk is
laid out as Flatcar's is where the harness looks: an ESP with `flatcar/vmlinuz-a` and
`flatcar/initrd-a`, and an (empty) USR-A partition that gptprio picks, so the harness boots
it with `--firmware kernel` exactly as it boots a composed image (image.bootfiles synthesizes
GRUB's command line; the kernel carries no root hash, so no dm-verity). The initramfs (cpio
newc, written here) writes to the first serial port and runs the console agent
(`acl_compose.matrix.console.AGENT_SCRIPT`) on the second, where `console` suites reach it
instead of SSH.

Behaviours, chosen by `mode`: "ok" (agent starts), "hang" (init never starts the agent: a
boot that hangs), "panic" (init exits: a kernel panic).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from acl_compose.image import gpt  # noqa: E402
from acl_compose.matrix.console import AGENT_SCRIPT  # noqa: E402

MIB = 1 << 20
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
USR_A = "7130c94a-213a-4e5a-8e26-6cce9662f132"  # Flatcar's USR-A PARTUUID (vmlinuz-a)
GPTPRIO = (1 << 48) | (1 << 56)  # priority 1, booted successfully: gptprio.next's pick

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec >/dev/ttyS0 2>&1  # the harness's console log, whichever console= came last
mkdir -p /tmp /run
echo "tiny guest: init started (mode $MODE)"
case "$MODE" in
  hang) echo "tiny guest: hanging on purpose"; while :; do sleep 3600; done ;;
  panic) echo "tiny guest: exiting init on purpose"; exit 1 ;;
esac
/bin/sh /agent /dev/ttyS1 &
while :; do sleep 3600; done
"""


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 1) -> bytes:
    """One "newc" cpio record (the format the kernel unpacks)."""
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def build_initramfs(dest: Path, mode: str) -> Path:
    entries = [
        ("bin", 0o40755, b""),
        ("proc", 0o40755, b""),
        ("sys", 0o40755, b""),
        ("dev", 0o40755, b""),
        ("etc", 0o40755, b""),
        ("bin/busybox", 0o100755, BUSYBOX.read_bytes()),
        ("init", 0o100755, INIT.replace("$MODE", mode).encode()),
        ("agent", 0o100755, AGENT_SCRIPT.encode()),
        ("etc/os-release", 0o100644, b"ID=tiny\nVERSION_ID=1\n"),
    ]
    out = b"".join(_cpio_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries))
    out += _cpio_entry("TRAILER!!!", 0, b"", 0)
    dest.write_bytes(out)
    return dest


def _sh(*argv: str | os.PathLike[str]) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    subprocess.run([str(a) for a in argv], check=True, capture_output=True, env=env)


def build_tiny_image(dest: Path, kernel: Path, mode: str = "ok") -> Path:
    """A raw GPT disk: ESP (kernel, initramfs) and an empty USR-A (~40 MiB sparse)."""
    work = dest.with_name(dest.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    initrd = build_initramfs(work / "initrd", mode)
    esp = work / "esp.img"
    _sh("mkfs.vfat", "-C", "-n", "EFI-SYSTEM", esp, str(30 * 1024))
    _sh("mmd", "-i", esp, "::/flatcar")
    _sh("mcopy", "-i", esp, kernel, "::/flatcar/vmlinuz-a")
    _sh("mcopy", "-i", esp, initrd, "::/flatcar/initrd-a")
    end = 2048 + 32 * MIB // 512
    part = gpt.Partition(1, gpt.TYPES["efi"], str(uuid.uuid4()), "EFI-SYSTEM", 2048, end - 1)
    usr = gpt.Partition(3, gpt.TYPES["flatcar-usr"], USR_A, "USR-A", end, end + 2047, GPTPRIO)
    dest.unlink(missing_ok=True)
    gpt.write(dest, [part, usr], str(uuid.uuid4()), size=(end + 2048 + 2048) * 512)
    gpt.copy_in(dest, part, esp)
    shutil.rmtree(work)
    return dest


def find_kernel(cache_dir: Path | None = None) -> Path | None:
    """A Debian kernel from the testbed build in the shared cache, if one was built."""
    cache = cache_dir or Path.home() / ".cache" / "acl-compose"
    for build in sorted((cache / "testbed").glob("*/build.json")):
        release = build.parent / "release"
        version = json.loads(build.read_text()).get("version", "current")
        for d in (release / version, release / "current"):
            k = d / "flatcar_production_image.vmlinuz"
            if k.is_file():
                return k
    return None
