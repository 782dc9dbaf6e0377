"""Compose a signed release: Flatcar base + sysexts + Ignition, offline and without root.

`compose(manifest, out_dir)` runs the pipeline below, one function per step, each with a
progress line and its time. OUT_DIR follows the output-folder rule (util.OutputDir): new, empty
or an earlier compose output (release.json); files compose did not write are never touched.
Everything is built in a temporary directory beside OUT_DIR and moved in only after every step
succeeded, so an error, Ctrl-C or kill leaves OUT_DIR as it was. Large files are streamed and
copied sparsely: memory stays flat.

Caches (under the cache dir, all content-addressed):
- `compose/base/<key>/`: the decompressed base image (read-only) and what was verified about
  it (/usr root hash, verity layout, os-release). The key is the sha512 of the fetched,
  signature-checked artifact, so a changed base is always re-verified.
- sysext builds: `sysext.build(..., cache_dir=...)`, keyed by a hash of the bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acl_compose import __version__, ui, util
from acl_compose.compose import placement, platform
from acl_compose.compose.manifest import Manifest
from acl_compose.compose.oem_content import (
    read_base_oem,
    resolve_platforms,
    warn_overlaps,
    write_outputs,
)
from acl_compose.compose.placement import ETC_EXTENSIONS, OEM_EXTENSIONS, OEM_MOUNT, VERITY_D
from acl_compose.compose.release_dir import (
    RELEASE_JSON,
    RELEASE_LAST,
    RELEASE_P7S,
    release_output,
    sbom_name,
)
from acl_compose.errors import AclComposeError, FetchError, InputError, VerificationError
from acl_compose.image import gpt, outputs, sparse, usr

IMAGE_NAME = "flatcar_production_image.bin"
# The release's package list and file listing: fetched and verified for the SBOM.
PACKAGES_TXT = "flatcar_production_image_packages.txt"
CONTENTS_TXT = "flatcar_production_image_contents.txt"
BASE_IGN = "base/base.ign"


class ComposeError(VerificationError):
    """A composed artifact failed a check before anything was written."""


@dataclass
class State:
    """What the steps hand to each other."""

    manifest: Manifest
    out: Path  # the temporary output directory (renamed to OUT_DIR at the end)
    work: Path  # scratch space inside it, removed before the rename
    cache_dir: Path
    sde: int
    passphrase: bytes | None = None
    key: Any = None
    cert: Any = None
    cert_pem: bytes = b""
    cert_fpr: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    base_file: Path | None = None
    base_cache: Path | None = None
    image: Path | None = None
    disk: gpt.Disk | None = None
    usr: dict[str, Any] = field(default_factory=dict)
    os_release_text: str = ""
    os_release: dict[str, str] = field(default_factory=dict)
    base_certs: dict[str, str] = field(default_factory=dict)  # /usr/lib/verity.d of the base
    base_oem: dict[str, Any] = field(default_factory=dict)  # platform.read_layout of its OEM
    oem_changes: dict[str, Any] = field(default_factory=dict)  # for every platform's OEM
    platforms: dict[str, dict[str, Any]] = field(default_factory=dict)  # record + edits
    sysexts: list[dict[str, Any]] = field(default_factory=list)
    ignition: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    sbom: dict[str, Any] = field(default_factory=dict)  # sbom.build's extras


def compose(
    manifest: Manifest,
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    passphrase: bytes | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline; returns release.json's content. `passphrase` (of the signing
    key) wins over the manifest's signing.passphrase_file."""
    start = time.monotonic()
    out_dir = Path(out_dir).resolve()
    sde = _source_date_epoch(manifest)
    out = release_output(manifest, out_dir, force)
    with util.terminate_as_interrupt(), out.staging(last=RELEASE_LAST) as tmp:
        st = State(manifest, tmp, tmp / ".work", Path(cache_dir), sde, passphrase=passphrase)
        st.work.mkdir()
        load_signing(st)
        fetch_base(st)
        prepare_image(st)
        read_partitions(st)
        verify_base_usr(st)
        read_base_os_release(st)
        read_base_oem(st)
        resolve_platforms(st)
        build_sysexts(st)
        warn_overlaps(st)
        place_sysexts(st)
        bake_ignition(st)
        write_outputs(st)
        release = write_release(st)
        shutil.rmtree(st.work)
    ui.info(f"composed {manifest.stem} into {out_dir} in {time.monotonic() - start:.1f}s")
    return release


