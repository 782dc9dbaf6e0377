"""Build signed, reproducible sysext images.

bundle -> tree (bundle) -> policy (policy) -> erofs/squashfs made reproducibly -> dm-verity
tree (trust.verity) -> DDI (ddi) or raw + side files, signed (trust.signing). The filesystem
and hash tree are cached by a digest of the bundle's inputs; signing is redone on every build
so no signature is ever taken from the cache.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acl_compose import ui
from acl_compose.errors import AclComposeError, InputError
from acl_compose.run import run
from acl_compose.sysext import ddi
from acl_compose.sysext.bundle import (
    Bundle,
    assemble,
    input_digest,
    load_bundle,
)
from acl_compose.sysext.contents import origin_resolver, record_tree
from acl_compose.sysext.policy import enforce
from acl_compose.trust import verity
from acl_compose.util import atomic_file, default_cache_dir, sha256_file

CACHE_FORMAT = 2  # bump when the image layout changes, to invalidate cached builds


# ---------------------------------------------------------------- filesystem makers
@functools.cache
def tool_version(filesystem: str) -> str:
    """The mkfs tool's version: part of the cache key, since it decides the bytes."""
    if filesystem == "erofs":
        out = run(["mkfs.erofs", "-V"], check=False).stdout.decode(errors="replace")
        m = re.search(r"mkfs\.erofs\s+(\S+)", out)
    else:
        out = run(["mksquashfs", "-version"], check=False).stdout.decode(errors="replace")
        m = re.search(r"version\s+(\S+)", out)
    return m.group(1) if m else "unknown"


