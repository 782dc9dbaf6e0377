"""The host is immutable: no package manager, /usr read-only from a dm-verity device."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

PACKAGE_MANAGERS = (
    "rpm", "dnf", "yum", "tdnf", "microdnf", "apt", "apt-get", "aptitude", "dpkg",
    "emerge", "zypper", "pacman", "apk", "snap", "flatpak",
)  # fmt: skip
PACKAGE_DATABASES = ("/var/lib/dpkg", "/var/lib/rpm")


def usr_mounts(host: Any) -> list[dict[str, str]]:
    """Every mount stacked on /usr (the verity device and, with sysexts, an overlay on top)."""
    out = host.check_output("findmnt -n -l -o TARGET,SOURCE,FSTYPE,OPTIONS")
    mounts = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "/usr":
            mounts.append(dict(zip(("target", "source", "fstype", "options"), parts, strict=True)))
    return mounts


def verity_devices(host: Any) -> dict[str, str]:
    """dm device name -> dm uuid for every dm-verity device (readable without root)."""
    script = (
        "for d in /sys/block/dm-*/dm; do [ -r $d/uuid ] && "
        'echo "$(cat $d/name) $(cat $d/uuid)"; done; true'
    )
    found = {}
    for line in host.check_output(script).splitlines():
        name, _, uuid = line.partition(" ")
        if "VERITY" in uuid.upper():
            found[name] = uuid
    return found


def test_no_package_manager_on_path_or_in_usr_opt(host: Any) -> None:
    names = " ".join(PACKAGE_MANAGERS)
    on_path = host.run(
        "for n in %s; do command -v $n; done; true" % names  # noqa: UP031 (shell text)
    ).stdout.split()
    expr = " -o ".join(f"-name {shlex.quote(n)}" for n in PACKAGE_MANAGERS)
    # Executables (or links to them) only: bash-completion files named "apt" are harmless.
    found = host.run(
        f"find /usr /opt \\( {expr} \\) \\( -type f -o -type l \\) -perm /111 2>/dev/null; true"
    ).stdout.split()
    offenders = sorted(set(on_path) | set(found))
    assert not offenders, f"package manager binaries present: {offenders}"


def test_no_package_databases(host: Any) -> None:
    present = [p for p in PACKAGE_DATABASES if host.file(p).exists]
    assert not present, f"package databases present: {present}"


def test_usr_mounted_read_only(host: Any) -> None:
    mounts = usr_mounts(host)
    assert mounts, "nothing is mounted on /usr"
    for m in mounts:
        assert "ro" in m["options"].split(","), f"/usr mount is writable: {m}"


def test_usr_backed_by_dm_verity(host: Any) -> None:
    mounts = usr_mounts(host)
    devices = verity_devices(host)
    assert devices, "no dm-verity device exists"
    # The lowest /usr mount is the sealed base; sysexts stack an overlay above it.
    base = mounts[0]
    name = base["source"].removeprefix("/dev/mapper/")
    if base["source"].startswith("/dev/dm-"):
        name = host.check_output(f"cat /sys/block/{base['source'][5:]}/dm/name")
    assert name in devices, f"/usr comes from {base['source']}, not a dm-verity device {devices}"


def test_usr_root_hash_matches_release(host: Any, required_release: dict[str, Any]) -> None:
    expected = (required_release.get("usr") or {}).get("root_hash")
    if not expected:
        pytest.skip("release.json records no /usr root hash")
    cmdline = host.file("/proc/cmdline").content_string
    hashes = {
        arg.split("=", 1)[1]
        for arg in cmdline.split()
        if arg.split("=", 1)[0] in ("usrhash", "verity.usrhash")
    }
    assert expected in hashes, f"/usr root hash {expected} not on the kernel command line"


def test_writing_under_usr_fails(host: Any, root_run: Any) -> None:
    result = root_run("touch /usr/.acl-compose-write-test")
    root_run("rm -f /usr/.acl-compose-write-test")
    assert result.rc != 0, "root could write under /usr"
    assert "Read-only file system" in result.stderr, result.stderr
