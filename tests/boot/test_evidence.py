"""A failed boot keeps its console log and QEMU command line, and the error names them.

Real boots of tiny disks (tests/tinydisk.py: GRUB printing a kernel-panic line, or nothing),
under SeaBIOS and OVMF: seconds each, no full OS. Every path an error names must exist after
the command returned; `--keep` keeps the whole VM directory as before.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from acl_compose.boot import evidence, qemu
from tests import tinydisk
from tests.conftest import REPO, run_cli


@pytest.fixture(scope="session")
def panic_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-panic")
    return tinydisk.build(d / "panic.img", tinydisk.PANIC, d / "work", bios=True)


@pytest.fixture(scope="session")
def silent_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-silent")
    return tinydisk.build(d / "silent.img", tinydisk.SILENT, d / "work", bios=True)


def _named_console(stderr: str) -> Path:
    """The console log the `error:` line names (the progress lines name the VM's own)."""
    m = re.search(r"^error: .*console: (\S+console\.log)", stderr, re.MULTILINE)
    assert m, stderr
    return Path(m.group(1))


def test_keep_failure_renames_paths_in_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    work = tmp_path / "acl-vm-x"
    work.mkdir()
    (work / "console.log").write_text("Kernel panic - not syncing: x\n")
    (work / "qemu.stderr").write_text("qemu: terminating\n")
    vm = SimpleNamespace(name="vm", keep=False, workdir=work, console_log=work / "console.log",
                         argv=["qemu-system-x86_64", "-drive", "file=a b"])  # fmt: skip
    err = qemu.BootError(f"guest failed; console: {work}/console.log (overlay {work}/disk)")
    folder = evidence.keep_failure(vm, err)  # type: ignore[arg-type]
    assert folder and folder.parent == tmp_path and folder.name.startswith("acl-boot-failed-vm-")
    kept = folder / "console.log"
    assert err.message == f"guest failed; console: {kept} (overlay {folder}/disk)"
    assert kept.read_text() == "Kernel panic - not syncing: x\n"
    assert (folder / "qemu-cmdline.txt").read_text() == "qemu-system-x86_64 -drive 'file=a b'\n"
    assert (folder / "qemu-stderr.txt").read_text() == "qemu: terminating\n"
    assert str(kept) in err.hint and "qemu-cmdline.txt" in err.hint
    # A console log the caller placed (test: beside the JUnit XML): the rest joins it.
    beside = tmp_path / "res" / "junit.console.log"
    beside.parent.mkdir()
    beside.write_text("x\n")
    vm.console_log = beside
    err = qemu.BootError(f"guest failed; console: {beside}")
    assert evidence.keep_failure(vm, err) == beside.parent  # type: ignore[arg-type]
    assert err.message == f"guest failed; console: {beside}"
    assert (beside.parent / "junit.qemu-cmdline.txt").is_file()
    assert sorted(p.name for p in beside.parent.iterdir()) == [
        "junit.console.log", "junit.qemu-cmdline.txt", "junit.qemu-stderr.txt"]  # fmt: skip
    # Ctrl-C is no failure: nothing kept.
    assert evidence.keep_failure(vm, KeyboardInterrupt()) is None  # type: ignore[arg-type]
    # QEMU never started (e.g. a bad Ignition config): nothing to keep, the error unchanged.
    vm.argv = []
    other = qemu.BootError("x")
    assert evidence.keep_failure(vm, other) is None and other.message == "x"  # type: ignore[arg-type]


def test_ctrl_c_keeps_nothing(silent_disk: Path, tmp_path: Path) -> None:
    console = tmp_path / "kept" / "console.log"
    console.parent.mkdir()
    vm = qemu.VM(silent_disk, firmware="bios", accel="tcg", ssh=False, cache_dir=tmp_path,
                 console_log=console)  # fmt: skip
    with pytest.raises(KeyboardInterrupt), vm:
        raise KeyboardInterrupt
    assert not vm.workdir.exists()  # type: ignore[union-attr]
    assert [p.name for p in console.parent.iterdir()] == ["console.log"]


def test_boot_failure_keeps_console_and_command_line(panic_disk: Path, tmp_path: Path) -> None:
    """SeaBIOS -> GRUB (BIOS) prints a panic line: the boot fails at once, and the console
    log the error names exists afterwards, beside QEMU's command line."""
    proc = run_cli("--cache-dir", tmp_path / "cache", "boot", panic_disk, "--firmware", "bios",
                   "--accel", "tcg", "--run", "true", env={"TMPDIR": str(tmp_path)},
                   timeout=600)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Kernel panic - not syncing: acl-compose tiny test disk" in proc.stderr
    console = _named_console(proc.stderr)
    folder = console.parent
    assert folder.name.startswith("acl-boot-failed-vm-") and folder.parent == tmp_path
    assert "acl-compose tiny test disk" in console.read_text(errors="replace")
    cmdline = (folder / "qemu-cmdline.txt").read_text()
    assert cmdline.startswith(shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64")
    assert "-drive if=virtio,file=" in cmdline and "-serial chardev:ser0" in cmdline
    assert f"hint: kept for you: {console}, {folder}/qemu-cmdline.txt" in proc.stderr
    assert not list(tmp_path.glob("acl-vm-*")), "the VM's own directory is still removed"


def test_boot_timeout_names_a_console_that_exists(silent_disk: Path, tmp_path: Path) -> None:
    """The issue's case: a guest that never answers. After the timeout the console is kept."""
    proc = run_cli("--cache-dir", tmp_path / "cache", "boot", silent_disk, "--firmware", "uefi",
                   "--accel", "tcg", "--boot-timeout", "8", "--run", "true",
                   env={"TMPDIR": str(tmp_path)}, timeout=600)  # fmt: skip
    assert proc.returncode == 1
    assert "error: no healthy SSH after 8s" in proc.stderr
    console = _named_console(proc.stderr)
    assert console.is_file() and console.parent.name.startswith("acl-boot-failed-vm-")
    assert (console.parent / "qemu-cmdline.txt").is_file()


def test_keep_keeps_the_whole_directory(panic_disk: Path, tmp_path: Path) -> None:
    proc = run_cli("--cache-dir", tmp_path / "cache", "boot", panic_disk, "--firmware", "bios",
                   "--accel", "tcg", "--keep", "--run", "true", env={"TMPDIR": str(tmp_path)},
                   timeout=600)  # fmt: skip
    assert proc.returncode == 1
    console = _named_console(proc.stderr)
    workdir = console.parent
    assert workdir.name.startswith("acl-vm-") and console.is_file()
    assert (workdir / "disk.qcow2").is_file() and (workdir / "qemu-cmdline.txt").is_file()
    assert f"hint: everything is kept in {workdir}" in proc.stderr
    assert not list(tmp_path.glob("acl-boot-failed-*"))


def test_test_command_keeps_them_beside_the_junit(panic_disk: Path, tmp_path: Path) -> None:
    """`acl-compose test` under OVMF: GRUB (UEFI) panics; console and command line are kept
    beside the JUnit file, as its other artifacts."""
    junit = tmp_path / "results" / "junit.xml"
    proc = run_cli("--cache-dir", tmp_path / "cache", "test", panic_disk, "--accel", "tcg",
                   "--junit-xml", junit, env={"TMPDIR": str(tmp_path)},
                   timeout=600)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    console = _named_console(proc.stderr)
    assert console == junit.parent / "junit.console.log"
    assert "acl-compose tiny test disk" in console.read_text(errors="replace")
    assert "-drive if=pflash" in (junit.parent / "junit.qemu-cmdline.txt").read_text()
    assert (junit.parent / "junit.qemu-stderr.txt").is_file()
    assert not list(tmp_path.glob("acl-*")), "nothing left in the temp dir"


def test_qemu_tests_plugin_keeps_them_too(panic_disk: Path, tmp_path: Path) -> None:
    """`pytest qemu-tests/ --image`: the boot fails in the plugin; its error names the kept
    console log."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "qemu-tests/test_health.py", "--image", str(panic_disk),
         "--firmware", "bios", "--accel", "tcg", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    m = re.search(r"console: (\S+/acl-boot-failed-qemu-tests-\w+/console\.log)", out)
    assert m, out[-3000:]
    assert "acl-compose tiny test disk" in Path(m.group(1)).read_text(errors="replace")
    assert (Path(m.group(1)).parent / "qemu-cmdline.txt").is_file()
