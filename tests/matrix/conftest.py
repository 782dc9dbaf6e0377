"""Fixtures for the matrix tests: the tiny guest's images and a throwaway loopback sshd."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.matrix.tinyguest import build_tiny_image, find_kernel


@dataclass
class TinyImages:
    ok: Path
    hang: Path
    kernel: Path


@pytest.fixture(scope="session")
def tiny_images(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The tiny guest (Debian kernel from the testbed build + busybox initramfs), two ways."""
    kernel = find_kernel()
    if kernel is None:  # build the testbed (cached; it brings the kernel)
        request.getfixturevalue("testbed_build")
        kernel = find_kernel()
    if kernel is None:
        pytest.fail("no Debian kernel in the testbed cache: run `acl-compose testbed build`")
    if not Path("/bin/busybox").is_file():
        pytest.fail("/bin/busybox missing: apt-get install busybox-static (or `make deps`)")
    d = tmp_path_factory.mktemp("tiny")
    return TinyImages(
        build_tiny_image(d / "tiny.img", kernel, "ok"),
        build_tiny_image(d / "hang.img", kernel, "hang"),
        kernel,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    port: int
    identity: Path
    known_hosts: Path
    log: Path


@pytest.fixture
def loopback_sshd(tmp_path: Path) -> Iterator[Sshd]:
    """Debian's sshd on a free 127.0.0.1 port: its own host key, one authorized client key,
    public-key logins only; stopped (by pid) at the end."""
    sshd = next((p for p in ("/usr/sbin/sshd", "/sbin/sshd") if Path(p).is_file()), None)
    if sshd is None:
        pytest.fail("sshd missing: apt-get install openssh-server (or `make deps`)")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "id_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)  # fmt: skip
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nLogLevel VERBOSE\n"
    )
    host_pub = (d / "host_key.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub)}\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = d / "sshd.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")],
                                stdout=f, stderr=f)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield Sshd(port, d / "id_ed25519", d / "known_hosts", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
