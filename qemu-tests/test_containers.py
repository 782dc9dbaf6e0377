"""The node runs containers: containerd from the container-runtime extension, the images the
extensions preload, and a container made here, with a bind mount and with a read-only root.

Everything is local (the guest has no network): the test image is this machine's Debian
busybox-static, written as an OCI archive by acl_compose's OCI writer and copied in over SSH.
Without the runtime extension every test here fails; none skips.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

NAMESPACE = "acl-test"
TEST_REF = "localhost/acl-test/busybox:1"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static on the machine running the tests
PRELOAD_DIR = "/usr/share/container-runtime/preload"
RUNTIME_FILES = (
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/bin/ctr",
    "/usr/bin/runc",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/loopback",
    "/usr/lib/cni/portmap",
)
PACKAGE_MANAGERS = ("apt", "apt-get", "dpkg", "dpkg-deb", "rpm", "dnf", "yum", "pip", "pip3")


def _journal(root_run: Any, unit: str) -> str:
    return root_run(f"journalctl -b --no-pager -n 40 -u {unit}").stdout


def _wait_active(host: Any, unit: str, seconds: int = 120) -> str:
    """The unit's state once it stops starting (TCG is slow to start Go binaries)."""
    script = (
        f"for i in $(seq {seconds}); do s=$(systemctl is-active {unit}); "
        '[ "$s" = activating ] || [ "$s" = reloading ] || break; sleep 1; done; echo $s'
    )
    return host.run(script).stdout.strip()


Require = Callable[[], Any]


@pytest.fixture(scope="module")
def containerd(host: Any, root_run: Any) -> Require:
    """Call it first in a test: the test fails (not errors, not skips) without containerd."""
    state = _wait_active(host, "containerd.service")

    def require() -> None:
        assert state == "active", (
            f"containerd.service is {state!r}:\n{_journal(root_run, 'containerd.service')}"
        )

    return require


def test_runtime_binaries_shipped(host: Any) -> None:
    missing = [p for p in RUNTIME_FILES if not host.file(p).exists]
    assert not missing, f"runtime files missing (container-runtime extension merged?): {missing}"
    assert "1." in host.check_output("runc --version")


def test_containerd_active(host: Any, root_run: Any, containerd: Require) -> None:
    containerd()
    version = host.check_output("containerd --version")
    assert version.startswith("containerd "), version
    # Started at boot because the extension enables it (a multi-user.target.wants link in /usr).
    wanted_by = host.check_output("systemctl show -p WantedBy --value containerd").split()
    assert "multi-user.target" in wanted_by, wanted_by
    # The CRI plugin (what kubelet talks to) loaded with this configuration.
    plugins = root_run("ctr plugins ls").stdout
    cri = [line.split() for line in plugins.splitlines() if " cri " in f" {line} "]
    assert cri and cri[0][-1] == "ok", plugins