def _source_date_epoch(manifest: Manifest) -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        if not env.isdigit():
            raise InputError(f"SOURCE_DATE_EPOCH={env!r} is not a number of seconds")
        return int(env)
    if manifest.source_date_epoch is not None:
        return manifest.source_date_epoch
    return int(time.time())


# --------------------------------------------------------------------------- steps


def load_signing(st: State) -> None:
    """Step 0: the release key and certificate must load (and match) before any work."""
    from acl_compose.trust import signing

    with ui.step("load the release signing key"):
        sg = st.manifest.signing
        if st.passphrase is None and sg.passphrase_file:
            st.passphrase = signing.read_passphrase(file=sg.passphrase_file)
        st.key = signing.load_key(sg.key, st.passphrase)
        st.cert = signing.load_cert(sg.cert)
        st.cert_fpr = signing.cert_fingerprint(st.cert)
        from cryptography.hazmat.primitives import serialization

        st.cert_pem = st.cert.public_bytes(serialization.Encoding.PEM)
        pub = st.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        cert_pub = st.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if pub != cert_pub:
            raise InputError(
                f"{sg.key}: the key does not belong to the certificate {sg.cert}",
                hint="use the key and certificate made together by `acl-compose keys generate`",
            )
        ui.info(f"certificate {st.cert_fpr[:16]}…")


def fetch_base(st: State) -> None:
    """Step 1: fetch the base release and verify its signatures (or take a local image)."""
    base = st.manifest.base
    with ui.step("fetch and verify the base release"):
        if base.path is not None:
            st.base_file, st.base = _local_base(base.path)
            st.base["source"] = _rel(st, st.base_file)  # as the manifest names it, not /home/…
            for key, name in (("base_packages", PACKAGES_TXT), ("base_contents", CONTENTS_TXT)):
                f = st.base_file.parent / name  # an SDK output directory has them (unsigned)
                if f.is_file():
                    st.sbom[key] = f.read_text(errors="replace")
            ui.warn(f"base {base.path} is a local image: no release signature to check")
        else:
            st.base_file, st.base = _remote_base(st)
        ui.info(f"base {st.base.get('release', {}).get('version', '?')}: {st.base_file.name}")


