"""pytest plugin for console suites: testinfra's `host` over the guest's serial agent.

Loaded by the matrix cell runner with `-p acl_compose.matrix.pytest_console` and
`-p no:pytest11.testinfra` (testinfra's own plugin, by its entry-point name, would run `host`
commands on the worker itself), with ACL_COMPOSE_AGENT_SOCKET naming QEMU's agent socket.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from acl_compose.matrix.console import ENV_SOCKET, testinfra_host


@pytest.fixture(scope="session")
def host() -> Any:
    sock = os.environ.get(ENV_SOCKET)
    if not sock:
        pytest.fail(f"{ENV_SOCKET} is not set: console suites run under `acl-compose matrix run`")
    h = testinfra_host(sock)
    yield h
    h.backend.agent.close()


@pytest.fixture(scope="session", autouse=True)
def _boot_property(record_testsuite_property: Any) -> None:
    seconds = os.environ.get("ACL_COMPOSE_BOOT_SECONDS")
    if seconds:
        record_testsuite_property("boot_seconds", seconds)
