"""The download cache: a content-addressed store plus a name index.

Layout under the cache dir:
  blobs/sha512/ab/<sha512>                verified release files (read-only)
  blobs/sha256/ab/<sha256>/<name>         pinned generic downloads (`fetch.download`)
  releases/<signer>/<board>/<version>/<name>          symlink to the blob
  releases/<signer>/<board>/<version>/.meta/<name>.json   size, sha512, signature, trust
  releases/<signer>/<board>/current-<channel>.json     last `current` seen (for --offline)
  locks/<key>.lock                         fcntl locks serialising work on one artifact
  tmp/                                     in-progress downloads (same filesystem: atomic rename)
Index entries are written last, after verification, so the index never names an unverified file.
The index is keyed by what was verified (the trusted key's primary fingerprint, board, version),
not by where it came from: the same signed release served on another host or port is the same
cache entry. Online, an entry is reused only if its sha512 is the one the server's signed DIGESTS
names now, so a re-signed release with the same version is never served stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from acl_compose.util import atomic_write, hash_file, signals_held


def _component(text: str) -> str:
    """A safe single path component (fingerprints and channels are already; be defensive)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


class Cache:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- locking and temp files -------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive lock for `key` across processes (released when the process dies)."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        path = locks / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def temp_file(self, name: str) -> Iterator[tuple[Path, Any]]:
        """An open temp file in the cache; removed unless the caller moved it away."""
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = None
        try:
            with signals_held():  # a Ctrl-C right after mkstemp still finds `tmp` to remove
                fd, tmp = tempfile.mkstemp(prefix=f"{name}.", suffix=".part", dir=tmp_dir)
            with os.fdopen(fd, "wb") as f:
                yield Path(tmp), f
        finally:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    # -- content-addressed blobs ------------------------------------------------------
    def blob_path(self, sha512: str) -> Path:
        return self.root / "blobs" / "sha512" / sha512[:2] / sha512

    def store(self, tmp: Path, sha512: str) -> Path:
        """Move a verified temp file into the store (read-only afterwards).

        No fsync: every reuse re-checks size and digest (blob_ok), so a blob torn by a crash
        is caught and fetched again, and waiting for the disk would only slow each fetch.
        """
        dest = self.blob_path(sha512)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        return dest

    def blob_ok(self, path: Path, size: int, digest: str, algorithm: str = "sha512") -> bool:
        """Re-check a stored file before reuse: size first (cheap), then the digest."""
        try:
            if path.stat().st_size != size:
                return False
        except FileNotFoundError:
            return False
        return hash_file(path, algorithm) == digest

    # -- the name index ---------------------------------------------------------------
    def release_dir(self, signer: str, board: str, version: str) -> Path:
        return self.root / "releases" / _component(signer) / _component(board) / version

    def entry(self, signer: str, board: str, version: str, name: str) -> dict[str, Any] | None:
        meta = self.release_dir(signer, board, version) / ".meta" / f"{name}.json"
        try:
            data = json.loads(meta.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def link_path(self, signer: str, board: str, version: str, name: str) -> Path:
        return self.release_dir(signer, board, version) / name

    def record(
        self, signer: str, board: str, version: str, name: str, blob: Path, meta: dict[str, Any]
    ) -> Path:
        """Point the index at a stored blob; metadata is written after the link (readers
        check the metadata, so an entry is visible only once both exist)."""
        link = self.link_path(signer, board, version, name)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{name}.{os.getpid()}.link")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.path.relpath(blob, link.parent), tmp)
        os.replace(tmp, link)
        meta_path = link.parent / ".meta" / f"{name}.json"
        atomic_write(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
        return link

    def forget(self, signer: str, board: str, version: str, name: str) -> None:
        """Drop an index entry that failed its re-check."""
        d = self.release_dir(signer, board, version)
        for p in (d / ".meta" / f"{name}.json", d / name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    def _current_path(self, signer: str, board: str, channel: str) -> Path:
        name = f"current-{_component(channel)}.json"
        return self.root / "releases" / _component(signer) / _component(board) / name

    def set_current(self, signer: str, board: str, channel: str, version: str) -> None:
        data = json.dumps({"version": version}).encode()
        atomic_write(self._current_path(signer, board, channel), data)

    def current(self, signer: str, board: str, channel: str) -> str | None:
        path = self._current_path(signer, board, channel)
        try:
            return str(json.loads(path.read_text())["version"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
