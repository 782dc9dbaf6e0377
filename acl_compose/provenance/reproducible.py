"""`compose --check-reproducible`: compose twice, apart, and compare every output byte.

The two builds run in separate temporary directories beside OUT_DIR, each with its own new,
empty cache: nothing built (decompressed base, sysext filesystems, signed images) is shared.
Only the verified downloads (release artifacts, pinned sysext downloads) are linked into both
caches from the user's, since they are the inputs, and fetch re-verifies them before use.
SOURCE_DATE_EPOCH is fixed once for both (from the environment or the manifest, else now).

Identical: build A becomes OUT_DIR. Different: nothing is written to OUT_DIR; the error names
the first differing file and byte offset (and, inside a disk image, the partition), and both
builds are kept for inspection (`acl-compose diff A B`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from acl_compose import ui
from acl_compose.compose import RELEASE_LAST, Manifest, compose, release_output
from acl_compose.errors import AclComposeError, VerificationError
from acl_compose.image import gpt, sparse
from acl_compose.util import signals_held

CHUNK = 1 << 20
SHARED_CACHE = ("blobs", "releases")  # fetch's verified downloads and their index


def seed_downloads(src: Path, dst: Path) -> None:
    """Link (or copy) the fetch cache's verified downloads from `src` into a new cache."""
    for sub in SHARED_CACHE:
        top = src / sub
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            rel = Path(dirpath).relative_to(src)
            (dst / rel).mkdir(parents=True, exist_ok=True)
            for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                s, d = Path(dirpath) / name, dst / rel / name
                if s.is_symlink():
                    os.symlink(os.readlink(s), d)
                    continue
                try:
                    os.link(s, d)
                except OSError:  # another filesystem: copy (sparse-aware)
                    sparse.copy_sparse(s, d)


def first_difference(a: Path, b: Path) -> dict[str, Any] | None:
    """The first file (by name) whose bytes differ between two build directories, with the
    offset of its first differing byte; None when every file is byte-identical."""
    names_a = sorted(p.name for p in a.iterdir())
    names_b = sorted(p.name for p in b.iterdir())
    if names_a != names_b:
        only = sorted(set(names_a) ^ set(names_b))
        return {"file": only[0], "offset": None, "detail": "present in only one build"}
    for name in names_a:
        fa, fb = a / name, b / name
        if sparse.hash_sparse(fa) == sparse.hash_sparse(fb):
            continue
        offset = _first_offset(fa, fb)
        found: dict[str, Any] = {"file": name, "offset": offset}
        part = _partition_at(fa, offset)
        if part is not None:
            found["partition"] = part
        return found
    return None


def _first_offset(a: Path, b: Path) -> int:
    pos = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(CHUNK), fb.read(CHUNK)
            if ca != cb:
                n = min(len(ca), len(cb))
                return pos + next((i for i in range(n) if ca[i] != cb[i]), n)
            if not ca:
                return pos
            pos += len(ca)


def _partition_at(path: Path, offset: int) -> dict[str, Any] | None:
    """Which GPT partition of a disk image (raw or fixed VHD) holds byte `offset`."""
    if path.suffix not in (".bin", ".vhd", ".raw", ".img"):
        return None
    try:
        disk = gpt.read(path)
    except AclComposeError:
        return None
    for p in disk.partitions:
        if p.offset <= offset < p.offset + p.size:
            return {"number": p.number, "label": p.name, "offset": offset - p.offset}
    return None


def describe(diff: dict[str, Any]) -> str:
    text = f"{diff['file']}"
    if diff.get("offset") is not None:
        text += f" differs first at byte {diff['offset']}"
    else:
        text += f": {diff.get('detail')}"
    part = diff.get("partition")
    if part:
        text += f" (partition {part['number']} {part['label']}, +{part['offset']})"
    return text


def check_reproducible(
    manifest: Manifest,
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    passphrase: bytes | None = None,
) -> dict[str, Any]:
    """Compose twice with separate caches; on identical bytes write OUT_DIR (build A) and
    return its release.json plus `reproducible` (file -> sha256); else VerificationError.
    OUT_DIR follows compose's output-folder rule (checked before the first build)."""
    out_dir = Path(out_dir).resolve()
    out = release_output(manifest, out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("SOURCE_DATE_EPOCH") and manifest.source_date_epoch is None:
        manifest.source_date_epoch = int(time.time())
        ui.info(f"SOURCE_DATE_EPOCH not set: both builds use {manifest.source_date_epoch}")
    work: Path | None = None
    keep = False
    try:
        with signals_held():  # a Ctrl-C right after mkdtemp still finds `work` to remove
            work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.repro-", dir=out_dir.parent))
        releases = []
        for label in ("a", "b"):
            cache = work / f"cache-{label}"
            cache.mkdir()
            seed_downloads(Path(cache_dir), cache)
            with ui.step(f"build {label.upper()} of 2 (cache {cache})"):
                releases.append(
                    compose(manifest, work / f"build-{label}", cache, passphrase=passphrase)
                )
        with ui.step("compare the two builds byte for byte"):
            diff = first_difference(work / "build-a", work / "build-b")
            if diff is not None:
                keep = True
                raise VerificationError(
                    f"not reproducible: {describe(diff)}",
                    hint=f"both builds are kept in {work}/build-a and build-b; "
                    f"`acl-compose diff` them, then remove {work}",
                )
            files = {p.name: sparse.hash_sparse(p) for p in sorted((work / "build-a").iterdir())}
            ui.info(f"{len(files)} files byte-identical across two builds with separate caches")
        with out.staging(last=RELEASE_LAST) as tmp:
            for p in (work / "build-a").iterdir():
                os.replace(p, tmp / p.name)
        return {**releases[0], "reproducible": {"builds": 2, "files": files}}
    finally:
        if work is not None and not keep:
            shutil.rmtree(work, ignore_errors=True)
