"""The image provisions as on Azure (`acl-compose boot|test --platform azure`).

The harness booted the VM the way Azure does: no fw_cfg, a UDF DVD with ovf-env.xml (an admin
user, its SSH key, the host name) and CustomData.bin (the Ignition config, with this run's SSH
key for core), and loopback stand-ins for the wire server and IMDS that record every request.
What it gave the VM is in ACL_COMPOSE_AZURE (a JSON file); without it, these checks do not
apply (the guest was booted for another platform).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

ENV_AZURE = "ACL_COMPOSE_AZURE"
# Declared, so a guest booted for another platform reports these as not applicable.
pytestmark = pytest.mark.platform("azure", reason="booted with --platform azure only")
READY_WITHIN = 300.0  # seconds after SSH answered; the agent reports within a minute under TCG


@pytest.fixture
def azure(_declared_applicability: None) -> dict[str, Any]:
    """What the harness gave the VM. After the platform check (conftest), so that a guest
    booted for another platform reports "not applicable", not an undeclared skip."""
    path = os.environ.get(ENV_AZURE)
    if not path:
        pytest.skip("not applicable: the guest was not booted with --platform azure")
    return json.loads(Path(path).read_text())


def _record(azure: dict[str, Any]) -> list[dict[str, Any]]:
    text = Path(azure["record"]).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _data_url(contents: dict[str, Any]) -> bytes:
    """The bytes of an Ignition data URL (`data:,text` or `data:;base64,...`, maybe gzip)."""
    header, _, payload = contents["source"].partition(",")
    assert header.startswith("data:"), "the custom data's files should be inline"
    data = (base64.b64decode(payload) if header.endswith(";base64")
            else urllib.parse.unquote_to_bytes(payload))  # fmt: skip
    return gzip.decompress(data) if contents.get("compression") == "gzip" else data


def _cmdline(host: Any) -> dict[str, str]:
    words = host.file("/proc/cmdline").content_string.split()
    return dict(w.split("=", 1) for w in words if "=" in w)


def test_kernel_is_told_it_runs_on_azure(host: Any, azure: dict[str, Any]) -> None:
    """GRUB read OEM:/grub.cfg (oem_id="azure") and passed flatcar.oem.id=azure, which made
    Ignition's platform azure; the console is Azure's serial one."""
    args = _cmdline(host)
    assert args.get("flatcar.oem.id") == "azure"
    assert "ttyS0,115200n8" in host.file("/proc/cmdline").content_string


def test_config_came_from_custom_data_not_fw_cfg(host: Any, root_run: Any,
                                                 azure: dict[str, Any]) -> None:  # fmt: skip
    """Ignition asked IMDS first (no user data), then read CustomData.bin from the DVD; no
    fw_cfg device carried a config. The custom data's files are on disk."""
    journal = root_run("journalctl -b -o cat -t ignition").stdout
    assert "config has been read from custom data" in journal, journal[-2000:]
    assert "169.254.169.254/metadata/instance/compute/userData" in journal
    assert not host.file("/sys/firmware/qemu_fw_cfg/by_name/opt/org.flatcar-linux").exists
    imds = [e for e in _record(azure) if e["service"] == "imds" and "userData" in e["path"]]
    assert imds and imds[0]["agent"].startswith("Ignition/"), imds
    files = (azure["custom_data"].get("storage") or {}).get("files") or []
    assert files, "the custom data should write a file (the integration test's does)"
    for f in files:
        want = _data_url(f["contents"])
        got = root_run(f"base64 -w0 {f['path']}")
        assert got.rc == 0 and base64.b64decode(got.stdout) == want, f["path"]


def test_core_key_arrived_with_the_custom_data(host: Any, azure: dict[str, Any]) -> None:
    users = (azure["custom_data"].get("passwd") or {}).get("users") or []
    keys = next(u["sshAuthorizedKeys"] for u in users if u["name"] == "core")
    installed = host.file("/home/core/.ssh/authorized_keys.d/ignition").content_string
    assert all(k in installed for k in keys)


