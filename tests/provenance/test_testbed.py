"""Provenance on the testbed release (a real fetched, signature-checked base; no VM boots):
a second compose with a new cache is byte-identical, the SBOM lists the base's packages and
passes spdx-tools, and `diff` against a release with one sysext bumped and one Ignition file
changed shows exactly those changes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.fixtures_compose import _compose_cache, write_manifest
from tests.provenance.changes import expect_exactly_the_two_changes, variant
from tests.spdx_check import validate


def _sha256s(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.mark.integration
def test_testbed_release_rebuilds_byte_identical(composed_release, tmp_path):
    """Same manifest, key and SOURCE_DATE_EPOCH, a new empty cache: every output the same."""
    sde = str(composed_release.release["source_date_epoch"])
    out = tmp_path / "again"
    run_cli("--cache-dir", tmp_path / "cold-cache", "compose", composed_release.manifest,
            "-o", out, check=True, env={"SOURCE_DATE_EPOCH": sde})  # fmt: skip
    assert _sha256s(out) == _sha256s(composed_release.out_dir)


@pytest.mark.integration
def test_testbed_sbom_lists_the_base_packages(composed_release):
    rel, out = composed_release.release, composed_release.out_dir
    path = out / rel["sbom"]["file"]
    assert validate(path) == []
    doc = json.loads(path.read_text())
    base_members = {
        r["relatedSpdxElement"]
        for r in doc["relationships"]
        if r["spdxElementId"] == "SPDXRef-Base" and r["relationshipType"] == "CONTAINS"
    }
    pkgs = [p for p in doc["packages"] if p["SPDXID"] in base_members]
    assert len(pkgs) > 100  # a Debian bookworm system, from the release's packages.txt
    names = {p["name"]: p for p in pkgs}
    assert "systemd" in names and names["systemd"]["versionInfo"].startswith("252")
    assert names["systemd"]["externalRefs"][0]["referenceLocator"].startswith(
        "pkg:deb/debian/systemd@252")  # fmt: skip
    base = next(p for p in doc["packages"] if p["SPDXID"] == "SPDXRef-Base")
    image = next(a for a in rel["base"]["artifacts"] if a["name"].endswith(".bin.bz2"))
    assert base["checksums"] == [{"algorithm": "SHA512", "checksumValue": image["sha512"]}]
    assert "OpenPGP signature and DIGESTS verified" in base["sourceInfo"]


@pytest.mark.integration
def test_testbed_diff_shows_exactly_the_changes(composed_release, tmp_path, tmp_path_factory):
    """The demo release against one with aks-node 1.0.1 and one sysctl changed in base.yaml."""
    import yaml

    bundle, ign = variant(tmp_path)
    # The demo release's manifest with aks-node and base.yaml swapped for their variants.
    doc = yaml.safe_load(composed_release.manifest.read_text())
    swap = {"aks-node": str(bundle), "base.yaml": str(ign)}
    sysexts = [Path(swap.get(Path(p).name, p)) for p in doc["sysexts"]]
    configs = [Path(swap.get(Path(p).name, p)) for p in doc["ignition"]]
    m = write_manifest(
        tmp_path / "m.yaml", base=doc["base"], key=composed_release.key,
        cert=composed_release.cert, sysexts=sysexts, ignition=configs,
        outputs=tuple(doc["outputs"]),
    )  # fmt: skip
    cache = _compose_cache(tmp_path_factory)  # the session's: the verified base is reused
    sde = str(composed_release.release["source_date_epoch"])
    run_cli("--cache-dir", cache, "compose", m, "-o", tmp_path / "new", check=True,
            env={"SOURCE_DATE_EPOCH": sde})  # fmt: skip
    proc = run_cli("diff", "--json", composed_release.out_dir, tmp_path / "new", check=False)
    assert proc.returncode == 1, proc.stderr
    expect_exactly_the_two_changes(json.loads(proc.stdout))
