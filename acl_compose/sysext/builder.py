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
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acl_compose import ui
from acl_compose.errors import AclComposeError, InputError
from acl_compose.run import run
from acl_compose.sysext import ddi, erofs, sources
from acl_compose.sysext.assemble import assemble
from acl_compose.sysext.bundle import (
    Bundle,
    FileHashes,
    input_digest,
    load_bundle,
    stat_fingerprint,
)
from acl_compose.sysext.contents import origin_resolver, record_tree
from acl_compose.sysext.policy import enforce
from acl_compose.trust import verity
from acl_compose.util import (
    OutputDir,
    atomic_file,
    default_cache_dir,
    sha256_file,
    signals_held,
)

CACHE_FORMAT = 4  # bump when the image layout changes, to invalidate cached builds


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


# mkfs.erofs runs before the digest its UUID derives from is known; set_filesystem_uuid
# writes the real one into the superblock afterwards.
_PLACEHOLDER_UUID = "00000000-0000-4000-8000-000000000000"


def make_filesystem(bundle: Bundle, tree: Path, out: Path, offset: int = 0) -> None:
    """mkfs.erofs / mksquashfs with every source of nondeterminism pinned.

    Timestamps: fixed to 0 (and the tree's mtimes are 0 too); owners: root; xattrs of the
    build directory (e.g. SELinux labels) are not stored; an erofs UUID is a placeholder
    until set_filesystem_uuid (squashfs has none).
    SOURCE_DATE_EPOCH is kept from both tools: mkfs.erofs 1.5 would stamp it into the image
    (so a cached image would depend on the caller's environment) and mksquashfs 4.5 refuses
    it beside -mkfs-time/-all-time.
    `offset` (squashfs only) writes the filesystem that far into `out`: a DDI's data slot.
    """
    if bundle.filesystem == "erofs":
        argv = [
            "mkfs.erofs",
            "--quiet",
            "-T0",
            f"-U{_PLACEHOLDER_UUID}",
            "--all-root",
            "-x-1",
        ]
        if bundle.compression != "none":
            argv.append(f"-z{bundle.compression}")
        assert not offset, "mkfs.erofs 1.5 cannot write at an offset"
        run([*_NO_SDE, *argv, out, tree])
    else:
        argv = ["mksquashfs", tree, out, "-noappend", "-all-root", "-reproducible"]
        if offset:
            argv += ["-offset", str(offset)]
        argv += ["-mkfs-time", "0", "-all-time", "0", "-no-xattrs", "-quiet", "-no-progress"]
        if bundle.compression == "none":
            argv += ["-noI", "-noD", "-noF", "-noX"]
        else:
            argv += ["-comp", bundle.compression]
        run([*_NO_SDE, *argv])


def set_filesystem_uuid(bundle: Bundle, image: Path, digest: str, offset: int = 0) -> None:
    """The erofs UUID derived from the digest: the bytes `mkfs.erofs -U` would have made."""
    if bundle.filesystem == "erofs":
        erofs.set_uuid(image, derived_uuid(digest, "erofs"), offset)


_NO_SDE = ["env", "-u", "SOURCE_DATE_EPOCH"]


# ---------------------------------------------------------------- build
@dataclass
class _Built:
    """An unsigned build product: a filesystem and its verity tree, each an extent of a file.

    A fresh build has them in scratch files (fs.img, verity.img) that the output may take
    over; a cache entry keeps whatever the first output was (a DDI with both inside it, or
    the two raw files), hard-linked, and records the offsets in meta.json.
    """

    directory: Path
    root_hash: str
    fs: ddi.Extent
    tree: ddi.Extent
    meta: dict[str, Any]
    fresh: bool
    contents: list[dict[str, Any]]
    # Removals left to the background (the assembled tree, the erofs image once copied into
    # the DDI): thousands of unlinks, and a 200 MB truncate. build() joins them before it returns.
    cleanup: list[threading.Thread] = field(default_factory=list)

    def remove_later(self, fn: Callable[..., object], *args: object) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        self.cleanup.append(thread)


