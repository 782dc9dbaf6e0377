"""Azure's provisioning medium and the loopback stand-ins for its wire server and IMDS.

The medium is read back with independent tools (blkid, udfinfo, isoinfo), the stand-ins are
spoken to over real sockets through the same relay script QEMU's guestfwd runs per guest
connection (here with a socketpair standing in for QEMU's end).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from acl_compose.boot import azure
from tests.conftest import run_cli

OVF = "{http://schemas.dmtf.org/ovf/environment/1}"
WA = "{http://schemas.microsoft.com/windowsazure}"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm0Jx0wA1tQyb7Y2bKZbKq7m3VQJ9H9fWm6fZ8xQ6q1 t"
CUSTOM = b'{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/etc/x"}]}}'


def test_ovf_env_has_what_the_agent_reads():
    doc = ET.fromstring(azure.ovf_env("vm-1", "azureuser", KEY, CUSTOM))
    assert doc.tag == f"{OVF}Environment"
    sec = doc.find(f"{WA}ProvisioningSection")
    assert sec.findtext(f"{WA}Version") == "1.0"
    conf = sec.find(f"{WA}LinuxProvisioningConfigurationSet")
    assert conf.findtext(f"{WA}HostName") == "vm-1"
    assert conf.findtext(f"{WA}UserName") == "azureuser"
    assert conf.findtext(f"{WA}DisableSshPasswordAuthentication") == "true"
    pk = conf.find(f"{WA}SSH/{WA}PublicKeys/{WA}PublicKey")
    assert pk.findtext(f"{WA}Value") == KEY
    assert pk.findtext(f"{WA}Path") == "/home/azureuser/.ssh/authorized_keys"
    assert base64.b64decode(conf.findtext(f"{WA}CustomData")) == CUSTOM
    ps = doc.find(f"{WA}PlatformSettingsSection/{WA}PlatformSettings")
    assert ps.findtext(f"{WA}ProvisionGuestAgent") == "true"


def test_ovf_env_escapes_what_it_is_given():
    doc = ET.fromstring(azure.ovf_env("a<b&c", "u", KEY, b""))
    conf = doc.find(f"{WA}ProvisioningSection/{WA}LinuxProvisioningConfigurationSet")
    assert conf.findtext(f"{WA}HostName") == "a<b&c"


def test_provisioning_dvd_is_udf_with_both_files(tmp_path):
    iso = azure.provisioning_iso(tmp_path / "dvd.iso", azure.ovf_env("h", "u", KEY, CUSTOM),
                                 CUSTOM, tmp_path)  # fmt: skip
    blkid = subprocess.run(["blkid", "-p", "-o", "export", str(iso)], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "TYPE=udf" in blkid.splitlines()  # what Ignition's azure provider looks for
    udf = subprocess.run(["udfinfo", str(iso)], capture_output=True, text=True, check=True).stdout
    assert "label=rd_rdfe_stable" in udf
    listing = subprocess.run(["isoinfo", "-i", str(iso), "-f"], capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    name = next(n for n in listing if n.upper().startswith("/CUSTOMDA"))
    data = subprocess.run(["isoinfo", "-i", str(iso), "-x", name], capture_output=True,
                          check=True).stdout  # fmt: skip
    assert data == CUSTOM


def _request(ep: azure.Endpoints, service: str, raw: bytes) -> bytes:
    """One HTTP exchange the way a guest connection arrives: through relay.py, which QEMU
    starts per connection with the connection as its stdin and stdout."""
    guest, qemu_end = socket.socketpair()
    with qemu_end:
        proc = subprocess.Popen(
            [sys.executable, str(azure.RELAY), "127.0.0.1", str(ep.ports[service])],
            stdin=qemu_end, stdout=qemu_end, stderr=qemu_end,
        )  # fmt: skip
    with guest:
        guest.sendall(raw)
        guest.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := guest.recv(65536):
            chunks.append(chunk)
    assert proc.wait(timeout=10) == 0
    return b"".join(chunks)


def _get(ep: azure.Endpoints, service: str, path: str, headers: str = "") -> tuple[int, bytes]:
    raw = _request(ep, service, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                f"{headers}\r\n".encode())  # fmt: skip
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _post(ep, service, path, body: bytes, method="POST") -> int:
    raw = _request(ep, service, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    return int(raw.split()[1])


def health_xml(ep: azure.Endpoints, state: str, details: str = "") -> bytes:
    """A health report the way waagent 2.7 builds it (azurelinuxagent/common/protocol/wire.py)."""
    return (
        '<?xml version="1.0" encoding="utf-8"?><Health xmlns:xsi="http://www.w3.org/2001/'
        'XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f"<GoalStateIncarnation>1</GoalStateIncarnation><Container><ContainerId>"
        f"{ep.container_id}</ContainerId><RoleInstanceList><Role><InstanceId>{ep.instance_id}"
        f"</InstanceId><Health><State>{state}</State>{details}</Health></Role>"
        "</RoleInstanceList></Container></Health>"
    ).encode()


@pytest.fixture
def endpoints(tmp_path):
    with azure.Endpoints(tmp_path / "record.jsonl", vm_name="vm-1") as ep:
        yield ep


def test_wire_server_protocol_and_record(endpoints, tmp_path):
    ep = endpoints
    code, body = _get(ep, "wire", "/?comp=versions")
    versions = ET.fromstring(body)
    assert code == 200 and versions.findtext("Preferred/Version") == "2012-11-30"
    code, body = _get(ep, "wire", "/machine/?comp=goalstate", "x-ms-version: 2012-11-30\r\n")
    gs = ET.fromstring(body)
    assert gs.findtext("Incarnation") == "1"
    assert gs.findtext("Container/ContainerId") == ep.container_id
    role = gs.find("Container/RoleInstanceList/RoleInstance")
    assert role.findtext("InstanceId") == ep.instance_id
    # Every configuration URL the goal state names is served (and is well-formed XML).
    for kind in ("HostingEnvironmentConfig", "SharedConfig", "ExtensionsConfig", "FullConfig"):
        url = role.findtext(f"Configuration/{kind}")
        assert url.startswith(f"http://{azure.WIRESERVER}:80/machine/")
        code, body = _get(ep, "wire", url.split(":80", 1)[1])
        assert code == 200, kind
        ET.fromstring(body)
    hec = ET.fromstring(_get(ep, "wire", role.findtext(
        "Configuration/HostingEnvironmentConfig").split(":80", 1)[1])[1])  # fmt: skip
    assert hec.find("Incarnation").get("instance") == "vm-1" and hec.find("Role").get("name")
    assert _get(ep, "wire", "/machine/?comp=certificates")[0] == 404  # none offered
    not_ready = health_xml(
        ep,
        "NotReady",
        "<Details><SubStatus>Provisioning</SubStatus><Description>Starting</Description></Details>",
    )
    assert _post(ep, "wire", "/machine?comp=health", not_ready) == 200
    assert _post(ep, "wire", "/machine?comp=health", health_xml(ep, "Ready")) == 200
    assert [(h["state"], h["substatus"]) for h in ep.health_reports()] == [
        ("NotReady", "Provisioning"), ("Ready", None)]  # fmt: skip
    assert ep.health_reports()[-1]["instance_id"] == ep.instance_id
    # The record is also on disk, a JSON object a line, for qemu-tests in another process.
    lines = [json.loads(x) for x in (tmp_path / "record.jsonl").read_text().splitlines()]
    assert [e["path"] for e in lines][:2] == ["/?comp=versions", "/machine/?comp=goalstate"]
    assert lines[-1]["health"]["state"] == "Ready" and lines[-1]["status"] == 200


def test_host_plugin_and_imds(endpoints):
    ep = endpoints
    assert _get(ep, "hostgaplugin", "/vmSettings")[0] == 404  # no Fast Track
    assert _post(ep, "hostgaplugin", "/status", b'{"status":"x"}', "PUT") == 200
    assert any(e.get("status_upload") for e in ep.record)
    # IMDS answers only requests with `Metadata: true`, like Azure's.
    assert _get(ep, "imds", "/metadata/instance/compute/userData?format=text")[0] == 400
    code, body = _get(ep, "imds", "/metadata/instance/compute/userData?api-version=2021-01-01"
                      "&format=text", "Metadata: true\r\n")  # fmt: skip
    assert (code, body) == (200, b"")  # no user data: Ignition falls back to the custom data
    code, body = _get(ep, "imds", "/metadata/instance?api-version=2021-02-01", "Metadata: true\r\n")
    assert code == 200 and json.loads(body)["compute"]["name"] == "vm-1"
    code, body = _get(ep, "imds", "/metadata/instance/compute?api-version=2018-02-01",
                      "Metadata: true\r\n")  # fmt: skip
    assert code == 200 and json.loads(body)["vmSize"] == "Standard_D2s_v3"
    assert _post(ep, "wire", "/HealthService", b'{"Observations": []}') == 200


def test_oversized_and_malformed_bodies_are_refused(endpoints):
    ep = endpoints
    head = b"POST /machine?comp=health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    raw = _request(ep, "wire", head + b"Content-Length: 99999999\r\n\r\n" + b"x" * 100)
    assert raw.split()[1] == b"413"
    assert _post(ep, "wire", "/machine?comp=health", b"<Health><oops") == 200
    assert ep.health_reports() == []  # not a report: recorded without a state
    assert ep.record[0]["refused"] == "body too large"


def test_netdev_options_reach_only_the_services(endpoints):
    wire = endpoints.wire_net_options()
    assert "net=168.63.129.16/28" in wire  # the wire server's address is its network's
    fwd = [o for o in wire if o.startswith("guestfwd=")]
    assert [o.split("-cmd:")[0] for o in fwd] == [
        "guestfwd=tcp:168.63.129.16:80", "guestfwd=tcp:168.63.129.16:32526"]  # fmt: skip
    assert all(str(azure.RELAY) in o and "," not in o for o in fwd)  # commas split -netdev
    imds = endpoints.imds_netdev("n1").split(",")
    assert "restrict=on" in imds and "guestfwd=tcp:169.254.169.254:80-cmd" in imds[-1]


def test_attach_then_keep_record(tmp_path):
    """attach() makes the DVD, starts the stand-ins and writes what the VM was given;
    keep_record() copies that and the record out of the VM's directory (removed at teardown),
    the copy's `record` pointing at the kept record and naming no path inside the VM's."""
    work = tmp_path / "vm"
    work.mkdir()
    config = json.loads(CUSTOM)
    ep, args, env = azure.attach(work, "acl-vm1", config, (work / "admin.key", KEY))
    try:
        assert args[args.index("-drive") + 1].endswith(f"file={work / 'ovf-env.iso'}")
        facts = json.loads((work / "azure.json").read_text())
        assert env["ACL_COMPOSE_AZURE"] == str(work / "azure.json")
        assert (facts["container_id"], facts["instance_id"], facts["incarnation"]) == (
            ep.container_id, ep.instance_id, "1")  # fmt: skip
        assert facts["custom_data"] == config and facts["admin_key"] == KEY
        assert _post(ep, "wire", "/machine?comp=health", health_xml(ep, "Ready")) == 200
    finally:
        ep.__exit__(None, None, None)
    kept = azure.keep_record(work, tmp_path / "junit.")
    assert [p.name for p in kept] == ["junit.azure-record.jsonl", "junit.azure.json"]
    copy = json.loads(kept[1].read_text())
    assert copy["record"] == str(kept[0]) and str(work) not in kept[1].read_text()
    (entry,) = [json.loads(x) for x in kept[0].read_text().splitlines()]
    assert entry["health"]["state"] == "Ready" and entry["health"]["incarnation"] == "1"
    assert azure.keep_record(tmp_path / "empty", tmp_path / "x.") == []  # not an azure boot


# What qemu-tests/test_azure.py proves; all must run (none "not applicable") on the Azure image.
AZURE_CHECKS = {
    "test_kernel_is_told_it_runs_on_azure", "test_config_came_from_custom_data_not_fw_cfg",
    "test_core_key_arrived_with_the_custom_data", "test_oem_azure_is_merged",
    "test_the_vm_agent_runs", "test_agent_reported_ready_to_the_wire_server",
    "test_agent_provisioned_the_admin_user", "test_agent_python_brings_no_installer",
    "test_hyperv_services_stay_off_outside_hyper_v",
}  # fmt: skip
CUSTOM_DATA_FILE = "/etc/azure-custom-data"


@pytest.mark.integration
def test_azure_image_provisions_as_on_azure(composed_release, tmp_path):
    """The compose's Azure VHD (the testbed with platform azure, the same compose as the
    qemu outputs) boots as Azure boots it: no fw_cfg, a custom-data config that writes a file
    (the harness adds core's SSH key to it), ovf-env.xml, the wire server and IMDS stand-ins.
    Every qemu-test passes, the Azure ones included, none skipped or "not applicable"; the
    stand-ins' record kept beside the JUnit XML shows Ignition asking IMDS for user data and
    the VM agent reporting Ready for this VM's container, role instance and incarnation.
    One boot."""
    custom = tmp_path / "custom-data.yaml"
    custom.write_text(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n"
        f"    - path: {CUSTOM_DATA_FILE}\n      mode: 0644\n"
        "      contents:\n        inline: provisioned from Azure custom data\n"
    )
    vhd = composed_release.vhd
    assert (
        vhd.suffix == ".vhd"
        and {"format": "vhd", "platform": "azure"}.items()
        <= next(o for o in composed_release.release["outputs"] if o["file"] == vhd.name).items()
    )
    junit = tmp_path / "results" / "junit.xml"
    proc = run_cli(
        "--cache-dir", tmp_path / "cache", "--json", "test", vhd, "--platform", "azure",
        "--ignition", custom, "--release-json", composed_release.release_json,
        "--junit-xml", junit,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(proc.stdout)
    assert result["ok"] and result["failures"] == result["errors"] == 0, result
    assert result["skipped"] == 0 and result["not_applicable"] == [], result
    assert result["passed"] == result["tests"] > len(AZURE_CHECKS)
    cases = {}
    for c in ET.parse(junit).getroot().iter("testcase"):
        assert c.find("skipped") is None and c.find("failure") is None, c.get("name")
        if c.get("classname", "").endswith("test_azure"):
            cases[c.get("name").split("[")[0]] = c
    assert set(cases) == AZURE_CHECKS

    # The stand-ins' record, kept beside the JUnit XML (what qemu-tests read, independently).
    facts = json.loads((junit.parent / "junit.azure.json").read_text())
    record = [json.loads(x) for x in (junit.parent / "junit.azure-record.jsonl").read_text()
              .splitlines()]  # fmt: skip
    assert facts["record"] == str(junit.parent / "junit.azure-record.jsonl")
    files = facts["custom_data"]["storage"]["files"]
    assert [f["path"] for f in files] == [CUSTOM_DATA_FILE]  # the config given, as custom data
    imds = [e for e in record if e["service"] == "imds"]
    user_data = [e for e in imds if e["path"].startswith("/metadata/instance/compute/userData")]
    assert user_data and user_data[0]["agent"].startswith("Ignition/"), imds
    assert user_data[0]["status"] == 200  # it sent `Metadata: true`, else 400
    health = [e for e in record if e.get("health")]
    assert health and all(e["service"] == "wire" and e["status"] == 200 for e in health)
    assert all("WALinuxAgent" in (e["agent"] or "") for e in health), health
    ready = [e["health"] for e in health if e["health"]["state"] == "Ready"]
    assert ready, [e["health"] for e in health]
    assert {(h["container_id"], h["instance_id"], h["incarnation"]) for h in ready} == {
        (facts["container_id"], facts["instance_id"], facts["incarnation"])}  # fmt: skip
    wire = [e["path"] for e in record if e["service"] == "wire"]
    assert wire[0] == "/?comp=versions", wire[:3]
    goal_state = next(i for i, e in enumerate(record) if "comp=goalstate" in e["path"])
    assert goal_state < record.index(health[0])  # the goal state was read before reporting
