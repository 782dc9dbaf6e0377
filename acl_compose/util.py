"""Small shared helpers: atomic writes, safe path joins, cache location, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write `path` via a temp file in the same directory; fsync and rename on success.

    On any exception the temp file is removed, so a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
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
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def sha256_file(path: str | os.PathLike[str]) -> str:
    return hash_file(path, "sha256")


def hash_file(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, streamed in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
