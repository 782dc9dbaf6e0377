"""`acl-compose verify OUT_DIR --cert C`: what a release consumer runs, offline.

Checks, in order, and keeps going so the report names everything that broke:
1. `release.json.p7s` is a valid CMS signature over `release.json` by the given certificate;
2. every output image listed has the recorded size and sha256;
3. in the disk image: each sysext listed is where release.json says (OEM:/extensions, or
   ROOT for older releases) with the recorded sha256, enabled by the /etc/extensions link
   release.json names, and `sysext.check` accepts its verity tree and signature against the
   base os-release and the cert;
4. the baked Ignition config has the recorded sha256;
5. /usr: the kernel's root hash equals release.json's and the recomputed tree matches it;
6. the SBOM listed in release.json has the recorded sha256 and names the same outputs;
7. per platform, in one of its outputs: the OEM partition is that platform's (oem-release,
   grub.cfg's oem_id, the active OEM sysext with the recorded sha256, which systemd-sysext
   would merge: extension-release against the base, dm-verity, and a signature by a
   certificate of the image's own /usr/lib/verity.d) and holds the baked Ignition config.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acl_compose.compose.inspect import (
    all_sysexts,
    check_oem_sysexts,
    check_sysext,
    raw_view,
    read_oem,
)
from acl_compose.errors import AclComposeError, InputError, VerificationError
from acl_compose.image import gpt, outputs, sparse, usr
from acl_compose.util import scratch_dir


@dataclass
class Report:
    checks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": what, "ok": ok, "detail": detail})
        return ok

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["ok"]]

    def to_json(self) -> dict[str, Any]:
        return {"ok": not self.failures, "checks": self.checks}


def verify_release(out_dir: str | os.PathLike[str], cert_path: str | os.PathLike[str]) -> Report:
    """Run every check; returns the report (see `Report.failures`)."""
    from acl_compose.trust import signing

    out = Path(out_dir)
    rj, sig = out / "release.json", out / "release.json.p7s"
    for f in (rj, sig):
        if not f.is_file():
            raise InputError(
                f"{f}: missing", hint="give the directory written by `acl-compose compose -o`"
            )
    cert = signing.load_cert(cert_path)
    rep = Report()
    data = rj.read_bytes()
    try:
        signing.verify_detached(data, sig.read_bytes(), cert)
        rep.add("release.json.p7s", True, f"signed by {signing.cert_fingerprint(cert)}")
    except AclComposeError as e:
        rep.add("release.json.p7s", False, f"release.json signature: {e.message}")
    try:
        release = json.loads(data)
    except ValueError as e:
        rep.add("release.json", False, f"not valid JSON: {e}")
        return rep

    outputs = release.get("outputs") or []
    # Hash the outputs side by side (hashlib drops the GIL); report in listed order.
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(lambda o: _check_output(Report(), out, o), outputs))
    for part in parts:
        rep.checks.extend(part.checks)
    _check_sbom(rep, out, release)
    disk_file = _pick_disk(out, outputs)
    if disk_file is None:
        rep.add("disk image", False, "no output image to check sysexts and /usr in")
        return rep
    # Look inside even when the image's checksum failed: the report then names what broke.
    with scratch_dir(prefix="acl-verify-") as tmpd:
        work = Path(tmpd)
        with raw_view(disk_file, work) as img:
            base = _check_disk(rep, release, img, work, _pem(cert))
        for p, record in sorted((release.get("platforms") or {}).items()):
            mine = [o for o in outputs if o.get("platform") == p]
            f = _pick_disk(out, mine)
            if f is None:
                rep.add(f"platform {p}", False, f"no output image of platform {p}")
                continue
            pwork = work / f"platform-{p}"
            pwork.mkdir()
            with raw_view(f, pwork) as img:
                _check_platform(rep, release, p, record, f.name, img, pwork, base)
    return rep


def _check_output(rep: Report, out: Path, o: dict[str, Any]) -> Report:
    name = o.get("file", "")
    path = out / name
    what = f"output {name}"
    if not name or Path(name).name != name or not path.is_file():
        rep.add(what, False, f"{name}: missing")
        return rep
    size = path.stat().st_size
    if size != o.get("size"):
        rep.add(what, False, f"{name}: size {size}, release.json says {o.get('size')}")
        return rep
    digest = sparse.hash_sparse(path)
    if digest != o.get("sha256"):
        rep.add(
            what, False, f"{name}: sha256 {digest} does not match release.json ({o.get('sha256')})"
        )
        return rep
    if o.get("format") == "vhd":
        try:
            outputs.check_vhd(path)
        except AclComposeError as e:
            rep.add(what, False, e.message)
            return rep
    rep.add(what, True, f"sha256 {digest}")
    return rep


def _pick_disk(out: Path, outputs: list[dict[str, Any]]) -> Path | None:
    """Prefer the raw image, then the fixed VHD (raw + footer), then qcow2 (converted)."""
    by_fmt = {o.get("format"): out / o.get("file", "") for o in outputs}
    for fmt in ("raw", "vhd", "qcow2"):
        if fmt in by_fmt and by_fmt[fmt].is_file():
            return by_fmt[fmt]
    return None


def _pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _check_disk(
    rep: Report, release: dict[str, Any], img: Path, work: Path, cert_pem: bytes
) -> dict[str, Any]:
    """/usr, the sysexts in ROOT and the baked config; returns what the platform checks need
    from the verified /usr: its os-release file and its verity.d certificates."""
    from acl_compose.compose.platform import base_certificates

    base: dict[str, Any] = {"os_file": None, "certs": {}}
    try:
        disk = usr.require_disk(img)
    except AclComposeError as e:
        rep.add("partition table", False, e.message)
        return base
    rep.add("partition table", True, f"{len(disk.partitions)} partitions")
    os_file = work / "os-release"
    usr_part = usr.usr_partition(disk)
    usr_file = work / "usr-a.img"
    gpt.copy_out(img, usr_part, usr_file)
    try:
        if _check_usr(rep, release, img, disk, usr_file, os_file):
            base["certs"] = base_certificates(usr_file, work)
    finally:
        usr_file.unlink(missing_ok=True)
    base["os_file"] = os_file if os_file.exists() else None
    try:
        oem: dict[str, Any] = read_oem(img, disk, work)
    except AclComposeError:
        oem = {}  # the platform and ignition checks name the OEM failure
    _check_sysexts(rep, release, img, disk, oem, base["os_file"], work, cert_pem)
    if not release.get("platforms"):  # (older releases) else checked per platform
        _check_ignition(rep, release, img, disk, work)
    return base


def _check_usr(
    rep: Report, release: dict[str, Any], img: Path, disk: gpt.Disk, usr_file: Path, os_file: Path
) -> bool:
    want = (release.get("usr") or {}).get("root_hash")
    board = (release.get("base") or {}).get("board") or "amd64-usr"
    try:
        text, _ = usr.read_os_release(usr_file)
        os_file.write_text(text)
    except AclComposeError as e:
        rep.add("/usr os-release", False, e.message)
    try:
        kernel = usr.kernel_root_hash(img, disk, board)
    except AclComposeError as e:
        return rep.add("/usr verity", False, e.message)
    if kernel != want:
        return rep.add(
            "/usr verity", False, f"kernel root hash {kernel} differs from release.json's {want}"
        )
    try:
        usr.verify_usr(img, disk, usr_file, board)
        return rep.add("/usr verity", True, f"root hash {kernel}")
    except AclComposeError as e:
        return rep.add("/usr verity", False, e.message)


def _check_sysexts(
    rep: Report,
    release: dict[str, Any],
    img: Path,
    disk: gpt.Disk,
    oem: dict[str, Any],
    os_file: Path | None,
    work: Path,
    cert_pem: bytes,
) -> None:
    listed = release.get("sysexts") or []
    if not listed:
        return
    try:
        spec, entries, _certs = all_sysexts(img, disk, oem)
    except AclComposeError as e:
        rep.add("sysexts", False, f"ROOT: {e.message}")
        return
    present = {e["path"]: e for e in entries}
    # Trust only the certificate the consumer gave, not whatever the image carries.
    certs = {"--cert": cert_pem}
    for s in listed:
        what = f"sysext {s.get('name')}"
        named = f"{what} ({s.get('path')})"
        entry = present.get(s.get("path"))
        if entry is None or (entry.get("file") is None and entry.get("size") is None):
            rep.add(what, False, f"{named}: not found in the image")
            continue
        try:
            res = check_sysext(spec, dict(entry), os_file, certs, work)
        except AclComposeError as e:
            rep.add(what, False, f"{named}: {e.message}")
            continue
        if res.get("sha256") != s.get("sha256"):
            rep.add(
                what,
                False,
                f"{named}: sha256 {res.get('sha256')} does not match release.json",
            )
        elif not res.get("ok"):
            rep.add(what, False, f"{named}: {res.get('status')}")
        elif not entry.get("enabled_by"):
            rep.add(what, False, f"{named}: no /etc/extensions link enables it")
        elif s.get("link") and entry["enabled_by"] != s["link"]:
            rep.add(what, False, f"{named}: enabled by {entry['enabled_by']}, not {s['link']}")
        else:
            rep.add(what, True, f"{s.get('version')} signed, verity ok")


def _check_ignition(
    rep: Report,
    release: dict[str, Any],
    img: Path,
    disk: gpt.Disk,
    work: Path,
    oem: dict[str, Any] | None = None,
    what: str = "ignition",
) -> None:
    ign = release.get("ignition")
    if not ign:
        return
    if oem is None:
        try:
            oem = read_oem(img, disk, work)
        except AclComposeError as e:
            rep.add(what, False, f"OEM: {e.message}")
            return
    cfg = oem["configs"].get("base/base.ign")
    if cfg is None:
        rep.add(what, False, "OEM base/base.ign missing")
    elif cfg["sha256"] != ign.get("sha256"):
        rep.add(
            what,
            False,
            f"OEM base/base.ign sha256 {cfg['sha256']} does not match release.json",
        )
    else:
        rep.add(what, True, f"sha256 {cfg['sha256']}")


def _check_platform(
    rep: Report,
    release: dict[str, Any],
    p: str,
    record: dict[str, Any],
    name: str,
    img: Path,
    work: Path,
    base: dict[str, Any],
) -> None:
    """The OEM partition of `name` is platform `p`'s, as release.json records it."""
    from acl_compose.compose import platform

    what = f"platform {p}"
    try:
        disk = gpt.read(img)
        oem = read_oem(img, disk, work)
    except AclComposeError as e:
        rep.add(what, False, f"{name}: OEM: {e.message}")
        return
    _check_ignition(rep, release, img, disk, work, oem, f"ignition ({p})")
    os_version = (release.get("os_release") or {}).get("VERSION") or ""
    has_sysext = record.get("sysext") is not None
    why = [f"{name}: {w}" for w in platform.missing(oem, p, os_version, has_sysext)]
    want = (record.get("sysext") or {}).get("path", "").removeprefix("OEM:/")
    found = [s for s in oem["sysexts"] if s["file"] == want]
    if found:
        check_oem_sysexts({"sysexts": found}, work / "oem-tree", base["os_file"], base["certs"],
                          work)  # fmt: skip
        s = found[0]
        if s.get("sha256") != record["sysext"].get("sha256"):
            why.append(f"{name}: OEM:/{want} sha256 {s.get('sha256')} does not match release.json")
        elif not s.get("ok"):
            why.append(f"{name}: OEM:/{want}: {s.get('status')}")
    elif want:
        why.append(f"{name}: OEM:/{want} missing")
    if (oem.get("release") or {}) != (record.get("oem_release") or {}):
        why.append(f"{name}: oem-release differs from release.json")
    if why:
        rep.add(what, False, "; ".join(why))
    else:
        sx = record.get("sysext")
        rep.add(what, True, f"{name}: oem-{p} {sx['version']}, OEM:/{want}" if sx else
                f"{name}: OEM partition of platform {p} (no OEM sysext)")  # fmt: skip


def _check_sbom(rep: Report, out: Path, release: dict[str, Any]) -> None:
    from acl_compose.compose.sbom import read_release_sbom

    if "sbom" not in release:
        return
    try:
        read_release_sbom(out, release)
        rep.add("sbom", True, f"{release['sbom'].get('file')} sha256 {release['sbom']['sha256']}")
    except AclComposeError as e:
        rep.add("sbom", False, e.message)


def raise_on_failure(rep: Report) -> None:
    if rep.failures:
        names = "; ".join(f["detail"] or f["check"] for f in rep.failures)
        raise VerificationError(
            f"{len(rep.failures)} check(s) failed: {names}", hint="do not deploy this release"
        )
