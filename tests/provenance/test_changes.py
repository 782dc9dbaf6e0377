"""`acl-compose diff`: two composed releases (or images) that differ in exactly one sysext
version and one Ignition file show exactly those changes; identical ones show none."""

from __future__ import annotations

import json
import shutil

import pytest

from acl_compose.provenance import diff
from tests.conftest import run_cli
from tests.fixtures_compose import REPO, SDE, write_manifest
from tests.provenance.changes import (
    CHANGED_FILE,
    EXT_RELEASE,
    expect_exactly_the_two_changes,
    variant,
)


@pytest.fixture(scope="module")
def releases(mini_flatcar, release_key, tmp_path_factory):
    key, cert = release_key
    d = tmp_path_factory.mktemp("diff")
    cache = d / "cache"
    bundle, ign = variant(d)
    out = {}
    for label, sx, cfg in (
        ("old", [REPO / "sysext" / "azure-base", REPO / "sysext" / "aks-node"],
         [REPO / "ignition" / "base.yaml", REPO / "ignition" / "aks-node.yaml"]),
        ("new", [REPO / "sysext" / "azure-base", bundle],
         [ign, REPO / "ignition" / "aks-node.yaml"]),
    ):  # fmt: skip
        m = write_manifest(d / f"{label}.yaml", base={"path": mini_flatcar.path}, key=key,
                           cert=cert, sysexts=sx, ignition=cfg, outputs=("raw", "vhd"))  # fmt: skip
        run_cli("--cache-dir", cache, "compose", m, "-o", d / label, check=True, env=SDE)
        out[label] = d / label
    return out


def test_two_releases_show_exactly_those_changes(releases):
    proc = run_cli("diff", "--json", releases["old"], releases["new"], check=False)
    assert proc.returncode == 1, proc.stderr
    r = json.loads(proc.stdout)
    expect_exactly_the_two_changes(r)
    text = run_cli("diff", releases["old"], releases["new"], check=False).stdout
    assert "sysext ~ aks-node: version 1.0.0 -> 1.0.1" in text
    assert f"    ~ {EXT_RELEASE}" in text
    assert f"ignition file ~ {CHANGED_FILE} (contents)" in text
    assert "azure-base" not in text and "base version" not in text


def test_two_images_show_the_same_changes(releases):
    """Without release.json or SBOM: everything read from the disk images themselves."""
    old = releases["old"] / "acl-test-1.0.0.bin"
    new = releases["new"] / "acl-test-1.0.0.vhd"  # a fixed VHD is the raw image + a footer
    r = diff(old, new)
    assert r["old"]["kind"] == r["new"]["kind"] == "image"
    # The VHD is 512 bytes longer than the raw image (its footer): that size change shows too.
    assert r["outputs"] == {"size": [{"format": "image", "old": old.stat().st_size,
                                      "new": new.stat().st_size}]}  # fmt: skip
    r["outputs"] = {}
    expect_exactly_the_two_changes(r)


def test_same_release_no_differences_exit_0(releases):
    proc = run_cli("diff", releases["old"], releases["old"], check=True)
    assert "no differences" in proc.stdout


def test_base_packages_and_signer_and_sysext_added(releases, tmp_path, release_key):
    """A different base package list, another signing key and an extra sysext all show up
    (the release.json/SBOM side of the model, edited here as a new compose would write it)."""
    new = tmp_path / "new"
    shutil.copytree(releases["old"], new)
    rj = json.loads((new / "release.json").read_text())
    sbom_file = new / rj["sbom"]["file"]
    doc = json.loads(sbom_file.read_text())
    doc["packages"].append({"SPDXID": "SPDXRef-Base-x-zlib", "name": "zlib", "versionInfo": "1.3",
                            "downloadLocation": "NOASSERTION", "filesAnalyzed": False})  # fmt: skip
    doc["relationships"].append({"spdxElementId": "SPDXRef-Base", "relationshipType": "CONTAINS",
                                 "relatedSpdxElement": "SPDXRef-Base-x-zlib"})  # fmt: skip
    data = json.dumps(doc).encode()
    sbom_file.write_bytes(data)
    rj["sbom"]["sha256"] = __import__("hashlib").sha256(data).hexdigest()
    rj["signing"]["certificate_fingerprint"] = "ab" * 32
    rj["sysexts"].append({"name": "extra", "version": "2", "sha256": "00" * 32,
                          "path": "/opt/extensions/extra/extra-2.raw"})  # fmt: skip
    (new / "release.json").write_text(json.dumps(rj))
    r = diff(releases["old"], new)
    assert r["base"] == {"packages": {"added": [{"name": "zlib", "version": "1.3"}],
                                      "removed": [], "changed": []}}  # fmt: skip
    assert r["sysexts"] == {"added": [{"name": "extra", "version": "2"}]}
    assert r["signer"]["new"]["fingerprint"] == "ab" * 32
    assert r["signer"]["old"]["subject"] == "CN=acl-compose release signing"


def test_trouble_exits_2(tmp_path):
    proc = run_cli("diff", tmp_path / "nope", tmp_path, check=False)
    assert proc.returncode == 2 and "error:" in proc.stderr and "hint:" in proc.stderr
