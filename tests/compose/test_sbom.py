"""The release SBOM: SPDX 2.3 JSON checked by an independent validator (spdx-tools), naming
every sysext file's origin, listed and signed through release.json, served by `sbom`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from acl_compose.compose import sbom
from acl_compose.fetch import httpserve
from tests.conftest import run_cli
from tests.fixtures_compose import REPO, SDE, write_manifest
from tests.spdx_check import validate

PACKAGES = (
    "debian/libc6-2.36-9+deb12u4::bookworm\n"
    "debian/libgtk-3-0-3.24.38-2~deb12u1::bookworm\n"
    "debian/openssh-server-1:9.2p1-2+deb12u3::bookworm\n"
    "sys-libs/glibc-2.37-r7::portage-stable\n"
)
CONTENTS = "drwxr-xr-x 0/0 0 ./etc\n-rw-r--r-- 0/0 10 ./etc/hostname\n"


@pytest.fixture(scope="module")
def release(mini_flatcar, release_key, tmp_path_factory):
    """A compose with a bundle, a url-sourced file, a prebuilt image, Ignition, and a base
    directory holding the release's packages.txt / contents.txt (as Flatcar SDK output does)."""
    key, cert = release_key
    d = tmp_path_factory.mktemp("sbom")
    base = d / "base"
    base.mkdir()
    os.link(mini_flatcar.path, base / "flatcar_production_image.bin")
    for oem in ("oem-qemu.raw", "oem-azure.raw"):  # each platform's OEM sysext, as SDK output
        os.link(mini_flatcar.path.parent / oem, base / oem)
    (base / "flatcar_production_image_packages.txt").write_text(PACKAGES)
    (base / "flatcar_production_image_contents.txt").write_text(CONTENTS)
    www = d / "www"
    www.mkdir()
    payload = b"#!/bin/sh\necho tool\n"
    (www / "tool").write_bytes(payload)
    bundle = d / "fetched"
    bundle.mkdir()
    run_cli("sysext", "build", REPO / "sysext" / "aks-node", "-o", d / "pre", "--key", key,
            "--cert", cert, check=True)  # fmt: skip
    with httpserve.serve(www) as server:
        url = f"{server.url.rstrip('/')}/tool"
        (bundle / "sysext.yaml").write_text(
            "name: fetched\nversion: '0.3'\nfiles:\n"
            f"  - {{path: /usr/bin/tool, url: '{url}', "
            f"sha256: {hashlib.sha256(payload).hexdigest()}, mode: 0755}}\n"
        )
        m = write_manifest(
            d / "m.yaml", base={"path": base / "flatcar_production_image.bin"}, key=key,
            cert=cert, sysexts=[REPO / "sysext" / "azure-base", bundle, d / "pre" / "aks-node.raw"],
            ignition=[REPO / "ignition" / "base.yaml"], outputs=("raw", "vhd"),
        )  # fmt: skip
        run_cli("--cache-dir", d / "cache", "compose", m, "-o", d / "out", check=True, env=SDE)
    rel = json.loads((d / "out" / "release.json").read_text())
    path = d / "out" / rel["sbom"]["file"]
    return {"out": d / "out", "release": rel, "path": path, "doc": json.loads(path.read_text()),
            "url": url, "payload": payload, "cert": cert, "dir": d}  # fmt: skip


def test_spdx_validator_accepts_it(release):
    assert release["release"]["sbom"]["format"] == "SPDX-2.3"
    assert validate(release["path"]) == []


def test_validator_is_not_vacuous(release, tmp_path):
    """The same document with one file's SHA-1 removed and a bad SPDX id is refused."""
    doc = json.loads(release["path"].read_text())
    doc["files"][0]["checksums"] = [c for c in doc["files"][0]["checksums"]
                                    if c["algorithm"] != "SHA1"]  # fmt: skip
    doc["packages"][0]["SPDXID"] = "not an id"
    bad = tmp_path / "bad.spdx.json"
    bad.write_text(json.dumps(doc))
    messages = validate(bad)
    assert any("SHA1" in m for m in messages) and any("not an id" in m for m in messages)


