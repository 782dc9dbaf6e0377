"""Boot as Azure does: its provisioning medium and loopback stand-ins for its endpoints.

Azure hands a VM its settings on a UDF DVD: `ovf-env.xml` (admin user, SSH key, host name,
the custom data in base64) and `CustomData.bin` (the custom data itself, which Ignition's
azure provider reads as its config). The VM talks to two link-local services:
- the wire server, 168.63.129.16 (HTTP on 80, the host GA plugin on 32526): the VM agent
  (waagent) reads the goal state there and reports its health (`Ready` once provisioned);
- the instance metadata service (IMDS), 169.254.169.254: Ignition asks it for user data first.

The stand-ins here are HTTP servers on 127.0.0.1 that speak those protocols' provisioning
part and record every request (`Endpoints.record`, also written as JSON lines to a file, for
qemu-tests). QEMU user networking reaches them through `guestfwd=...-cmd:relay.py`: with
`restrict=on` the guest reaches nothing else. slirp only forwards to addresses inside its
own network, so each service gets a NIC whose network holds it: 168.63.129.16/28 (the
address is also that network's own, so the kernel's route table shows a route to it, which
is how waagent finds the wire server on Azure without DHCP option 245) and
169.254.169.0/24 for IMDS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from acl_compose.run import require, run

WIRESERVER = "168.63.129.16"
HOSTGAPLUGIN_PORT = 32526
IMDS = "169.254.169.254"
WIRE_NET = "net=168.63.129.16/28,host=168.63.129.17,dns=168.63.129.18,dhcpstart=168.63.129.20"
IMDS_NET = "net=169.254.169.0/24,host=169.254.169.1,dns=169.254.169.3,dhcpstart=169.254.169.20"
PROTOCOL_VERSION = "2012-11-30"
ADMIN_USER = "azureuser"  # the admin account ovf-env.xml asks the VM agent to create
MAX_BODY = 1 << 20  # what the agent sends is kilobytes; more is refused, never buffered
RELAY = Path(__file__).with_name("relay.py")
OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"


# ------------------------------------------------------------------ the provisioning medium


def ovf_env(hostname: str, user: str, ssh_key: str, custom_data: bytes) -> str:
    """ovf-env.xml as Azure writes it for a Linux VM with an SSH key and custom data."""
    home = f"/home/{user}/.ssh/authorized_keys"
    fingerprint = hashlib.sha1(ssh_key.encode()).hexdigest().upper()  # only an identifier here
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Environment xmlns="{OVF_NS}" xmlns:oe="{OVF_NS}" xmlns:wa="{WA_NS}" '
        'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
        "  <wa:ProvisioningSection>\n    <wa:Version>1.0</wa:Version>\n"
        f'    <LinuxProvisioningConfigurationSet xmlns="{WA_NS}">\n'
        "      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>\n"
        f"      <HostName>{escape(hostname)}</HostName>\n"
        f"      <UserName>{escape(user)}</UserName>\n"
        "      <DisableSshPasswordAuthentication>true</DisableSshPasswordAuthentication>\n"
        "      <SSH><PublicKeys><PublicKey>\n"
        f"        <Fingerprint>{fingerprint}</Fingerprint>\n"
        f"        <Path>{escape(home)}</Path>\n"
        f"        <Value>{escape(ssh_key)}</Value>\n"
        "      </PublicKey></PublicKeys></SSH>\n"
        f"      <CustomData>{base64.b64encode(custom_data).decode()}</CustomData>\n"
        "    </LinuxProvisioningConfigurationSet>\n  </wa:ProvisioningSection>\n"
        "  <wa:PlatformSettingsSection>\n    <wa:Version>1.0</wa:Version>\n"
        f'    <PlatformSettings xmlns="{WA_NS}">\n'
        "      <KmsServerHostname>kms.core.windows.net</KmsServerHostname>\n"
        "      <ProvisionGuestAgent>true</ProvisionGuestAgent>\n"
        '      <GuestAgentPackageName i:nil="true"/>\n'
        "      <PreprovisionedVm>false</PreprovisionedVm>\n"
        "    </PlatformSettings>\n  </wa:PlatformSettingsSection>\n"
        "</Environment>\n"
    )


def provisioning_iso(dest: Path, ovf_env_xml: str, custom_data: bytes, work: Path) -> Path:
    """The UDF DVD Azure attaches: ovf-env.xml and CustomData.bin, made without mounting."""
    tree = work / "ovf-iso"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "ovf-env.xml").write_text(ovf_env_xml)
    (tree / "CustomData.bin").write_bytes(custom_data)
    require("genisoimage")
    run(["genisoimage", "-quiet", "-o", str(dest), "-udf", "-V", "rd_rdfe_stable",
         "-input-charset", "utf-8", str(tree)])  # fmt: skip
    return dest


# ------------------------------------------------------------------ the stand-ins


class Endpoints:
    """The wire server, host GA plugin and IMDS on loopback, recording what the guest sent.

    Use as a context manager; `qemu_args()` gives the devices and NICs that reach them.
    """

    def __init__(self, record_file: Path, vm_name: str = "acl-vm", ssh_port: int = 0) -> None:
        self.record_file = Path(record_file)
        self.record: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.vm_name = vm_name
        self.container_id = str(uuid.uuid4())
        self.instance_id = f"{uuid.uuid4()}.{vm_name}"
        self.deployment = uuid.uuid4().hex
        self.incarnation = "1"
        self._servers: list[ThreadingHTTPServer] = []
        self.ports: dict[str, int] = {}

    # -- lifecycle
    def __enter__(self) -> Endpoints:
        self.record_file.write_text("")
        for service in ("wire", "hostgaplugin", "imds"):
            srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, service))
            srv.daemon_threads = True
            self._servers.append(srv)
            self.ports[service] = srv.server_address[1]
            threading.Thread(target=srv.serve_forever, daemon=True, name=service).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()

    def _relay(self, service: str) -> str:
        return f"cmd:{sys.executable} {RELAY} 127.0.0.1 {self.ports[service]}"

    def wire_net_options(self) -> list[str]:
        """-netdev user options of the NIC that reaches the wire server (and SSH)."""
        return [
            *WIRE_NET.split(","),
            f"guestfwd=tcp:{WIRESERVER}:80-{self._relay('wire')}",
            f"guestfwd=tcp:{WIRESERVER}:{HOSTGAPLUGIN_PORT}-{self._relay('hostgaplugin')}",
        ]

    def imds_netdev(self, netdev_id: str = "azimds") -> str:
        """A second, restricted NIC whose only reachable address is IMDS."""
        return ",".join(["user", f"id={netdev_id}", "restrict=on", *IMDS_NET.split(","),
                         f"guestfwd=tcp:{IMDS}:80-{self._relay('imds')}"])  # fmt: skip

    # -- recording
    def add(self, entry: dict[str, Any]) -> None:
        entry["time"] = round(time.time(), 3)
        line = json.dumps(entry, sort_keys=True)
        with self._lock:
            self.record.append(entry)
            with open(self.record_file, "a") as f:
                f.write(line + "\n")

    def health_reports(self) -> list[dict[str, Any]]:
        return [e["health"] for e in list(self.record) if e.get("health")]

    # -- the documents
    def _url(self, kind: str) -> str:
        return (f"http://{WIRESERVER}:80/machine/{self.container_id}/{self.instance_id}"
                f"?comp=config&amp;type={kind}&amp;incarnation={self.incarnation}")  # fmt: skip

    def versions(self) -> str:
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n<Versions>\n'
            f"  <Preferred><Version>{PROTOCOL_VERSION}</Version></Preferred>\n"
            f"  <Supported><Version>{PROTOCOL_VERSION}</Version>"
            "<Version>2010-12-15</Version><Version>2010-28-10</Version></Supported>\n"
            "</Versions>\n"
        )

    def goal_state(self) -> str:
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<GoalState xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
            f"  <Version>{PROTOCOL_VERSION}</Version>\n"
            f"  <Incarnation>{self.incarnation}</Incarnation>\n"
            "  <Machine><ExpectedState>Started</ExpectedState>"
            "<StopRolesDeadlineHint>300000</StopRolesDeadlineHint>"
            "<ExpectHealthReport>FALSE</ExpectHealthReport></Machine>\n"
            f"  <Container>\n    <ContainerId>{self.container_id}</ContainerId>\n"
            "    <RoleInstanceList><RoleInstance>\n"
            f"      <InstanceId>{self.instance_id}</InstanceId>\n"
            "      <State>Started</State>\n      <Configuration>\n"
            f"        <HostingEnvironmentConfig>{self._url('hostingEnvironmentConfig')}"
            "</HostingEnvironmentConfig>\n"
            f"        <SharedConfig>{self._url('sharedConfig')}</SharedConfig>\n"
            f"        <ExtensionsConfig>{self._url('extensionsConfig')}</ExtensionsConfig>\n"
            f"        <FullConfig>{self._url('fullConfig')}</FullConfig>\n"
            f"        <ConfigName>{self.instance_id}.0.{self.instance_id}.1.xml</ConfigName>\n"
            "      </Configuration>\n    </RoleInstance></RoleInstanceList>\n"
            "  </Container>\n</GoalState>\n"
        )

    def _identity(self) -> str:
        guid = uuid.uuid5(uuid.NAMESPACE_OID, self.deployment)
        return (
            f'  <Deployment name="{self.deployment}" guid="{{{guid}}}"'
            ' incarnation="0" isNonCancellableTopologyChangeEnabled="false">\n'
            f'    <Service name="{self.vm_name}" guid="{{{uuid.UUID(int=0)}}}"/>\n'
            f'    <ServiceInstance name="{self.deployment}.0" guid="{{{self.container_id}}}"/>\n'
            "  </Deployment>\n"
            f'  <Incarnation number="{self.incarnation}" instance="{self.vm_name}"'
            f' guid="{{{self.container_id}}}"/>\n'
            f'  <Role guid="{{{self.container_id}}}" name="{self.vm_name}"'
            ' settleTimeSeconds="10"/>\n'
        )

    def config(self, kind: str) -> str | None:
        if kind == "hostingEnvironmentConfig":
            return (
                '<?xml version="1.0" encoding="utf-8"?>\n'
                '<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="1">\n'
                f"  <StoredCertificates/>\n{self._identity()}</HostingEnvironmentConfig>\n"
            )
        if kind == "sharedConfig":
            return (
                '<?xml version="1.0" encoding="utf-8"?>\n'
                '<SharedConfig version="1.0.0.0" goalStateIncarnation="1">\n'
                f'{self._identity()}  <Instances><Instance id="{self.vm_name}"'
                ' address="168.63.129.20"/></Instances>\n</SharedConfig>\n'
            )
        if kind == "extensionsConfig":
            # No extensions and no agent families: the agent only reports status.
            return (
                '<?xml version="1.0" encoding="utf-8"?>\n'
                '<Extensions version="1.0.0.0" goalStateIncarnation="1">\n'
                '  <GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
                "<GAFamilies/></GuestAgentExtension>\n"
                "  <Plugins/>\n  <PluginSettings/>\n"
                f'  <StatusUploadBlob statusBlobType="BlockBlob">http://{WIRESERVER}/'
                "statusblob</StatusUploadBlob>\n</Extensions>\n"
            )
        if kind == "fullConfig":
            return (
                '<?xml version="1.0" encoding="utf-8"?>\n<RDConfig version="1.0.0.0">'
                f'<Instances><Instance id="{self.vm_name}"/></Instances></RDConfig>\n'
            )
        return None

    def imds_instance(self) -> dict[str, Any]:
        return {
            "compute": {
                "azEnvironment": "AzurePublicCloud", "location": "local", "name": self.vm_name,
                "osType": "Linux", "vmId": self.container_id, "vmSize": "Standard_D2s_v3",
                "userData": "", "customData": "",
            },
            "network": {"interface": []},
        }  # fmt: skip


def parse_health(body: bytes) -> dict[str, Any] | None:
    """State, substatus and description of a health report (`<Health>` XML)."""
    try:
        doc = ET.fromstring(body)
    except ET.ParseError:
        return None
    if doc.tag != "Health":
        return None

    def text(path: str) -> str | None:
        node = doc.find(path)
        return node.text if node is not None else None

    return {
        "incarnation": text("GoalStateIncarnation"),
        "container_id": text("Container/ContainerId"),
        "instance_id": text("Container/RoleInstanceList/Role/InstanceId"),
        "state": text("Container/RoleInstanceList/Role/Health/State"),
        "substatus": text("Container/RoleInstanceList/Role/Health/Details/SubStatus"),
        "description": text("Container/RoleInstanceList/Role/Health/Details/Description"),
    }


def _handler(ep: Endpoints, service: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"acl-compose-azure-{service}"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            return

        def _body(self) -> bytes | None:
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY:
                return None
            return self.rfile.read(n) if n else b""

        def _reply(self, code: int, body: bytes | str = b"", ctype: str = "text/xml") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            body = self._body() if method in ("POST", "PUT") else b""
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            entry: dict[str, Any] = {"service": service, "method": method, "path": self.path,
                                     "agent": self.headers.get("x-ms-agent-name")
                                     or self.headers.get("User-Agent")}  # fmt: skip
            if body is None:
                entry["refused"] = "body too large"
                ep.add(entry)
                self._reply(413)
                return
            entry["size"] = len(body)
            code, reply, ctype = self._route(method, url.path, q, body, entry)
            entry["status"] = code
            ep.add(entry)
            self._reply(code, reply, ctype)

        def _route(
            self, method: str, path: str, q: dict[str, str], body: bytes, entry: dict[str, Any]
        ) -> tuple[int, bytes | str, str]:
            if service == "imds":
                if self.headers.get("Metadata", "").lower() != "true":
                    return (
                        400,
                        '{"error": "Bad request. Required metadata header not specified"}',
                        "application/json",
                    )  # noqa: E501
                if path == "/metadata/instance/compute/userData":
                    return 200, b"", "text/plain"  # no user data: Ignition reads custom data
                if path == "/metadata/instance":
                    return 200, json.dumps(ep.imds_instance()), "application/json"
                if path == "/metadata/instance/compute":
                    return 200, json.dumps(ep.imds_instance()["compute"]), "application/json"
                return 404, "", "text/plain"
            if service == "hostgaplugin":
                if path == "/vmSettings":
                    return 404, "", "text/plain"  # no Fast Track: use the wire server's config
                if path in ("/health", "/versions"):
                    return 200, '["2015-09-01"]' if path == "/versions" else "", "text/plain"
                if method == "PUT" and path == "/status":
                    entry["status_upload"] = True
                    return 200, "", "text/plain"
                return 404, "", "text/plain"
            comp = q.get("comp")
            if path == "/" and comp == "versions":
                return 200, ep.versions(), "text/xml"
            if path.startswith("/machine") and comp == "goalstate":
                return 200, ep.goal_state(), "text/xml"
            if path.startswith("/machine") and comp == "config":
                doc = ep.config(q.get("type", ""))
                return (200, doc, "text/xml") if doc else (404, "", "text/plain")
            if path.startswith("/machine") and comp == "health" and method == "POST":
                entry["health"] = parse_health(body)
                return 200, "", "text/plain"
            if path.startswith("/machine") and comp in ("telemetrydata", "roleProperties"):
                return 200, "", "text/plain"
            if path == "/HealthService" and method == "POST":  # the agent's own observations
                return 200, "", "text/plain"
            if path == "/statusblob" and method == "PUT":
                entry["status_upload"] = True
                return 201, "", "text/plain"
            return 404, "", "text/plain"

        def do_GET(self) -> None:  # noqa: N802
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._handle("PUT")

        def do_HEAD(self) -> None:  # noqa: N802
            self._handle("HEAD")

    return Handler


def attach(
    workdir: Path, hostname: str, config: dict[str, Any], admin_key: tuple[Path, str]
) -> tuple[Endpoints, list[str], dict[str, str]]:
    """Everything a VM needs to boot as on Azure, made in `workdir`: the DVD (custom data =
    `config`, ovf-env.xml naming `hostname` and the admin user with `admin_key`), the running
    stand-ins, QEMU's arguments for the DVD and the IMDS NIC (the wire server's goes on the
    VM's own NIC: `Endpoints.wire_net_options`), and the environment telling qemu-tests
    what the VM was given (ACL_COMPOSE_AZURE: a JSON file)."""
    admin_key_file, admin_pub = admin_key
    custom = json.dumps(config, separators=(",", ":")).encode()
    ovf = ovf_env(hostname, ADMIN_USER, admin_pub, custom)
    iso = provisioning_iso(workdir / "ovf-env.iso", ovf, custom, workdir)
    ep = Endpoints(workdir / "azure-record.jsonl", vm_name=hostname)
    ep.__enter__()
    facts = {"hostname": hostname, "admin_user": ADMIN_USER, "admin_key": admin_pub,
             "admin_key_file": str(admin_key_file), "custom_data": config,
             "custom_data_sha256": hashlib.sha256(custom).hexdigest(),
             "container_id": ep.container_id, "instance_id": ep.instance_id,
             "incarnation": ep.incarnation, "record": str(ep.record_file)}  # fmt: skip
    (workdir / "azure.json").write_text(json.dumps(facts, indent=2))
    env = {"ACL_COMPOSE_PLATFORM": "azure", "ACL_COMPOSE_AZURE": str(workdir / "azure.json")}
    args = [
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", f"if=none,id=ovfdvd,media=cdrom,readonly=on,format=raw,file={iso}",
        "-device", "scsi-cd,bus=scsi0.0,drive=ovfdvd",
        "-netdev", ep.imds_netdev("azimds"),
        # A high slot: the wire server's NIC (net0) stays the first, as Azure's primary one.
        "-device", "virtio-net-pci,netdev=azimds,addr=0x10",
    ]  # fmt: skip
    return ep, args, env


def keep_record(workdir: Path, prefix: Path) -> list[Path]:
    """Copy what an azure boot recorded out of the VM's temporary `workdir` (which teardown
    removes): `<prefix>azure-record.jsonl` (every request the stand-ins answered) and
    `<prefix>azure.json` (what the VM was given, its `record` pointing at the copy)."""
    facts_file, record_file = workdir / "azure.json", workdir / "azure-record.jsonl"
    if not facts_file.is_file():
        return []
    record = prefix.with_name(prefix.name + record_file.name)
    facts = json.loads(facts_file.read_text())
    record.write_bytes(record_file.read_bytes())
    facts["record"] = str(record)
    facts.pop("admin_key_file", None)  # in the VM's directory: gone with it
    kept = prefix.with_name(prefix.name + facts_file.name)
    kept.write_text(json.dumps(facts, indent=2))
    return [record, kept]