class _Digest:
    """The bundle's input digest (the cache key), from the memo when the bundle's stat
    fingerprint is the one recorded after the last build, else hashed in a thread (hashlib
    and reads release the GIL) while the tree is assembled."""

    def __init__(self, bundle: Bundle, extra: dict[str, Any], cache_dir: Path | None) -> None:
        self._bundle, self._extra = bundle, extra
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._memo_file: Path | None = None
        self._files: dict[str, str] = {}
        self.file_hashes: FileHashes = {}  # what the hashing pass read, for record_tree
        old: dict[str, Any] = {}
        if cache_dir is not None:
            key = hashlib.sha256(str(bundle.directory.resolve()).encode()).hexdigest()[:32]
            self._memo_file = cache_dir / "sysext" / "memo" / f"{key}.json"
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(self._memo_file.read_text())
                old = loaded if isinstance(loaded, dict) and "files" in loaded else {}
        self._before = stat_fingerprint(bundle, extra)
        self.known = self._before is not None and old.get("fingerprint") == self._before.full
        files = old.get("files") if isinstance(old.get("files"), dict) else {}
        if self.known:  # nothing to hash
            self._value = str(old["digest"])
            self._files = files
            return

        def run() -> None:
            try:
                memo = _MemoView(files, self._files)
                self._value = input_digest(bundle, extra, memo, self.file_hashes)
            except BaseException as e:  # noqa: BLE001 - raised by value()
                self._error = e

        self._thread = threading.Thread(target=run, name="sysext-digest", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def value(self) -> str:
        self.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def remember(self) -> None:
        """After the build (and its hard links into scratch) is over: record the bundle's
        fingerprint as it is now, if nothing but ctimes changed since it was read."""
        if self._memo_file is None or self._before is None:
            return
        after = stat_fingerprint(self._bundle, self._extra)
        if after is None or after.without_ctime != self._before.without_ctime:
            return  # changed while being built: hash it again next time
        if self.known and after.full == self._before.full:
            return  # a cache hit: nothing was linked, nothing changed
        memo = {"fingerprint": after.full, "digest": self.value(), "files": self._files}
        self._memo_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self._memo_file) as f:
            f.write(json.dumps(memo).encode())


# Entries written before they recorded extents hold the two files whole.
_OLD_LAYOUT = {"fs": "fs.img", "tree": "verity.img"}


def _extent(entry: Path, meta: dict[str, Any], role: str, old_name: str) -> ddi.Extent:
    where = meta.get(role)
    if where is None:
        return ddi.Extent.of(entry / old_name)
    return ddi.Extent(entry / where["file"], int(where["offset"]), int(where["size"]))


