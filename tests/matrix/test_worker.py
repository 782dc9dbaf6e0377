"""The worker's timeout kill: the cell's session and QEMU-like groups below it all die."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from acl_compose.matrix import worker
from acl_compose.run import set_pdeathsig

# A "cell process" that starts a child in a session of its own (as QEMU is) and ignores
# SIGTERM, so only the SIGKILL of every group below it ends the tree.
CELL = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
p = subprocess.Popen(["sleep", "300"], start_new_session=True)
print(p.pid, flush=True)
time.sleep(300)
"""


def test_kill_tree_kills_children_in_their_own_sessions(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CELL], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=set_pdeathsig)  # fmt: skip
    grandchild = int(proc.stdout.readline())
    assert os.getpgid(grandchild) == grandchild != os.getpgid(proc.pid)
    assert [p for p, _ in worker.descendants(proc.pid)] == [grandchild]
    worker.KILL_GRACE = 1.0
    start = time.monotonic()
    worker.kill_tree(proc)
    assert proc.returncode is not None and time.monotonic() - start < 15
    for _ in range(50):
        if worker._proc_start(grandchild) is None:
            break
        time.sleep(0.1)
    assert worker._proc_start(grandchild) is None, "the session-leading grandchild survived"
