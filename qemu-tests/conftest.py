"""pytest plugin for qemu-tests: testinfra's `host` against a booted acl-compose image.

Two ways in:
- `acl-compose test IMAGE` boots the VM(s) and runs pytest with `--hosts=ssh://vm
  --ssh-config=F`; the release and boot time arrive in ACL_COMPOSE_* environment variables.
- `pytest qemu-tests/ --image IMAGE [--release-json F]` boots one VM here, once per session,
  and tears it down at the end (also on Ctrl-C or failure).

Without a release.json the release-specific checks skip with a reason, so the suites also run
against a bare testbed image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

ENV_RELEASE = "ACL_COMPOSE_RELEASE_JSON"
ENV_BOOT_SECONDS = "ACL_COMPOSE_BOOT_SECONDS"
ENV_IMAGE = "ACL_COMPOSE_IMAGE"
ENV_CONSOLE = "ACL_COMPOSE_CONSOLE_LOG"
ENV_FAILED_UNITS = "ACL_COMPOSE_FAILED_UNITS"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("acl-compose")
    group.addoption("--image", help="boot this disk image once for the session")
    group.addoption("--release-json", help="compose's release.json (what to expect)")
    group.addoption("--firmware", default="uefi", help="uefi, bios or kernel")
    group.addoption("--accel", default="auto", help="auto, kvm or tcg")
    group.addoption("--boot-timeout", type=float, default=None, help="seconds to reach SSH")


def pytest_configure(config: pytest.Config) -> None:
    image = config.getoption("--image", default=None)
    if not image or getattr(config.option, "hosts", None):
        return
    from acl_compose.boot import qemu  # only needed when this plugin boots the VM itself

    vm = qemu.VM(
        image,
        firmware=config.getoption("--firmware"),
        accel=config.getoption("--accel"),
        boot_timeout=config.getoption("--boot-timeout"),
        name="qemu-tests",
    )
    config._acl_vm = vm  # type: ignore[attr-defined]
    try:
        vm.start()
        result = vm.wait_ssh()
    except BaseException:
        tail = vm.console_tail(25)
        vm.stop()
        if tail:
            print(f"--- console tail ---\n{tail}")
        raise
    config.option.hosts = "ssh://vm"
    config.option.ssh_config = str(vm.ssh_config)
    os.environ[ENV_BOOT_SECONDS] = f"{result.seconds:.1f}"
    os.environ[ENV_IMAGE] = str(Path(image).resolve())
    os.environ[ENV_CONSOLE] = str(vm.console_log)
    os.environ[ENV_FAILED_UNITS] = " ".join(result.failed_units)
    release = config.getoption("--release-json")
    if release:
        os.environ[ENV_RELEASE] = str(Path(release).resolve())


def pytest_unconfigure(config: pytest.Config) -> None:
    vm = getattr(config, "_acl_vm", None)
    if vm is not None:
        vm.stop()


@pytest.fixture(scope="session")
def release(pytestconfig: pytest.Config) -> dict[str, Any] | None:
    """release.json's content, or None when none was given."""
    path = pytestconfig.getoption("--release-json", default=None) or os.environ.get(ENV_RELEASE)
    if not path:
        return None
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def required_release(release: dict[str, Any] | None) -> dict[str, Any]:
    """release.json's content; skips the test when none was given."""
    if release is None:
        pytest.skip("no release.json given (--release-json): release-specific check skipped")
    return release


@pytest.fixture(scope="session")
def image_path() -> Path | None:
    value = os.environ.get(ENV_IMAGE)
    return Path(value) if value else None


@pytest.fixture(scope="session")
def boot_seconds() -> float | None:
    value = os.environ.get(ENV_BOOT_SECONDS)
    return float(value) if value else None


@pytest.fixture(scope="session", autouse=True)
def _record_boot_time(record_testsuite_property: Any, boot_seconds: float | None) -> None:
    """Boot-to-SSH time as a JUnit <property> of every test suite."""
    if boot_seconds is not None:
        record_testsuite_property("boot_to_ssh_seconds", f"{boot_seconds:.1f}")


@pytest.fixture(scope="module")
def root_run(host: Any) -> Any:
    """Run a command as root in the guest (via sudo -n); skips if core may not use sudo."""
    probe = host.run("sudo -n true")
    if probe.rc != 0:
        pytest.skip("user core cannot run sudo without a password in this image")

    def run(command: str) -> Any:
        return host.run("sudo -n sh -c %s", command)

    return run
