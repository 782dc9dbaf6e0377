"""The client side of `matrix run`: submit cells, retry infrastructure failures, journal.

Each attempt is one Dask task asking for one `vm` slot. A result whose outcome is `infra`
(boot timeout, QEMU failing, the task's worker lost for good) is resubmitted while the cell
has retries left; test failures and other errors never are. A worker that dies mid-cell is
the scheduler's to handle: it reruns the task on another worker, and the run records that
from the workers' `start` events. Finished cells go to the journal as they finish, so a
crashed or killed client loses only the cells in flight (`--resume`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError
from acl_compose.matrix import cluster, results
from acl_compose.matrix.spec import Cell, Matrix
from acl_compose.matrix.worker import TOPIC, run_cell
from acl_compose.ui import info

SUITE_LIMIT = 8 << 20
# What a future raises when the cluster, not the cell, failed.
INFRA_EXCEPTIONS = {
    "KilledWorker",
    "CommClosedError",
    "CancelledError",
    "FutureCancelledError",
    "TimeoutError",
    "OSError",
}  # suites travel through the scheduler: code, not data


@dataclass
class RunOptions:
    cluster: str
    results_dir: Path
    resume: bool = False
    vms_per_worker: int = 1
    worker_cache_dir: Path | None = None
    ssh: cluster.SshOptions = field(default_factory=cluster.SshOptions)


def suite_files(path: Path) -> tuple[dict[str, str], str]:
    """(relative path -> text, entry) of a suite: a folder, or a file with its folder's
    conftest and helpers (the whole folder travels, the file is the entry)."""
    root, entry = (path, ".") if path.is_dir() else (path.parent, path.name)
    files, total = {}, 0
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if (
            not f.is_file()
            or "__pycache__" in rel.parts
            or any(p.startswith(".") for p in rel.parts)
        ):
            continue
        total += f.stat().st_size
        if total > SUITE_LIMIT:
            raise InputError(
                f"suite {path}: more than {SUITE_LIMIT >> 20} MiB of files under {root}",
                hint="suites travel to the workers with each cell; keep data out",
            )
        try:
            files[str(rel)] = f.read_text()
        except UnicodeDecodeError as e:
            raise InputError(f"{f}: not a text file", hint="suites hold test code only") from e
    return files, entry


class _Payloads:
    """What each cell's task carries, computed once per suite/config/certificate."""

    def __init__(self, run_id: str, worker_cache: Path | None) -> None:
        self.run_id, self.worker_cache = run_id, worker_cache
        self._suites: dict[str, tuple[dict[str, str], str]] = {}
        self._ign: dict[str, str | None] = {}

    def task(self, cell: Cell, attempt: int) -> dict[str, Any]:
        s = cell.suite
        if s["name"] not in self._suites:
            self._suites[s["name"]] = suite_files(Path(s["path"]))
        files, entry = self._suites[s["name"]]
        ign = cell.ignition
        if ign["name"] not in self._ign:
            text = None
            if ign.get("config"):
                from acl_compose.boot.qemu import load_user_config

                text = json.dumps(load_user_config(Path(ign["config"])), separators=(",", ":"))
            self._ign[ign["name"]] = text
        image = dict(cell.image)
        if image.get("cert"):
            image["cert_pem"] = Path(image["cert"]).read_text()
        return {
            "run_id": self.run_id,
            "cell": cell.id,
            "attempt": attempt,
            "image": image,
            "suite_files": files,
            "suite_entry": entry,
            "transport": s["transport"],
            "keyword": s.get("keyword"),
            "firmware": cell.firmware,
            "platform": cell.platform,
            "ignition_json": self._ign[ign["name"]],
            "timeout": cell.timeout,
            "boot_timeout": cell.boot_timeout,
            "vm_name": f"cell-{uuid.uuid4().hex[:8]}",
            "cache_dir": str(self.worker_cache) if self.worker_cache else None,
        }


