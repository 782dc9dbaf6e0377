"""What a failed boot leaves behind: the console log, QEMU's command line and its stderr.

A VM's files live in a temporary directory that teardown removes; when the boot failed they
are the only clue. So teardown first copies them out and rewrites the error's message and hint
to name the copies: every path the error names exists afterwards. Where: beside the console
log when the caller chose where it goes (`test` puts `junit.console.log` beside the JUnit XML,
so `junit.qemu-cmdline.txt` joins it), else into a new `acl-boot-failed-*` folder in the temp
dir (`boot`). With `keep` the whole directory stays, as it always did, and the command line is
written into it. Ctrl-C is not a failure: nothing is kept.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from acl_compose.errors import AclComposeError

CONSOLE = "console.log"
CMDLINE = "qemu-cmdline.txt"
STDERR = "qemu-stderr.txt"


class _VM(Protocol):
    name: str
    keep: bool
    workdir: Path | None
    console_log: Path | None
    argv: list[str]


def keep_failure(vm: _VM, failure: BaseException | None) -> Path | None:
    """After a failure (an Exception, not Ctrl-C), copy the VM's console log, command line
    and stderr to safety and name them in the error. Returns the folder, or None when there
    was no failure or QEMU never started."""
    if not isinstance(failure, Exception) or not vm.workdir or not vm.argv:
        return None
    try:
        return _keep(vm, failure)
    except OSError:  # teardown goes on; the error keeps naming what it named
        return None


def _keep(vm: _VM, failure: Exception) -> Path:
    assert vm.workdir
    cmdline = shlex.join(vm.argv) + "\n"
    if vm.keep:
        (vm.workdir / CMDLINE).write_text(cmdline)
        _name_in(failure, {}, f"everything is kept in {vm.workdir}")
        return vm.workdir
    console = vm.console_log
    if console and vm.workdir not in console.parents:  # the caller's place: keep them beside
        folder = console.parent
        prefix = console.name.removesuffix(CONSOLE) if console.name.endswith(CONSOLE) else (
            f"{console.stem}.")  # fmt: skip
    else:
        folder, prefix = Path(tempfile.mkdtemp(prefix=f"acl-boot-failed-{vm.name}-")), ""
    kept = {name: folder / f"{prefix}{name}" for name in (CONSOLE, CMDLINE, STDERR)}
    moved: dict[str, str] = {}
    if vm.console_log and vm.console_log.exists() and vm.console_log != kept[CONSOLE]:
        shutil.copyfile(vm.console_log, kept[CONSOLE])
        moved[str(vm.console_log)] = str(kept[CONSOLE])
    kept[CMDLINE].write_text(cmdline)
    stderr = vm.workdir / "qemu.stderr"
    if stderr.exists():
        shutil.copyfile(stderr, kept[STDERR])
    else:
        del kept[STDERR]
    moved[str(vm.workdir)] = str(folder)  # any other path into the deleted directory
    files = ", ".join(str(p) for p in kept.values() if p.exists())
    _name_in(failure, moved, f"kept for you: {files}")
    return folder


def _name_in(failure: Exception, moved: dict[str, str], hint: str) -> None:
    """Point the error's message at the kept files and say where they are in its hint."""
    if not isinstance(failure, AclComposeError):
        return
    message = failure.message
    for old, new in moved.items():
        message = message.replace(old, new)
    with contextlib.suppress(AttributeError, TypeError):
        failure.args = (message, *failure.args[1:])
        failure.hint = hint
