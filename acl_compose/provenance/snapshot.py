"""A release directory or a disk image, read into one comparable model (for `diff`).

From a release directory: release.json (name, version, base, sysexts, outputs, signer), the
SBOM it lists (the base's packages, every sysext file), the certificate inside
release.json.p7s (signer), and the disk image for what neither records (the Ignition config,
and sysext files when there is no SBOM). From a bare image (.bin, .vhd, .qcow2): what the image
itself holds: os-release, the sysexts in ROOT, the OEM Ignition config, the verity.d
certificates. Nothing is trusted or verified here; `verify` does that.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from acl_compose.compose.inspect import all_sysexts, check_sysext, raw_view, read_oem
from acl_compose.errors import AclComposeError, InputError
from acl_compose.image import fs, gpt, usr
from acl_compose.util import scratch_dir

UNIT_DIR = "/usr/lib/systemd/system/"
_UNIT_RE = re.compile(r"\.(service|socket|timer|path|target|mount)$")


def units_of(files: dict[str, dict[str, Any]]) -> list[str]:
    """Unit files shipped, and `<target>.wants/<unit>` enablement links."""
    out = []
    for path in files:
        if not path.startswith(UNIT_DIR):
            continue
        rest = path[len(UNIT_DIR) :]
        parts = rest.split("/")
        if len(parts) == 1 and _UNIT_RE.search(rest):
            out.append(rest)
        elif len(parts) == 2 and parts[0].endswith((".wants", ".requires")):
            out.append(rest)
    return sorted(out)


def _files(contents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keep = ("type", "mode", "sha256", "target", "size")
    return {c["path"]: {k: c[k] for k in keep if k in c} for c in contents}


def snapshot(path: str | Path) -> dict[str, Any]:
    """The model of a release directory (with release.json) or a disk image file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "release.json").is_file():
            raise InputError(
                f"{path}: no release.json in this directory",
                hint="give two release directories (compose -o) or two disk images",
            )
        return _release(path)
    if path.is_file():
        return _image(path)
    raise InputError(f"{path}: no such release directory or image", hint="check the path")


def _release(out: Path) -> dict[str, Any]:
    try:
        release = json.loads((out / "release.json").read_text())
    except ValueError as e:
        raise InputError(f"{out}/release.json: not JSON: {e}") from None
    base = release.get("base") or {}
    snap: dict[str, Any] = {
        "kind": "release",
        "path": str(out),
        "name": release.get("name"),
        "version": release.get("version"),
        "base": {
            "version": (base.get("release") or {}).get("version")
            or (release.get("os_release") or {}).get("VERSION_ID"),
            "packages": None,
        },
        "sysexts": {},
        "ignition_sha256": (release.get("ignition") or {}).get("sha256"),
        "outputs": {
            o["format"]: {"file": o["file"], "size": o["size"], "sha256": o["sha256"]}
            for o in release.get("outputs") or []
        },
        "signer": _release_signer(out, release),
    }
    doc = _sbom(out, release)
    files_by_sysext = _sbom_files(doc) if doc else {}
    if doc:
        snap["base"]["packages"] = _sbom_packages(doc)
    for s in release.get("sysexts") or []:
        snap["sysexts"][s["name"]] = {
            "version": s.get("version"),
            "sha256": s.get("sha256"),
            "path": s.get("path"),
            "files": files_by_sysext.get(s["name"]),
        }
    snap["_disk"] = _pick_disk(out, release)
    return snap


def _sbom(out: Path, release: dict[str, Any]) -> dict[str, Any] | None:
    from acl_compose.compose.sbom import read_release_sbom

    if not release.get("sbom"):
        return None
    return json.loads(read_release_sbom(out, release))


def _sbom_packages(doc: dict[str, Any]) -> dict[str, str]:
    ids = {
        r["relatedSpdxElement"]
        for r in doc.get("relationships") or []
        if r["spdxElementId"] == "SPDXRef-Base" and r["relationshipType"] == "CONTAINS"
    }
    return {p["name"]: p.get("versionInfo", "") for p in doc["packages"] if p["SPDXID"] in ids}


def _sbom_files(doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{sysext name: {path: {sha256, mode, ...}}} from the sysext packages' CONTAINS."""
    names = {p["SPDXID"]: p["name"] for p in doc["packages"] if p["SPDXID"].startswith(
        "SPDXRef-Sysext-")}  # fmt: skip
    files = {f["SPDXID"]: f for f in doc.get("files") or []}
    out: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in names.values()}
    for r in doc.get("relationships") or []:
        if r["relationshipType"] != "CONTAINS" or r["spdxElementId"] not in names:
            continue
        f = files.get(r["relatedSpdxElement"])
        if f is None:
            continue
        sums = {c["algorithm"]: c["checksumValue"] for c in f.get("checksums") or []}
        comment = f.get("comment") or ""
        mode = re.search(r"mode (\d+)", comment)
        link = re.match(r"symlink to (.*?) \(checksums over the target\)", comment)
        item = {"type": "symlink" if link else "file", "sha256": sums.get("SHA256"),
                "mode": mode.group(1) if mode else None}  # fmt: skip
        if link:
            item["target"] = link.group(1)
        out[names[r["spdxElementId"]]][f["fileName"][1:]] = item
    return out