class _Background:
    """fn(*args) in a thread; result() joins it and returns its value or raises its error."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = fn(*args)
            except BaseException as e:  # noqa: BLE001 - raised by result()
                self._error = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value


def _entry(final: Path | None) -> _Built | None:
    """A verified cache entry, or None (a corrupt one is removed)."""
    if final is None or not (final / "meta.json").is_file():
        return None
    try:
        meta = json.loads((final / "meta.json").read_text())
        fs, tree = (_extent(final, meta, role, name) for role, name in _OLD_LAYOUT.items())
        # Verify before use: what gets signed must be what was built. (The files may be
        # hard links of earlier outputs, which a user could have changed.)
        verity.verify(
            fs.path, tree.path, meta["root_hash"], hash_offset=tree.offset, data_offset=fs.offset
        )
        return _Built(final, meta["root_hash"], fs, tree, meta, False, meta["contents"])
    except (OSError, ValueError, KeyError, TypeError, AclComposeError) as e:
        ui.warn(f"discarding corrupt sysext cache entry {final}: {e}")
        shutil.rmtree(final, ignore_errors=True)
        return None


def _build_unsigned(
    bundle: Bundle,
    cache_dir: Path | None,
    scratch: Path,
    digest: _Digest,
    fmt: str,
    downloads: sources.SourceOptions,
) -> _Built:
    if digest.known:
        hit = _entry(cache_dir / "sysext" / digest.value() if cache_dir is not None else None)
        if hit is not None:
            return hit
    work = Path(tempfile.mkdtemp(prefix="build.", dir=scratch))  # in scratch: removed with it
    # mksquashfs can write straight into a DDI's data slot; mkfs.erofs 1.5 only at offset 0,
    # so an erofs filesystem is copied into the DDI once, in the kernel (ddi.write).
    offset = ddi.DATA_OFFSET if fmt == "ddi" and bundle.filesystem == "squashfs" else 0
    image = work / ("image.ddi" if offset else "fs.img")
    mkfs: _Background | None = None
    try:
        tree = work / "tree"
        tree.mkdir()
        os.chmod(tree, 0o755)
        records: dict[str, dict[str, Any]] = {}
        origin = assemble(bundle, tree, downloads, records)
        # mkfs needs nothing from the digest (the erofs UUID is set afterwards), so it runs
        # while the digest thread still hashes the bundle: on two cores the two overlap.
        # The policy check reads the same tree meanwhile; mkfs only reads it too (it opens
        # no special file and follows no link), and a refused tree's image is thrown away.
        mkfs = _Background(make_filesystem, bundle, tree, image, offset)
        enforce(
            tree,
            allow_package_manager=bundle.allow_package_manager,
            origin=origin,
            label=str(bundle.manifest),
        )
        key = digest.value()
        # What goes in, file by file with its origin, for the SBOM (sysext.contents), listed
        # while mkfs runs; the files' hashes come from the digest's pass over the bundle.
        resolve = sources.resolver(records, origin_resolver(bundle, origin))
        contents = record_tree(tree, resolve, digest.file_hashes)
    finally:
        digest.wait()  # the hashing thread must be done before verity forks
        if mkfs is not None:
            mkfs.join()  # before anything (an error, a cache hit) removes its input
    if not digest.known:
        hit = _entry(cache_dir / "sysext" / key if cache_dir is not None else None)
        if hit is not None:
            shutil.rmtree(work, ignore_errors=True)
            return hit
    mkfs.result()
    set_filesystem_uuid(bundle, image, key, offset)
    sources.add_members(contents, records)
    # Salt and verity UUID derive from the inputs: same bundle, same hash tree, same bytes.
    salt = hashlib.sha256(f"acl-compose verity salt\0{key}".encode()).digest()
    result = verity.create(
        image,
        work / "verity.img",
        salt=salt,
        uuid=derived_uuid(key, "verity"),
        data_offset=offset,
    )
    meta = {"root_hash": result.root_hash, "digest": key, "verity": result.to_json(),
            "contents": contents}  # fmt: skip
    fs = ddi.Extent(image, offset, os.stat(image).st_size - offset)
    tree_file = ddi.Extent.of(work / "verity.img")
    built = _Built(work, result.root_hash, fs, tree_file, meta, True, contents)
    # Beside the DDI's copy and hash (nothing forks any more).
    built.remove_later(shutil.rmtree, tree, True)
    return built


def _keep(built: _Built, cache_dir: Path | None, fs: ddi.Extent, tree: ddi.Extent) -> None:
    """Record a fresh build in the cache by hard-linking the output's files (no copies).

    `fs` and `tree` say where the filesystem and the tree are in the files just written: one
    DDI holding both, or the raw pair.
    """
    if cache_dir is None or not built.fresh:
        return
    final = cache_dir / "sysext" / built.meta["digest"]
    entry = Path(tempfile.mkdtemp(prefix="entry.", dir=built.directory.parent))
    meta = dict(built.meta)
    one = fs.path == tree.path
    for role, extent in (("fs", fs), ("tree", tree)):
        name = "image.ddi" if one else f"{role}.img"
        if not (entry / name).exists():
            _link_or_copy(extent.path, entry / name)
        meta[role] = {"file": name, "offset": extent.offset, "size": extent.size}
    # Compact: json's C encoder (indent= falls back to the Python one, ~20 ms for 2,000 files).
    (entry / "meta.json").write_text(json.dumps(meta, sort_keys=True, separators=(",", ":")))
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(entry, final)
    except OSError:  # another build won the race; its result is identical
        shutil.rmtree(entry, ignore_errors=True)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another filesystem, or links not permitted
        shutil.copyfile(src, dest)


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
    if (key is None) != (cert is None):
        raise InputError(
            "a signing key and its certificate go together",
            hint="give both, or neither for an unsigned image",
        )
    if key is None:  # unsigned: no need to load cryptography (25 ms of start-up)
        return None, None
    from acl_compose.trust import signing

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
    force: bool = False,
    offline: bool = False,
    debian_mirror: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Build `<out_dir>/<name>.raw` from a bundle; returns name, version, path, sha256,
    root_hash, signed, certificate_fingerprint, contents (every file with its origin, see
    sysext.contents and sysext/README.md) and format (side files for raw).

    `out_dir` follows the output-folder rule (util.OutputDir): builds accumulate there, and a
    file this command did not write is never replaced. url/deb sources come from the download
    cache in `cache_dir` (`offline`: only from there); `debian_mirror` overrides
    ACL_COMPOSE_DEBIAN_MIRROR / deb.debian.org."""
    if fmt not in ("ddi", "raw"):
        raise InputError(f"unknown format {fmt!r}", hint="use ddi or raw")
    bundle = load_bundle(bundle_dir)
    out_dir = Path(out_dir)
    output = OutputDir(out_dir, "sysext build", force=force)
    names = [f"{bundle.name}.raw"]
    if fmt == "raw":
        names += [f"{bundle.name}.{ext}" for ext in ("verity", "roothash", "roothash.p7s")]
    output.check(names)  # before the build, not after it
    key, cert = _load_signer(key, cert, passphrase)
    cache = Path(cache_dir) if cache_dir is not None else None
    extra = {"cache_format": CACHE_FORMAT, "mkfs": tool_version(bundle.filesystem)}
    digest = _Digest(bundle, extra, cache)  # first: a missing source stops here, nothing made
    # Without a cache, scratch space goes beside the output (it may be large).
    scratch_parent = cache / "sysext" if cache is not None else out_dir.parent / ".acl-sysext-tmp"
    scratch: Path | None = None
    built: _Built | None = None
    try:
        with signals_held():  # a Ctrl-C right after mkdtemp still finds `scratch` to remove
            scratch_parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=".sysext-", dir=scratch_parent))
        downloads = sources.SourceOptions(
            cache or default_cache_dir(), offline, debian_mirror, progress
        )
        built = _build_unsigned(bundle, cache, scratch, digest, fmt, downloads)
        root_hash = built.root_hash
        signature = fingerprint = None
        if key is not None:
            from acl_compose.trust import signing

            signature = signing.sign_root_hash(root_hash, key, cert)
            fingerprint = signing.cert_fingerprint(cert)
        result: dict[str, Any] = {
            "name": bundle.name,
            "version": bundle.version,
            "format": fmt,
            "path": str(out_dir / f"{bundle.name}.raw"),
            "root_hash": root_hash,
            "signed": signature is not None,
            "certificate_fingerprint": fingerprint,
            "contents": built.contents,
        }
        # Written into a staging folder beside the output and moved in: never half-written.
        stale = [f"{bundle.name}.roothash.p7s"] if fmt == "raw" and signature is None else []
        with output.staging(remove=stale) as stage:
            out = stage / f"{bundle.name}.raw"
            if fmt == "ddi":
                sig_json = None
                if signature is not None:
                    sig_json = ddi.signature_json(
                        root_hash, fingerprint or "", base64.b64encode(signature).decode()
                    )
                result["sha256"] = _write_ddi(out, built, bundle.architecture, sig_json, cache)
            else:
                raw = _write_raw(out, built, root_hash, signature, cache)
                result["sha256"] = raw["sha256"]
                result["side_files"] = {
                    k: str(out_dir / Path(v).name) for k, v in raw["side_files"].items()
                }
    finally:
        digest.wait()
        for thread in built.cleanup if built is not None else []:
            thread.join()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if cache is None:
            with contextlib.suppress(OSError):
                scratch_parent.rmdir()
    digest.remember()
    return result


