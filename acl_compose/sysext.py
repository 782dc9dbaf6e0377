"""System extensions: build signed, reproducible sysext images and check them before boot.

build: bundle -> tree (sysext_bundle) -> policy (sysext_policy) -> erofs/squashfs made
reproducibly -> dm-verity tree (verity) -> DDI (ddi) or raw + side files, signed (signing).
The filesystem + hash tree are cached by a digest of the bundle's inputs; signing is
redone on every build so no signature is ever taken from the cache.
check: what systemd-sysext on a given base would refuse, found offline (see check()).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from acl_compose import ddi, ui, verity
from acl_compose.errors import AclComposeError, InputError, VerificationError
from acl_compose.osrelease import (
    architecture,
    extension_mismatch,
    parse_os_release,
    read_os_release,
)
from acl_compose.run import run
from acl_compose.sysext_bundle import (
    EXTENSION_RELEASE_DIR,
    Bundle,
    assemble,
    input_digest,
    load_bundle,
)
from acl_compose.sysext_policy import enforce
from acl_compose.util import atomic_file, default_cache_dir, sha256_file

__all__ = ["build", "check", "load_bundle", "parse_os_release", "CheckResult"]

CACHE_FORMAT = 1  # bump when the image layout changes, to invalidate cached builds
SQUASHFS_MAGIC = b"hsqs"
EROFS_MAGIC = bytes.fromhex("e2e1f5e0")  # 0xE0F5E1E2 little-endian, at byte 1024


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
            return _Built(final, meta["root_hash"])
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
    make_filesystem(bundle, tree, work / "fs.img", digest)
    shutil.rmtree(tree)
    # Salt and verity UUID derive from the inputs: same bundle, same hash tree, same bytes.
    salt = hashlib.sha256(f"acl-compose verity salt\0{digest}".encode()).digest()
    result = verity.create(
        work / "fs.img", work / "verity.img", salt=salt, uuid=derived_uuid(digest, "verity")
    )
    meta = {"root_hash": result.root_hash, "digest": digest, "verity": result.to_json()}
    (work / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    if final is None:
        return _Built(work, result.root_hash)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(work, final)
    except OSError:  # another build won the race; use its identical result
        shutil.rmtree(work, ignore_errors=True)
    return _Built(final, result.root_hash)


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
    from acl_compose import signing

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
    root_hash, signed, certificate_fingerprint (and format, side files for raw)."""
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
            from acl_compose import signing

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


# ---------------------------------------------------------------- check
@dataclass
class CheckResult:
    image: str
    ok: bool
    reason: str | None = None
    name: str | None = None
    kind: str | None = None  # ddi | raw
    signed: bool = False
    root_hash: str | None = None
    extension_release: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.ok:
            extra = f" ({'; '.join(self.notes)})" if self.notes else ""
            return f"{self.image}: ok{extra}"
        return f"{self.image}: {self.reason}"


class _Fail(Exception):
    """One image failed a check; the message is the one-line reason."""


def _fs_kind(path: Path, offset: int = 0) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(1028)
    if head[:4] == SQUASHFS_MAGIC:
        return "squashfs"
    if head[1024:1028] == EROFS_MAGIC:
        return "erofs"
    raise _Fail("the data is neither erofs nor squashfs")


def read_extension_releases(fs: Path, work: Path) -> dict[str, str]:
    """{file name: text} of usr/lib/extension-release.d/* inside an erofs/squashfs image."""
    kind = _fs_kind(fs)
    dest = work / "extract"
    if kind == "squashfs":
        run(
            ["unsquashfs", "-no-xattrs", "-no-progress", "-d", dest, fs, EXTENSION_RELEASE_DIR],
            hint=f"{fs} is not a readable squashfs image",
        )
    else:
        # erofs-utils 1.5 has no single-file cat; fsck's extraction also checks every file.
        dest.mkdir()
        run(
            ["fsck.erofs", f"--extract={dest}", "--no-preserve", "--overwrite", fs],
            hint=f"{fs} is not a readable erofs image",
        )
    d = dest / EXTENSION_RELEASE_DIR
    # The image's own symlinks (usr/lib -> /etc ...) must not lead us to read host files.
    real = os.path.realpath(d)
    if not real.startswith(os.path.realpath(dest) + "/") or not os.path.isdir(real):
        return {}
    out = {}
    for p in sorted(d.iterdir()):
        if p.name.startswith("extension-release.") and p.is_file() and not p.is_symlink():
            out[p.name] = p.read_text(encoding="utf-8", errors="replace")
    return out


def _check_signature(root_hash: str, sig_der: bytes, claimed_fp: str | None, cert: Any) -> None:
    from acl_compose import signing

    fp = signing.cert_fingerprint(cert)
    if claimed_fp is not None and claimed_fp.lower() != fp:
        raise _Fail(
            f"signed with certificate {claimed_fp[:16]}…, not the given certificate {fp[:16]}…"
        )
    try:
        signing.verify_root_hash(root_hash, sig_der, cert)
    except VerificationError as e:
        # Without a fingerprint (raw .p7s) a wrong certificate also lands here.
        raise _Fail(f"signature does not verify with the given certificate: {e.message}") from e