def test_containerd_configured_for_kubernetes(
    host: Any, root_run: Any, containerd: Require
) -> None:
    containerd()
    pid = host.check_output("systemctl show -p MainPID --value containerd").strip()
    argv = root_run(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").stdout.split("\n")
    assert "--config" in argv, argv
    config = argv[argv.index("--config") + 1]
    assert config.startswith("/usr/"), f"containerd reads {config}, not the signed /usr"
    dump = root_run(f"containerd --config {config} config dump")
    assert dump.rc == 0, dump.stderr
    text = dump.stdout
    assert re.search(r"^\s*SystemdCgroup = true$", text, re.M), "runc not on systemd cgroups"
    assert re.search(r'^root = "/var/lib/containerd"$', text, re.M), text[:400]
    conf_dir = re.search(r'^\s*conf_dir = "([^"]+)"$', text, re.M)
    bin_dir = re.search(r'^\s*bin_dir = "([^"]+)"$', text, re.M)
    assert conf_dir and conf_dir.group(1) == "/etc/cni/net.d", text
    assert bin_dir and host.file(f"{bin_dir.group(1)}/bridge").is_file, (
        f"CNI bin_dir {bin_dir and bin_dir.group(1)} has no plugins"
    )


def test_container_storage_on_root_not_usr(host: Any, root_run: Any, containerd: Require) -> None:
    containerd()
    found = host.check_output(
        "findmnt -n -o SOURCE,TARGET,FSTYPE,OPTIONS --target /var/lib/containerd"
    )
    source, target, fstype, options = found.split()
    root_dev = host.check_output("readlink -f /dev/disk/by-partlabel/ROOT")
    assert host.check_output(f"readlink -f {source}") == root_dev, found
    assert target == "/" and fstype == "ext4" and "rw" in options.split(","), found
    assert not host.check_output("readlink -f /var/lib/containerd").startswith("/usr")
    assert root_run("test -d /var/lib/containerd/io.containerd.content.v1.content").rc == 0


def test_no_package_manager_came_with_the_runtime(host: Any) -> None:
    found = host.run(
        f"for n in {' '.join(PACKAGE_MANAGERS)}; do command -v $n; done; true"
    ).stdout.split()
    assert not found, f"package managers on the node: {found}"
    assert not host.file("/var/lib/dpkg").exists and not host.file("/var/lib/apt").exists


def _index_refs(root_run: Any, archive: str) -> list[str]:
    index = json.loads(root_run(f"tar -xOf {shlex.quote(archive)} index.json").stdout)
    return [
        m["annotations"]["io.containerd.image.name"]
        for m in index["manifests"]
        if "io.containerd.image.name" in m.get("annotations", {})
    ]


def test_preloaded_images_imported_and_run(host: Any, root_run: Any, containerd: Require) -> None:
    containerd()
    archives = host.run(f"ls {PRELOAD_DIR}/*/*.tar").stdout.split()
    assert archives, f"no extension preloads an image into {PRELOAD_DIR} (aks-node's pause)"
    state = _wait_active(host, "containerd-preload-images.service")
    assert state == "active", _journal(root_run, "containerd-preload-images.service")
    for archive in archives:
        ns = archive.split("/")[-2]
        listed = root_run(f"ctr -n {ns} images ls -q").stdout.split()
        refs = _index_refs(root_run, archive)
        assert refs and set(refs) <= set(listed), f"{archive}: {refs} not in {ns}: {listed}"
    # The sandbox image runs (catatonit -P: it waits for a signal, like pause).
    ns, ref = archives[0].split("/")[-2], _index_refs(root_run, archives[0])[0]
    cid = f"acl-preload-{secrets.token_hex(4)}"
    try:
        started = root_run(f"ctr -n {ns} run -d {ref} {cid}")
        assert started.rc == 0, started.stderr
        tasks = root_run(f"ctr -n {ns} task ls").stdout
        assert re.search(rf"^{cid}\s+\d+\s+RUNNING$", tasks, re.M), tasks
    finally:
        root_run(f"ctr -n {ns} task kill -s KILL {cid}; sleep 1; ctr -n {ns} task rm -f {cid}")
        root_run(f"ctr -n {ns} container rm {cid}")


# ------------------------------------------------------------------- a container made here
def _upload(host: Any, local: Path, remote: str) -> None:
    """Copy a file into the guest over the suite's SSH connection (testinfra has no put)."""
    from acl_compose.run import run

    backend = host.backend
    argv = ["ssh"]
    if getattr(backend, "ssh_config", None):
        argv += ["-F", backend.ssh_config]
    argv += [backend.host.name, f"cat > {shlex.quote(remote)}"]
    run(argv, input=local.read_bytes())


@pytest.fixture(scope="module")
def test_image(host: Any, root_run: Any, containerd: Require) -> Require:
    """busybox-static as an OCI archive, imported into the acl-test namespace on first call
    (in the test, so a node without containerd fails the test instead of erroring it)."""
    imported: list[str] = []

    def image() -> str:
        if not imported:
            containerd()
            imported.append(_import_test_image(host, root_run))
        return imported[0]

    return image


def _import_test_image(host: Any, root_run: Any) -> str:
    from acl_compose.sysext import oci

    assert BUSYBOX.is_file() and b"/lib64/ld-linux" not in BUSYBOX.read_bytes()[:4096], (
        f"{BUSYBOX} is not a static busybox: apt-get install busybox-static (make deps)"
    )
    with tempfile.TemporaryDirectory() as d:
        tree = Path(d) / "rootfs"
        (tree / "bin").mkdir(parents=True)
        (tree / "bin/busybox").write_bytes(BUSYBOX.read_bytes())
        (tree / "bin/busybox").chmod(0o755)
        (tree / "bin/sh").symlink_to("busybox")
        image = oci.ImageEntry(name="busybox", ref=TEST_REF, line=0, namespace=NAMESPACE,
                               entrypoint=["/bin/sh"])  # fmt: skip
        archive = Path(d) / "busybox.tar"
        oci.write_archive(tree, archive, image, "x86-64", Path(d))
        remote = f"/var/tmp/acl-test-busybox-{secrets.token_hex(4)}.tar"
        _upload(host, archive, remote)
    try:
        imported = root_run(f"ctr -n {NAMESPACE} images import {remote}")
        assert imported.rc == 0, imported.stderr
    finally:
        root_run(f"rm -f {remote}")
    assert TEST_REF in root_run(f"ctr -n {NAMESPACE} images ls -q").stdout.split()
    return TEST_REF


@pytest.fixture
def host_dir(root_run: Any) -> Iterator[str]:
    path = f"/var/tmp/acl-containers-{secrets.token_hex(4)}"
    root_run(f"mkdir -m 0755 {path}")
    yield path
    root_run(f"rm -rf {path}")


def _run_container(root_run: Any, image: str, host_dir: str, script: str, *flags: str) -> Any:
    cid = f"acl-test-{secrets.token_hex(4)}"
    mount = f"type=bind,src={host_dir},dst=/out,options=rbind:rw"
    return root_run(
        f"ctr -n {NAMESPACE} run --rm {' '.join(flags)} --mount {mount} {image} {cid} "
        f"/bin/sh -c {shlex.quote(script)}"
    )


def test_container_writes_to_bind_mount(host: Any, root_run: Any, test_image: Require,
                                        host_dir: str) -> None:  # fmt: skip
    marker = secrets.token_hex(16)
    result = _run_container(
        root_run, test_image(), host_dir, f"echo {marker} > /out/marker; echo $$"
    )
    assert result.rc == 0, result.stdout + result.stderr
    assert root_run(f"cat {host_dir}/marker").stdout.strip() == marker
    # The shell was PID 1: it ran in its own PID namespace, i.e. in a container.
    assert result.stdout.strip() == "1", result.stdout


def test_container_with_read_only_root(host: Any, root_run: Any, test_image: Require,
                                       host_dir: str) -> None:  # fmt: skip
    script = (
        "if busybox touch /probe 2>/dev/null; then echo root-writable; "
        "else echo root-read-only; fi; echo done > /out/ro-marker"
    )
    result = _run_container(root_run, test_image(), host_dir, script, "--read-only")
    assert result.rc == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "root-read-only", result.stdout
    assert root_run(f"cat {host_dir}/ro-marker").stdout.strip() == "done"
    # Without --read-only the same probe writes: the check above can tell the difference.
    writable = _run_container(root_run, test_image(), host_dir, script)
    assert writable.stdout.strip() == "root-writable", writable.stdout
