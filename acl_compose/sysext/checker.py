"""Check sysext images offline the way systemd-sysext would on a given base.

One result per image: file name against its extension-release, ID / SYSEXT_LEVEL /
VERSION_ID / architecture against the base os-release, the dm-verity tree, and the signature
against the release certificate.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from acl_compose.errors import AclComposeError, VerificationError
from acl_compose.image.osrelease import (
    architecture,
    extension_mismatch,
    parse_os_release,
    read_os_release,
)
from acl_compose.run import run
from acl_compose.sysext import ddi
from acl_compose.sysext.bundle import EXTENSION_RELEASE_DIR
from acl_compose.trust import verity
from acl_compose.ui import opt
from acl_compose.util import scratch_dir

SQUASHFS_MAGIC = b"hsqs"
EROFS_MAGIC = bytes.fromhex("e2e1f5e0")  # 0xE0F5E1E2 little-endian, at byte 1024


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


def _CERT() -> str:  # noqa: N802 - reads as the word it stands for
    return opt("--cert", "a certificate")


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
    from acl_compose.trust import signing

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
        from acl_compose.image import gpt

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
            raise _Fail(f"no verity partition, but {_CERT()} asks for a signed image")
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
            raise _Fail(
                f"image is not signed (no root-verity-sig partition), but {_CERT()} was given"
            )
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
            raise _Fail(f"image is not signed ({p7s.name} missing), but {_CERT()} was given")
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
        from acl_compose.trust import signing

        cert = signing.load_cert(cert)
    results = []
    for image in images:
        path = Path(image)
        with scratch_dir(prefix="acl-sysext-check.") as work:
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
