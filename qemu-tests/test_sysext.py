"""Every sysext in release.json is merged, its files visible, its verity signature accepted."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def sysexts(release: dict[str, Any]) -> list[dict[str, Any]]:
    items = release.get("sysexts") or []
    if not items:
        pytest.skip("release.json lists no sysexts")
    return items


def merged_extensions(host: Any) -> set[str]:
    """Names `systemd-sysext status` reports as merged into /usr (or /opt)."""
    out = host.run("systemd-sysext status --json=short")
    names: set[str] = set()
    if out.rc == 0 and out.stdout.strip().startswith("["):
        for entry in json.loads(out.stdout):
            ext = entry.get("extensions")
            if isinstance(ext, list):
                names.update(ext)
            elif isinstance(ext, str) and ext != "none":
                names.add(ext)
        return names
    # Older systemd: "HIERARCHY EXTENSIONS SINCE" table.
    for line in host.check_output("systemd-sysext status --no-legend").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] != "none":
            names.update(parts[1].split(","))
    return names


def test_sysexts_merged(host: Any, required_release: dict[str, Any]) -> None:
    merged = merged_extensions(host)
    missing = [s["name"] for s in sysexts(required_release) if s["name"] not in merged]
    assert not missing, f"not merged: {missing} (merged: {sorted(merged)})"


def test_sysext_images_placed_and_intact(host: Any, required_release: dict[str, Any]) -> None:
    for s in sysexts(required_release):
        link = host.file(f"/etc/extensions/{s['name']}.raw")
        assert link.is_symlink, f"/etc/extensions/{s['name']}.raw is not a link"
        path = s.get("path") or link.linked_to
        assert link.linked_to == path, f"{link.path} -> {link.linked_to}, expected {path}"
        digest = host.check_output(f"sha256sum {path}").split()[0]
        assert digest == s["sha256"], f"{path}: sha256 {digest} != release.json {s['sha256']}"


def test_sysext_files_visible(host: Any, required_release: dict[str, Any]) -> None:
    for s in sysexts(required_release):
        rel = host.file(f"/usr/lib/extension-release.d/extension-release.{s['name']}")
        assert rel.exists, f"{rel.path} is not visible: {s['name']} is not merged"
        fields = dict(line.split("=", 1) for line in rel.content_string.splitlines() if "=" in line)
        assert fields.get("ID", "").strip('"') in ("flatcar", "_any"), fields


def test_sysext_verity_activated(host: Any, required_release: dict[str, Any]) -> None:
    """Merged through dm-verity with the recorded root hash (the device is named after it).

    systemd refuses to activate a signed image whose signature neither the kernel keyring nor
    /etc/verity.d accepts, so an active device for a signed image proves the signature held.
    """
    names = host.check_output(
        "for d in /sys/block/dm-*/dm; do cat $d/name $d/uuid 2>/dev/null; done; true"
    )
    for s in sysexts(required_release):
        root_hash = s.get("root_hash")
        if not root_hash:
            pytest.skip(f"release.json has no root hash for {s['name']}")
        assert root_hash[:32] in names or root_hash in names, (
            f"no dm-verity device for {s['name']} (root hash {root_hash}); dm: {names.split()}"
        )


def test_sysext_signing_certificate_installed(host: Any, required_release: dict[str, Any]) -> None:
    signed = [s for s in sysexts(required_release) if s.get("certificate_fingerprint")]
    if not signed:
        pytest.skip("no signed sysexts in release.json")
    verity_d = (required_release.get("signing") or {}).get("verity_d")
    paths = [verity_d] if verity_d else host.check_output("ls /etc/verity.d/*.crt").split()
    fingerprints = set()
    for p in paths:
        pem = host.file(p).content_string
        der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
        fingerprints.add(hashlib.sha256(der).hexdigest())
    for s in signed:
        assert s["certificate_fingerprint"] in fingerprints, (
            f"{s['name']} is signed by {s['certificate_fingerprint']}, "
            f"but /etc/verity.d holds {sorted(fingerprints)}"
        )
