"""`acl-compose ignition render|validate|merge` as a user runs them."""

from __future__ import annotations

import json

import pytest

from acl_compose import ignition
from tests.conftest import run_cli
from tests.ignition.common import (
    DATA,
    FILES,
    HAVE_IGNITION_VALIDATE,
    HEADER,
    PRODUCT,
    render,
)

# --- the command line -----------------------------------------------------------------------


def test_cli_render_stdout_compact_and_pretty():
    args = ["ignition", "render", DATA / "full.yaml", "--files-dir", FILES]
    compact = run_cli(*args, check=True).stdout
    assert compact == ignition.dumps(render("full")) + "\n"
    assert "\n" not in compact.strip()
    pretty = run_cli(*args, "--pretty", check=True).stdout
    assert pretty == (DATA / "expected" / "full.ign").read_text()


def test_cli_render_to_file_and_json(tmp_path):
    out = tmp_path / "out.ign"
    proc = run_cli("--json", "ignition", "render", DATA / "v1_1.yaml", "-o", out, check=True)
    result = json.loads(proc.stdout)
    assert result["version"] == "3.4.0" and result["output"] == str(out)
    assert json.loads(out.read_text()) == json.loads((DATA / "expected/v1_1.ign").read_text())
    # -o onto the input itself, or onto a folder: refused, the input kept.
    src = tmp_path / "v1_1.yaml"
    src.write_bytes((DATA / "v1_1.yaml").read_bytes())
    proc = run_cli("ignition", "render", src, "-o", src)
    assert proc.returncode == 1 and "is also an input" in proc.stderr
    assert src.read_bytes() == (DATA / "v1_1.yaml").read_bytes()
    proc = run_cli("ignition", "render", src, "-o", tmp_path)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr


def test_cli_render_invalid_exits_1_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        HEADER + "storage:\n  files:\n    - path: rel\n    - path: /x\n      mode: 99999\n"
    )
    out = tmp_path / "out.ign"
    proc = run_cli("ignition", "render", bad, "-o", out, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == f"error: {bad}:5:7: storage.files[0].path: path not absolute: 'rel'"
    assert lines[1].startswith(f"error: {bad}:7:7: storage.files[1].mode: 99999 is out of range")
    assert lines[2].startswith("hint: ")
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_cli_validate_yaml_and_json(tmp_path):
    ign = tmp_path / "base.ign"
    run_cli("ignition", "render", PRODUCT[0], "-o", ign, check=True)
    proc = run_cli("ignition", "validate", ign, *PRODUCT, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    if HAVE_IGNITION_VALIDATE:
        assert all(line.endswith("valid, Ignition 3.3.0; ignition-validate: ok") for line in lines)
    proc = run_cli("--json", "ignition", "validate", DATA / "expected" / "v1_1.ign", check=True)
    (result,) = json.loads(proc.stdout)
    assert result["valid"] and result["version"] == "3.4.0"
    if HAVE_IGNITION_VALIDATE:  # Debian's 2.14 predates spec 3.4.0: reported, not failed
        assert result["ignition_validate"]["verdict"] == "unsupported"


def test_cli_validate_reports_bad_file(tmp_path):
    bad = tmp_path / "bad.ign"
    bad.write_text('{"ignition": {"version": "3.3.0"}, "storage": {"links": [{"path": "/a"}]}}')
    proc = run_cli("ignition", "validate", PRODUCT[0], bad, check=False)
    assert proc.returncode == 1
    assert f"error: {bad}:1:58: storage.links[0]: link target is required" in proc.stderr


@pytest.mark.skipif(not HAVE_IGNITION_VALIDATE, reason="Debian package ignition not installed")
def test_cli_validate_reports_ignition_validate_verdict(tmp_path):
    # a rule only Ignition itself checks (go-systemd's 2048-byte line limit)
    unit = "[Service]\nExecStart=/bin/echo " + "x" * 3000 + "\n"
    config = {
        "ignition": {"version": "3.3.0"},
        "systemd": {"units": [{"name": "a.service", "contents": unit}]},
    }
    bad = tmp_path / "long.ign"
    bad.write_text(json.dumps(config))
    assert ignition.validate(config) == []  # our checks pass it ...
    proc = run_cli("--json", "ignition", "validate", bad, check=False)
    assert proc.returncode == 1  # ... Ignition does not, and its verdict decides
    (result,) = json.loads(proc.stdout)
    assert result["ignition_validate"]["verdict"] == "invalid"
    assert "line too long" in result["errors"][0]
    assert f"error: {bad}: ignition-validate: error at $.systemd.units.0.contents" in proc.stderr


def test_cli_merge(tmp_path):
    out = tmp_path / "merged.ign"
    proc = run_cli("ignition", "merge", *PRODUCT, "-o", out, check=True)
    assert "merged 2 configs" in proc.stdout
    merged = json.loads(out.read_text())
    assert merged == ignition.merge([ignition.render(p, warnings=[]) for p in PRODUCT])
    # Without -o the merged JSON goes to stdout, as render's does.
    proc = run_cli("ignition", "merge", *PRODUCT, check=True)
    assert json.loads(proc.stdout) == merged
    # An output that is one of the inputs is refused and the input kept (a copy: if this
    # broke, it must not clobber the product's own config).
    first = tmp_path / "base.yaml"
    first.write_bytes(PRODUCT[0].read_bytes())
    proc = run_cli("ignition", "merge", first, PRODUCT[1], "-o", first)
    assert proc.returncode == 1 and "is also an input" in proc.stderr
    assert first.read_bytes() == PRODUCT[0].read_bytes()
