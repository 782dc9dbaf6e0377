"""pytest plugin for qemu-tests: testinfra's `host` against a booted acl-compose image.

Two ways in:
- `acl-compose test IMAGE` boots the VM(s) and runs pytest with `--hosts=ssh://vm
  --ssh-config=F`; the release and boot time arrive in ACL_COMPOSE_* environment variables.
- `pytest qemu-tests/ --image IMAGE [--release-json F]` boots one VM here, once per session,
  and tears it down at the end (also on Ctrl-C or failure).

With a release.json every collected test must pass: a skip is turned into a failure unless the
test declared why it does not apply (`@pytest.mark.platform(...)`, see README.md). Without a
release.json the release-specific checks skip with a reason, so the suites also run against a
bare testbed image.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from acl_compose.boot.testing import NOT_APPLICABLE

ENV_RELEASE = "ACL_COMPOSE_RELEASE_JSON"
ENV_BOOT_SECONDS = "ACL_COMPOSE_BOOT_SECONDS"
ENV_IMAGE = "ACL_COMPOSE_IMAGE"
ENV_CONSOLE = "ACL_COMPOSE_CONSOLE_LOG"
ENV_FAILED_UNITS = "ACL_COMPOSE_FAILED_UNITS"
ENV_FIRMWARE = "ACL_COMPOSE_FIRMWARE"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("acl-compose")
    group.addoption("--image", help="boot this disk image once for the session")
    group.addoption("--release-json", help="compose's release.json (what to expect)")
    group.addoption("--firmware", default="uefi", help="uefi, bios or kernel")
    group.addoption("--accel", default="auto", help="auto, kvm or tcg")
    group.addoption("--boot-timeout", type=float, default=None, help="seconds to reach SSH")
    group.addoption("--platform", default="qemu", help="qemu (fw_cfg) or azure (as on Azure)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "platform(*names, reason=None): the test applies only to guests booted for one of these "
        "platforms (ignition.platform.id); elsewhere it is reported as not applicable",
    )
    image = config.getoption("--image", default=None)
    if not image or getattr(config.option, "hosts", None):
        return
    from acl_compose.boot import qemu  # only needed when this plugin boots the VM itself
    from acl_compose.errors import InputError
    from acl_compose.image import firmware

    try:  # an image this firmware cannot boot is refused now, not after the boot timeout
        firmware.require(image, config.getoption("--firmware"))
    except InputError as e:
        raise pytest.UsageError(f"{e.message}\nhint: {e.hint}") from None
    vm = qemu.VM(
        image,
        firmware=config.getoption("--firmware"),
        accel=config.getoption("--accel"),
        boot_timeout=config.getoption("--boot-timeout"),
        name="qemu-tests",
        platform=config.getoption("--platform"),
    )
    config._acl_vm = vm  # type: ignore[attr-defined]
    try:
        vm.start()
        result = vm.wait_ssh()
    except BaseException as e:
        tail = vm.console_tail(25)
        vm.stop(failure=e)  # keeps the console log and QEMU command line, named in `e`
        if tail:
            print(f"--- console tail ---\n{tail}")
        raise
    config.option.hosts = "ssh://vm"
    config.option.ssh_config = str(vm.ssh_config)
    os.environ[ENV_BOOT_SECONDS] = f"{result.seconds:.1f}"
    os.environ[ENV_IMAGE] = str(Path(image).resolve())
    os.environ[ENV_CONSOLE] = str(vm.console_log)
    os.environ[ENV_FAILED_UNITS] = " ".join(result.failed_units)
    os.environ[ENV_FIRMWARE] = config.getoption("--firmware")
    os.environ.update(vm.azure_env)  # an azure boot: what the VM was given, the stand-in's record
    release = config.getoption("--release-json")
    if release:
        os.environ[ENV_RELEASE] = str(Path(release).resolve())


def pytest_unconfigure(config: pytest.Config) -> None:
    vm = getattr(config, "_acl_vm", None)
    if vm is not None:
        vm.stop()


def _release_path(config: pytest.Config) -> str | None:
    return config.getoption("--release-json", default=None) or os.environ.get(ENV_RELEASE)


# -- no silent skips ------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With a release.json, a skip the test did not declare (by marker) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not _release_path(item.config):
        return
    if any(name == NOT_APPLICABLE for name, _ in item.user_properties):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped although a release.json was given ({reason}); every test must run against a "
        "release, or declare why it does not apply (qemu-tests/README.md)"
    )


def guest_platform(host: Any) -> str:
    """The platform the guest was booted for: Ignition's platform id, else Flatcar's OEM id."""
    args = dict(
        a.split("=", 1) for a in host.file("/proc/cmdline").content_string.split() if "=" in a
    )
    return args.get("ignition.platform.id") or args.get("flatcar.oem.id") or "metal"


@pytest.fixture(autouse=True)
def _declared_applicability(request: pytest.FixtureRequest) -> None:
    """`@pytest.mark.platform("azure", reason=...)`: not applicable on other platforms.

    The reason is recorded as the JUnit property `not_applicable`, which `acl-compose test`
    accepts (and lists) where it fails every other skip.
    """
    marker = request.node.get_closest_marker("platform")
    if marker is None:
        return
    if "host" not in request.fixturenames:
        pytest.fail("a test marked platform(...) must take testinfra's `host` fixture")
    platform = guest_platform(request.getfixturevalue("host"))
    if platform in marker.args:
        return
    why = f"applies to platform {'/'.join(marker.args)} only; this guest is {platform}"
    if marker.kwargs.get("reason"):
        why += f" ({marker.kwargs['reason']})"
    request.node.user_properties.append((NOT_APPLICABLE, why))
    pytest.skip(f"not applicable: {why}")


# -- what the release promises ----------------------------------------------------------------


@pytest.fixture(scope="session")
def release(pytestconfig: pytest.Config) -> dict[str, Any] | None:
    """release.json's content, or None when none was given."""
    path = _release_path(pytestconfig)
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


@pytest.fixture(scope="session")
def booted_firmware() -> str:
    """What the harness booted the guest with: uefi, bios or kernel (a direct kernel boot)."""
    value = os.environ.get(ENV_FIRMWARE)
    if not value:
        pytest.skip("firmware unknown: run via `acl-compose test` or `pytest --image`")
    return value


@pytest.fixture(scope="session")
def baked_ignition(image_path: Path | None, release: dict[str, Any] | None) -> dict[str, Any]:
    """The Ignition config baked into the image (OEM base/base.ign, read offline on the host).

    With a release.json it must be there and hash to the recorded sha256; an image that bakes
    none gives an empty config (nothing is declared, so nothing is expected).
    """
    if image_path is None:
        pytest.skip("image path unknown: run via `acl-compose test` or `pytest --image`")
    from acl_compose.compose import inspect
    from acl_compose.image import gpt

    with tempfile.TemporaryDirectory(prefix="acl-qemu-tests-") as tmp:
        with inspect.raw_view(image_path, Path(tmp)) as raw:
            oem = inspect.read_oem(raw, gpt.read(raw), Path(tmp))
    entry = oem["configs"].get("base/base.ign")
    expected = ((release or {}).get("ignition") or {}).get("sha256")
    if entry is None:
        assert not expected, "release.json records an Ignition config, the image bakes none"
        return {"ignition": {"version": "3.3.0"}}
    if expected:
        assert entry["sha256"] == expected, "OEM base/base.ign differs from release.json"
    assert entry["config"] is not None, "OEM base/base.ign is not valid JSON"
    return entry["config"]


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
