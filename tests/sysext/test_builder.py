"""sysext build, cross-checked with systemd-dissect, veritysetup, sgdisk and openssl
(`sysext check` is tested in test_checker.py)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from acl_compose import sysext
from acl_compose.image import gpt
from acl_compose.sysext import ddi
from acl_compose.trust import signing
from tests.conftest import REPO, run_cli
from tests.ddi_tools import dissect, dissect_with_verity_d, extract
from tests.sysext.conftest import BUNDLES


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_builds_reproducibly(built: dict, name: str) -> None:
    a, b = built[name]["runs"]
    assert a["sha256"] == b["sha256"]
    assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
    assert a["signed"] is True and a["certificate_fingerprint"]
    import yaml

    spec = yaml.safe_load((REPO / "sysext" / name / "sysext.yaml").read_text())
    assert a["name"] == name and a["version"] == spec["version"]


@pytest.mark.parametrize("name", BUNDLES)
def test_systemd_dissect_sees_signed_extension(built: dict, name: str) -> None:
    info = dissect(Path(built[name]["runs"][0]["path"]))
    assert info["useSystemExtension"] is True
    root = next(m for m in info["mounts"] if m["designator"] == "root")
    assert root["verity"] == "signed"
    assert root["fstype"] == "erofs"
    assert f"SYSEXT_ID={name}" in info["extensionRelease"]
    assert "ID=flatcar" in info["extensionRelease"]


@pytest.mark.parametrize("name", BUNDLES)
def test_veritysetup_and_openssl_verify_partitions(
    built: dict, keys: dict, name: str, tmp_path: Path
) -> None:
    result = built[name]["runs"][0]
    image = Path(result["path"])
    data = extract(image, 1, tmp_path / "data")
    tree = extract(image, 2, tmp_path / "tree")
    sig_part = extract(image, 3, tmp_path / "sig").read_bytes()
    subprocess.run(["veritysetup", "verify", data, tree, result["root_hash"]], check=True)
    # Partition UUIDs carry the root hash (sgdisk's view, independent of our reader).
    info = subprocess.run(["sgdisk", "-i", "1", image], capture_output=True, text=True).stdout
    guid = re.search(r"Partition unique GUID: (\S+)", info).group(1)
    assert guid.replace("-", "").lower() == result["root_hash"][:32]
    doc = json.loads(sig_part.rstrip(b"\0"))
    assert set(doc) == {"rootHash", "certificateFingerprint", "signature"}
    assert doc["rootHash"] == result["root_hash"]
    (tmp_path / "roothash").write_text(doc["rootHash"])
    (tmp_path / "sig.der").write_bytes(base64.b64decode(doc["signature"]))
    verify = [
        "openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "sig.der",
        "-content", tmp_path / "roothash", "-purpose", "any", "-out", "/dev/null",
    ]  # fmt: skip
    ok = subprocess.run([*verify, "-CAfile", keys["cert"]], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    # A tampered data block is caught by veritysetup: the test above can fail.
    with open(data, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = subprocess.run(
        ["veritysetup", "verify", data, tree, result["root_hash"]], capture_output=True
    )
    assert bad.returncode != 0


def test_raw_format_side_files(built: dict, tmp_path: Path) -> None:
    raw = built["aks-node"]["raw"]
    image = Path(raw["path"])
    stem = image.with_suffix("")
    assert sorted(p.name for p in image.parent.iterdir()) == [
        ".acl-compose-output.json",  # what `sysext build` wrote here (util.OutputDir)
        "aks-node.raw", "aks-node.roothash", "aks-node.roothash.p7s", "aks-node.verity",
    ]  # fmt: skip
    root_hash = Path(f"{stem}.roothash").read_text().strip()
    assert root_hash == raw["root_hash"]
    subprocess.run(["veritysetup", "verify", image, f"{stem}.verity", root_hash], check=True)
    # The raw filesystem is the same as the DDI's data partition.
    ddi_image = Path(built["aks-node"]["runs"][0]["path"])
    assert (
        extract(ddi_image, 1, tmp_path / "d").read_bytes()[: image.stat().st_size]
        == image.read_bytes()
    )
    info = dissect(image)
    assert info["useSystemExtension"] is True


def test_unsigned_build_says_so(tmp_path: Path, cache_dir: Path, base: Path) -> None:
    proc = run_cli(
        "--cache-dir", cache_dir, "sysext", "build", REPO / "sysext" / "azure-base",
        "-o", tmp_path / "out", check=True,
    )  # fmt: skip
    assert "unsigned" in proc.stderr
    image = tmp_path / "out" / "azure-base.raw"
    info = ddi.read(image)
    assert info.sig is None and info.verity is not None
    root = next(m for m in dissect(image)["mounts"] if m["designator"] == "root")
    assert root["verity"] != "signed"
    # unsigned passes without --cert, but not when a signature is demanded
    run_cli("sysext", "check", image, "--base", base, check=True)
    proc = run_cli(
        "sysext", "check", image, "--base", base, "--cert", tmp_path / "x.crt", check=False
    )
    assert proc.returncode == 1


def test_cache_reuses_filesystem(tmp_path: Path, cache_dir: Path, keys: dict) -> None:
    bundle = REPO / "sysext" / "aks-node"
    r1 = sysext.build(bundle, tmp_path / "a", cache_dir=cache_dir)
    entries = list((cache_dir / "sysext").iterdir())
    r2 = sysext.build(
        bundle, tmp_path / "b", key=keys["key"], cert=keys["cert"], cache_dir=cache_dir
    )
    assert list((cache_dir / "sysext").iterdir()) == entries  # no new build
    assert r1["root_hash"] == r2["root_hash"] and r2["signed"] and not r1["signed"]
    # A corrupted cache entry is detected and rebuilt, never signed.
    (entry,) = [p for p in entries if (p / "meta.json").exists()]
    fs = json.loads((entry / "meta.json").read_text())["fs"]
    with open(entry / fs["file"], "r+b") as f:
        f.seek(fs["offset"] + 5000)
        f.write(b"X")
    r3 = sysext.build(
        bundle, tmp_path / "c", key=keys["key"], cert=keys["cert"], cache_dir=cache_dir
    )
    assert r3["sha256"] == r2["sha256"]


def test_squashfs_bundle_and_url_entry(
    tmp_path: Path, cache_dir: Path, keys: dict, base: Path
) -> None:
    """A squashfs bundle with a pinned url: entry fetched from a loopback HTTP server."""
    import hashlib

    from acl_compose.fetch import httpserve

    served = tmp_path / "www"
    served.mkdir()
    payload = b"#!/bin/sh\necho hello from a pinned download\n"
    (served / "hello.sh").write_bytes(payload)
    bundle = tmp_path / "hello"
    bundle.mkdir()
    sha = hashlib.sha256(payload).hexdigest()
    with httpserve.serve(served) as server:
        url = f"{server.url.rstrip('/')}/hello.sh"
        manifest = (
            "name: hello\nversion: '2'\nfilesystem: squashfs\ncompression: xz\nfiles:\n"
            f"  - path: /usr/bin/hello\n    url: {url}\n    sha256: {sha}\n"
            "    mode: 0755\n"
        )
        (bundle / "sysext.yaml").write_text(manifest)
        result = sysext.build(
            bundle, tmp_path / "out", key=keys["key"], cert=keys["cert"], cache_dir=cache_dir
        )
        (bundle / "sysext.yaml").write_text(manifest.replace(sha, "0" * 64))
        proc = run_cli(
            "--cache-dir", cache_dir, "sysext", "build", bundle, "-o", tmp_path / "bad", check=False
        )
    assert proc.returncode == 1 and "error:" in proc.stderr
    assert not (tmp_path / "bad" / "hello.raw").exists()
    image = Path(result["path"])
    assert dissect(image)["mounts"][0]["fstype"] == "squashfs"
    (ok,) = sysext.check([image], base, cert=keys["cert"])
    assert ok.ok, ok.reason
    data = extract(image, 1, tmp_path / "fs")
    cat = subprocess.run(
        ["unsquashfs", "-cat", data, "usr/bin/hello"], capture_output=True, check=True
    )
    assert cat.stdout == payload
    ls = subprocess.run(
        ["unsquashfs", "-lls", data, "usr/bin/hello"], capture_output=True, text=True
    )
    assert "-rwxr-xr-x root/root" in ls.stdout


def test_pkgmgr_canary_builds_with_reason(tmp_path: Path, cache_dir: Path) -> None:
    result = sysext.build(
        REPO / "tests/data/sysext/pkgmgr-canary", tmp_path / "out", cache_dir=cache_dir
    )
    data = extract(Path(result["path"]), 1, tmp_path / "fs")
    dest = tmp_path / "x"
    subprocess.run(["fsck.erofs", f"--extract={dest}", data], check=True, capture_output=True)
    dpkg = dest / "usr/bin/dpkg"
    assert dpkg.stat().st_mode & 0o111 and dpkg.read_text().startswith("#!/bin/sh")


def test_arm64_ddi_and_passphrase_key(tmp_path: Path, cache_dir: Path, base: Path) -> None:
    """arm64 bundles get root-arm64 partition types; a passphrase-protected key signs via CLI."""
    key, cert = signing.generate(tmp_path / "k", passphrase=b"s3cret pass")
    (tmp_path / "pass").write_text("s3cret pass\n")
    bundle = tmp_path / "arm"
    bundle.mkdir()
    (bundle / "sysext.yaml").write_text(
        "name: arm\nversion: '1'\narchitecture: arm64\nfiles:\n"
        "  - path: /usr/share/arm/readme\n    inline: hi\n"
    )
    out = tmp_path / "out"
    args = ["--cache-dir", cache_dir, "sysext", "build", bundle, "-o", out, "--key", key]
    proc = run_cli(*args, "--cert", cert, check=False)
    assert proc.returncode == 1 and "error:" in proc.stderr  # no passphrase given
    run_cli(*args, "--cert", cert, "--passphrase-file", tmp_path / "pass", check=True)
    types = subprocess.run(["sgdisk", "-p", out / "arm.raw"], capture_output=True, text=True).stdout
    labels = re.findall(r"^\s+\d+\s+\d+\s+\d+\s+\S+ \S+\s+\S+\s+(\S+)$", types, re.M)
    assert labels == ["root-arm64", "root-arm64-verity", "root-arm64-verity-sig"]
    info = ddi.read(out / "arm.raw")
    assert info.architecture == "arm64" and info.data.type_guid == gpt.TYPES["root-arm64"]
    (res,) = sysext.check([out / "arm.raw"], base, cert=cert)
    assert (
        not res.ok
        and "ARCHITECTURE=arm64 does not match the base's architecture x86-64" in res.reason
    )


def test_systemd_accepts_signature_only_from_its_certificate(built: dict, keys: dict) -> None:
    image = Path(built["azure-base"]["runs"][0]["path"])
    copied, log = dissect_with_verity_d(image, keys["cert"], "azure-base")
    assert copied or "Userspace PKCS#7 validation succeeded" in log, log
    copied, log = dissect_with_verity_d(image, keys["other_cert"], "azure-base")
    assert not copied and "Userspace PKCS#7 validation succeeded" not in log
    assert "Userspace PKCS#7 validation failed" in log or "neither via the kernel" in log, log


def test_ec_signed_ddi_is_reproducible_and_accepted_by_systemd(tmp_path: Path) -> None:
    """An ECDSA release key (the default) signs deterministically (RFC 6979): two builds with
    separate caches give identical DDIs, which systemd's userspace check accepts."""
    key, cert = signing.generate(tmp_path / "ec")
    runs = [
        sysext.build(REPO / "sysext" / "azure-base", tmp_path / f"out{i}", key=key, cert=cert,
                     cache_dir=tmp_path / f"cache{i}")
        for i in (1, 2)
    ]  # fmt: skip
    a, b = (Path(r["path"]).read_bytes() for r in runs)
    assert a == b and runs[0]["sha256"] == runs[1]["sha256"]
    assert dissect(Path(runs[0]["path"]))["mounts"][0]["verity"] == "signed"
    copied, log = dissect_with_verity_d(Path(runs[0]["path"]), cert, "azure-base")
    assert copied or "Userspace PKCS#7 validation succeeded" in log, log


