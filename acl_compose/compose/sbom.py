"""The release's SBOM: one SPDX 2.3 JSON document, written by compose beside the outputs.

What it lists, and how (SPDX element -> relationship):
- each output image (package, SHA-256) CONTAINS the base, every sysext and the Ignition config;
  the document DESCRIBES the output images;
- the base Flatcar image (package: version, SHA-512 of the fetched image, its download URL)
  CONTAINS one package per line of the release's `flatcar_production_image_packages.txt`;
  the entry count of `..._contents.txt` is noted in its comment (both files fetched and
  verified like the image);
- each sysext (package, SHA-256 of the image, files analyzed) CONTAINS its files (SHA-1 +
  SHA-256, mode); every file says where it came from: a comment `origin: {...}` with the bundle's
  own record of the source, and a relationship: COPY_OF a download (URL + SHA-256),
  EXPANDED_FROM_ARCHIVE for a Debian package or archive member, GENERATED_FROM the bundle for
  files from the bundle itself (`from`, `inline`, `symlink`, generated), or the prebuilt image;
- the Ignition config (package, OEM:/base/base.ign, SHA-256) GENERATED_FROM its source files.

Nothing in it depends on the machine or the time of the build (paths are relative to the
manifest, `created` is SOURCE_DATE_EPOCH, the namespace is derived from the release), so a
reproducible release has a reproducible SBOM.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

from acl_compose import __version__
from acl_compose.errors import InputError, VerificationError

SPDX_VERSION = "SPDX-2.3"
NOASSERTION = "NOASSERTION"
_ID_BAD = re.compile(r"[^A-Za-z0-9.-]+")
# SPDX's download-location grammar (as spdx-tools checks it) wants a DNS name with a TLD;
# anything else (loopback IPs, file paths) is NOASSERTION with the URL kept in sourceInfo.
_SPDX_URL = re.compile(
    r"^(https?|ftp|sftp)://([\w\-.!~*'()%;:&=+$,]+@)?[a-z0-9]+([-.][a-z0-9]+)*\.[a-z]{2,5}"
    r"(:[0-9]{1,5})?(/.*)?$",
    re.IGNORECASE,
)
# Origins that unpack an archive (a Debian package, a member of a tarball).
_ARCHIVE_KINDS = {"deb"}


def spdx_id(*parts: str) -> str:
    return "SPDXRef-" + "-".join(_ID_BAD.sub("-", p).strip("-") or "x" for p in parts)


def _download(url: str | None) -> str:
    return url if url and _SPDX_URL.match(url) else NOASSERTION


def _checksums(**algs: str | None) -> list[dict[str, str]]:
    return [
        {"algorithm": alg.upper(), "checksumValue": value} for alg, value in algs.items() if value
    ]


def split_package(line: str) -> dict[str, str] | None:
    """`category/name-version::repo` (Flatcar's packages.txt) -> fields; None for blank lines.

    The version starts at the first `-<digit>` after which at most one `-` follows, which
    reads Gentoo (`glibc-2.37-r3`) and Debian (`libgtk-3-0-3.24.38-2`) names alike.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    atom, _, repo = text.partition("::")
    category, _, rest = atom.rpartition("/")
    name, version = rest, ""
    for m in re.finditer(r"-(?=\d)", rest):
        candidate = rest[m.end() :]
        if candidate.count("-") <= 1:
            name, version = rest[: m.start()], candidate
            break
    return {"category": category, "name": name, "version": version, "repo": repo, "atom": text}


def parse_packages(text: str) -> list[dict[str, str]]:
    return [p for p in map(split_package, text.splitlines()) if p is not None]


def count_contents(text: str) -> int:
    """Entries of `flatcar_production_image_contents.txt` (one listed path per line)."""
    return sum(1 for line in text.splitlines() if line.strip())


def _purl(pkg: dict[str, str], arch: str) -> str | None:
    if pkg["category"] != "debian" or not pkg["version"]:
        return None
    q = urllib.parse.quote
    return f"pkg:deb/debian/{q(pkg['name'])}@{q(pkg['version'], safe='')}?arch={arch}"


def _verification_code(sha1s: list[str]) -> str:
    """SPDX 2.3 section 7.9: SHA-1 over the sorted, concatenated SHA-1s of the files."""
    return hashlib.sha1("".join(sorted(sha1s)).encode(), usedforsecurity=False).hexdigest()


class _Doc:
    def __init__(self) -> None:
        self.packages: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.relationships: list[dict[str, str]] = []
        self._ids: set[str] = set()
        self.origins: dict[str, str] = {}  # origin record (JSON) -> its element
        self.seen_rel: set[tuple[str, str]] = set()

    def unique(self, ident: str) -> str:
        base, n = ident, 1
        while ident in self._ids:
            n += 1
            ident = f"{base}-{n}"
        self._ids.add(ident)
        return ident

    def rel(self, a: str, kind: str, b: str) -> None:
        self.relationships.append(
            {"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b}
        )

    def package(self, ident: str, name: str, **fields: Any) -> str:
        ident = self.unique(ident)
        pkg = {"SPDXID": ident, "name": name, "downloadLocation": NOASSERTION,
               "filesAnalyzed": False}  # fmt: skip
        pkg.update({k: v for k, v in fields.items() if v not in (None, "", [])})
        self.packages.append(pkg)
        return ident


def build(release: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """The SPDX document for `release` (release.json's content without `sbom`).

    `extras`: `base_packages` (packages.txt text or None), `base_contents` (contents.txt text
    or None), `sysext_contents` {name: sysext.contents records}, `sysext_sources` {name:
    manifest-relative bundle or image path}, `ignition_sources` [{path, sha1, sha256}],
    `ignition_sha1`.
    """
    d = _Doc()
    arch = {"amd64-usr": "amd64", "arm64-usr": "arm64"}.get(
        (release.get("base") or {}).get("board") or "amd64-usr", "amd64"
    )
    base_id = _base(d, release, extras, arch)
    sysext_ids = [_sysext(d, s, extras) for s in release.get("sysexts") or []]
    ign_id = _ignition(d, release, extras)
    parts = [base_id, *sysext_ids] + ([ign_id] if ign_id else [])
    oem_ids = _platform_sysexts(d, release, extras)
    out_ids = []
    for o in release.get("outputs") or []:
        oid = d.package(
            spdx_id("Image", o["format"]),
            o["file"],
            versionInfo=release["version"],
            packageFileName=o["file"],
            checksums=_checksums(sha256=o["sha256"]),
            primaryPackagePurpose="OPERATING-SYSTEM",
            comment=f"{o['format']} disk image, {o['size']} bytes; signed release "
            f"{release['name']} {release['version']}",
        )
        out_ids.append(oid)
        for p in [*parts, *oem_ids.get(o.get("platform"), [])]:
            d.rel(oid, "CONTAINS", p)
    for oid in out_ids:
        d.rel("SPDXRef-DOCUMENT", "DESCRIBES", oid)
    stem = f"{release['name']}-{release['version']}"
    digest = hashlib.sha256(json.dumps(release, sort_keys=True).encode()).hexdigest()
    created = datetime.datetime.fromtimestamp(release["source_date_epoch"], datetime.UTC)
    return {
        "spdxVersion": SPDX_VERSION,
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": stem,
        "documentNamespace": f"https://acl-compose.invalid/spdx/{stem}-{digest[:32]}",
        "creationInfo": {
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: acl-compose-{__version__}"],
            "comment": "written by `acl-compose compose`; listed (with its sha256) in the "
            "signed release.json",
        },
        "packages": d.packages,
        "files": d.files,
        "relationships": d.relationships,
    }


def _base(d: _Doc, release: dict[str, Any], extras: dict[str, Any], arch: str) -> str:
    base = release.get("base") or {}
    osr = release.get("os_release") or {}
    image = next(
        (a for a in base.get("artifacts") or [] if a.get("name", "").endswith(".bin.bz2")), {}
    )
    version = (base.get("release") or {}).get("version") or osr.get("VERSION_ID")
    source = image.get("url") or base.get("source")
    notes = [f"/usr dm-verity root hash {(release.get('usr') or {}).get('root_hash')} verified"]
    contents = extras.get("base_contents")
    if contents is not None:
        notes.append(f"the release's image_contents.txt lists {count_contents(contents)} entries")
    verified = "OpenPGP signature and DIGESTS verified" if base.get("signature_verified") else (
        "a local image: no release signature checked")  # fmt: skip
    base_id = d.package(
        "SPDXRef-Base",
        osr.get("NAME") or "Flatcar Container Linux",
        versionInfo=version,
        packageFileName=image.get("name") or None,
        downloadLocation=_download(image.get("url")),
        checksums=_checksums(sha512=image.get("sha512")),
        primaryPackagePurpose="OPERATING-SYSTEM",
        sourceInfo=f"from {source}; {verified}" if source else verified,
        comment="; ".join(notes),
    )
    for pkg in parse_packages(extras.get("base_packages") or ""):
        purl = _purl(pkg, arch)
        pid = d.package(
            spdx_id("Base", pkg["category"], pkg["name"]),
            pkg["name"],
            versionInfo=pkg["version"] or None,
            sourceInfo=f"{pkg['atom']} (flatcar_production_image_packages.txt)",
            externalRefs=[{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                           "referenceLocator": purl}] if purl else None,
        )  # fmt: skip
        d.rel(base_id, "CONTAINS", pid)
    return base_id


def _platform_sysexts(
    d: _Doc, release: dict[str, Any], extras: dict[str, Any]
) -> dict[str, list[str]]:
    """Each platform's OEM sysext (in that platform's outputs only), with its files."""
    ids: dict[str, list[str]] = {}
    for p, rec in sorted((release.get("platforms") or {}).items()):
        sx = rec.get("sysext")
        if not sx:
            ids[p] = []
            continue
        name = sx["name"]
        own = {"sysext_contents": {name: (extras.get("oem_contents") or {}).get(p) or []},
               "sysext_sources": {name: rec.get("source")}}  # fmt: skip
        ids[p] = [_sysext(d, {**sx, "path": sx.get("path")}, own)]
    return ids


def _sysext(d: _Doc, s: dict[str, Any], extras: dict[str, Any]) -> str:
    name = s["name"]
    files = extras.get("sysext_contents", {}).get(name) or []
    source = extras.get("sysext_sources", {}).get(name)
    sid = d.unique(spdx_id("Sysext", name))
    file_ids, sha1s = [], []
    bundle_id = None
    for f in files:
        fid = d.unique(spdx_id("File", name, f["path"]))
        file_ids.append(fid)
        origin = f.get("origin") or {"kind": "unknown"}
        is_link = f["type"] != "file"
        sha1 = (
            f.get("sha1")
            or hashlib.sha1((f.get("target") or "").encode(), usedforsecurity=False).hexdigest()
        )
        sha1s.append(sha1)
        sha256 = f.get("sha256") or hashlib.sha256((f.get("target") or "").encode()).hexdigest()
        what = f"symlink to {f.get('target')} (checksums over the target); " if is_link else ""
        if f.get("member"):
            what += f"archive member {f['member']}; "
        shown = {k: v for k, v in origin.items() if k != "files"}
        if "files" in origin:
            shown["files"] = len(origin["files"])
        d.files.append({
            "SPDXID": fid,
            "fileName": "." + f["path"],
            "checksums": _checksums(sha1=sha1, sha256=sha256),
            "fileTypes": ["OTHER"] if is_link else _file_types(f["path"]),
            "comment": f"{what}mode {f.get('mode')}; origin: "
            + json.dumps(shown, sort_keys=True, separators=(",", ":")),
        })  # fmt: skip
        if origin.get("kind") not in _LOCAL_KINDS:  # fetched: a URL, a Debian package, ...
            d.rel(fid, *_origin(d, origin))
        else:
            if bundle_id is None:
                bundle_id = _bundle_package(d, name, s, source, origin)
            d.rel(fid, "GENERATED_FROM", bundle_id)
    pkg = {
        "SPDXID": sid,
        "name": name,
        "versionInfo": s.get("version"),
        "packageFileName": s.get("path"),
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": bool(file_ids),
        "checksums": _checksums(sha256=s.get("sha256")),
        "primaryPackagePurpose": "OTHER",
        "comment": f"systemd-sysext image, dm-verity root hash {s.get('root_hash')}, "
        + ("signed" if s.get("signed") else "unsigned"),
    }
    if file_ids:
        pkg["packageVerificationCode"] = {"packageVerificationCodeValue": _verification_code(sha1s)}
    d.packages.append({k: v for k, v in pkg.items() if v not in (None, "")})
    for fid in file_ids:
        d.rel(sid, "CONTAINS", fid)
    return sid


# Files made from the bundle itself (or read from a prebuilt image): GENERATED_FROM it.
_LOCAL_KINDS = {"from", "inline", "symlink", "generated", "image", "prebuilt", "unknown", None}


def _file_types(path: str) -> list[str]:
    if path.endswith((".conf", ".toml", ".yaml", ".json", ".rules", ".service", ".socket")):
        return ["TEXT"]
    if "/bin/" in path or "/libexec/" in path or "/sbin/" in path:
        return ["BINARY"]
    return ["OTHER"]


def _bundle_package(
    d: _Doc, name: str, s: dict[str, Any], source: str | None, origin: dict[str, Any]
) -> str:
    prebuilt = origin.get("kind") in ("image", "prebuilt")
    return d.package(
        spdx_id("Source", name),
        f"{name} {'prebuilt image' if prebuilt else 'sysext bundle'}",
        versionInfo=s.get("version"),
        primaryPackagePurpose="FILE" if prebuilt else "SOURCE",
        sourceInfo=f"{'prebuilt image' if prebuilt else 'bundle'} {source} (relative to the "
        "compose manifest)"
        if source
        else None,
    )


def _origin(d: _Doc, origin: dict[str, Any]) -> tuple[str, str]:
    """(relationship, element) naming where a file came from; one element per distinct
    download, package or container image in the whole document."""
    kind = origin.get("kind")
    key = json.dumps({k: v for k, v in origin.items() if k not in ("bundle", "files")},
                     sort_keys=True)  # fmt: skip
    if key not in d.origins:
        if kind == "oci-image":
            d.origins[key] = _image_package(d, origin)
        else:
            d.origins[key] = _origin_package(d, origin)
    if kind == "oci-image":  # an archive the build made from these files: generated
        return "GENERATED_FROM", d.origins[key]
    archive = kind in _ARCHIVE_KINDS or "extract" in origin
    return "EXPANDED_FROM_ARCHIVE" if archive else "COPY_OF", d.origins[key]


def _image_package(d: _Doc, origin: dict[str, Any]) -> str:
    """A container image a sysext preloads (built from files that have their own origins)."""
    fields = {k: v for k, v in origin.items() if k not in ("kind", "bundle", "files")}
    iid = d.package(
        spdx_id("Image", str(origin.get("name") or origin.get("ref") or "oci")),
        str(origin.get("ref") or origin.get("name") or "container image"),
        versionInfo=origin.get("manifest_digest"),
        primaryPackagePurpose="CONTAINER",
        sourceInfo="oci-image: " + json.dumps(fields, sort_keys=True, separators=(",", ":")),
    )
    for inner in origin.get("files") or []:
        o = inner.get("origin") or {}
        if o.get("kind") not in _LOCAL_KINDS:
            rel, target = _origin(d, o)
            if (iid, target) not in d.seen_rel:
                d.seen_rel.add((iid, target))
                d.rel(iid, "GENERATED_FROM", target)
    return iid


def _origin_package(d: _Doc, origin: dict[str, Any]) -> str:
    """A download or package a sysext file was taken from, with every field the bundle recorded."""
    kind = origin.get("kind", "other")
    url = origin.get("url")
    label = origin.get("package") or origin.get("name") or (url.rsplit("/", 1)[-1] if url else kind)
    fields = {k: v for k, v in origin.items() if k not in ("kind", "bundle")}
    sha = origin.get("sha256")
    purl = None
    if kind == "deb" and origin.get("package") and origin.get("version"):
        pkg = {"category": "debian", "name": origin["package"], "version": origin["version"]}
        purl = _purl(pkg, origin.get("architecture") or "amd64")
    return d.package(
        spdx_id("Origin", kind, sha[:16] if isinstance(sha, str) else str(label)),
        str(label),
        versionInfo=origin.get("version"),
        packageFileName=origin.get("filename"),
        downloadLocation=_download(url),
        checksums=_checksums(sha256=sha if isinstance(sha, str) else None),
        primaryPackagePurpose="ARCHIVE" if kind in _ARCHIVE_KINDS else "FILE",
        sourceInfo=f"{kind}: " + json.dumps(fields, sort_keys=True, separators=(",", ":")),
        externalRefs=[{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                       "referenceLocator": purl}] if purl else None,
    )  # fmt: skip


def _ignition(d: _Doc, release: dict[str, Any], extras: dict[str, Any]) -> str | None:
    ign = release.get("ignition")
    if not ign:
        return None
    iid = d.package(
        "SPDXRef-Ignition",
        "Ignition base config",
        versionInfo=ign.get("version"),
        packageFileName=ign.get("path"),
        checksums=_checksums(sha256=ign.get("sha256")),
        primaryPackagePurpose="FILE",
        comment="merged from the sources it is GENERATED_FROM, baked as the OEM base config",
    )
    for src in extras.get("ignition_sources") or []:
        fid = d.unique(spdx_id("IgnitionSource", src["path"]))
        d.files.append({
            "SPDXID": fid,
            "fileName": src["path"] if src["path"].startswith("./") else "./" + src["path"],
            "checksums": _checksums(sha1=src["sha1"], sha256=src["sha256"]),
            "fileTypes": ["TEXT"],
            "comment": "Ignition source (path relative to the compose manifest)",
        })  # fmt: skip
        d.rel(iid, "GENERATED_FROM", fid)
    return iid


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def read_release_sbom(out_dir: Path, release: dict[str, Any]) -> bytes:
    """The release's SBOM bytes, after checking them against release.json (sha256, and the
    output images it describes). VerificationError naming the file otherwise."""
    entry = release.get("sbom")
    if not entry:
        raise InputError(
            f"{out_dir}/release.json lists no SBOM",
            hint="recompose the release with this version of acl-compose",
        )
    name = str(entry.get("file") or "")
    path = out_dir / name
    if not name or Path(name).name != name or not path.is_file():
        raise VerificationError(f"{path}: the SBOM listed in release.json is missing",
                                hint="copy the whole release directory")  # fmt: skip
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise VerificationError(
            f"{path}: sha256 {digest} does not match release.json ({entry.get('sha256')})",
            hint="the SBOM was changed after the release was signed; do not trust it",
        )
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise VerificationError(f"{path}: not JSON: {e}") from None
    listed = {
        (p.get("packageFileName"), c.get("checksumValue"))
        for p in doc.get("packages") or []
        for c in p.get("checksums") or []
        if c.get("algorithm") == "SHA256"
    }
    for o in release.get("outputs") or []:
        if (o["file"], o["sha256"]) not in listed:
            raise VerificationError(f"{path}: does not describe {o['file']} (sha256 {o['sha256']})")
    return data
