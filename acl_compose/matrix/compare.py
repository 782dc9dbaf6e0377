"""`matrix compare BASELINE CANDIDATE`: what the candidate broke, fixed, added and flaked.

Cells are matched by their axes. When both runs tested the same image names the image is part
of the match; when each tested exactly one image (the usual check: upstream release vs. a
downstream build, same matrix otherwise) the image is left out, so the two line up.
- regression: passed on the baseline, failed or errored on the candidate (also when the
  candidate's cell never got to run its tests);
- fixed: failed or errored on the baseline, passed on the candidate;
- new / removed: a test on one side only (both cells ran);
- flaky: passed on the candidate only after an infrastructure retry of its cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acl_compose.errors import InputError
from acl_compose.matrix import results
from acl_compose.matrix.spec import AXES

BAD = ("failed", "error")


def _keyer(base: dict[str, Any], cand: dict[str, Any]) -> tuple[str, ...]:
    images_b = {r["axes"]["image"] for r in base["cells"]}
    images_c = {r["axes"]["image"] for r in cand["cells"]}
    if images_b == images_c:
        return AXES
    if len(images_b) == 1 and len(images_c) == 1:
        return tuple(a for a in AXES if a != "image")
    raise InputError(
        f"cannot line up images {sorted(images_b)} with {sorted(images_c)}",
        hint="compare runs over the same image names, or one image each",
    )


def compare_runs(baseline: Path, candidate: Path) -> dict[str, Any]:
    base, cand = results.load_summary(baseline), results.load_summary(candidate)
    axes = _keyer(base, cand)

    def index(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {".".join(r["axes"][a] for a in axes): r for r in summary["cells"]}

    b_cells, c_cells = index(base), index(cand)
    out: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("regressions", "fixed", "new", "removed", "flaky", "missing_cells")
    }
    for key in sorted(set(b_cells) | set(c_cells)):
        b, c = b_cells.get(key), c_cells.get(key)
        if c is None or b is None:
            out["missing_cells"].append(
                {"cell": key, "missing_in": "candidate" if c is None else "baseline"}
            )
            continue
        bt = results.case_details(baseline, b["cell"])
        ct = results.case_details(candidate, c["cell"])
        for test in sorted(set(bt) | set(ct)):
            bs, cs = bt.get(test, (None, ""))[0], ct.get(test, (None, ""))[0]
            entry = {"cell": key, "test": test, "baseline": bs, "candidate": cs}
            if bs == "passed" and cs in BAD:
                out["regressions"].append({**entry, "message": ct[test][1]})
            elif bs == "passed" and cs is None and c["status"] == "error":
                out["regressions"].append(
                    {**entry, "candidate": "not run", "message": c.get("message", "")}
                )
            elif bs in BAD and cs == "passed":
                out["fixed"].append(entry)
            elif bs is None and cs is not None and not test.startswith("matrix."):
                out["new"].append(entry)
            elif cs is None and bs is not None and c["status"] != "error":
                out["removed"].append(entry)
            if c.get("flaky") and cs == "passed":
                out["flaky"].append({**entry, "tries": len(c.get("tries", []))})
    return {
        "ok": not out["regressions"],
        "baseline": str(baseline),
        "candidate": str(candidate),
        "matched_on": list(axes),
        **out,
    }


def report_lines(rep: dict[str, Any]) -> list[str]:
    lines = []
    labels = (
        ("regressions", "REGRESSION"),
        ("fixed", "fixed"),
        ("new", "new"),
        ("removed", "removed"),
        ("flaky", "flaky"),
    )
    for key, label in labels:
        for e in rep[key]:
            detail = (
                f" ({e['baseline']} -> {e['candidate']})"
                if key != "flaky"
                else f" (passed after {e['tries']} tries)"
            )
            lines.append(f"{label}: {e['cell']}: {e['test']}{detail}")
            if e.get("message"):
                lines.append(f"    {e['message'].splitlines()[0][:200]}")
    for e in rep["missing_cells"]:
        lines.append(f"missing: cell {e['cell']} not in the {e['missing_in']}")
    lines.append(", ".join(f"{len(rep[k])} {k}" for k, _ in labels))
    return lines