def _check_one(image: Path, base: dict[str, str], cert: Any, work: Path) -> CheckResult:
    res = CheckResult(image=str(image), ok=False)
    if not image.is_file():
        raise _Fail("not a file")
    if image.suffix != ".raw":
        raise _Fail("file name must end in .raw for systemd-sysext to pick it up")
    name = image.name[: -len(".raw")]
    res.name = name
    if ddi.is_ddi(image):
        res.kind = "ddi"
        info = ddi.read(image)
        fs = work / "data.img"
        from acl_compose import gpt

        gpt.copy_out(image, info.data, fs)
        root_hash = info.uuid_root_hash
        doc = info.signature()
        if doc is not None:
            if root_hash and doc["rootHash"].lower() != root_hash:
                raise _Fail(
                    "signature JSON rootHash does not match the data/verity partition UUIDs"
                )
            root_hash = doc["rootHash"].lower()
        if info.verity is not None and root_hash:
            _verify_tree(fs, image, root_hash, hash_offset=info.verity.offset)
        elif cert is not None:
            raise _Fail("no verity partition, but --cert asks for a signed image")
        if doc is not None:
            res.signed = True
            if cert is not None:
                try:
                    sig_der = base64.b64decode(doc["signature"], validate=True)
                except ValueError as e:
                    raise _Fail("signature in the signature partition is not base64") from e
                _check_signature(root_hash or "", sig_der, doc.get("certificateFingerprint"), cert)
            else:
                res.notes.append("signature not checked: no --cert")
        elif cert is not None:
            raise _Fail("image is not signed (no root-verity-sig partition), but --cert was given")
        else:
            res.notes.append("unsigned")
        arch = info.architecture
    else:
        res.kind = "raw"
        fs = image
        arch = None
        stem = image.parent / name
        for suffix in (".roothash", ".roothash.p7s", ".verity", ".usrhash", ".usrhash.p7s"):
            wrong = Path(f"{image}{suffix}")
            if wrong.exists():
                raise _Fail(
                    f"side file {wrong.name} is misnamed: systemd reads {stem.name}{suffix} "
                    "and ignores it, so the image would run unprotected"
                )
        rh_file, p7s, tree = (Path(f"{stem}{s}") for s in (".roothash", ".roothash.p7s", ".verity"))
        root_hash = None
        if rh_file.exists():
            root_hash = rh_file.read_text().strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64,128}", root_hash):
                raise _Fail(f"{rh_file.name} does not hold a hex root hash")
            if not tree.exists():
                raise _Fail(f"{rh_file.name} exists but {tree.name} (the hash tree) is missing")
            _verify_tree(fs, tree, root_hash)
        elif tree.exists() or p7s.exists():
            raise _Fail(
                f"{tree.name if tree.exists() else p7s.name} exists but {rh_file.name} is missing"
            )
        if p7s.exists():
            res.signed = True
            if cert is not None and root_hash:
                _check_signature(root_hash, p7s.read_bytes(), None, cert)
            else:
                res.notes.append("signature not checked: no --cert")
        elif cert is not None:
            raise _Fail(f"image is not signed ({p7s.name} missing), but --cert was given")
        else:
            res.notes.append("unsigned")
        if root_hash is None:
            res.notes.append("no dm-verity protection")
    res.root_hash = root_hash
    releases = read_extension_releases(fs, work)
    wanted = f"extension-release.{name}"
    if wanted not in releases:
        if releases:
            others = ", ".join(sorted(releases))
            real = sorted(releases)[0].removeprefix("extension-release.")
            raise _Fail(
                f"file name {image.name} does not match the image's {others}; "
                f"systemd-sysext would refuse it (name it {real}.raw)"
            )
        raise _Fail(f"no /{EXTENSION_RELEASE_DIR}/{wanted} inside: not a system extension")
    ext = parse_os_release(releases[wanted])
    res.extension_release = ext
    why = extension_mismatch(ext, base)
    if why:
        raise _Fail(why)
    if arch and ext.get("ARCHITECTURE") and ext["ARCHITECTURE"] != arch:
        raise _Fail(f"ARCHITECTURE={ext['ARCHITECTURE']} but the DDI's partitions are for {arch}")
    base_arch = architecture(base)
    if arch and base_arch and arch != base_arch:
        # systemd looks only for root partitions of the host's architecture.
        raise _Fail(f"the DDI's partitions are for {arch}, the base is {base_arch}")
    res.ok = True
    return res


def _verify_tree(
    data: Path, hash_path: Path, root_hash: str, hash_offset: int | None = None
) -> None:
    try:
        if hash_offset is None:
            verity.verify(data, hash_path, root_hash)
        else:
            verity.verify(data, hash_path, root_hash, hash_offset=hash_offset)
    except VerificationError as e:
        raise _Fail(f"dm-verity check failed: {e.message}") from e


def check(
    images: list[str | os.PathLike[str]],
    base_os_release: str | os.PathLike[str] | dict[str, str],
    cert: Any = None,
) -> list[CheckResult]:
    """Would systemd-sysext on `base_os_release` merge each image? One result per image."""
    base = (
        dict(base_os_release)
        if isinstance(base_os_release, dict)
        else read_os_release(base_os_release)
    )
    if isinstance(cert, (str, os.PathLike)):
        from acl_compose import signing

        cert = signing.load_cert(cert)
    results = []
    for image in images:
        path = Path(image)
        with tempfile.TemporaryDirectory(prefix="acl-sysext-check.") as work:
            try:
                results.append(_check_one(path, base, cert, Path(work)))
            except _Fail as e:
                results.append(CheckResult(image=str(path), ok=False, reason=str(e)))
            except AclComposeError as e:
                results.append(CheckResult(image=str(path), ok=False, reason=e.message))
            except OSError as e:
                results.append(
                    CheckResult(image=str(path), ok=False, reason=f"cannot read: {e.strerror}")
                )
    return results