def _failed_result(cell: Cell, attempt: int, run_id: str, outcome: str, msg: str) -> dict:
    return {
        "cell": cell.id,
        "attempt": attempt,
        "run_id": run_id,
        "outcome": outcome,
        "message": msg,
        "worker": "",
        "host": "",
        "pid": 0,
        "seconds": 0.0,
    }


def _try_of(res: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "attempt",
        "outcome",
        "message",
        "worker",
        "host",
        "pid",
        "seconds",
        "boot_seconds",
        "tests_seconds",
        "image_seconds",
        "phase",
        "started_at",
        "finished_at",
    )
    return {k: res[k] for k in keep if k in res}


def _lost_runs(
    events: list[Any], run_id: str, cell_id: str, attempt: int, finished_by: tuple[str, int] | None
) -> list[dict[str, Any]]:
    """Starts of this attempt on workers that never reported back: lost workers."""
    out = []
    for _, msg in events:
        if not isinstance(msg, dict) or msg.get("run_id") != run_id:
            continue
        if msg.get("cell") != cell_id or msg.get("attempt") != attempt:
            continue
        if finished_by and (msg.get("worker"), msg.get("pid")) == finished_by:
            continue
        out.append(
            {
                "attempt": attempt,
                "outcome": "infra",
                "worker": msg.get("worker", ""),
                "host": msg.get("host", ""),
                "pid": msg.get("pid", 0),
                "message": f"worker {msg.get('worker')} lost mid-cell; the scheduler reran "
                "the cell on another worker",
            }
        )
    return out


def run_matrix(matrix: Matrix, opts: RunOptions) -> dict[str, Any]:
    """Run every unfinished cell; returns the summary (also written to summary.json)."""
    started = time.monotonic()
    journal = results.Journal(opts.results_dir, matrix.digest, opts.resume)
    done = journal.done()
    by_id = matrix.by_id()
    todo = [c for c in matrix.cells if c.id not in done]
    run_id = uuid.uuid4().hex
    journal.write(
        {
            "event": "run",
            "run_id": run_id,
            "matrix_sha256": matrix.digest,
            "matrix": str(matrix.path),
            "cluster": opts.cluster,
            "cells": [c.id for c in matrix.cells],
            "todo": [c.id for c in todo],
            "time": time.time(),
        }
    )
    if done:
        info(f"resuming: {len(done)} cell(s) already finished, {len(todo)} to run")
    records = {cid: rec for cid, rec in done.items() if cid in by_id}
    if todo:
        worker_cache = opts.worker_cache_dir
        payloads = _Payloads(run_id, worker_cache)
        tasks = {c.id: payloads.task(c, 1) for c in todo}  # input errors before any boot
        with cluster.connect(opts.cluster, opts.vms_per_worker, opts.ssh) as client:
            _drive(client, todo, tasks, payloads, journal, records, opts, run_id)
    summary = _summarize(matrix, records, opts, time.monotonic() - started)
    results.merge(opts.results_dir, list(records.values()))
    from acl_compose.util import atomic_write

    atomic_write(
        opts.results_dir / results.SUMMARY, json.dumps(summary, indent=2, sort_keys=True).encode()
    )
    return summary


