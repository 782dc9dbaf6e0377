"""Run commands in a guest over its second serial port: for tiny guests without sshd.

The guest runs `AGENT_SCRIPT` (busybox sh) on ttyS1; QEMU connects that port to a Unix
socket (`agent_args`). Each request is one line, `ID BASE64(command)`; the reply is
`ACL-BEGIN ID`, base64 stdout, `ACL-ERR ID`, base64 stderr, `ACL-END ID STATUS`. Base64 keeps
the tty from mangling anything; ids let a reader skip replies meant for an earlier client
(QEMU's socket takes one client at a time, and requests sent before the agent ran are only
answered later). `ConsoleBackend` is a pytest-testinfra backend on top, so console suites get
the same `host` fixture as SSH suites (`acl_compose.matrix.pytest_console`).
"""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from acl_compose.errors import AclComposeError

AGENT_SCRIPT = r"""#!/bin/sh
# acl-compose console agent: one command per line on the serial port given as $1.
tty="$1"
t="${TMPDIR:-/tmp}"
stty -F "$tty" raw -echo 2>/dev/null
exec <"$tty" >"$tty" 2>/dev/null
while IFS= read -r line; do
  id="${line%% *}"
  echo "${line#* }" | base64 -d >"$t/acl-cmd" 2>/dev/null
  sh "$t/acl-cmd" </dev/null >"$t/acl-out" 2>"$t/acl-err"
  rc=$?
  echo "ACL-BEGIN $id"
  base64 "$t/acl-out"
  echo "ACL-ERR $id"
  base64 "$t/acl-err"
  echo "ACL-END $id $rc"
done
"""

ENV_SOCKET = "ACL_COMPOSE_AGENT_SOCKET"


class AgentError(AclComposeError):
    """The console agent did not answer."""

    hint = "see the guest's console log; the agent runs on its second serial port (ttyS1)"


def agent_args(sock: Path) -> list[str]:
    """QEMU arguments: the guest's second serial port on a Unix socket QEMU listens on."""
    return [
        "-chardev",
        f"socket,id=agent,path={sock},server=on,wait=off",
        "-serial",
        "chardev:agent",
    ]


class ConsoleAgent:
    """A client of the guest agent on QEMU's socket (one at a time)."""

    def __init__(self, sock: str | os.PathLike[str], connect_timeout: float = 10.0) -> None:
        self.sock_path = str(sock)
        self._buf = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._sock.connect(self.sock_path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                if time.monotonic() > deadline:
                    self._sock.close()
                    raise AgentError(f"no agent socket at {self.sock_path}: {e}") from e
                time.sleep(0.1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ConsoleAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _readline(self, deadline: float) -> bytes | None:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise AgentError(f"agent socket {self.sock_path} closed (QEMU exited?)")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.rstrip(b"\r")

    def run(self, command: str | bytes, timeout: float = 60.0) -> tuple[int, bytes, bytes]:
        """(exit status, stdout, stderr) of `sh -c command` in the guest."""
        rid = uuid.uuid4().hex[:12]
        cmd = command.encode() if isinstance(command, str) else command
        self._sock.sendall(f"{rid} ".encode() + base64.b64encode(cmd) + b"\n")
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        err: list[bytes] = []
        target: list[bytes] | None = None
        while True:
            line = self._readline(deadline)
            if line is None:
                raise AgentError(f"no answer from the guest agent within {timeout:g}s")
            words = line.split()
            if words[:2] == [b"ACL-BEGIN", rid.encode()]:
                target = out
            elif words[:2] == [b"ACL-ERR", rid.encode()] and target is out:
                target = err
            elif words[:2] == [b"ACL-END", rid.encode()] and target is err and len(words) == 3:
                return (
                    int(words[2]),
                    base64.b64decode(b"".join(out)),
                    base64.b64decode(b"".join(err)),
                )
            elif target is not None and not line.startswith(b"ACL-"):
                target.append(line.strip())

    def ping(self, timeout: float = 3.0) -> bool:
        try:
            rc, out, _ = self.run("echo acl-agent-ok", timeout=timeout)
        except AgentError:
            return False
        return rc == 0 and out.strip() == b"acl-agent-ok"


def wait_agent(sock: Path, deadline: float, alive: Any, fatal: Any) -> None:
    """Ping the agent until it answers; `alive()` / `fatal()` end the wait early.

    Raises AgentError when the deadline passes (the caller decides what a hang means).
    """
    while time.monotonic() < deadline:
        if not alive():
            raise AgentError("qemu exited before the guest agent answered")
        line = fatal()
        if line:
            raise AgentError(f"guest failed to boot: {line!r}")
        try:
            with ConsoleAgent(sock, connect_timeout=max(0.1, deadline - time.monotonic())) as a:
                while time.monotonic() < deadline and alive():
                    if a.ping(timeout=min(3.0, max(0.1, deadline - time.monotonic()))):
                        return
                    if fatal_line := fatal():
                        raise AgentError(f"guest failed to boot: {fatal_line!r}")
        except AgentError as e:
            if "failed to boot" in e.message:
                raise
            time.sleep(0.2)
    raise AgentError("the guest agent did not answer before the deadline")


def testinfra_host(sock: str | os.PathLike[str]) -> Any:
    """A testinfra `Host` whose commands run through the console agent."""
    import testinfra.host
    from testinfra.backend.base import BaseBackend

    class ConsoleBackend(BaseBackend):
        NAME = "acl-console"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(str(sock), *args, **kwargs)
            self.agent = ConsoleAgent(sock)

        def run(self, command: str, *args: str, **kwargs: Any) -> Any:
            cmd = self.get_command(command, *args)
            rc, out, err = self.agent.run(cmd, timeout=float(kwargs.get("timeout", 300)))
            return self.result(rc, self.encode(cmd), out, err)

    return testinfra.host.Host(ConsoleBackend())
