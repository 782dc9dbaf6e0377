"""Compose steps 5b, 5c and 9: the base's OEM partition, each output platform's OEM content,
and each platform's outputs.

For every platform the manifest's outputs name, the OEM content comes from, in order:
1. the base image itself, when its OEM partition is already that platform's (e.g. a
   `flatcar_production_azure_image` as base, or the testbed's image for `qemu`): checked, kept;
2. the release's `oem-<id>.raw` artifact, fetched and verified like the base (signed DIGESTS,
   SHA512), or for a local base the `oem-<id>.raw` beside it (Flatcar's SDK output folder);
and is checked as systemd-sysext would on the base: extension-release against the base
os-release, dm-verity, and a signature against a certificate the base ships in
/usr/lib/verity.d (a signed image no base certificate accepts would never be merged).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acl_compose import ui, util
from acl_compose.compose import platform
from acl_compose.errors import FetchError, InputError, VerificationError
from acl_compose.image import outputs, sparse

if TYPE_CHECKING:
    from acl_compose.compose.pipeline import State


class OemError(VerificationError):
    """A platform's OEM content failed a check; nothing was written."""


def sysext_contents(image: Path, origin: dict[str, Any]) -> list[dict[str, Any]]:
    from acl_compose import sysext

    return sysext.image_contents(image, origin)


def os_version(st: State) -> str:
    """The OS version Flatcar names OEM sysexts after (os-release VERSION, as its initrd)."""
    return st.os_release.get("VERSION") or st.os_release.get("VERSION_ID") or "0"


def read_base_oem(st: State) -> None:
    """Step 5b: what platform the base's OEM partition is for (the tree is kept for 5c)."""
    with ui.step("read the base OEM partition"):
        tree = platform.read_oem_tree(st.image, st.disk, st.work / "oem-base")  # type: ignore[arg-type]
        st.base_oem = platform.read_layout(tree)
        sx = ", ".join(s["file"] for s in st.base_oem["sysexts"]) or "no OEM sysext"
        ui.info(f"OEM id {st.base_oem['id'] or '-'} ({sx})")


def resolve_platforms(st: State) -> None:
    """Step 5c: each output platform's OEM sysext found, verified and checked; the OEM edits
    that make the image that platform's are kept for write_outputs."""
    with ui.step(f"OEM content for {', '.join(st.manifest.platforms)}"):
        version = os_version(st)
        for p in st.manifest.platforms:
            why = platform.missing(st.base_oem, p, version)
            work = st.work / "oem-sysexts" / p
            work.mkdir(parents=True)
            if platform.legacy(st.base_oem, p):
                st.platforms[p] = {"edits": {}, "record": {
                    "id": p, "source": "base image (OEM files without an OEM sysext)",
                    "sysext": None, "oem_release": dict(st.base_oem["release"]),
                    "grub_oem_id": p}}  # fmt: skip
                ui.info(f"{p}: the base's OEM partition, Flatcar's older layout (no OEM sysext)")
                continue
            if not why:
                src = st.work / "oem-base" / platform.sysext_target(p, version)
                image = work / f"oem-{p}.raw"  # systemd (and the check) go by NAME.raw
                shutil.copyfile(src, image)
                source, edits = "base image", {}
                fields = dict(st.base_oem["release"])
            else:
                image, source = _fetch_sysext(st, p, work, why)
                edits = {}
                fields = {}
            checked = _check(st, p, image)
            if source != "base image":
                fields = platform.oem_release(p, checked["extension_release"], version)
                edits = platform.changes(st.base_oem, p, image, version, fields)
            sysext = {
                "name": f"oem-{p}",
                "path": f"OEM:/{platform.sysext_target(p, version)}",
                "version": fields.get("VERSION_ID"),
                "sha256": util.sha256_file(image),
                **{k: checked[k] for k in ("root_hash", "signed", "certificate")},
                "extension_release": checked["extension_release"],
            }
            st.platforms[p] = {
                "record": {
                    "id": p,
                    "source": source,
                    "sysext": sysext,
                    "oem_release": fields,
                    "grub_oem_id": p,
                },  # fmt: skip
                "edits": edits,
                "contents": sysext_contents(
                    image, {"kind": "image", "image": sysext["path"], "sha256": sysext["sha256"]}
                ),  # fmt: skip
            }
            st.sbom.setdefault("oem_contents", {})[p] = st.platforms[p]["contents"]
            trust = f"signed, {checked['certificate']}" if checked["signed"] else "unsigned"
            ui.info(f"{p}: oem-{p} {sysext['version']} from the {source} ({trust})")