def _drive(
    client: Any,
    todo: list[Cell],
    tasks: dict[str, dict],
    payloads: _Payloads,
    journal: results.Journal,
    records: dict[str, dict],
    opts: RunOptions,
    run_id: str,
) -> None:
    from distributed import as_completed

    lock = threading.Lock()

    def on_event(event: Any) -> None:
        _, msg = event
        if isinstance(msg, dict) and msg.get("run_id") == run_id and msg.get("event") == "start":
            with lock:
                journal.write(
                    {
                        k: msg.get(k)
                        for k in ("event", "run_id", "cell", "attempt", "worker", "host", "pid")
                    }
                )
            info(
                f"{msg['cell']}: attempt {msg['attempt']} started on {msg.get('host')} "
                f"({msg.get('worker')})"
            )

    client.subscribe_topic(TOPIC, on_event)
    by_id = {c.id: c for c in todo}
    tries: dict[str, list[dict[str, Any]]] = {c.id: [] for c in todo}

    def submit(cell: Cell, attempt: int, task: dict[str, Any]) -> Any:
        return client.submit(
            run_cell,
            task,
            key=f"cell-{run_id[:8]}-{cell.id}-{attempt}",
            resources={cluster.RESOURCE: 1},
            pure=False,
        )

    futures = {submit(by_id[cid], 1, t): (cid, 1) for cid, t in tasks.items()}
    pending = as_completed(list(futures), loop=client.loop)
    for fut in pending:
        cid, attempt = futures.pop(fut)
        cell = by_id[cid]
        try:
            res = fut.result()
        except Exception as e:  # run_cell catches its own: this is Dask's (KilledWorker...)
            kind = type(e).__name__
            outcome = "infra" if kind in INFRA_EXCEPTIONS else "error"
            res = _failed_result(cell, attempt, run_id, outcome, f"{kind}: {e}")
        events = client.get_events(TOPIC)
        finished_by = (res.get("worker"), res.get("pid")) if res.get("worker") else None
        tries[cid] += _lost_runs(events, run_id, cid, attempt, finished_by)
        tries[cid].append(_try_of(res))
        with lock:
            journal.write({"event": "attempt", "run_id": run_id, **_try_of(res), "cell": cid})
        if res["outcome"] == "infra" and attempt <= cell.retries:
            results.save_attempt_log(opts.results_dir, cid, attempt, res.get("console_log", ""))
            info(f"{cid}: attempt {attempt} failed ({res['message']}); retrying")
            new = submit(cell, attempt + 1, payloads.task(cell, attempt + 1))
            futures[new] = (cid, attempt + 1)
            pending.add(new)
            continue
        record = _record(cell, res, tries[cid])
        results.save_cell(
            opts.results_dir, record, res.get("junit_xml", ""), res.get("console_log", "")
        )
        record["counts"] = results.counts(opts.results_dir, cid)
        results.save_cell(opts.results_dir, record, "", "")
        with lock:
            journal.write({"event": "done", **record})
        records[cid] = record
        info(
            f"{cid}: {record['status']}" + (f" ({record['message']})" if record["message"] else "")
        )


def _record(cell: Cell, res: dict[str, Any], tries: list[dict[str, Any]]) -> dict[str, Any]:
    outcome = res["outcome"]
    status = {"passed": "passed", "failed": "failed"}.get(outcome, "error")
    message = res.get("message", "")
    if outcome == "infra":
        message = f"infrastructure failure after {len(tries)} tries: {message}"
    return {
        "cell": cell.id,
        "axes": cell.axes,
        "status": status,
        "message": message,
        "tries": tries,
        "flaky": status == "passed" and len(tries) > 1,
        "boot_seconds": res.get("boot_seconds"),
        "seconds": res.get("seconds", 0.0),
        "worker": res.get("worker", ""),
        "host": res.get("host", ""),
        "image_check": res.get("image_check", ""),
        "timeout": cell.timeout,
        "retries": cell.retries,
    }


def _summarize(
    matrix: Matrix, records: dict[str, dict], opts: RunOptions, seconds: float
) -> dict[str, Any]:
    cells = [records[c.id] for c in matrix.cells if c.id in records]
    totals = {"cells": len(matrix.cells), "finished": len(cells)}
    for s in ("passed", "failed", "error"):
        totals[s] = sum(1 for r in cells if r["status"] == s)
    totals["flaky"] = sum(1 for r in cells if r.get("flaky"))
    return {
        "ok": totals["passed"] == len(matrix.cells),
        "matrix": str(matrix.path),
        "matrix_sha256": matrix.digest,
        "cluster": opts.cluster,
        "seconds": seconds,
        "results_dir": str(opts.results_dir),
        "junit_xml": str(opts.results_dir / results.MERGED),
        "totals": totals,
        "cells": cells,
    }
