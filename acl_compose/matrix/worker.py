"""The Dask task: one attempt at one cell, on whichever worker has a free `vm` slot.

`run_cell` gets only small things through the scheduler (the image *reference*, the suite's
files, the Ignition JSON) and returns only small things (JUnit XML, the console log's tail,
timings). It resolves and verifies the image in the worker's cache, then runs the boot and
tests in a child process (`cellproc`) in its own session, and enforces the cell's timeout
here, on the worker: at the deadline the child's session and every QEMU process group under
it are killed (SIGTERM, then SIGKILL), so no VM outlives its cell. The child and QEMU also die
with this process (PR_SET_PDEATHSIG) if the worker itself is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from acl_compose.errors import AclComposeError, FetchError
from acl_compose.matrix import cellproc
from acl_compose.run import set_pdeathsig
from acl_compose.util import default_cache_dir, safe_join, signals_held

TOPIC = "acl-matrix"
CONSOLE_TAIL = 256 * 1024
LOG_TAIL = 64 * 1024
KILL_GRACE = 10.0


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _proc_start(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every process below `pid`."""
    children: dict[int, list[tuple[int, int]]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        info = _proc_start(int(d.name))
        if info:
            children.setdefault(info[0], []).append((int(d.name), info[1]))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the child's session (VMs torn down cleanly), then SIGKILL every process group
    left below it: QEMU leads a group of its own, so killing the child's alone is not enough."""
    tree = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE)
    own = os.getpgrp()
    for pid, started in [(proc.pid, -1), *tree]:
        info = _proc_start(pid)
        if info is None or (started >= 0 and info[1] != started):
            continue  # gone, or the pid was reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            pgid = os.getpgid(pid)
            if pgid != own:
                os.killpg(pgid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _worker_info() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "worker": ""}
    with contextlib.suppress(Exception):
        from distributed import get_worker

        info["worker"] = get_worker().address
    return info


def _event(msg: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        from distributed import get_worker

        get_worker().log_event(TOPIC, msg)


def run_cell(task: dict[str, Any]) -> dict[str, Any]:
    """One attempt at one cell (see the module docstring); never raises for a cell's failure."""
    ident = {"cell": task["cell"], "attempt": task["attempt"], "run_id": task["run_id"]}
    info = _worker_info()
    _event({"event": "start", **ident, **info, "time": time.time()})
    start, started_at = time.monotonic(), time.time()
    tmp = None
    try:
        with signals_held():  # a Ctrl-C right after mkdtemp still finds `tmp` to remove
            tmp = Path(tempfile.mkdtemp(prefix="acl-cell-"))
        result = _attempt(task, tmp)
    except AclComposeError as e:
        kind = "infra" if isinstance(e, FetchError) else "error"
        result = {"outcome": kind, "message": f"{e.message} (hint: {e.hint})"}
    except Exception as e:  # a bug: the cell's error, not a reason to retry it elsewhere
        result = {
            "outcome": "error",
            "message": f"{type(e).__name__}: {e}",
            "cell_log": traceback.format_exc(),
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    result.update(seconds=time.monotonic() - start, started_at=started_at, finished_at=time.time())
    return {**ident, **info, **result}


def _attempt(task: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from acl_compose.matrix import images

    cache = Path(task["cache_dir"]) if task.get("cache_dir") else default_cache_dir()
    t0 = time.monotonic()
    image = images.resolve_in_child(task["image"], cache)
    image_seconds = time.monotonic() - t0
    suite_root = tmp / "suite"
    for rel, text in task["suite_files"].items():
        f = safe_join(suite_root, rel, "suite file")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    out = tmp / "out"
    out.mkdir()
    spec = {
        "name": task["vm_name"],
        "out_dir": str(out),
        "image": str(image.path),
        "release_json": str(image.release_json) if image.release_json else None,
        "suite_path": str(safe_join(suite_root, task["suite_entry"], "suite entry")),
        "transport": task["transport"],
        "keyword": task.get("keyword"),
        "firmware": task["firmware"],
        "platform": task["platform"],
        "timeout": task["timeout"],
        "boot_timeout": task.get("boot_timeout"),
        "cache_dir": str(cache),
        "ignition": None,
    }
    if task.get("ignition_json"):
        (tmp / "user.ign").write_text(task["ignition_json"])
        spec["ignition"] = str(tmp / "user.ign")
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, TMPDIR=str(tmp))  # VM temp dirs die with the cell's
    with open(tmp / "cell.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", cellproc.__name__, str(tmp / "spec.json")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=suite_root,  # pytest's rootdir: test ids read test_x::name on every host
            start_new_session=True,
            preexec_fn=set_pdeathsig,
        )
        timed_out = False
        try:
            proc.wait(timeout=task["timeout"])
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.poll() is None:
                kill_tree(proc)  # timeout, or this thread is being torn down
    phase = (out / "phase").read_text() if (out / "phase").exists() else "boot"
    if timed_out:
        # A boot that never finished is the infrastructure's (or a hung guest's) problem and
        # is retried; tests that hang are the cell's own failure.
        result = {
            "outcome": "infra" if phase == "boot" else "error",
            "message": f"timed out after {task['timeout']:g}s while {phase}ing; VM killed",
        }
    elif (out / "result.json").is_file():
        result = json.loads((out / "result.json").read_text())
    else:
        result = {
            "outcome": "error",
            "message": f"cell process exited {proc.returncode} "
            f"without a result; log: {_tail(tmp / 'cell.log', 2000)}",
        }
    junit = out / cellproc.JUNIT
    result.update(
        image_seconds=image_seconds,
        image_check=image.verified,
        junit_xml=junit.read_text(errors="replace") if junit.is_file() and not timed_out else "",
        console_log=_tail(out / cellproc.CONSOLE, CONSOLE_TAIL),
        cell_log=_tail(tmp / "cell.log", LOG_TAIL),
        phase=phase,
    )
    return result
