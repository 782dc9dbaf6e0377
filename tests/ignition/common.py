"""Helpers shared by the ignition tests: the corpus, real ignition-validate, the schemas."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema

from acl_compose import ignition
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "ignition"
FILES = DATA / "files"
CORPUS = ["full", "replace", "trees", "v1_1"]
PRODUCT = [REPO / "ignition" / "base.yaml", REPO / "ignition" / "aks-node.yaml"]
HEADER = "variant: flatcar\nversion: 1.0.0\n"
HAVE_IGNITION_VALIDATE = shutil.which("ignition-validate") is not None


def render(name: str) -> dict[str, Any]:
    return ignition.render(DATA / f"{name}.yaml", FILES, warnings=[])


def ignition_validate(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess:
    """Debian's ignition-validate (2.14: specs up to 3.3.0 and 3.4.0-experimental)."""
    if config["ignition"]["version"] == "3.4.0":
        # 2.14 predates 3.4.0 final; its 3.4.0-experimental is the same schema.
        config = json.loads(json.dumps(config))
        config["ignition"]["version"] = "3.4.0-experimental"
    path = tmp_path / "check.ign"
    path.write_text(ignition.dumps(config))
    return subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True)


def schema_validate(config: dict[str, Any], reference: Path) -> None:
    version = config["ignition"]["version"]
    name = "v" + "_".join(version.split(".")[:2]) + ".json"
    schema = json.loads((reference / "ignition-schema" / name).read_text())
    jsonschema.Draft4Validator(schema).validate(config)


def resources(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every resource with a source: (label, resource)."""
    out = []
    ign = config["ignition"]
    for i, r in enumerate(ign.get("config", {}).get("merge", [])):
        out.append((f"merge[{i}]", r))
    if "replace" in ign.get("config", {}):
        out.append(("replace", ign["config"]["replace"]))
    for i, r in enumerate(ign.get("security", {}).get("tls", {}).get("certificateAuthorities", [])):
        out.append((f"ca[{i}]", r))
    for f in config.get("storage", {}).get("files", []):
        if "source" in f.get("contents", {}):
            out.append((f["path"], f["contents"]))
        for j, r in enumerate(f.get("append", [])):
            out.append((f"{f['path']}+{j}", r))
    return out
