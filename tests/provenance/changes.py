"""The one pair of releases the diff tests compare: aks-node 1.0.0 -> 1.0.1 and one sysctl
value in base.yaml, and what `acl-compose diff` must report for exactly those two changes.
Shared by the mini-release and the testbed diff tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.fixtures_compose import REPO

CHANGED_FILE = "/etc/sysctl.d/90-acl-container-host.conf"
EXT_RELEASE = "/usr/lib/extension-release.d/extension-release.aks-node"


def variant(d: Path) -> tuple[Path, Path]:
    """aks-node with version 1.0.1, and base.yaml with one sysctl value changed."""
    bundle = d / "aks-node"
    shutil.copytree(REPO / "sysext" / "aks-node", bundle)
    y = bundle / "sysext.yaml"
    text = y.read_text()
    assert "version: 1.0.0" in text
    y.write_text(text.replace("version: 1.0.0", "version: 1.0.1", 1))
    ign = d / "base.yaml"
    text = (REPO / "ignition" / "base.yaml").read_text()
    assert "vm.max_map_count = 262144" in text
    ign.write_text(text.replace("vm.max_map_count = 262144", "vm.max_map_count = 524288"))
    return bundle, ign


def expect_exactly_the_two_changes(r: dict, *, with_sha: bool = True) -> None:
    assert r["changed"] is True
    assert r["release"] == {} and r["base"] == {} and r["outputs"] == {} and r["signer"] == {}
    (sx,) = r["sysexts"]["changed"]
    assert set(r["sysexts"]) == {"changed"}
    assert sx["name"] == "aks-node" and sx["version"] == ["1.0.0", "1.0.1"]
    # The version lives in the generated extension-release: the one file that changed.
    assert sx["files"] == {"changed": [EXT_RELEASE]}
    assert "units" not in sx
    assert ("sha256" in sx) is with_sha
    # The base config also links /etc/extensions/aks-node.raw to the new image on OEM.
    assert list(r["ignition"]) == ["files", "links"]
    (link,) = r["ignition"]["links"]["changed"]
    assert r["ignition"]["links"] == {"changed": [link]}
    assert link["path"] == "/etc/extensions/aks-node.raw" and link["fields"] == ["target"], link
    (f,) = r["ignition"]["files"]["changed"]
    assert r["ignition"]["files"] == {"changed": [f]}
    assert f["path"] == CHANGED_FILE and f["fields"] == ["contents"]
    assert "-vm.max_map_count = 262144" in f["diff"] and "+vm.max_map_count = 524288" in f["diff"]
