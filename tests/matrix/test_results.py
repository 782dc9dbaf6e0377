"""Journal, merged JUnit and `matrix compare` on results directories written by `results`."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from acl_compose.errors import InputError
from acl_compose.matrix import compare_runs, results
from tests.conftest import run_cli


def junit(cases: dict[str, str]) -> str:
    body = ""
    for name, status in cases.items():
        inner = {"passed": "", "failed": '<failure message="boom: /usr/bin/dpkg"/>',
                 "error": '<error message="x"/>', "skipped": "<skipped/>"}[status]  # fmt: skip
        body += f'<testcase classname="test_immutable" name="{name}">{inner}</testcase>'
    return (
        f'<testsuites><testsuite name="pytest" tests="{len(cases)}">{body}</testsuite></testsuites>'
    )


def make_run(d: Path, image: str, cells: dict[str, tuple[str, dict[str, str] | None, int]]) -> Path:
    """A results dir: cells maps suite name -> (status, test cases or None, tries)."""
    records = []
    for suite, (status, cases, tries) in cells.items():
        axes = {"image": image, "firmware": "uefi", "platform": "qemu", "ignition": "none",
                "suite": suite}  # fmt: skip
        rec = {"cell": ".".join(axes.values()), "axes": axes, "status": status,
               "message": "boot timeout" if cases is None else "",
               "tries": [{"attempt": i + 1} for i in range(tries)],
               "flaky": status == "passed" and tries > 1, "seconds": 1.0}  # fmt: skip
        results.save_cell(d, rec, junit(cases) if cases else "", "console text")
        records.append(rec)
    results.merge(d, records)
    summary = {"cells": records, "cluster": "local:1", "seconds": 1.0}
    (d / results.SUMMARY).write_text(json.dumps(summary))
    return d


def test_journal_refuses_foreign_dirs_and_survives_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        results.Journal(tmp_path / "other", "d1", resume=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    j = results.Journal(tmp_path / "r", "d1", resume=False)
    j.write({"event": "run", "matrix_sha256": "d1"})
    j.write({"event": "done", "cell": "c1", "status": "passed"})
    with open(j.path, "a") as f:
        f.write('{"event": "done", "cell": "c2", "sta')  # the client died mid-write
    with pytest.raises(InputError, match="already holds a matrix run"):
        results.Journal(tmp_path / "r", "d1", resume=False)
    with pytest.raises(InputError, match="different matrix"):
        results.Journal(tmp_path / "r", "d2", resume=True)
    assert list(results.Journal(tmp_path / "r", "d1", resume=True).done()) == ["c1"]


def test_merged_junit_has_a_testsuite_per_cell(tmp_path: Path) -> None:
    d = make_run(tmp_path, "up", {"imm": ("failed", {"t1": "passed", "t2": "failed"}, 1),
                                  "hang": ("error", None, 2)})  # fmt: skip
    root = ET.parse(d / results.MERGED).getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"up.uefi.qemu.none.imm", "up.uefi.qemu.none.hang"}
    props = {
        p.get("name"): p.get("value") for p in suites["up.uefi.qemu.none.hang"].iter("property")
    }
    assert props["matrix.status"] == "error" and props["matrix.tries"] == "2"
    # A cell that never ran its tests still shows up as an errored test case, with the reason.
    err = suites["up.uefi.qemu.none.hang"].find("testcase/error")
    assert err is not None and err.get("message") == "boot timeout"
    assert results.counts(d, "up.uefi.qemu.none.imm") == {"passed": 1, "failed": 1, "error": 0,
                                                          "skipped": 0}  # fmt: skip


def test_compare_finds_regressions_fixed_new_removed_flaky(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", "upstream", {
        "imm": ("failed", {"no_pkgmgr": "passed", "ro_usr": "failed", "gone": "passed"}, 1),
        "health": ("passed", {"units": "passed"}, 1),
        "boot": ("passed", {"ssh": "passed"}, 1),
    })  # fmt: skip
    cand = make_run(tmp_path / "cand", "downstream", {
        "imm": ("failed", {"no_pkgmgr": "failed", "ro_usr": "passed", "added": "passed"}, 1),
        "health": ("passed", {"units": "passed"}, 3),
        "boot": ("error", None, 2),
    })  # fmt: skip
    rep = compare_runs(base, cand)
    assert rep["matched_on"] == ["firmware", "platform", "ignition", "suite"]  # one image each
    regs = {(r["cell"].split(".")[-1], r["test"].split("::")[1], r["candidate"])
            for r in rep["regressions"]}  # fmt: skip
    assert regs == {("imm", "no_pkgmgr", "failed"), ("boot", "ssh", "not run")}
    assert [r["test"] for r in rep["fixed"]] == ["test_immutable::ro_usr"]
    assert [r["test"] for r in rep["new"]] == ["test_immutable::added"]
    assert [r["test"] for r in rep["removed"]] == ["test_immutable::gone"]
    assert [(r["test"], r["tries"]) for r in rep["flaky"]] == [("test_immutable::units", 3)]
    assert "/usr/bin/dpkg" in next(r["message"] for r in rep["regressions"] if "pkg" in r["test"])

    proc = run_cli("--json", "matrix", "compare", base, cand, check=False)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["ok"] is False
    assert "error: 2 regression(s)" in proc.stderr
    proc = run_cli("matrix", "compare", base, base, check=True)
    assert "REGRESSION" not in proc.stdout and "0 regressions" in proc.stdout


def test_compare_refuses_unmatched_images_and_missing_summaries(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", "x", {"s": ("passed", {"t": "passed"}, 1)})
    b = tmp_path / "b"
    b.mkdir()
    proc = run_cli("matrix", "compare", a, b, check=False)
    assert proc.returncode == 1 and "summary.json: not found" in proc.stderr
    two = make_run(tmp_path / "two", "y", {"s": ("passed", {"t": "passed"}, 1)})
    summary = json.loads((two / results.SUMMARY).read_text())
    summary["cells"].append({**summary["cells"][0], "axes": {**summary["cells"][0]["axes"],
                                                             "image": "z"}})  # fmt: skip
    (two / results.SUMMARY).write_text(json.dumps(summary))
    with pytest.raises(InputError, match="cannot line up images"):
        compare_runs(a, two)