def _write_ddi(
    out: Path, built: _Built, arch: str, sig_json: bytes | None, cache: Path | None
) -> str:
    """The DDI at `out`, atomically; returns its sha256.

    A fresh build assembles it in scratch (around a squashfs written into its slot, or with
    the erofs image copied in the kernel) and the cache keeps a hard link of it: one image
    on disk for both. From the cache the extents are copied in the kernel.
    """
    if not built.fresh:
        tmp = None
        try:
            with signals_held():  # a Ctrl-C right after mkstemp still finds `tmp` to remove
                fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.close(fd)
            _, sha256 = ddi.write(tmp, built.fs, built.tree, built.root_hash, arch, sig_json)
            os.chmod(tmp, 0o644)
            os.replace(tmp, out)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        return sha256
    image = built.directory / "image.ddi"
    if built.fs.path == image:  # already in its slot
        disk, sha256 = ddi.write_around(
            image, built.fs.size, built.tree, built.root_hash, arch, sig_json
        )
    else:
        # The copy in the DDI is the one kept: the erofs image goes once copied (freeing
        # 200 MB of page cache takes as long as hashing it), while the DDI's hash finishes.
        disk, sha256 = ddi.write(
            image, built.fs, built.tree, built.root_hash, arch, sig_json,
            copied=lambda: built.remove_later(built.fs.path.unlink),
        )  # fmt: skip
    os.chmod(image, 0o644)
    data, tree = disk.by_number(1), disk.by_number(2)
    fs_at = ddi.Extent(image, data.offset, built.fs.size)
    _keep(built, cache, fs_at, ddi.Extent(image, tree.offset, built.tree.size))
    _place(image, out)
    return sha256