def _rels(doc: dict, kind: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in doc["relationships"]:
        if r["relationshipType"] == kind:
            out.setdefault(r["spdxElementId"], []).append(r["relatedSpdxElement"])
    return out


def test_every_sysext_file_names_its_origin(release):
    doc, rel = release["doc"], release["release"]
    pkgs = {p["SPDXID"]: p for p in doc["packages"]}
    files = {f["SPDXID"]: f for f in doc["files"]}
    contains = _rels(doc, "CONTAINS")
    origin_rels = {}
    for kind in ("GENERATED_FROM", "COPY_OF", "EXPANDED_FROM_ARCHIVE"):
        for a, bs in _rels(doc, kind).items():
            origin_rels.setdefault(a, []).extend(bs)
    sysexts = {p["name"]: p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-Sysext")}
    # The product's, and each platform's OEM sysext (files read back from the image).
    assert set(sysexts) == {"azure-base", "fetched", "aks-node", "oem-azure", "oem-qemu"}
    for s in rel["sysexts"]:
        pkg = sysexts[s["name"]]
        assert pkg["checksums"] == [{"algorithm": "SHA256", "checksumValue": s["sha256"]}]
        assert pkg["versionInfo"] == s["version"] and pkg["packageFileName"] == s["path"]
        members = [m for m in contains[pkg["SPDXID"]] if m in files]
        assert members, s["name"]
        for fid in members:
            f = files[fid]
            origin = json.loads(f["comment"].split("origin: ", 1)[1])
            assert origin["kind"] not in ("unknown", None), f
            assert origin_rels.get(fid), f"{f['fileName']} has no origin relationship"
    by_name = {(f["fileName"], fid) for fid, f in files.items()}
    # The url entry: COPY_OF a package carrying the URL and the pinned sha256.
    tool = next(fid for name, fid in by_name if name == "./usr/bin/tool")
    (src,) = _rels(doc, "COPY_OF")[tool]
    sha = hashlib.sha256(release["payload"]).hexdigest()
    assert pkgs[src]["checksums"] == [{"algorithm": "SHA256", "checksumValue": sha}]
    assert release["url"] in pkgs[src]["sourceInfo"]
    assert {c["checksumValue"] for c in files[tool]["checksums"]} == {
        sha, hashlib.sha1(release["payload"]).hexdigest()}  # fmt: skip
    # A bundle file: GENERATED_FROM the bundle, its source named relative to the bundle.
    conf = next(fid for name, fid in by_name if name == "./usr/lib/sysctl.d/60-azure-net.conf")
    assert '"from":"files/60-azure-net.conf"' in files[conf]["comment"]
    assert "sysext/azure-base" in pkgs[origin_rels[conf][0]]["sourceInfo"]
    # The prebuilt image's files: read back from it, origin the image with its sha256.
    aks = [fid for fid in contains[sysexts["aks-node"]["SPDXID"]] if fid in files]
    assert all('"kind":"prebuilt"' in files[f]["comment"] for f in aks)
    oem = [fid for fid in contains[sysexts["oem-azure"]["SPDXID"]] if fid in files]
    assert oem and all('"image":"OEM:/sysext/oem-azure-9999.2.0.raw"' in files[f]["comment"]
                       and origin_rels.get(f) for f in oem)  # fmt: skip


def test_base_outputs_and_ignition(release):
    doc, rel = release["doc"], release["release"]
    pkgs = {p["SPDXID"]: p for p in doc["packages"]}
    base = pkgs["SPDXRef-Base"]
    assert base["versionInfo"] == "9999.2.0" and "2 entries" in base["comment"]
    members = [pkgs[i] for i in _rels(doc, "CONTAINS")["SPDXRef-Base"]]
    assert [(p["name"], p.get("versionInfo")) for p in members] == [
        ("libc6", "2.36-9+deb12u4"), ("libgtk-3-0", "3.24.38-2~deb12u1"),
        ("openssh-server", "1:9.2p1-2+deb12u3"), ("glibc", "2.37-r7"),
    ]  # fmt: skip
    assert members[0]["externalRefs"][0]["referenceLocator"] == (
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64")  # fmt: skip
    described = _rels(doc, "DESCRIBES")["SPDXRef-DOCUMENT"]
    assert sorted(pkgs[i]["packageFileName"] for i in described) == sorted(
        o["file"] for o in rel["outputs"])  # fmt: skip
    for i in described:
        o = next(o for o in rel["outputs"] if o["file"] == pkgs[i]["packageFileName"])
        assert pkgs[i]["checksums"][0]["checksumValue"] == o["sha256"]
        assert "SPDXRef-Base" in _rels(doc, "CONTAINS")[i]
    # Each platform's OEM sysext is in that platform's outputs only, with its files.
    for i in described:
        o = next(o for o in rel["outputs"] if o["file"] == pkgs[i]["packageFileName"])
        oem = [pkgs[c] for c in _rels(doc, "CONTAINS")[i] if pkgs[c]["name"].startswith("oem-")]
        sx = rel["platforms"][o["platform"]]["sysext"]
        assert [(p["name"], p["packageFileName"], p["checksums"][0]["checksumValue"])
                for p in oem] == [(sx["name"], sx["path"], sx["sha256"])]  # fmt: skip
        files = [f["fileName"] for f in doc["files"] if f["SPDXID"] in
                 _rels(doc, "CONTAINS")[oem[0]["SPDXID"]]]  # fmt: skip
        assert f"./usr/share/oem-{o['platform']}/README" in files
    ign = pkgs["SPDXRef-Ignition"]
    assert ign["checksums"][0]["checksumValue"] == rel["ignition"]["sha256"]
    (src,) = _rels(doc, "GENERATED_FROM")["SPDXRef-Ignition"]
    source = next(f for f in doc["files"] if f["SPDXID"] == src)
    digest = hashlib.sha256((REPO / "ignition" / "base.yaml").read_bytes()).hexdigest()
    assert digest in {c["checksumValue"] for c in source["checksums"]}
    assert doc["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    # Nothing machine-specific: no absolute paths of this machine anywhere in it.
    assert str(release["dir"]) not in release["path"].read_text()


def test_sbom_command_and_verify(release, tmp_path):
    out = release["out"]
    proc = run_cli("sbom", out, "--cert", release["cert"], check=True)
    assert proc.stdout.encode() == release["path"].read_bytes()
    run_cli("sbom", out, "-o", tmp_path / "x.spdx.json", check=True)
    assert (tmp_path / "x.spdx.json").read_bytes() == release["path"].read_bytes()
    # A changed SBOM no longer matches the signed release.json: sbom and verify say so.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    tampered = copy / release["release"]["sbom"]["file"]
    tampered.write_text(tampered.read_text().replace("libc6", "libc7"))
    proc = run_cli("sbom", copy, check=False)
    assert proc.returncode == 1 and "does not match release.json" in proc.stderr
    assert proc.stdout == ""
    proc = run_cli("--json", "verify", copy, "--cert", release["cert"], check=False)
    checks = {c["check"]: c["ok"] for c in json.loads(proc.stdout)["checks"]}
    assert checks["sbom"] is False and checks["release.json.p7s"] is True
    ok = run_cli("--json", "verify", out, "--cert", release["cert"], check=True)
    assert {c["check"]: c["ok"] for c in json.loads(ok.stdout)["checks"]}["sbom"] is True


def test_sbom_command_refusals(release, tmp_path):
    other = tmp_path / "mine.json"
    other.write_text("my notes\n")
    proc = run_cli("sbom", release["out"], "-o", other, check=False)
    assert proc.returncode == 1 and "holds something else" in proc.stderr
    assert other.read_text() == "my notes\n"
    proc = run_cli("sbom", tmp_path, check=False)
    assert proc.returncode == 1 and "release.json: missing" in proc.stderr


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ("app-admin/sudo-1.9.13_p3::portage-stable", ("app-admin", "sudo", "1.9.13_p3")),
        ("dev-lang/python-3.11.5-r1::portage-stable", ("dev-lang", "python", "3.11.5-r1")),
        ("debian/base-files-12.4+deb12u5::bookworm", ("debian", "base-files", "12.4+deb12u5")),
        ("debian/libgtk-3-0-3.24.38-2::bookworm", ("debian", "libgtk-3-0", "3.24.38-2")),
        ("x/noversion::r", ("x", "noversion", "")),
    ],
)
def test_split_package(line, expect):
    p = sbom.split_package(line)
    assert (p["category"], p["name"], p["version"]) == expect


def test_downloaded_and_image_origins(tmp_path):
    """Origins of the kinds other bundle sources record (sysext/README.md's shape): a Debian
    package, an archive member of a URL, and a preloaded OCI image built from a package. Each
    becomes one element (shared across files), with the right relationship; spdx-tools agrees."""
    deb = {"kind": "deb", "bundle": "rt", "package": "containerd",
           "version": "1.6.20~ds1-1+deb12u3", "architecture": "amd64", "sha256": "ab" * 32,
           "filename": "pool/main/c/containerd/containerd_1.6.20~ds1-1+deb12u3_amd64.deb",
           "url": "https://deb.debian.org/debian/pool/main/c/containerd/x.deb"}  # fmt: skip
    tar = {"kind": "url", "bundle": "rt", "url": "https://github.com/x/cni.tgz",
           "sha256": "cd" * 32, "extract": "./bridge"}  # fmt: skip
    inner = {
        "path": "/catatonit",
        "type": "file",
        "mode": "0755",
        "sha1": "1" * 40,
        "sha256": "2" * 64,
        "origin": dict(deb, package="catatonit", sha256="ef" * 32),
    }
    image = {"kind": "oci-image", "bundle": "rt", "name": "pause",
             "ref": "registry.k8s.io/pause:3.9", "manifest_digest": "sha256:" + "9" * 64,
             "files": [inner]}  # fmt: skip

    def f(path, origin, n):
        return {"path": path, "type": "file", "mode": "0755", "size": 1, "sha1": str(n) * 40,
                "sha256": str(n) * 64, "origin": origin}  # fmt: skip

    contents = [
        f("/usr/bin/containerd", deb, 3),
        f("/usr/bin/ctr", deb, 4),
        f("/usr/libexec/cni/bridge", tar, 5),
        f("/usr/share/rt/pause.tar", image, 6),
    ]
    release = {
        "name": "r",
        "version": "1",
        "source_date_epoch": 0,
        "base": {},
        "usr": {},
        "os_release": {},
        "sysexts": [
            {
                "name": "rt",
                "version": "1",
                "sha256": "0" * 64,
                "path": "/opt/extensions/rt/rt-1.raw",
            }
        ],
        "outputs": [{"file": "r-1.bin", "format": "raw", "size": 1, "sha256": "7" * 64}],
    }
    doc = sbom.build(release, {"sysext_contents": {"rt": contents}})  # fmt: skip
    path = tmp_path / "x.spdx.json"
    path.write_bytes(sbom.dumps(doc))
    assert validate(path) == []
    pkgs = {p["SPDXID"]: p for p in doc["packages"]}
    files = {f["fileName"]: f["SPDXID"] for f in doc["files"]}
    rels = {(r["spdxElementId"], r["relationshipType"]): r["relatedSpdxElement"]
            for r in doc["relationships"]}  # fmt: skip
    ctd = rels[(files["./usr/bin/containerd"], "EXPANDED_FROM_ARCHIVE")]
    assert rels[(files["./usr/bin/ctr"], "EXPANDED_FROM_ARCHIVE")] == ctd  # one package
    assert pkgs[ctd]["name"] == "containerd" and pkgs[ctd]["versionInfo"] == deb["version"]
    assert pkgs[ctd]["downloadLocation"] == deb["url"]
    assert pkgs[ctd]["externalRefs"][0]["referenceLocator"] == (
        "pkg:deb/debian/containerd@1.6.20~ds1-1%2Bdeb12u3?arch=amd64")  # fmt: skip
    cni = rels[(files["./usr/libexec/cni/bridge"], "EXPANDED_FROM_ARCHIVE")]
    assert pkgs[cni]["checksums"][0]["checksumValue"] == "cd" * 32
    img = rels[(files["./usr/share/rt/pause.tar"], "GENERATED_FROM")]
    assert pkgs[img]["primaryPackagePurpose"] == "CONTAINER"
    assert pkgs[rels[(img, "GENERATED_FROM")]]["name"] == "catatonit"
