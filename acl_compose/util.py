"""Small shared helpers: atomic writes, safe path joins, cache location, hashing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from acl_compose.errors import InputError

CHUNK = 1 << 20


def lazy_exports(package: str, api: dict[str, list[str]]) -> tuple[Any, Any, list[str]]:
    """A stage package's public API, imported on first use (PEP 562).

    `api` maps each inner module to the names it exports (a module may export itself). Callers
    write `from acl_compose.fetch import fetch_release`; only the module that defines the name
    is imported, so `acl-compose verity --help` does not pay for requests or cryptography.
    """
    where = {name: module for module, names in api.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{where[name]}")
        return module if name == where[name] else getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(where)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "acl-compose"


# ----------------------------------------------------------------- temp files and signals
# Ctrl-C (and SIGTERM, under terminate_as_interrupt) raise wherever Python happens to be. A
# temp file made by mkstemp before its `try:` is orphaned by one arriving in between, so
# every temp path is created with those signals held, inside the try that removes it.
_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM (those handled in Python, i.e. raising) for the block, then
    deliver them as it ends. Use inside the `try` that cleans up what the block creates:

        tmp = None
        try:
            with signals_held():
                tmp = make_it()
            ...
        except BaseException: remove tmp if not None

    A signal whose handler is SIG_DFL ends the process at once anyway (like SIGKILL)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs handlers in the main thread only: nothing raises here
        return
    pending: list[int] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    try:
        for sig in _HELD:
            handler = signal.getsignal(sig)
            if callable(handler):
                previous[sig] = handler  # recorded before the swap: the finally restores it
                signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)  # its real handler runs now (and raises)


@contextlib.contextmanager
def scratch_dir(
    prefix: str, suffix: str = "", dir: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """A temp folder for the block, removed however the block ends (Ctrl-C included)."""
    tmp = None
    try:
        with signals_held():
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=dir))
        yield tmp
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write `path` via a temp file in the same directory; fsync and rename on success.

    On any exception the temp file is removed, so a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with signals_held():  # a Ctrl-C right after mkstemp still finds `tmp` to remove
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    with atomic_file(path, mode) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp directory beside `final`; on success replace `final` with it.

    Ctrl-C or an error leaves `final` untouched and removes the temp directory.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with signals_held():
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """`kill` (SIGTERM) unwinds like Ctrl-C, so the staging folder is removed.
    (SIGKILL cannot be caught: it leaves `.OUT_DIR.*.tmp` beside OUT_DIR, never OUT_DIR.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked worker (verity's pool): die as usual, quietly
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def safe_join(root: str | os.PathLike[str], relative: str, what: str = "path") -> Path:
    """Join `relative` under `root`, refusing anything that escapes it (.., absolute, symlinks)."""
    root_p = Path(root).resolve()
    candidate = (root_p / relative.lstrip("/")).resolve()
    if candidate != root_p and root_p not in candidate.parents:
        raise InputError(
            f"{what} {relative!r} escapes {root}",
            hint="use a path inside the directory, without '..' or symlinks leading out",
        )
    return candidate


def data_ranges(fd: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """(offset, length) of the data (non-hole) ranges of `fd` within [start, end)."""
    if end is None:
        end = os.fstat(fd).st_size
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                return
            yield pos, end - pos  # filesystem without SEEK_DATA: all data
            return
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole


def sha256_file(path: str | os.PathLike[str]) -> str:
    return hash_file(path, "sha256")


def hash_file(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, streamed in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def refuse_overwriting_inputs(
    output: str | os.PathLike[str] | None, *inputs: str | os.PathLike[str] | None
) -> None:
    """An output file must not be a directory or one of the command's own inputs."""
    if output is None:
        return
    out = Path(output)
    if out.is_dir():
        raise InputError(f"output {out} is a directory", hint="give a file name to write")
    for i in inputs:
        if i is not None and out.exists() and Path(i).exists() and os.path.samefile(out, i):
            raise InputError(
                f"output {out} is also an input ({i})", hint="write the output to another file"
            )


# ----------------------------------------------------------------- output folders

OUTPUT_RECORD = ".acl-compose-output.json"


class OutputDir:
    """The one rule for every `-o/--output DIR` (README, "Conventions of every command").

    - DIR missing or empty: created, holding only this command's files.
    - DIR holds a previous output of the same command (the record file below names what that
      command wrote there): those files may be replaced; nothing else there is touched.
    - any other non-empty DIR: refused, unless `force`; then the files are added beside.
    A file the tool did not write is never replaced or deleted, force or not. Everything is
    built in a staging directory beside DIR (same filesystem) and moved in only when the
    command succeeded, so a failure leaves DIR as it was.

    `replace`: the new output replaces the previous one of the same command (its files that
    were not written again go); otherwise outputs accumulate (`sysext build` of two bundles).
    `previous`: how to recognise an earlier output by its own files instead of a record
    (compose: release.json lists everything it wrote, so a release folder carries no record).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        command: str,
        *,
        force: bool = False,
        replace: bool = False,
        previous: Callable[[Path], set[str]] | None = None,
    ) -> None:
        from acl_compose.ui import opt

        self.path = Path(path)
        self.command = command
        self.replace = replace
        self.record = previous is None
        self.records: dict[str, list[str]] = {}
        self.owned: set[str] = set()
        if not (self.path.exists() or self.path.is_symlink()):
            return
        if not self.path.is_dir():
            raise InputError(
                f"output {self.path} exists and is not a folder",
                hint="give a folder (new, empty, or an earlier output of this command)",
            )
        self.records = self._read_records()
        self.owned = set(self.records.get(command, ()))
        if not self.owned and previous is not None:
            self.owned = previous(self.path)
        others = [n for n in os.listdir(self.path) if n != OUTPUT_RECORD]
        if others and not self.owned and not force:
            force_opt = opt("--force", "")
            raise InputError(
                f"output folder {self.path} is not empty and holds no earlier output of "
                f"`acl-compose {command}`",
                hint="choose a new or empty folder"
                + (f", or pass {force_opt} to add to it" if force_opt else "")
                + " (files acl-compose did not write are never replaced or deleted)",
            )

    def _read_records(self) -> dict[str, list[str]]:
        try:
            data = json.loads((self.path / OUTPUT_RECORD).read_text())
            commands = data["commands"]
            return {str(k): [str(f) for f in v] for k, v in commands.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def check(self, names: Iterable[str]) -> None:
        """Refuse (before any work, when the names are known) to replace what we did not
        write. Names are relative paths; parents must be folders, not symlinks."""
        for rel in names:
            dest = self.path / rel
            for parent in list(Path(rel).parents)[:-1]:
                p = self.path / parent
                if p.is_symlink() or (p.exists() and not p.is_dir()):
                    raise self._conflict(p)
            if (dest.exists() or dest.is_symlink()) and rel not in self.owned:
                raise self._conflict(dest)

    def _conflict(self, path: Path) -> InputError:
        return InputError(
            f"{path} exists and was not written by `acl-compose {self.command}`",
            hint="move it away or choose another output folder: acl-compose never replaces or "
            "deletes files it did not write",
        )

    @contextlib.contextmanager
    def staging(self, last: Sequence[str] = (), remove: Sequence[str] = ()) -> Iterator[Path]:
        """A temporary folder to write the output into; moved into DIR on success.

        `last`: names moved in last (and, if owned, removed first), so that a release.json in
        DIR always describes complete files. `remove`: names to delete if we wrote them before
        (stale side files)."""
        parent = self.path.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        with scratch_dir(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent) as tmp:
            yield tmp
            self._commit(tmp, last, remove)

    def _commit(self, staged: Path, last: Sequence[str], remove: Sequence[str]) -> None:
        files = _tree_files(staged)
        self.check(files + [r for r in remove if r not in files])
        if self.replace:
            stale = self.owned - set(files)
        else:
            stale = {r for r in remove if r in self.owned and r not in files}
        records = dict(self.records)
        records[self.command] = sorted(set(files) | (set() if self.replace else self.owned - stale))
        record = json.dumps({"commands": records}, indent=2, sort_keys=True).encode()
        if not self.path.exists():
            if self.record:
                atomic_write(staged / OUTPUT_RECORD, record)
            umask = os.umask(0o022)
            os.umask(umask)
            os.chmod(staged, 0o777 & ~umask)  # mkdtemp made it 0700
            os.replace(staged, self.path)
            return
        ordered = [f for f in files if f not in last] + [f for f in last if f in files]
        for rel in last:
            if rel in self.owned:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / rel)
        for rel in ordered:
            (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged / rel, self.path / rel)
        for rel in sorted(stale):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(self.path / rel)
            for parent in list(Path(rel).parents)[:-1]:  # folders it leaves empty
                try:
                    os.rmdir(self.path / parent)
                except OSError:
                    break
        if self.record:
            atomic_write(self.path / OUTPUT_RECORD, record)


def _tree_files(root: Path) -> list[str]:
    """Relative paths of the files and symlinks under `root` (symlinks are not followed)."""
    out: list[str] = []
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    out.append(str(Path(e.path).relative_to(root)))
    return sorted(out)