@pytest.mark.parametrize("filesystem", ["erofs", "squashfs"])
def test_cold_build_keeps_one_image_and_warm_builds_match(
    tmp_path: Path, cache_dir: Path, keys: dict, filesystem: str
) -> None:
    """The cache keeps a hard link of the first output (one image on disk, no copy); builds
    from that entry, in either format, are byte for byte what a cold build makes."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "sysext" / "aks-node", bundle)
    manifest = bundle / "sysext.yaml"
    manifest.write_text(manifest.read_text() + f"filesystem: {filesystem}\n")
    sign = {"key": keys["key"], "cert": keys["cert"]}
    cold = sysext.build(bundle, tmp_path / "cold", cache_dir=cache_dir, **sign)
    (entry,) = [p for p in (cache_dir / "sysext").iterdir() if (p / "meta.json").exists()]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["fs"]["file"] == meta["tree"]["file"] == "image.ddi"
    assert meta["fs"]["offset"] == ddi.DATA_OFFSET
    assert os.stat(cold["path"]).st_ino == (entry / "image.ddi").stat().st_ino
    assert not list((cache_dir / "sysext").glob(".sysext-*"))  # scratch is gone
    warm = sysext.build(bundle, tmp_path / "warm", cache_dir=cache_dir, **sign)
    assert Path(warm["path"]).read_bytes() == Path(cold["path"]).read_bytes()
    assert os.stat(warm["path"]).st_ino != os.stat(cold["path"]).st_ino
    raw_warm = sysext.build(bundle, tmp_path / "rw", cache_dir=cache_dir, fmt="raw", **sign)
    raw_cold = sysext.build(bundle, tmp_path / "rc", cache_dir=tmp_path / "c2", fmt="raw", **sign)
    assert raw_warm["sha256"] == raw_cold["sha256"]
    for suffix in (".raw", ".verity", ".roothash"):
        a, b = (tmp_path / d / f"aks-node{suffix}" for d in ("rw", "rc"))
        assert a.read_bytes() == b.read_bytes(), suffix
    # The filesystem in the DDI is the one in the raw build.
    part = gpt.read(cold["path"]).by_number(1)
    with open(cold["path"], "rb") as f:
        f.seek(part.offset)
        fs = (tmp_path / "rc" / "aks-node.raw").read_bytes()
        assert f.read(len(fs)) == fs
    # A raw cold build is cached as its own pair; a DDI made from it matches too.
    cache3 = tmp_path / "c3"
    sysext.build(bundle, tmp_path / "r3", cache_dir=cache3, fmt="raw", **sign)
    again = sysext.build(bundle, tmp_path / "d3", cache_dir=cache3, **sign)
    assert again["sha256"] == cold["sha256"]


def test_changed_output_is_not_trusted_as_cache(
    tmp_path: Path, cache_dir: Path, keys: dict
) -> None:
    """The cache shares the first output's inode: editing that output must not reach the
    next signed build."""
    bundle = REPO / "sysext" / "aks-node"
    sign = {"key": keys["key"], "cert": keys["cert"]}
    first = sysext.build(bundle, tmp_path / "a", cache_dir=cache_dir, **sign)
    part = gpt.read(first["path"]).by_number(1)
    with open(first["path"], "r+b") as f:
        f.seek(part.offset + 8192)
        f.write(b"tampered")
    second = sysext.build(bundle, tmp_path / "b", cache_dir=cache_dir, **sign)
    assert second["sha256"] == first["sha256"]  # rebuilt: what was built, not what was edited
    assert b"tampered" not in Path(second["path"]).read_bytes()


def test_stat_fingerprint_skips_hashing(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unchanged bundle is not read again; any rewrite, even one that keeps size and
    mtime, is noticed (ctime) and hashed."""
    from acl_compose.sysext import builder

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "sysext" / "aks-node", bundle)
    calls: list[str] = []
    real = builder.input_digest

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append("hash")
        return real(*args, **kwargs)

    monkeypatch.setattr(builder, "input_digest", counting)
    first = sysext.build(bundle, tmp_path / "o1", cache_dir=cache_dir)
    assert calls == ["hash"]
    again = sysext.build(bundle, tmp_path / "o2", cache_dir=cache_dir)
    assert calls == ["hash"] and again["sha256"] == first["sha256"]
    # Same size, same mtime, new content.
    conf = bundle / "files" / "60-aks-node.conf"
    st = conf.stat()
    text = conf.read_bytes()
    conf.write_bytes(text[:-2] + (b"9\n" if text[-2:] != b"9\n" else b"8\n"))
    os.utime(conf, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = sysext.build(bundle, tmp_path / "o3", cache_dir=cache_dir)
    assert calls == ["hash", "hash"] and changed["root_hash"] != first["root_hash"]
    sysext.build(bundle, tmp_path / "o4", cache_dir=cache_dir)
    assert calls == ["hash", "hash"]


def test_entry_from_before_extents_is_reused(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cache entries of earlier versions (fs.img + verity.img, no extents) still serve."""
    from acl_compose.sysext import builder

    bundle = REPO / "sysext" / "aks-node"
    first = sysext.build(bundle, tmp_path / "a", cache_dir=cache_dir)
    (entry,) = [p for p in (cache_dir / "sysext").iterdir() if (p / "meta.json").exists()]
    meta = json.loads((entry / "meta.json").read_text())
    for role, name in (("fs", "fs.img"), ("tree", "verity.img")):
        where = meta.pop(role)
        ddi.copy_to_file(
            ddi.Extent(entry / where["file"], where["offset"], where["size"]), entry / name
        )
    (entry / "image.ddi").unlink()
    (entry / "meta.json").write_text(json.dumps(meta))

    def no_mkfs(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt instead of using the cache")

    monkeypatch.setattr(builder, "make_filesystem", no_mkfs)
    again = sysext.build(bundle, tmp_path / "b", cache_dir=cache_dir)
    assert again["sha256"] == first["sha256"]
    assert sorted(p.name for p in entry.iterdir()) == ["fs.img", "meta.json", "verity.img"]


@pytest.mark.parametrize("filesystem", ["erofs", "squashfs"])
def test_source_date_epoch_does_not_reach_mkfs(tmp_path: Path, filesystem: str) -> None:
    """compose sets SOURCE_DATE_EPOCH; mkfs.erofs would stamp it into the image (so the cache,
    keyed by content, could hand out bytes that depend on the caller's environment) and
    mksquashfs refuses it beside -all-time. Builds with and without it are identical."""
    bundle = tmp_path / "b"
    (bundle / "files").mkdir(parents=True)
    (bundle / "files" / "x.conf").write_text("x\n")
    (bundle / "sysext.yaml").write_text(
        f"name: b\nversion: '1'\nfilesystem: {filesystem}\n"
        "files:\n  - {path: /usr/lib/b/x.conf, from: files/x.conf}\n"
    )
    hashes = set()
    for i, sde in enumerate(("", "1700000000", "1800000000")):
        env = {"SOURCE_DATE_EPOCH": sde} if sde else {}
        proc = run_cli("--json", "--cache-dir", tmp_path / f"c{i}", "sysext", "build", bundle,
                       "-o", tmp_path / f"o{i}", env=env, check=True)  # fmt: skip
        hashes.add(json.loads(proc.stdout)["sha256"])
    assert len(hashes) == 1


def test_output_folder_rule(tmp_path: Path, cache_dir: Path) -> None:
    """Builds accumulate in an earlier `sysext build` output; a folder of the user's is refused
    (it used to be added to), and nothing there is replaced or deleted."""
    out = tmp_path / "out"
    for name in BUNDLES:
        run_cli("--cache-dir", cache_dir, "sysext", "build", REPO / "sysext" / name, "-o", out,
                check=True)  # fmt: skip
    assert {p.name for p in out.glob("*.raw")} == {f"{n}.raw" for n in BUNDLES}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    proc = run_cli("--cache-dir", cache_dir, "sysext", "build", REPO / "sysext" / BUNDLES[0],
                   "-o", mine)  # fmt: skip
    assert proc.returncode == 1 and f"error: output folder {mine} is not empty" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    (mine / f"{BUNDLES[0]}.raw").write_text("my own image")
    proc = run_cli("--cache-dir", cache_dir, "sysext", "build", REPO / "sysext" / BUNDLES[0],
                   "-o", mine, "--force")  # fmt: skip
    assert proc.returncode == 1 and "exists and was not written by" in proc.stderr
    assert (mine / f"{BUNDLES[0]}.raw").read_text() == "my own image"


def test_missing_source_leaves_no_scratch(tmp_path: Path, cache_dir: Path) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "sysext.yaml").write_text(
        "name: b\nversion: '1'\nfiles:\n  - path: /usr/lib/b/x\n    from: files/missing\n"
    )
    proc = run_cli("--cache-dir", cache_dir, "sysext", "build", bundle, "-o", tmp_path / "out")
    assert proc.returncode == 1 and "files/missing does not exist" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert not list((cache_dir / "sysext").glob(".sysext-*"))