def _place(src: Path, out: Path) -> None:
    """Move (or link) a finished file to `out` atomically; a copy across filesystems."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _write_raw(
    out: Path, built: _Built, root_hash: str, signature: bytes | None, cache: Path | None
) -> dict[str, Any]:
    """NAME.raw + NAME.verity + NAME.roothash (+ NAME.roothash.p7s): systemd's side-file names."""
    stem = out.with_suffix("")
    side = {
        "verity": Path(f"{stem}.verity"),
        "roothash": Path(f"{stem}.roothash"),
        "roothash_p7s": Path(f"{stem}.roothash.p7s"),
    }
    if built.fresh:
        fs, tree = built.fs.path, built.tree.path
        for p in (fs, tree):
            os.chmod(p, 0o644)
        _keep(built, cache, built.fs, built.tree)
    else:  # out of the cache entry (perhaps a DDI): copy the extents in the kernel
        fs = out.with_name(f".{out.name}.{os.getpid()}.fs")
        tree = out.with_name(f".{out.name}.{os.getpid()}.verity")
        for extent, dest in ((built.fs, fs), (built.tree, tree)):
            ddi.copy_to_file(extent, dest)
    try:
        sha256 = sha256_file(fs)
        _place(tree, side["verity"])
        _place(fs, out)
    finally:
        if not built.fresh:
            fs.unlink(missing_ok=True)
            tree.unlink(missing_ok=True)
    with atomic_file(side["roothash"]) as f:
        f.write(root_hash.encode() + b"\n")
    if signature is not None:
        with atomic_file(side["roothash_p7s"]) as f:
            f.write(signature)
    else:  # the caller removes a stale signature from an earlier build: it would not match
        del side["roothash_p7s"]
    return {"sha256": sha256, "side_files": {k: str(v) for k, v in side.items()}}
