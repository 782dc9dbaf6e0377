"""RESULTS_DIR: the journal of finished cells, per-cell files, the merged JUnit and summary.

Layout: `journal.jsonl` (one JSON object per line, fsynced: `run`, `start`, `attempt`,
`done`), `cells/<cell>/{junit.xml,console.log,result.json}` (console logs of failed attempts
as `console.attempt<N>.log`), then `junit.xml` (a testsuite per cell) and `summary.json`.
A cell is finished once its `done` line is in the journal; its files are written before it.
"""

from __future__ import annotations

import json
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError
from acl_compose.ui import opt
from acl_compose.util import atomic_write, safe_join

JOURNAL = "journal.jsonl"
SUMMARY = "summary.json"
MERGED = "junit.xml"


class Journal:
    """Append-only JSON lines; a torn last line (a crash mid-write) is ignored."""

    def __init__(self, results_dir: Path, digest: str, resume: bool) -> None:
        self.dir = results_dir
        self.path = results_dir / JOURNAL
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        if self.path.exists():
            if not resume:
                raise InputError(
                    f"{results_dir} already holds a matrix run ({JOURNAL})",
                    hint=f"pass {opt('--resume', 'the resume option')} to finish it, or choose "
                    "another RESULTS_DIR",
                )
            self.entries = read_journal(self.path)
            digests = {e.get("matrix_sha256") for e in self.entries if e.get("event") == "run"}
            if digests and digests != {digest}:
                raise InputError(
                    f"{self.path}: recorded for a different matrix (its cells changed)",
                    hint="resume with the same MATRIX.yaml, or choose another RESULTS_DIR",
                )
        elif results_dir.exists() and any(results_dir.iterdir()):
            raise InputError(
                f"{results_dir} is not empty and holds no matrix journal",
                hint="choose a new or empty RESULTS_DIR (nothing there is overwritten)",
            )
        results_dir.mkdir(parents=True, exist_ok=True)

    def done(self) -> dict[str, dict[str, Any]]:
        return {e["cell"]: e for e in self.entries if e.get("event") == "done"}

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self._lock:
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.entries.append(entry)


def read_journal(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # torn by a crash
        if isinstance(entry, dict):
            out.append(entry)
    return out


def cell_dir(results_dir: Path, cell_id: str) -> Path:
    return safe_join(results_dir / "cells", cell_id, "cell id")


def save_attempt_log(results_dir: Path, cell_id: str, attempt: int, console: str) -> None:
    if console:
        d = cell_dir(results_dir, cell_id)
        atomic_write(d / f"console.attempt{attempt}.log", console.encode())


def save_cell(results_dir: Path, record: dict[str, Any], junit: str, console: str) -> None:
    d = cell_dir(results_dir, record["cell"])
    if junit:
        atomic_write(d / "junit.xml", junit.encode())
    if console:
        atomic_write(d / "console.log", console.encode())
    atomic_write(d / "result.json", json.dumps(record, indent=2, sort_keys=True).encode())


def _suites_of(path: Path) -> list[ET.Element]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    return [root] if root.tag == "testsuite" else root.findall("testsuite")


def merge(results_dir: Path, records: list[dict[str, Any]]) -> Path:
    """One <testsuites>: a <testsuite> per cell named by its id, with the cell's facts as
    properties; a cell that never ran its tests gets one errored testcase saying why."""
    merged = ET.Element("testsuites")
    for rec in sorted(records, key=lambda r: r["cell"]):
        suites = _suites_of(cell_dir(results_dir, rec["cell"]) / "junit.xml")
        if not suites:
            s = ET.Element(
                "testsuite",
                name=rec["cell"],
                tests="1",
                errors="1",
                failures="0",
                skipped="0",
                time=f"{rec.get('seconds', 0):.1f}",
            )
            case = ET.SubElement(s, "testcase", classname=f"matrix.{rec['cell']}", name="cell")
            ET.SubElement(case, "error", message=rec.get("message", "")[:2000])
            suites = [s]
        for i, s in enumerate(suites):
            s.set("name", rec["cell"] if len(suites) == 1 else f"{rec['cell']}.{i + 1}")
            props = s.find("properties")
            if props is None:
                props = ET.Element("properties")
                s.insert(0, props)
            facts = {
                **{f"matrix.{k}": v for k, v in rec.get("axes", {}).items()},
                "matrix.status": rec["status"],
                "matrix.tries": len(rec.get("tries", [])),
                "matrix.worker": rec.get("host", ""),
            }
            for k, v in facts.items():
                ET.SubElement(props, "property", name=k, value=str(v))
            merged.append(s)
    dest = results_dir / MERGED
    atomic_write(dest, ET.tostring(merged, encoding="utf-8", xml_declaration=True))
    return dest


def cases(results_dir: Path, cell_id: str) -> dict[str, str]:
    """test id -> passed | failed | error | skipped, from a cell's own JUnit file."""
    return {k: v[0] for k, v in case_details(results_dir, cell_id).items()}


def case_details(results_dir: Path, cell_id: str) -> dict[str, tuple[str, str]]:
    """test id -> (status, failure message) from a cell's own JUnit file."""
    out = {}
    for s in _suites_of(cell_dir(results_dir, cell_id) / "junit.xml"):
        for case in s.iter("testcase"):
            status, message = "passed", ""
            for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
                el = case.find(tag)
                if el is not None:
                    status, message = name, (el.get("message") or el.text or "").strip()
                    break
            out[f"{case.get('classname')}::{case.get('name')}"] = (status, message[:500])
    return out


def counts(results_dir: Path, cell_id: str) -> dict[str, int]:
    c = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for status in cases(results_dir, cell_id).values():
        c[status] += 1
    return c


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The table on stdout: one row per cell, then the totals."""
    head = ("CELL", "STATUS", "PASS", "FAIL", "ERR", "SKIP", "TRIES", "BOOT", "TIME", "HOST")
    rows = [head]
    for rec in summary["cells"]:
        c = rec.get("counts", {})
        boot = rec.get("boot_seconds")
        rows.append(
            (
                rec["cell"],
                rec["status"],
                str(c.get("passed", 0)),
                str(c.get("failed", 0)),
                str(c.get("error", 0)),
                str(c.get("skipped", 0)),
                str(len(rec.get("tries", []))),
                f"{boot:.1f}s" if boot else "-",
                f"{rec.get('seconds', 0):.1f}s",
                rec.get("host", "") or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    t = summary["totals"]
    lines.append(
        f"{t['cells']} cells: {t['passed']} passed, {t['failed']} failed, "
        f"{t['error']} errors ({t['flaky']} flaky: passed on retry); "
        f"{summary['seconds']:.1f}s on {summary['cluster']}"
    )
    return lines


def load_summary(results_dir: Path) -> dict[str, Any]:
    path = Path(results_dir) / SUMMARY
    if not path.is_file():
        raise InputError(
            f"{path}: not found", hint="give a RESULTS_DIR written by `acl-compose matrix run`"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from e
