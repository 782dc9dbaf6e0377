"""`acl-compose inspect IMAGE`: what a composed (or upstream) disk image holds, read offline.

Partition table, the firmwares that can boot it (UEFI loader, BIOS boot code and GRUB core
image), Flatcar version (from USR's os-release), /usr verity status (the hash in the kernel
against the recomputed tree), OEM id and the OEM partition's platform sysexts, baked
Ignition configs, and the product's sysexts with their version and signature status: on the
OEM partition (OEM:/extensions, what compose writes; linked and trusted by the base config) and
in ROOT (/opt/extensions with /etc/extensions links, the way Flatcar documents for images
customized by hand).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from acl_compose import util
from acl_compose.compose.placement import ETC_EXTENSIONS, OEM_EXTENSIONS, OEM_MOUNT, VERITY_D
from acl_compose.errors import AclComposeError, InputError
from acl_compose.image import firmware, fs, gpt, usr
from acl_compose.run import run
from acl_compose.util import scratch_dir

QCOW2_MAGIC = b"QFI\xfb"


@contextlib.contextmanager
def raw_view(path: str | os.PathLike[str], work: Path) -> Iterator[Path]:
    """A raw view of an image: .bin and fixed .vhd as they are (the VHD footer is at the end),
    qcow2 converted to a sparse temporary raw file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: no such image file", hint="give a .bin, .vhd or .qcow2 disk image"
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != QCOW2_MAGIC:
        yield path
        return
    tmp = work / (path.stem + ".raw")
    run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(path), str(tmp)])
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _ok(fn: Any, *args: Any) -> tuple[Any, str | None]:
    """Run one probe; a failure becomes a status line instead of aborting the whole report."""
    try:
        return fn(*args), None
    except AclComposeError as e:
        return None, e.message


def read_oem(img: Path, disk: gpt.Disk, work: Path) -> dict[str, Any]:
    """OEM id, platform content (compose.platform.read_layout) and baked Ignition configs from
    the OEM btrfs. The restored tree stays at `work/oem-tree` for `check_oem_sysexts`."""
    import hashlib

    from acl_compose.compose import platform

    oem = disk.by_label("OEM")
    part = work / "oem.img"
    gpt.copy_out(img, oem, part)
    tree = work / "oem-tree"
    try:
        fs.btrfs_restore(part, tree)
    finally:
        part.unlink(missing_ok=True)
    out: dict[str, Any] = platform.read_layout(tree)
    out["configs"] = {}
    out["tree"] = str(tree)  # for oem_sysexts; not part of the report
    if out["id"] is None:
        out["id"] = out["grub_oem_id"]
    for name in ("base/base.ign", "config.ign"):
        f = tree / name
        if f.is_file():
            data = f.read_bytes()
            try:
                parsed: Any = json.loads(data)
            except ValueError:
                parsed = None
            out["configs"][name] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "config": parsed,
            }
    return out


def check_oem_sysexts(
    oem: dict[str, Any], tree: Path, os_file: Path | None, certs: dict[str, str], work: Path
) -> None:
    """Add sha256, root hash, signature status and a systemd-sysext verdict to each OEM sysext
    in `oem` (as read by read_oem): against the base os-release and the certificates its own
    /usr ships (/usr/lib/verity.d), the keys the booted system accepts it with."""
    from acl_compose import sysext

    for s in oem.get("sysexts", []):
        src = tree / s["file"]
        img = work / "oem-sysext" / f"oem-{s['id']}.raw"  # the name it is linked under
        img.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, img)
        try:
            s["sha256"] = util.sha256_file(img)
            if os_file is None:
                s["status"] = "not checked: no base os-release"
                continue
            (r,) = sysext.check([img], os_file)
            s.update(signed=r.signed, root_hash=r.root_hash, certificate=None,
                     extension_release=r.extension_release)  # fmt: skip
            s["ok"], s["status"] = r.ok, "ok" if r.ok else str(r.reason)
            if r.ok and r.signed:
                s["ok"], s["status"] = False, "signed by no /usr/lib/verity.d certificate"
                for path, pem in sorted(certs.items()):
                    cert = work / "oem-sysext" / "cert.crt"
                    cert.write_text(pem)
                    (rc,) = sysext.check([img], os_file, cert=cert)
                    if rc.ok:
                        s["ok"], s["status"], s["certificate"] = True, "ok", path
                        break
        finally:
            img.unlink(missing_ok=True)