def _local_base(path: Path) -> tuple[Path, dict[str, Any]]:
    from acl_compose.fetch.release import parse_version_txt

    release: dict[str, Any] = {}
    if path.is_dir():  # Flatcar SDK output: images/amd64-usr/latest/
        for name in (IMAGE_NAME, IMAGE_NAME + ".bz2"):
            if (path / name).is_file():
                vt = path / "version.txt"
                if vt.is_file():
                    release = parse_version_txt(vt.read_text(), str(vt)).to_json()
                path = path / name
                break
        else:
            raise InputError(
                f"{path}: no {IMAGE_NAME}[.bz2] in this directory",
                hint="point base.path at a Flatcar image or SDK output directory",
            )
    st = path.stat()
    # A local file is keyed by identity, not content: hashing 8 GiB on every run defeats the cache.
    key = hashlib.sha512(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    return path, {
        "source": str(path),
        "release": release,
        "artifacts": [],
        "signature_verified": False,
        "cache_key": key,
    }


def _remote_base(st: State) -> tuple[Path, dict[str, Any]]:
    from acl_compose import fetch

    b = st.manifest.base
    image, listings = IMAGE_NAME + ".bz2", [PACKAGES_TXT, CONTENTS_TXT]

    def get(names: list[str]) -> Any:
        return fetch.fetch_release(
            cache_dir=st.cache_dir, channel=b.channel, release=b.release, board=b.board,
            base_url=b.base_url, keyring=b.keyring, trusted_key=b.trusted_key,
            offline=b.offline, artifacts=names,
        )  # fmt: skip

    try:
        result = get([image, *listings])
    except FetchError as e:  # a mirror without the listings: compose, with a thinner SBOM
        if not any(n in e.message for n in listings):
            raise
        ui.warn(f"{e.message}: the SBOM will not list the base's packages")
        result = get([image])
    for a in result.artifacts:
        ui.info(
            f"verified {a.name}: {ui.human_size(a.size)}, signed by "
            f"{a.signature.primary_fingerprint}{' (cached)' if a.cached else ''}"
        )
    arts = {a.name: a for a in result.artifacts}
    for key, name in (("base_packages", PACKAGES_TXT), ("base_contents", CONTENTS_TXT)):
        if name in arts:
            st.sbom[key] = arts[name].path.read_text(errors="replace")
    img = arts.get(IMAGE_NAME + ".bz2")
    if img is None:
        raise InputError(f"{result.url}: the release has no {IMAGE_NAME}.bz2")
    # Local paths and cache hits differ between machines and runs: not release facts.
    facts = [
        {k: v for k, v in a.to_json().items() if k not in ("path", "cached")} for a in arts.values()
    ]
    return img.path, {
        "source": result.url,
        "channel": b.channel,
        "board": result.board,
        "release": result.release.to_json(),
        "artifacts": facts,
        "signature_verified": True,
        "cache_key": img.sha512,
    }


def prepare_image(st: State) -> None:
    """Step 2: decompress into the base cache (once), then a sparse work copy."""
    with ui.step("decompress the base to a sparse work image"):
        cdir = st.cache_dir / "compose" / "base" / st.base["cache_key"][:48]
        cached = cdir / "image.bin"
        stamp = cdir / "image.stamp"
        if not (cached.is_file() and stamp.is_file() and stamp.read_text() == _stamp(cached)):
            cdir.mkdir(parents=True, exist_ok=True)
            (cdir / "verified.json").unlink(missing_ok=True)
            tmp = cdir / f".image.{os.getpid()}.tmp"
            try:
                if st.base_file.suffix == ".bz2":  # type: ignore[union-attr]
                    from acl_compose import fetch

                    fetch.decompress(st.base_file, tmp)
                else:
                    sparse.copy_sparse(st.base_file, tmp)  # type: ignore[arg-type]
                if st.base_file.name.removesuffix(".bz2").endswith(".vhd"):  # type: ignore[union-attr]
                    # A fixed VHD (Flatcar's Azure image) is the raw disk and a 512-byte footer.
                    outputs.check_vhd(tmp)
                    os.truncate(tmp, tmp.stat().st_size - 512)
                os.chmod(tmp, 0o444)
                os.replace(tmp, cached)
            finally:
                tmp.unlink(missing_ok=True)
            util.atomic_write(stamp, _stamp(cached).encode())
        else:
            ui.info("decompressed image cached")
        st.base_cache = cdir
        st.image = st.work / "disk.bin"
        sparse.copy_sparse(cached, st.image)
        os.chmod(st.image, 0o644)


def _stamp(path: Path) -> str:
    s = path.stat()
    return f"{s.st_ino}:{s.st_size}:{s.st_mtime_ns}"


def read_partitions(st: State) -> None:
    """Step 3: read the GPT (own reader) and find Flatcar's partitions by label."""
    with ui.step("read the partition table"), _naming_the_base(st):
        st.disk = usr.require_disk(st.image)  # type: ignore[arg-type]
        ui.info(", ".join(f"{p.number}:{p.name}" for p in st.disk.partitions))


@contextlib.contextmanager
def _naming_the_base(st: State) -> Iterator[None]:
    """Errors about the work copy name the base the user gave, not a temporary file."""
    try:
        yield
    except AclComposeError as e:
        if str(st.image) not in e.message:
            raise
        raise type(e)(e.message.replace(str(st.image), f"base {st.base_file}"), e.hint) from None


def verify_base_usr(st: State) -> None:
    """Step 4: recompute USR-A's verity tree against the root hash in the kernel."""
    with ui.step("verify the base /usr (dm-verity)"), _naming_the_base(st):
        disk, img = st.disk, st.image
        assert disk is not None and img is not None
        part = usr.usr_partition(disk)
        record = st.base_cache / "verified.json"  # type: ignore[operator]
        kernel_hash = usr.kernel_root_hash(img, disk, st.manifest.base.board)
        if record.is_file():
            data = json.loads(record.read_text())
            # (Records from before the base's verity.d certificates were kept are redone.)
            if data.get("usr", {}).get("root_hash") == kernel_hash and "verity_d" in data:
                st.usr, st.os_release_text = data["usr"], data["os_release"]
                st.base_certs = data["verity_d"]
                ui.info(f"/usr {kernel_hash[:16]}… verified earlier for this base (cached)")
                return
        usr_file = usr.extract(img, part, st.work / "usr-a.img")
        result = usr.verify_usr(img, disk, usr_file, st.manifest.base.board)
        st.usr = {"partition": part.name, "partuuid": part.guid, **result.to_json()}
        ui.info(f"/usr root hash {result.kernel_root_hash} matches the kernel")


def read_base_os_release(st: State) -> None:
    """Step 5: the base os-release, read from USR-A without mounting (btrfs or ext2)."""
    from acl_compose.image.osrelease import parse_os_release

    with ui.step("read the base os-release"):
        if not st.os_release_text:
            st.os_release_text, _ = usr.read_os_release(st.work / "usr-a.img")
            st.base_certs = platform.base_certificates(st.work / "usr-a.img", st.work)
            (st.work / "usr-a.img").unlink(missing_ok=True)
            record = {"usr": st.usr, "os_release": st.os_release_text,
                      "verity_d": st.base_certs}  # fmt: skip
            util.atomic_write(st.base_cache / "verified.json", json.dumps(record).encode())  # type: ignore[operator]
        st.os_release = osr = parse_os_release(st.os_release_text)
        ui.info(
            f"{osr.get('ID')} {osr.get('VERSION_ID')} (SYSEXT_LEVEL={osr.get('SYSEXT_LEVEL', '-')})"
        )
        (st.work / "base-os-release").write_text(st.os_release_text)


def build_sysexts(st: State) -> None:
    """Step 6: build the sysexts (cached) and check them against the base and the cert."""
    from acl_compose import sysext

    if not st.manifest.sysexts:
        return
    with ui.step(f"build and check {len(st.manifest.sysexts)} sysext(s)"):
        build_dir = st.work / "sysexts"
        build_dir.mkdir()
        sg = st.manifest.signing
        seen: dict[str, Path] = {}
        for src in st.manifest.sysexts:
            if src.is_dir():
                from acl_compose.sysext.bundle import load_bundle

                placement.refuse_reserved(load_bundle(src).name, src)  # before building anything
                info = _build_cached(st, src, build_dir / src.name, st.passphrase)
            else:
                info = {
                    "name": src.stem,
                    "version": None,
                    "path": src,
                    "sha256": util.sha256_file(src),
                }
            info["path"] = Path(info["path"])
            info["source"] = str(src)
            name = info["name"]
            placement.refuse_reserved(name, src)
            if name in seen:
                raise InputError(
                    f"{src}: sysext {name!r} is also built from {seen[name]}",
                    hint="each sysext name may appear once",
                )
            seen[name] = src
            st.sysexts.append(info)
        os_release_file = st.work / "base-os-release"
        results = sysext.check([s["path"] for s in st.sysexts], os_release_file, cert=sg.cert)
        for s, r in zip(st.sysexts, results, strict=True):
            ok, reason, details = _check_result(r)
            if not ok:
                raise ComposeError(
                    f"sysext {s['name']} ({s['source']}): {reason}",
                    hint="fix the bundle (os, sysext_level/version_id, architecture) or the "
                    "signing key; nothing was written",
                )
            if s.get("version") is None:  # a prebuilt image: take it from its extension-release
                ext = details.get("extension_release") or {}
                s["version"] = ext.get("SYSEXT_VERSION_ID") or ext.get("VERSION_ID") or "0"
            for k in ("root_hash", "signed"):
                if s.get(k) is None and details.get(k) is not None:
                    s[k] = details[k]
            ui.info(f"{s['name']} {s.get('version')}: ok")
        for s in st.sysexts:
            if not s.get("contents"):  # a prebuilt image (or an older cache entry): read it
                src = Path(s["source"])
                origin = {"kind": "prebuilt" if src.is_file() else "image",
                          "image": _rel(st, src), "sha256": s["sha256"]}  # fmt: skip
                s["contents"] = sysext.image_contents(s["path"], origin)
        st.sbom["sysext_contents"] = {s["name"]: s.pop("contents") for s in st.sysexts}
        st.sbom["sysext_sources"] = {s["name"]: _rel(st, Path(s["source"])) for s in st.sysexts}


def _rel(st: State, path: Path) -> str:
    """A path as the manifest names it (relative to its folder): the same on every machine."""
    return os.path.relpath(path, st.manifest.path.parent)


def _bundle_digest(bundle: Path, signer: str) -> str:
    """The sysext build's own input digest, keyed further by tool version and signer."""
    from acl_compose.sysext.bundle import input_digest, load_bundle

    extra = {"tool": __version__, "format": "ddi", "signer": signer}
    return input_digest(load_bundle(bundle), extra)


def _build_cached(st: State, src: Path, out: Path, passphrase: bytes | None) -> dict[str, Any]:
    """sysext.build, cached by the bundle's content hash: a warm compose reuses the signed
    image (the same bytes a cold build makes: signatures are deterministic)."""
    from acl_compose import sysext

    sg = st.manifest.signing
    cdir = st.cache_dir / "compose" / "sysext" / _bundle_digest(src, st.cert_fpr)[:48]
    record = cdir / "build.json"
    out.mkdir()
    if record.is_file():
        info = json.loads(record.read_text())
        cached = cdir / Path(info["path"]).name
        if cached.is_file() and util.sha256_file(cached) == info["sha256"]:
            shutil.copyfile(cached, out / cached.name)
            info["path"] = str(out / cached.name)
            ui.info(f"{info['name']} {info['version']}: cached build")
            return info
    info = dict(
        sysext.build(src, out, key=sg.key, cert=sg.cert, passphrase=passphrase, fmt="ddi",
                     cache_dir=st.cache_dir, offline=st.manifest.base.offline,
                     debian_mirror=st.manifest.debian_mirror)
    )  # fmt: skip
    cdir.mkdir(parents=True, exist_ok=True)
    built = Path(info["path"])
    tmp = cdir / f".{built.name}.{os.getpid()}.tmp"
    try:  # Ctrl-C mid-copy must not leave the half copy in the cache
        shutil.copyfile(built, tmp)
        os.replace(tmp, cdir / built.name)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {k: str(v) if isinstance(v, Path) else v for k, v in info.items()}
    util.atomic_write(record, json.dumps(meta).encode())
    return info


def _check_result(r: Any) -> tuple[bool, str, dict[str, Any]]:
    """sysext.check results may be dicts or objects; normalise them."""
    d = r if isinstance(r, dict) else (r.to_json() if hasattr(r, "to_json") else vars(r))
    ok = bool(d.get("ok", not d.get("reason") and not d.get("error")))
    reason = d.get("reason") or d.get("error") or d.get("message") or "check failed"
    return ok, str(reason), d


def place_sysexts(st: State) -> None:
    """Step 7: sysexts onto the OEM partition, as OEM:/extensions/<name>/<name>-<version>.raw
    (linked from /etc/extensions and trusted through /etc/verity.d by the base config)."""
    if not st.sysexts:
        return
    with ui.step("place sysexts on the OEM partition"):
        for s in st.sysexts:
            rel = f"{OEM_EXTENSIONS}/{s['name']}/{s['name']}-{s['version']}.raw"
            st.oem_changes[rel] = s["path"]
            s["image_path"] = f"{OEM_MOUNT}/{rel}"
            s["link"] = f"{ETC_EXTENSIONS}/{s['name']}.raw"
        ui.info(", ".join(f"OEM:/{OEM_EXTENSIONS}/{s['name']}/" for s in st.sysexts))


def verity_d_path(st: State) -> str:
    return f"{VERITY_D}/{st.manifest.name}.crt"


def bake_ignition(st: State) -> None:
    """Step 8: render, validate and merge the Ignition configs, and the sysexts' links and
    certificate, into OEM base/base.ign (merged under every config on every first boot)."""
    if not st.manifest.ignition and not st.sysexts:
        return
    from acl_compose import ignition

    n = len(st.manifest.ignition)
    with ui.step(f"bake {n} Ignition config(s) and the sysext links as OEM {BASE_IGN}"):
        configs = [ignition.load(p) for p in st.manifest.ignition]
        merged = ignition.merge(configs) if configs else None
        version = (merged or {}).get("ignition", {}).get("version", "3.3.0")
        if st.sysexts:
            generated = placement.sysext_config(st.sysexts, st.cert_pem, verity_d_path(st), version)
            if merged is not None:
                placement.refuse_overlap(merged, generated, st.manifest.ignition)
            merged = ignition.merge([merged, generated]) if merged is not None else generated
        assert merged is not None
        warnings = list(ignition.validate(merged) or [])
        for w in warnings:
            ui.warn(f"ignition: {w}")
        text = ignition.dumps(merged).encode()
        st.oem_changes[BASE_IGN] = text  # written with each platform's OEM content
        st.ignition = {
            "path": f"OEM:/{BASE_IGN}",
            "sha256": hashlib.sha256(text).hexdigest(),
            "sources": [_rel(st, p) for p in st.manifest.ignition],
            "version": merged.get("ignition", {}).get("version"),
        }
        st.sbom["ignition_sources"] = [
            {"path": _rel(st, p), "sha1": hashlib.sha1(p.read_bytes()).hexdigest(),
             "sha256": util.sha256_file(p)}
            for p in st.manifest.ignition
        ]  # fmt: skip
        ui.info(f"{len(text)} bytes, sha256 {st.ignition['sha256'][:16]}…")


def write_release(st: State) -> dict[str, Any]:
    """Step 11: release.json and its detached CMS signature release.json.p7s."""
    from acl_compose.trust import signing

    with ui.step("write and sign release.json"):
        base = {k: v for k, v in st.base.items() if k != "cache_key"}
        release = {
            "schema": 1,
            "name": st.manifest.name,
            "version": st.manifest.version,
            "tool": {"name": "acl-compose", "version": __version__},
            "source_date_epoch": st.sde,
            "base": base,
            "os_release": st.os_release,
            "usr": st.usr,
            "sysexts": [
                {
                    "name": s["name"],
                    "version": s.get("version"),
                    "path": s["image_path"],
                    "link": s["link"],
                    "sha256": s["sha256"],
                    "root_hash": s.get("root_hash"),
                    "signed": s.get("signed"),
                    "certificate_fingerprint": s.get("certificate_fingerprint"),
                }
                for s in st.sysexts
            ],
            "ignition": st.ignition,
            "signing": {
                "certificate_fingerprint": st.cert_fpr,
                "verity_d": verity_d_path(st),
            },
            "platforms": {p: st.platforms[p]["record"] for p in st.manifest.platforms},
            "outputs": [
                {
                    "file": o["file"],
                    "format": o["format"],
                    "platform": o["platform"],
                    "size": o["size"],
                    "sha256": o["sha256"],
                }
                for o in st.outputs
            ],  # fmt: skip
        }
        release["sbom"] = _write_sbom(st, release)
        data = (json.dumps(release, indent=2, sort_keys=True) + "\n").encode()
        util.atomic_write(st.out / RELEASE_JSON, data)
        util.atomic_write(st.out / RELEASE_P7S, signing.sign_detached(data, st.key, st.cert))
        return release


def _write_sbom(st: State, release: dict[str, Any]) -> dict[str, Any]:
    """`<stem>.spdx.json`, listed in release.json (so the release signature covers it)."""
    from acl_compose.compose import sbom

    data = sbom.dumps(sbom.build(release, st.sbom))
    name = sbom_name(st.manifest)
    util.atomic_write(st.out / name, data)
    ui.info(f"SBOM {name} ({sbom.SPDX_VERSION})")
    return {"file": name, "format": sbom.SPDX_VERSION, "sha256": hashlib.sha256(data).hexdigest()}