def test_oem_azure_is_merged(host: Any, root_run: Any) -> None:
    """The initrd linked the active OEM sysext from the OEM partition and systemd-sysext
    merged it, pinned to this OS version (signed by the testbed's /usr/lib/verity.d key)."""
    status = root_run("systemd-sysext status").stdout
    assert "oem-azure" in status, status
    version = host.check_output(". /usr/lib/os-release && echo $VERSION")
    assert host.file("/etc/extensions/oem-azure.raw").linked_to == (
        f"/oem/sysext/oem-azure-{version}.raw"
    )
    assert host.file("/oem/sysext/active-oem-azure").exists
    rel = host.file("/usr/lib/extension-release.d/extension-release.oem-azure").content_string
    assert "ID=flatcar" in rel and f"VERSION_ID={version}" in rel.replace('"', "")


def test_the_vm_agent_runs(host: Any) -> None:
    assert host.service("waagent").is_running
    procs = host.check_output("ps -eo args")
    assert "/usr/sbin/waagent -daemon" in procs
    assert "-run-exthandlers" in procs  # the daemon started the extension handler


def test_agent_reported_ready_to_the_wire_server(host: Any, azure: dict[str, Any]) -> None:
    """The stand-in recorded the agent's provisioning: versions, the goal state, NotReady
    (Provisioning) while it worked, then Ready, for this VM's container and role instance."""
    deadline = time.monotonic() + READY_WITHIN
    while True:
        rec = _record(azure)
        health = [e["health"] for e in rec if e.get("health")]
        if any(h["state"] == "Ready" for h in health) or time.monotonic() > deadline:
            break
        time.sleep(5)
    wire = [e for e in rec if e["service"] == "wire"]
    assert wire and wire[0]["path"] == "/?comp=versions", wire[:3]
    assert any("comp=goalstate" in e["path"] for e in wire)
    states = [h["state"] for h in health]
    assert "Ready" in states, f"no Ready health report within {READY_WITHIN:g}s: {health}"
    ready = next(h for h in health if h["state"] == "Ready")
    assert ready["container_id"] == azure["container_id"]
    assert ready["instance_id"] == azure["instance_id"]
    assert ready["incarnation"] == azure["incarnation"]  # the goal state the agent acted on
    first = health[0]
    assert (first["state"], first["substatus"]) == ("NotReady", "Provisioning")
    assert all(e["status"] < 400 for e in rec if e.get("health")), "a health post failed"


def test_agent_provisioned_the_admin_user(host: Any, azure: dict[str, Any],
                                          pytestconfig: pytest.Config) -> None:  # fmt: skip
    """From ovf-env.xml: the host name, and the admin user, who logs in with its own key."""
    assert host.check_output("hostname") == azure["hostname"]
    assert host.user(azure["admin_user"]).exists
    cfg = pytestconfig.getoption("ssh_config", default=None)
    if not cfg:
        pytest.fail("no --ssh-config: run through `acl-compose test` or the plugin's --image")
    argv = ["ssh", "-F", cfg, "-i", azure["admin_key_file"], "-l", azure["admin_user"], "vm"]
    proc = subprocess.run([*argv, "id -un"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == azure["admin_user"]


def test_agent_python_brings_no_installer(host: Any) -> None:
    """The OEM's Python is the agent's runtime, not a way to install packages."""
    assert host.run("python3 -c 'import sys; print(sys.version_info[:2])'").rc == 0
    for module in ("pip", "ensurepip"):
        r = host.run(f"python3 -c 'import {module}'")
        assert r.rc != 0 and "No module named" in r.stderr, module
    found = host.run("ls /usr/bin /usr/sbin /usr/local/bin 2>/dev/null | grep -E '^pip[0-9.]*$'")
    assert found.stdout.strip() == ""


def test_hyperv_services_stay_off_outside_hyper_v(host: Any) -> None:
    """The Hyper-V daemons and chrony (Hyper-V PTP clock) come with oem-azure and start only
    when udev sees their devices: under QEMU they are installed, inactive, and not failed."""
    for unit in ("hv-kvp-daemon.service", "chrony.service"):
        assert host.file(f"/usr/lib/systemd/system/{unit}").exists, unit
        state = host.run(f"systemctl is-failed {unit}").stdout.strip()
        assert state in ("inactive", "unknown"), (unit, state)
