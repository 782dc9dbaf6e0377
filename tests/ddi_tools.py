"""What independent tools say about a sysext image (DDI or raw): systemd-dissect's view, and
partitions cut out at the offsets sgdisk reports (not our GPT reader). Shared by the sysext
and provenance tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path


def dissect(image: Path) -> dict:
    proc = subprocess.run(
        ["systemd-dissect", "--json=short", str(image)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def sgdisk_partition(image: Path, number: int) -> tuple[int, int]:
    """(offset, size) in bytes of a partition according to sgdisk, not our GPT code."""
    info = subprocess.run(
        ["sgdisk", "-i", str(number), str(image)], capture_output=True, text=True, check=True
    ).stdout
    first = int(re.search(r"First sector: (\d+)", info).group(1))
    last = int(re.search(r"Last sector: (\d+)", info).group(1))
    return first * 512, (last - first + 1) * 512


def extract(image: Path, number: int, dest: Path) -> Path:
    off, size = sgdisk_partition(image, number)
    with open(image, "rb") as f:
        f.seek(off)
        dest.write_bytes(f.read(size))
    return dest


def dissect_with_verity_d(image: Path, cert: Path, name: str) -> tuple[bool, str]:
    """systemd-dissect copies the extension-release out of `image`, trusting only `cert`
    (in /usr/local/lib/verity.d, inside a private mount namespace so the host is untouched).

    Returns (copied, debug log). Where device-mapper is missing (as in this container) the
    copy fails after systemd's signature check, whose verdict is in the debug log.
    """
    script = (
        "mount -t tmpfs none /usr/local/lib && mkdir /usr/local/lib/verity.d && "
        f"cp {cert} /usr/local/lib/verity.d/acl.crt && "
        f"systemd-dissect --copy-from {image} "
        f"/usr/lib/extension-release.d/extension-release.{name} -"
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "debug"},
        timeout=120,
    )
    return proc.returncode == 0 and "ID=flatcar" in proc.stdout, proc.stderr