def derived_uuid(digest: str, purpose: str) -> str:
    raw = bytearray(hashlib.sha256(f"{purpose}\0{digest}".encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def make_filesystem(bundle: Bundle, tree: Path, out: Path, digest: str) -> None:
    """mkfs.erofs / mksquashfs with every source of nondeterminism pinned.

    Timestamps: fixed to 0 (and the tree's mtimes are 0 too); owners: root; xattrs of the
    build directory (e.g. SELinux labels) are not stored; the UUID comes from the digest.
    """
    if bundle.filesystem == "erofs":
        argv = [
            "mkfs.erofs",
            "--quiet",
            "-T0",
            f"-U{derived_uuid(digest, 'erofs')}",
            "--all-root",
            "-x-1",
        ]
        if bundle.compression != "none":
            argv.append(f"-z{bundle.compression}")
        run([*argv, out, tree])
    else:
        argv = ["mksquashfs", tree, out, "-noappend", "-all-root", "-reproducible"]
        argv += ["-mkfs-time", "0", "-all-time", "0", "-no-xattrs", "-quiet", "-no-progress"]
        if bundle.compression == "none":
            argv += ["-noI", "-noD", "-noF", "-noX"]
        else:
            argv += ["-comp", bundle.compression]
        run(argv)


# ---------------------------------------------------------------- build
@dataclass
class _Built:
    """A cached, unsigned build product: filesystem image + verity tree."""

    directory: Path
    root_hash: str
    contents: list[dict[str, Any]]

    @property
    def fs(self) -> Path:
        return self.directory / "fs.img"

    @property
    def tree(self) -> Path:
        return self.directory / "verity.img"


def _download(cache_dir: Path | None):  # noqa: ANN202 - a Downloader
    def download(url: str, sha256: str) -> Path:
        from acl_compose import fetch  # the fetch helper's module; imported lazily

        return Path(fetch.download(url, sha256=sha256, cache_dir=cache_dir or default_cache_dir()))

    return download


def _build_unsigned(bundle: Bundle, cache_dir: Path | None, scratch: Path) -> _Built:
    extra = {"cache_format": CACHE_FORMAT, "mkfs": tool_version(bundle.filesystem)}
    if cache_dir is None:
        digest = input_digest(bundle, extra)
    else:
        memo_file = (
            cache_dir
            / "sysext"
            / "memo"
            / (hashlib.sha256(str(bundle.directory.resolve()).encode()).hexdigest()[:32] + ".json")
        )
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        memo = memo if isinstance(memo, dict) else {}
        fresh: dict[str, str] = {}
        digest = input_digest(bundle, extra, _MemoView(memo, fresh))
        if fresh.keys() != memo.keys():  # keep only this bundle's current files
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(memo_file) as f:
                f.write(json.dumps(fresh).encode())
    final = cache_dir / "sysext" / digest if cache_dir is not None else None
    if final is not None and (final / "meta.json").is_file():
        try:
            meta = json.loads((final / "meta.json").read_text())
            # Verify before use: what gets signed must be what was built.
            verity.verify(final / "fs.img", final / "verity.img", meta["root_hash"])
            return _Built(final, meta["root_hash"], meta["contents"])
        except (OSError, ValueError, KeyError, AclComposeError) as e:
            ui.warn(f"discarding corrupt sysext cache entry {final}: {e}")
            shutil.rmtree(final, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="build.", dir=scratch))
    tree = work / "tree"
    tree.mkdir()
    os.chmod(tree, 0o755)
    origin = assemble(bundle, tree, _download(cache_dir))
    enforce(
        tree,
        allow_package_manager=bundle.allow_package_manager,
        origin=origin,
        label=str(bundle.manifest),
    )
    # What goes in, file by file with its origin, for the SBOM (sysext.contents).
    contents = record_tree(tree, origin_resolver(bundle, origin))
    make_filesystem(bundle, tree, work / "fs.img", digest)
    shutil.rmtree(tree)
    # Salt and verity UUID derive from the inputs: same bundle, same hash tree, same bytes.
    salt = hashlib.sha256(f"acl-compose verity salt\0{digest}".encode()).digest()
    result = verity.create(
        work / "fs.img", work / "verity.img", salt=salt, uuid=derived_uuid(digest, "verity")
    )
    meta = {"root_hash": result.root_hash, "digest": digest, "verity": result.to_json(),
            "contents": contents}  # fmt: skip
    (work / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    if final is None:
        return _Built(work, result.root_hash, contents)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(work, final)
    except OSError:  # another build won the race; use its identical result
        shutil.rmtree(work, ignore_errors=True)
    return _Built(final, result.root_hash, contents)


class _MemoView(dict):
    """Looks up the old memo, records every identity used into `fresh` (the new memo)."""

    def __init__(self, old: dict[str, str], fresh: dict[str, str]) -> None:
        super().__init__()
        self._old, self._fresh = old, fresh

    def __contains__(self, key: object) -> bool:
        return key in self._old

    def __getitem__(self, key: str) -> str:
        value = self._old[key]
        self._fresh[key] = value
        return value

    def __setitem__(self, key: str, value: str) -> None:
        self._fresh[key] = value


def _load_signer(key: Any, cert: Any, passphrase: bytes | None) -> tuple[Any, Any]:
    from acl_compose.trust import signing

    if (key is None) != (cert is None):
        raise InputError(
            "--key and --cert go together", hint="pass both, or neither for an unsigned image"
        )
    if isinstance(key, (str, os.PathLike)):
        key = signing.load_key(key, passphrase)
    if isinstance(cert, (str, os.PathLike)):
        cert = signing.load_cert(cert)
    return key, cert


def build(
    bundle_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    key: Any = None,
    cert: Any = None,
    passphrase: bytes | None = None,
    fmt: str = "ddi",
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Build `<out_dir>/<name>.raw` from a bundle; returns name, version, path, sha256,
    root_hash, signed, certificate_fingerprint, contents (every file with its origin, see
    sysext.contents) and format (side files for raw)."""
    if fmt not in ("ddi", "raw"):
        raise InputError(f"unknown format {fmt!r}", hint="use ddi or raw")
    bundle = load_bundle(bundle_dir)
    key, cert = _load_signer(key, cert, passphrase)
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else None
    # Without a cache, scratch space goes beside the output (it may be large).
    scratch_parent = cache / "sysext" if cache is not None else out_dir.parent / ".acl-sysext-tmp"
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".sysext-", dir=scratch_parent))
    try:
        built = _build_unsigned(bundle, cache, scratch)
        out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed build leaves nothing
        root_hash = built.root_hash
        signature = fingerprint = None
        if key is not None:
            from acl_compose.trust import signing

            signature = signing.sign_root_hash(root_hash, key, cert)
            fingerprint = signing.cert_fingerprint(cert)
        out = out_dir / f"{bundle.name}.raw"
        result: dict[str, Any] = {
            "name": bundle.name,
            "version": bundle.version,
            "format": fmt,
            "path": str(out),
            "root_hash": root_hash,
            "signed": signature is not None,
            "certificate_fingerprint": fingerprint,
            "contents": built.contents,
        }
        if fmt == "ddi":
            sig_json = None
            if signature is not None:
                sig_json = ddi.signature_json(
                    root_hash, fingerprint or "", base64.b64encode(signature).decode()
                )
            # Written beside the output (same filesystem) and renamed: never half-written.
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out_dir)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                _, result["sha256"] = ddi.write(
                    tmp, built.fs, built.tree, root_hash, bundle.architecture, sig_json
                )
                os.chmod(tmp, 0o644)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            result.update(_write_raw(out, built, root_hash, signature))
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if cache is None:
            with contextlib.suppress(OSError):
                scratch_parent.rmdir()


def _write_raw(out: Path, built: _Built, root_hash: str, signature: bytes | None) -> dict[str, Any]:
    """NAME.raw + NAME.verity + NAME.roothash (+ NAME.roothash.p7s): systemd's side-file names."""
    stem = out.with_suffix("")
    side = {
        "verity": Path(f"{stem}.verity"),
        "roothash": Path(f"{stem}.roothash"),
        "roothash_p7s": Path(f"{stem}.roothash.p7s"),
    }
    with atomic_file(side["verity"]) as f, open(built.tree, "rb") as src:
        shutil.copyfileobj(src, f, 1 << 20)
    with atomic_file(out) as f, open(built.fs, "rb") as src:
        shutil.copyfileobj(src, f, 1 << 20)
    with atomic_file(side["roothash"]) as f:
        f.write(root_hash.encode() + b"\n")
    if signature is not None:
        with atomic_file(side["roothash_p7s"]) as f:
            f.write(signature)
    else:
        side["roothash_p7s"].unlink(missing_ok=True)  # a stale signature would not match
        del side["roothash_p7s"]
    return {"sha256": sha256_file(out), "side_files": {k: str(v) for k, v in side.items()}}