def _release_signer(out: Path, release: dict[str, Any]) -> dict[str, Any] | None:
    fpr = (release.get("signing") or {}).get("certificate_fingerprint")
    subject = None
    p7s = out / "release.json.p7s"
    if p7s.is_file():
        try:
            from cryptography import x509

            from acl_compose.trust import pkcs7

            for der in pkcs7.parse_signed_data(p7s.read_bytes()).certificates:
                if hashlib.sha256(der).hexdigest() == fpr:
                    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except (AclComposeError, ValueError):
            subject = None
    return {"fingerprint": fpr, "subject": subject} if fpr else None


def _pick_disk(out: Path, release: dict[str, Any]) -> str | None:
    by_fmt = {o.get("format"): out / o.get("file", "") for o in release.get("outputs") or []}
    for fmt in ("raw", "vhd", "qcow2"):
        if fmt in by_fmt and by_fmt[fmt].is_file():
            return str(by_fmt[fmt])
    return None


def _image(path: Path) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "kind": "image", "path": str(path), "name": None, "version": None,
        "base": {"version": None, "packages": None}, "sysexts": {},
        "ignition_sha256": None, "outputs": {"image": {"file": path.name,
                                                       "size": path.stat().st_size}},
        "signer": None, "_disk": str(path),
    }  # fmt: skip
    with scratch_dir(prefix="acl-diff-") as tmp:
        work = Path(tmp)
        with raw_view(path, work) as img:
            disk = usr.require_disk(img)
            part = usr.usr_partition(disk)
            usr_file = work / "usr.img"
            gpt.copy_out(img, part, usr_file)
            text, osr = usr.read_os_release(usr_file)
            usr_file.unlink()
            snap["base"]["version"] = osr.get("VERSION_ID")
            os_file = work / "os-release"
            os_file.write_text(text)
            oem = _oem(img, disk, work)
            spec, entries, certs = all_sysexts(img, disk, oem or {})
            for e in entries:
                snap["sysexts"][e["name"]] = _image_sysext(spec, e, os_file, work)
            snap["signer"] = _cert_signer(certs)
            snap["ignition"] = (oem or {}).get("configs", {}).get("base/base.ign")
    snap["ignition_sha256"] = (snap["ignition"] or {}).get("sha256")
    snap["ignition"] = (snap["ignition"] or {}).get("config")
    return snap


def _image_sysext(spec: str, entry: dict[str, Any], os_file: Path, work: Path) -> dict[str, Any]:
    res = check_sysext(spec, dict(entry), os_file, {}, work)
    return {"version": res.get("version"), "sha256": res.get("sha256"), "path": entry["path"],
            "files": _sysext_files(spec, entry, work)}  # fmt: skip


def _sysext_files(spec: str, entry: dict[str, Any], work: Path) -> dict[str, Any] | None:
    """The files of a sysext on OEM or in ROOT (None if it is not a readable sysext image)."""
    from acl_compose import sysext

    tmp = work / "sysext-files" / f"{entry['name']}.raw"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if entry.get("file"):  # in the restored OEM tree
        shutil.copyfile(entry["file"], tmp)
    elif entry.get("size") is not None:
        fs.ext4_dump(spec, entry["path"], tmp)
    else:
        return None
    try:
        return _files(sysext.image_contents(tmp, {"kind": "image"}))
    except AclComposeError:
        return None
    finally:
        tmp.unlink(missing_ok=True)


def _cert_signer(certs: dict[str, bytes]) -> dict[str, Any] | None:
    from acl_compose.trust import signing

    found = []
    for path, pem in sorted(certs.items()):
        try:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            continue
        found.append({"fingerprint": signing.cert_fingerprint(cert),
                      "subject": cert.subject.rfc4514_string(), "path": path})  # fmt: skip
    if not found:
        return None
    return {"fingerprint": ",".join(f["fingerprint"] for f in found),
            "subject": "; ".join(f["subject"] for f in found)}  # fmt: skip


def _oem(img: Path, disk: gpt.Disk, work: Path) -> dict[str, Any] | None:
    try:
        return read_oem(img, disk, work)
    except AclComposeError:
        return None


def fill_from_disk(snap: dict[str, Any], need_files: bool) -> None:
    """For a release: read the Ignition config (and sysext files without SBOM) from its image."""
    disk_file = snap.get("_disk")
    if snap["kind"] != "release" or not disk_file or "ignition" in snap:
        return
    with scratch_dir(prefix="acl-diff-") as tmp:
        work = Path(tmp)
        with raw_view(disk_file, work) as img:
            disk = usr.require_disk(img)
            oem = _oem(img, disk, work)
            ign = (oem or {}).get("configs", {}).get("base/base.ign")
            snap["ignition"] = (ign or {}).get("config")
            if not need_files:
                return
            spec, entries, _ = all_sysexts(img, disk, oem or {})
            by_path = {e["path"]: e for e in entries}
            for s in snap["sysexts"].values():
                e = by_path.get(s.get("path"))
                if s.get("files") is None and e is not None:
                    s["files"] = _sysext_files(spec, e, work)