def _base_config_links(oem: dict[str, Any]) -> tuple[dict[str, str], dict[str, bytes]]:
    """From OEM base/base.ign: /etc/extensions link -> target, /etc/verity.d cert -> PEM."""
    from acl_compose.ignition import resource_bytes

    cfg = ((oem.get("configs") or {}).get("base/base.ign") or {}).get("config") or {}
    storage = cfg.get("storage", {}) if isinstance(cfg, dict) else {}
    links = {
        e["path"]: e.get("target", "")
        for e in storage.get("links", [])
        if str(e.get("path", "")).startswith(f"{ETC_EXTENSIONS}/")
    }
    certs = {}
    for e in storage.get("files", []):
        path = str(e.get("path", ""))
        if path.startswith(f"{VERITY_D}/") and path.endswith(".crt"):
            try:
                certs[path] = resource_bytes(e.get("contents") or {})
            except (ValueError, KeyError, OSError):
                continue
    return links, certs


def oem_sysexts(oem: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The product's sysexts on the OEM partition, enabled and trusted by the base config."""
    links, certs = _base_config_links(oem)
    tree = Path(oem["tree"])
    found = {}
    for f in sorted((tree / OEM_EXTENSIONS).glob("*/*.raw")):
        path = f"{OEM_MOUNT}/{f.relative_to(tree).as_posix()}"
        found[path] = {"name": f.parent.name, "path": path, "size": f.stat().st_size,
                       "file": str(f), "enabled_by": None}  # fmt: skip
    for link, target in links.items():
        entry = found.get(target) or found.setdefault(target, {
            "name": PurePosixPath(link).name.removesuffix(".raw"), "path": target,
            "size": None, "file": None, "enabled_by": None})  # fmt: skip
        entry["enabled_by"] = link
    return sorted(found.values(), key=lambda s: s["path"]), certs


def all_sysexts(
    img: Path, disk: gpt.Disk, oem: dict[str, Any]
) -> tuple[str, list[dict[str, Any]], dict[str, bytes]]:
    """Both placements: OEM (compose's) and ROOT; certificates from the base config and ROOT."""
    spec, entries, certs = root_sysexts(img, disk)
    if "tree" in oem:
        oem_entries, oem_certs = oem_sysexts(oem)
        entries = oem_entries + entries
        certs = {**oem_certs, **certs}
    return spec, entries, certs


def root_sysexts(img: Path, disk: gpt.Disk) -> tuple[str, list[dict[str, Any]], dict[str, bytes]]:
    """ROOT's sysexts: /etc/extensions links and /opt/extensions images; verity.d certs.
    Links into /oem belong to the OEM placement (oem_sysexts) and are left out here."""
    root = disk.by_label("ROOT")
    spec = fs.ext4_spec(img, root.offset)
    found: dict[str, dict[str, Any]] = {}
    for d in fs.ext4_list(spec, "/opt/extensions") or []:
        if not d.is_dir:
            continue
        for e in fs.ext4_list(spec, f"/opt/extensions/{d.name}") or []:
            if e.name.endswith(".raw") and not e.is_dir:
                p = f"/opt/extensions/{d.name}/{e.name}"
                found[p] = {"name": d.name, "path": p, "size": e.size, "enabled_by": None}
    for e in fs.ext4_list(spec, "/etc/extensions") or []:
        p = f"/etc/extensions/{e.name}"
        if e.is_symlink:
            target = fs.ext4_readlink(spec, p) or ""
            tpath = (
                str(PurePosixPath("/etc/extensions", target))
                if not target.startswith("/")
                else target
            )
            if tpath.startswith(f"{OEM_MOUNT}/"):
                continue
            entry = found.setdefault(
                tpath,
                {
                    "name": e.name.removesuffix(".raw"),
                    "path": tpath,
                    "size": None,
                    "enabled_by": None,
                },
            )
            entry["enabled_by"] = p
        elif e.name.endswith(".raw"):
            found.setdefault(
                p, {"name": e.name.removesuffix(".raw"), "path": p, "size": e.size, "enabled_by": p}
            )
    certs = {}
    for e in fs.ext4_list(spec, "/etc/verity.d") or []:
        if e.name.endswith(".crt"):
            certs[f"/etc/verity.d/{e.name}"] = fs.ext4_read(spec, f"/etc/verity.d/{e.name}")
    return spec, sorted(found.values(), key=lambda s: s["path"]), certs


def check_sysext(
    spec: str | None,
    entry: dict[str, Any],
    os_release_file: Path | None,
    certs: dict[str, bytes],
    work: Path,
) -> dict[str, Any]:
    """Run `sysext.check` on one sysext (from the restored OEM tree, or copied out of ROOT)
    against the base and each cert."""
    from acl_compose import sysext

    tmp = work / "sysext" / entry["name"]
    tmp.mkdir(parents=True, exist_ok=True)
    img = tmp / f"{entry['name']}.raw"  # check wants the NAME.raw file name
    try:
        if entry.get("file"):
            shutil.copyfile(entry["file"], img)
        elif spec is not None and entry.get("size") is not None:
            fs.ext4_dump(spec, entry["path"], img)
        else:
            raise InputError(f"{entry['path']}: the image is missing")
        entry["sha256"] = util.sha256_file(img)
        if os_release_file is None:
            entry["status"] = "not checked: no base os-release"
            return entry
        results = []
        for cert_path, pem in (certs or {"": b""}).items():
            cert_file = None
            if pem:
                cert_file = tmp / "cert.crt"
                cert_file.write_bytes(pem)
            (r,) = sysext.check([img], os_release_file, cert=cert_file)
            d = r if isinstance(r, dict) else (r.to_json() if hasattr(r, "to_json") else vars(r))
            d = {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
            d["cert"] = cert_path or None
            results.append(d)
            if d.get("ok"):
                break
        best = next((d for d in results if d.get("ok")), results[-1])
        ext = best.get("extension_release") or {}
        entry["version"] = ext.get("SYSEXT_VERSION_ID") or _version_from_name(entry)
        entry["signed"] = best.get("signed")
        entry["root_hash"] = best.get("root_hash")
        entry["certificate"] = best.get("cert")
        entry["ok"] = bool(best.get("ok"))
        entry["status"] = (
            "ok" if entry["ok"] else str(best.get("reason") or best.get("error") or "failed")
        )
        return entry
    finally:
        img.unlink(missing_ok=True)


def _version_from_name(entry: dict[str, Any]) -> str | None:
    stem = PurePosixPath(entry["path"]).stem
    prefix = f"{entry['name']}-"
    return stem[len(prefix) :] if stem.startswith(prefix) else None


def inspect_image(
    path: str | os.PathLike[str], board: str = "amd64-usr", verify_usr: bool = True
) -> dict[str, Any]:
    """Everything `inspect` reports, as a JSON-able dict."""
    with scratch_dir(prefix="acl-inspect-", dir=os.environ.get("TMPDIR")) as tmpd:
        work = Path(tmpd)
        with raw_view(path, work) as img:
            disk = gpt.read(img)
            report: dict[str, Any] = {"image": str(path), "disk": disk.to_json()}
            report["firmware"] = {
                name: s.to_json() for name, s in firmware.boot_support(img).items()
            }
            report.update(inspect_usr(img, disk, work, board, verify_usr))
            report["oem"], err = _ok(read_oem, img, disk, work)
            if err:
                report["oem"] = {"error": err}
            os_file = None
            if report.get("os_release_text"):
                os_file = work / "os-release"
                os_file.write_text(report["os_release_text"])
            if not err:
                check_oem_sysexts(report["oem"], work / "oem-tree", os_file,
                                  report.pop("usr_verity_d", None) or {}, work)  # fmt: skip
            report.pop("usr_verity_d", None)
            found, err = _ok(all_sysexts, img, disk, report["oem"])
            if err:
                report["sysexts"], report["verity_d"] = {"error": err}, []
            else:
                spec, entries, certs = found
                report["verity_d"] = sorted(certs)
                report["sysexts"] = [
                    _public(check_sysext(spec, e, os_file, certs, work)) for e in entries
                ]
            report.pop("os_release_text", None)
            report["oem"].pop("tree", None)
            return report


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "file"}


def inspect_usr(img: Path, disk: gpt.Disk, work: Path, board: str, verify: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        part = usr.usr_partition(disk)
    except AclComposeError as e:
        return {"usr": {"status": e.message}}
    usr_file = work / "usr-a.img"
    gpt.copy_out(img, part, usr_file)
    try:
        text, err = _ok(usr.read_os_release, usr_file)
        if text:
            out["os_release_text"] = text[0]
            out["os_release"] = text[1]
            out["flatcar_version"] = text[1].get("VERSION")
        from acl_compose.compose.platform import base_certificates

        out["usr_verity_d"], _ = _ok(base_certificates, usr_file, work)
        kernel_hash, kerr = _ok(usr.kernel_root_hash, img, disk, board)
        status: dict[str, Any] = {
            "partition": part.name,
            "filesystem": usr.filesystem(usr_file),
            "kernel_root_hash": kernel_hash,
        }
        if kerr:
            status["status"] = kerr
        elif verify:
            result, verr = _ok(usr.verify_usr, img, disk, usr_file, board)
            status["status"] = "verified" if result else f"MISMATCH: {verr}"
            status["verified"] = result is not None
            if result:
                status.update(result.to_json())
        else:
            status["status"] = "not checked"
        out["usr"] = status
    finally:
        usr_file.unlink(missing_ok=True)
    return out


def format_text(r: dict[str, Any]) -> list[str]:
    """Human-readable lines for `inspect` without --json."""
    lines = [f"image: {r['image']}", f"disk GUID {r['disk']['guid']}, {r['disk']['size']} bytes"]
    lines.append("  #  label            size        type GUID                             PARTUUID")
    for p in r["disk"]["partitions"]:
        size = _human(p["size"])
        lines.append(
            f"  {p['number']:<2} {p['label']:<16} {size:>10}  {p['type_guid']}  {p['guid']}"
        )
    for name, fw in (r.get("firmware") or {}).items():
        verdict = "boots" if fw["bootable"] else "CANNOT boot"
        lines.append(f"{name.upper()}: {verdict}: {fw['reason']}")
    osr = r.get("os_release") or {}
    level = osr.get("SYSEXT_LEVEL", "-")
    name = f"{osr.get('NAME', '?')} {osr.get('VERSION', '?')}"
    lines.append(f"os: {name} (ID={osr.get('ID')}, SYSEXT_LEVEL={level})")
    u = r.get("usr", {})
    fs_name = f"{u['filesystem']}, " if u.get("filesystem") else ""
    lines.append(
        f"/usr verity: {u.get('status')} ({fs_name}kernel hash {u.get('kernel_root_hash') or '-'})"
    )
    oem = r.get("oem") or {}
    err = f" ({oem['error']})" if oem.get("error") else ""
    rel = oem.get("release") or {}
    about = [f"oem-release: {rel.get('NAME', '?')} {rel.get('VERSION_ID', '?')}"] if rel else []
    about += [f"grub.cfg oem_id={oem['grub_oem_id']}"] if oem.get("grub_oem_id") else []
    about_s = f" ({'; '.join(about)})" if about else ""
    lines.append(f"OEM id: {oem.get('id') or '-'}{about_s}{err}")
    for s in oem.get("sysexts") or []:
        state = "active" if s.get("active") else "inactive"
        signed = f"signed by {s['certificate']}" if s.get("certificate") else (
            "signed" if s.get("signed") else "unsigned")  # fmt: skip
        lines.append(f"OEM sysext oem-{s['id']} {s['version']}: OEM:/{s['file']} "
                     f"({state}; {signed}; {s.get('status', '?')})")  # fmt: skip
    for cname, c in (oem.get("configs") or {}).items():
        cfg = c.get("config") or {}
        files = len(cfg.get("storage", {}).get("files", []))
        units = len(cfg.get("systemd", {}).get("units", []))
        users = len(cfg.get("passwd", {}).get("users", []))
        spec = cfg.get("ignition", {}).get("version", "?")
        lines.append(
            f"Ignition OEM:/{cname}: spec {spec}, {files} files, {units} units, {users} users, "
            f"sha256 {c['sha256']}"
        )
    lines.append(f"verity.d certificates: {', '.join(r.get('verity_d') or []) or 'none'}")
    sx = r.get("sysexts")
    if isinstance(sx, dict):
        lines.append(f"sysexts: {sx.get('error')}")
    elif not sx:
        lines.append("sysexts: none")
    else:
        for s in sx:
            signed = "signed" if s.get("signed") else "unsigned"
            enabled = "" if s.get("enabled_by") else " [not enabled]"
            version = s.get("version") or "?"
            lines.append(
                f"sysext {s['name']} {version}: {s['path']} ({signed}; {s.get('status')}){enabled}"
            )
    return lines


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