def _fetch_sysext(st: State, p: str, work: Path, why: list[str]) -> tuple[Path, str]:
    """The platform's `oem-<id>.raw`: a verified release artifact, or beside a local base."""
    name = f"oem-{p}.raw"
    dest = work / name
    b = st.manifest.base
    if b.path is None:
        from acl_compose import fetch

        version = st.base.get("release", {}).get("version") or b.release
        try:
            result = fetch.fetch_release(
                cache_dir=st.cache_dir, channel=b.channel, release=version, board=b.board,
                base_url=b.base_url, keyring=b.keyring, trusted_key=b.trusted_key,
                offline=b.offline, artifacts=[name],
            )  # fmt: skip
        except FetchError as e:
            raise InputError(
                f"platform {p}: the base is not a {p} image ({why[0]}) and its release has no "
                f"verified {name}: {e.message}",
                hint=f"use a release that publishes {name}, or drop the {p} outputs",
            ) from e
        art = next(a for a in result.artifacts if a.name == name)
        cached = " (cached)" if art.cached else ""
        ui.info(f"verified {name}: {ui.human_size(art.size)}, signed by "
                f"{art.signature.primary_fingerprint}{cached}")  # fmt: skip
        fact = {k: v for k, v in art.to_json().items() if k not in ("path", "cached")}
        st.base.setdefault("artifacts", []).append(fact)
        shutil.copyfile(art.path, dest)
        return dest, f"release artifact {name}"
    beside = Path(st.base_file).parent / name  # type: ignore[arg-type]
    if not beside.is_file():
        raise InputError(
            f"platform {p}: the base {b.path} is not a {p} image ({why[0]}) and there is no "
            f"{name} beside it",
            hint=f"put the release's {name} next to the base image, or drop the {p} outputs",
        )
    ui.warn(f"{beside} comes with a local base: no release signature to check")
    shutil.copyfile(beside, dest)
    return dest, f"{name} beside the base image"


def _check(st: State, p: str, image: Path) -> dict[str, Any]:
    """sysext.check against the base os-release, then the signature against the base's own
    verity.d certificates: what systemd-sysext on the booted image would do."""
    from acl_compose import sysext

    os_file = st.work / "base-os-release"
    (first,) = sysext.check([image], os_file)
    res = first.to_json()
    if not res["ok"]:
        raise OemError(f"platform {p}: oem-{p}.raw would not be merged: {res['reason']}",
                       hint="use the OEM sysext of this base release")  # fmt: skip
    res["certificate"] = None
    if not res["signed"]:
        return res
    tried = []
    for cert_path, pem in sorted(st.base_certs.items()):
        cert = st.work / "base-cert.crt"
        cert.write_text(pem)
        (r,) = sysext.check([image], os_file, cert=cert)
        cert.unlink()
        if r.ok:
            res["certificate"] = cert_path
            return res
        tried.append(f"{cert_path}: {r.reason}")
    raise OemError(
        f"platform {p}: oem-{p}.raw is signed, but by no certificate the base trusts "
        f"({'; '.join(tried) or 'the base ships no /usr/lib/verity.d certificates'}): "
        "systemd-sysext would refuse it",
        hint="use the OEM sysext published with this base release",
    )


def check_written(st: State, img: Path, p: str) -> None:
    """Read the rebuilt OEM back: the platform's content and the baked config are there."""
    tree = platform.read_oem_tree(img, st.disk, st.work / f"oem-check-{p}")  # type: ignore[arg-type]
    try:
        has_sysext = st.platforms[p]["record"]["sysext"] is not None
        why = platform.missing(platform.read_layout(tree), p, os_version(st), has_sysext)
        for rel, data in st.oem_changes.items():
            f = tree / rel
            if isinstance(data, Path):  # a file copied in (a sysext image): compare digests
                same = f.is_file() and util.sha256_file(f) == util.sha256_file(data)
            else:
                same = f.is_file() and f.read_bytes() == data
            if not same:
                why.append(f"OEM:/{rel} was not written")
        if why:
            raise OemError(f"{p} OEM partition after the rebuild: {'; '.join(why)}")
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def write_outputs(st: State) -> None:
    """Step 9: per platform, its OEM content (and the baked Ignition config) into the OEM
    partition, then its image formats, `<name>-<version>[-<platform>].{bin,qcow2,vhd}`.
    Everything but OEM is the same in every platform's image."""
    names = ", ".join(str(o) for o in st.manifest.outputs)
    with ui.step(f"write outputs: {names}"):
        platforms = st.manifest.platforms
        for i, p in enumerate(platforms):
            img = st.image if i == len(platforms) - 1 else st.work / f"disk-{p}.bin"
            if img != st.image:
                sparse.copy_sparse(st.image, img)  # type: ignore[arg-type]
            edits = {**st.oem_changes, **st.platforms[p]["edits"]}
            if edits:
                platform.apply(img, st.disk, edits, st.work, st.sde)  # type: ignore[arg-type]
                check_written(st, img, p)
            fmts = [o.format for o in st.manifest.outputs if o.platform == p]
            st.outputs += outputs.write_outputs(img, st.out, st.manifest.stem, fmts, st.work,
                                                st.sde, platform=p)  # fmt: skip
        for o in st.outputs:
            ui.info(f"{o['file']} ({o['format']}, {o['platform']}, sha256 {o['sha256'][:16]}…)")


def warn_overlaps(st: State) -> None:
    """Warn about paths a product sysext shares with a platform's OEM sysext: merged
    together, one hides the other (e.g. a udev rule both ship)."""
    from acl_compose import sysext

    product = {f"{n}.raw": c for n, c in (st.sbom.get("sysext_contents") or {}).items()}
    for p in st.manifest.platforms:
        oem = st.platforms[p].get("contents")
        if not oem or not product:
            continue
        for line in sysext.overlap_warnings({**product, f"oem-{p}.raw": oem}):
            ui.warn(f"platform {p}: {line}")
