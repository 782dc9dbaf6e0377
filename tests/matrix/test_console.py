"""The console agent's protocol, with the real agent script under busybox sh on a pty.

A small bridge stands in for QEMU's socket chardev: it accepts one client at a time on a Unix
socket and copies bytes to and from the pty's master side, as QEMU does with the guest's
serial port. The tiny-guest integration tests run the same agent inside a real VM.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acl_compose.matrix import console


@contextlib.contextmanager
def agent_on_pty(tmp_path: Path, start_agent: bool = True) -> Iterator[Path]:
    master, slave = pty.openpty()
    tty = os.ttyname(slave)
    (tmp_path / "agent").write_text(console.AGENT_SCRIPT)
    proc = None
    if start_agent:
        proc = subprocess.Popen(["/bin/busybox", "sh", str(tmp_path / "agent"), tty],
                                env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})  # fmt: skip
    sock_path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock_path))
    srv.listen(1)
    stop = threading.Event()

    def bridge() -> None:
        while not stop.is_set():
            r, _, _ = select.select([srv], [], [], 0.1)
            if not r:
                continue
            conn, _ = srv.accept()
            with conn:
                while not stop.is_set():
                    r, _, _ = select.select([conn, master], [], [], 0.1)
                    if conn in r:
                        data = conn.recv(4096)
                        if not data:
                            break
                        os.write(master, data)
                    if master in r:
                        conn.sendall(os.read(master, 4096))

    t = threading.Thread(target=bridge, daemon=True)
    t.start()
    try:
        yield sock_path
    finally:
        stop.set()
        t.join(5)
        srv.close()
        if proc is not None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_agent_runs_commands_and_keeps_streams_apart(tmp_path: Path) -> None:
    if not Path("/bin/busybox").is_file():
        pytest.fail("/bin/busybox missing: apt-get install busybox-static")
    with agent_on_pty(tmp_path) as sock:
        console.wait_agent(sock, time.monotonic() + 20, lambda: True, lambda: None)
        with console.ConsoleAgent(sock) as agent:
            rc, out, err = agent.run("printf 'a\\nb c\\n'; echo oops >&2; exit 7")
            assert (rc, out, err) == (7, b"a\nb c\n", b"oops\n")
            # Binary output and quotes survive the tty (base64 both ways).
            rc, out, _ = agent.run("printf '\\001\\377\\r\\n'; echo \"'q'\"")
            assert (rc, out) == (0, b"\x01\xff\r\n'q'\n")
            big = agent.run("i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done")[1]
            assert big.splitlines()[-1] == b"line1999" and len(big.splitlines()) == 2000
        # A second client (pytest after the readiness check) gets its own answers.
        host = console.testinfra_host(sock)
        assert host.file(str(tmp_path / "agent")).contains("ACL-BEGIN")
        assert host.run("exit 3").rc == 3
        host.backend.agent.close()


def test_silent_agent_times_out(tmp_path: Path) -> None:
    with agent_on_pty(tmp_path, start_agent=False) as sock:
        start = time.monotonic()
        with pytest.raises(console.AgentError, match="did not answer"):
            console.wait_agent(sock, time.monotonic() + 2, lambda: True, lambda: None)
        assert time.monotonic() - start < 10
        with pytest.raises(console.AgentError, match="qemu exited"):
            console.wait_agent(sock, time.monotonic() + 2, lambda: False, lambda: None)
