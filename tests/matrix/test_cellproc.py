"""matrix.cellproc: how a cell tells a guest that failed from a harness that failed."""

from __future__ import annotations

from pathlib import Path

from acl_compose.matrix import cellproc


def test_guest_fault_names_the_fatal_console_line(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text('[  1.0] booting\nGenerating "/run/initramfs/rdsosreport.txt"\nmore\n')
    assert cellproc._guest_fault(log) == 'Generating "/run/initramfs/rdsosreport.txt"'
    log.write_text("[ 9.1] Kernel panic - not syncing: Attempted to kill init!\n")
    assert cellproc._guest_fault(log).startswith("[ 9.1] Kernel panic")


def test_no_guest_fault_in_a_healthy_or_missing_log(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("[  OK  ] Reached target multi-user.target\nlocalhost login:\n")
    assert cellproc._guest_fault(log) is None
    assert cellproc._guest_fault(tmp_path / "absent.log") is None
