"""The booted system is healthy: no failed units, SSH up, boot time recorded."""

from __future__ import annotations

from typing import Any


def test_no_failed_units(host: Any) -> None:
    out = host.check_output("systemctl --failed --plain --no-legend --no-pager")
    failed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert not failed, f"failed units: {failed}"


def test_system_running(host: Any) -> None:
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state == "running", f"system state {state!r}"


def test_sshd_active(host: Any) -> None:
    active = host.service("ssh").is_running or host.service("sshd").is_running
    assert active, "sshd is not running"


def test_boot_time_recorded(boot_seconds: float | None) -> None:
    """Boot-to-SSH time is known (conftest records it as a JUnit test-suite property)."""
    assert boot_seconds is not None and boot_seconds > 0, "boot-to-SSH time was not passed in"


def test_os_release_matches(host: Any, release: dict[str, Any] | None) -> None:
    fields = dict(
        line.split("=", 1)
        for line in host.file("/etc/os-release").content_string.splitlines()
        if "=" in line
    )
    assert fields.get("ID", "").strip('"') == "flatcar", fields
    if release and release.get("os_release"):
        want = release["os_release"].get("VERSION_ID")
        if want:
            assert fields.get("VERSION_ID", "").strip('"') == want
