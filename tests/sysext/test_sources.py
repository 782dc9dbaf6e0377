"""url/deb bundle sources: Debian packages from a mirror on loopback, archives, the download
cache and its tamper checks, each file's origin. Packages are built by dpkg-deb and archives
by tar (the real tools); what lands in the image is read back with fsck.erofs and compared
with what `dpkg-deb -x` / `tar -x` unpack."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from acl_compose import sysext
from acl_compose.errors import AclComposeError, PolicyError, VerificationError
from acl_compose.fetch import httpserve
from acl_compose.sysext import sources
from acl_compose.sysext.bundle import load_bundle
from tests.conftest import REPO, run_cli

TOOL = b"#!/bin/sh\necho tool\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha_file(path: Path) -> str:
    return sha(path.read_bytes())


def make_deb(work: Path, name: str = "hello", version: str = "1.0-1", compress: str = "xz") -> Path:
    """A real .deb (dpkg-deb --build): Debian's split /bin, /etc, a symlink, docs."""
    root = work / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: Test <test@example.org>\nDescription: test package\n"
    )
    files = {
        "usr/bin/tool": (TOOL, 0o755),
        "bin/legacy": (b"#!/bin/sh\necho legacy\n", 0o755),
        f"usr/share/doc/{name}/copyright": (b"Copyright: nobody\n", 0o644),
        f"etc/{name}.conf": (b"setting = 1\n", 0o644),
        "usr/lib/hello/data.bin": (os.urandom(70_000), 0o600),
    }
    for rel, (data, mode) in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
    (root / "usr/lib/hello/tool").symlink_to("../../bin/tool")
    deb = work / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compress}", "--build", str(root),
                    str(deb)], check=True, capture_output=True)  # fmt: skip
    return deb


class Mirror:
    """A Debian pool on loopback that records the paths clients ask for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        requests = self.requests

        class Recording(httpserve.RangeRequestHandler):
            def send_head(self):  # type: ignore[no-untyped-def]
                requests.append(self.path)
                return super().send_head()

        self.server = httpserve.serve(root, handler=Recording)
        self.url = self.server.url.rstrip("/")

    def add(self, deb: Path, source: str | None = None) -> str:
        name, version, arch = deb.stem.split("_")
        path = sources.pool_path(name, version, arch, source)
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deb, self.root / path)
        return path


@pytest.fixture
def mirror(tmp_path: Path):
    m = Mirror(tmp_path / "mirror")
    yield m
    m.server.close()


def write_bundle(d: Path, body: str, name: str = "pkgtest", version: str = "1") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "sysext.yaml").write_text(f"name: {name}\nversion: '{version}'\n{body}")
    return d


def deb_entry(deb: Path, extra: str = "") -> str:
    name, version, _ = deb.stem.split("_")
    return (
        f"files:\n  - deb: {name}\n    version: '{version}'\n    sha256: {sha_file(deb)}\n{extra}"
    )


def unpack_image(raw: Path, dest: Path) -> Path:
    """The erofs filesystem extracted by erofs-utils (not by our code)."""
    subprocess.run(["fsck.erofs", f"--extract={dest}", str(raw)], check=True, capture_output=True)
    return dest


# ----------------------------------------------------------------------------- pool paths
@pytest.mark.parametrize(
    ("package", "version", "source", "expected"),
    [  # Filename: fields of Debian bookworm's Packages index (amd64)
        ("containerd", "1.6.20~ds1-1+deb12u3", None,
         "pool/main/c/containerd/containerd_1.6.20~ds1-1+deb12u3_amd64.deb"),
        ("containernetworking-plugins", "1.1.1+ds1-3+b5",
         "golang-github-containernetworking-plugins",
         "pool/main/g/golang-github-containernetworking-plugins/"
         "containernetworking-plugins_1.1.1+ds1-3+b5_amd64.deb"),
        ("busybox-static", "1:1.35.0-4+deb12u1+b1", "busybox",
         "pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb"),
        ("libseccomp2", "2.5.4-1+deb12u1", "libseccomp",
         "pool/main/libs/libseccomp/libseccomp2_2.5.4-1+deb12u1_amd64.deb"),
    ],
)  # fmt: skip
def test_pool_path_matches_the_packages_index(package, version, source, expected) -> None:
    assert sources.pool_path(package, version, "amd64", source) == expected


def test_security_archive_resolves_to_its_own_pool(tmp_path: Path, monkeypatch) -> None:
    """`archive: security`: bookworm-security's pool (pool/updates/main) on its own mirror."""
    from acl_compose.sysext.bundle import load_bundle

    monkeypatch.delenv(sources.ENV_DEBIAN_SECURITY_MIRROR, raising=False)
    d = write_bundle(tmp_path / "b", "files:\n  - deb: python3.11-minimal\n    source: python3.11\n"
                     "    version: 3.11.2-6+deb12u9\n    archive: security\n"
                     f"    sha256: {'a' * 64}\n")  # fmt: skip
    b = load_bundle(d)
    rec = sources.origin_record(b.files[0], b, "http://127.0.0.1:9/debian")
    assert rec["url"] == (
        "https://deb.debian.org/debian-security/pool/updates/main/p/python3.11/"
        "python3.11-minimal_3.11.2-6+deb12u9_amd64.deb"
    )  # the Filename: of bookworm-security's Packages index, on its own archive
    monkeypatch.setenv(sources.ENV_DEBIAN_SECURITY_MIRROR, "http://127.0.0.1:9/sec/")
    assert sources.origin_record(b.files[0], b)["url"].startswith(
        "http://127.0.0.1:9/sec/pool/updates/main/p/python3.11/")  # fmt: skip
    bad = write_bundle(tmp_path / "c", "files:\n  - deb: xz-utils\n    version: '1'\n"
                       f"    archive: backports\n    sha256: {'a' * 64}\n")  # fmt: skip
    with pytest.raises(AclComposeError, match="archive must be one of main, security"):
        load_bundle(bad)


def test_product_pins_resolve_on_the_session_mirror(debian_mirror) -> None:
    """Every deb pinned in sysext/ was fetched by its real-mirror URL and verified (the
    session fixture does that through sources.origin_record + fetch.download)."""
    from tests.fixtures_sources import pinned_debs, product_bundles

    recs = pinned_debs(product_bundles())
    assert {r["package"] for r in recs} >= {"containerd", "runc", "catatonit", "waagent",
                                            "python3.11-minimal", "hyperv-daemons"}  # fmt: skip
    for r in recs:
        assert sha_file(debian_mirror.root / r["filename"]) == r["sha256"]


# ----------------------------------------------------------------------------- deb entries
@pytest.mark.parametrize("compress", ["xz", "zstd", "gzip"])
def test_deb_unpacked_as_dpkg_does(tmp_path: Path, mirror: Mirror, cache_dir: Path,
                                   compress: str) -> None:  # fmt: skip
    deb = make_deb(tmp_path, compress=compress)
    pool = mirror.add(deb)
    bundle = write_bundle(tmp_path / "b", deb_entry(deb, "    exclude: [/etc/*]\n"))
    result = sysext.build(bundle, tmp_path / "out", fmt="raw", cache_dir=cache_dir,
                          debian_mirror=mirror.url)  # fmt: skip
    assert mirror.requests == [f"/{pool}"]
    got = unpack_image(Path(result["path"]), tmp_path / "image")
    ref = tmp_path / "dpkg"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(ref)], check=True)
    # Same bytes as dpkg unpacks, /bin moved under /usr (merged /usr), /etc left out.
    assert (got / "usr/bin/tool").read_bytes() == (ref / "usr/bin/tool").read_bytes()
    assert (got / "usr/bin/legacy").read_bytes() == (ref / "bin/legacy").read_bytes()
    assert (got / "usr/lib/hello/data.bin").read_bytes() == (
        ref / "usr/lib/hello/data.bin"
    ).read_bytes()
    assert os.readlink(got / "usr/lib/hello/tool") == "../../bin/tool"
    assert not (got / "etc").exists() and not (got / "bin").exists()
    assert (got / "usr/bin/tool").stat().st_mode & 0o777 == 0o755
    assert (got / "usr/lib/hello/data.bin").stat().st_mode & 0o777 == 0o644  # normalized
    # Contents: each file with its hashes, its origin (the package) and its archive member.
    (dl,) = sources.downloads(result["contents"])
    assert dl == {"kind": "deb", "bundle": "pkgtest", "package": "hello", "version": "1.0-1",
                  "architecture": "amd64", "sha256": sha_file(deb), "filename": pool,
                  "url": f"{mirror.url}/{pool}"}  # fmt: skip
    files = {f["path"]: f for f in result["contents"]}
    tool = files["/usr/bin/legacy"]
    assert tool["sha256"] == sha_file(ref / "bin/legacy") and tool["mode"] == "0755"
    assert tool["sha1"] == hashlib.sha1((ref / "bin/legacy").read_bytes()).hexdigest()  # noqa: S324
    assert tool["origin"] == dl and tool["member"] == "./bin/legacy"
    assert files["/usr/lib/hello/tool"]["type"] == "symlink"
    assert files["/usr/lib/extension-release.d/extension-release.pkgtest"]["origin"] == {
        "kind": "generated", "bundle": "pkgtest", "by": "sysext.yaml"}  # fmt: skip


def test_deb_include_picks_files_and_extract_one_member(tmp_path: Path, mirror: Mirror,
                                                        cache_dir: Path) -> None:  # fmt: skip
    deb = make_deb(tmp_path)
    mirror.add(deb)
    body = deb_entry(deb, "    include: [/usr/bin/*, /usr/share/doc/*/copyright]\n")
    body += (
        f"  - path: /usr/libexec/renamed\n    deb: hello\n    version: '1.0-1'\n"
        f"    sha256: {sha_file(deb)}\n    extract: /bin/legacy\n    mode: 0700\n"
    )
    bundle = write_bundle(tmp_path / "b", body)
    result = sysext.build(bundle, tmp_path / "out", fmt="raw", cache_dir=cache_dir,
                          debian_mirror=mirror.url)  # fmt: skip
    got = unpack_image(Path(result["path"]), tmp_path / "image")
    listed = sorted(str(p.relative_to(got)) for p in got.rglob("*") if not p.is_dir())
    assert listed == [
        "usr/bin/legacy", "usr/bin/tool", "usr/lib/extension-release.d/extension-release.pkgtest",
        "usr/libexec/renamed", "usr/share/doc/hello/copyright",
    ]  # fmt: skip
    assert (got / "usr/libexec/renamed").stat().st_mode & 0o777 == 0o700
    origins = {f["path"]: f["origin"] for f in result["contents"]}
    assert origins["/usr/libexec/renamed"] == origins["/usr/bin/tool"]  # one package, twice


def cli_build(bundle: Path, out: Path, cache: Path, *extra: object) -> subprocess.CompletedProcess:
    return run_cli("--cache-dir", cache, "sysext", "build", bundle, "-o", out, *extra)


def test_deb_file_outside_usr_is_refused_with_its_line(tmp_path: Path, mirror: Mirror,
                                                       cache_dir: Path) -> None:  # fmt: skip
    deb = make_deb(tmp_path)
    mirror.add(deb)
    bundle = write_bundle(tmp_path / "b", deb_entry(deb))
    proc = cli_build(bundle, tmp_path / "out", cache_dir, "--debian-mirror", mirror.url)
    assert proc.returncode == 1, proc.stderr
    assert f"error: {bundle}/sysext.yaml:4: deb hello 1.0-1" in proc.stderr
    assert "/etc/hello.conf lands outside /usr and /opt" in proc.stderr
    assert "hint:" in proc.stderr and "exclude" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_deb_sha256_mismatch_names_source_and_line(tmp_path: Path, mirror: Mirror,
                                                   cache_dir: Path) -> None:  # fmt: skip
    deb = make_deb(tmp_path)
    pool = mirror.add(deb)
    body = deb_entry(deb, "    exclude: [/etc/*]\n").replace(sha_file(deb), "ab" * 32)
    bundle = write_bundle(tmp_path / "b", body)
    proc = cli_build(bundle, tmp_path / "out", cache_dir, "--debian-mirror", mirror.url)
    assert proc.returncode == 1
    first = next(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert first.startswith(f"error: {bundle}/sysext.yaml:4: deb hello 1.0-1 ({mirror.url}/{pool})")
    assert f"sha256 {sha_file(deb)} does not match the pinned {'ab' * 32}" in first
    assert not (tmp_path / "out").exists()
    assert not list((cache_dir / "blobs").rglob("*.deb"))  # nothing unverified was kept


def test_deb_missing_from_mirror_hints_at_the_index(tmp_path: Path, mirror: Mirror,
                                                    cache_dir: Path) -> None:  # fmt: skip
    deb = make_deb(tmp_path)
    bundle = write_bundle(tmp_path / "b", deb_entry(deb, "    source: hello-src\n"))
    proc = cli_build(bundle, tmp_path / "out", cache_dir, "--debian-mirror", mirror.url)
    assert proc.returncode == 1
    assert mirror.requests[-1] == "/pool/main/h/hello-src/hello_1.0-1_amd64.deb"
    assert "not found (HTTP 404)" in proc.stderr and "apt-cache show hello" in proc.stderr


def test_offline_and_a_tampered_cached_download(tmp_path: Path, mirror: Mirror,
                                                cache_dir: Path) -> None:  # fmt: skip
    deb = make_deb(tmp_path)
    mirror.add(deb)
    body = deb_entry(deb, "    exclude: [/etc/*]\n")
    bundle = write_bundle(tmp_path / "b", body)
    # Cold cache + --offline: refused, says how to fill the cache.
    proc = cli_build(bundle, tmp_path / "o0", cache_dir, "--offline", "--debian-mirror", mirror.url)
    assert proc.returncode == 1 and "not in the cache (--offline)" in proc.stderr
    assert "without --offline" in proc.stderr and mirror.requests == []
    cli_build(bundle, tmp_path / "o1", cache_dir, "--debian-mirror", mirror.url).check_returncode()
    assert len(mirror.requests) == 1
    # A changed bundle (new version: no cached image) builds offline from the download cache.
    write_bundle(tmp_path / "b", body, version="2")
    proc = cli_build(bundle, tmp_path / "o2", cache_dir, "--offline", "--debian-mirror", mirror.url)
    assert proc.returncode == 0, proc.stderr
    assert len(mirror.requests) == 1
    # Tamper with the cached .deb: --offline refuses it (and drops it) ...
    (blob,) = (cache_dir / "blobs" / "sha256").rglob("hello_1.0-1_amd64.deb")
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-100] ^= 1
    blob.write_bytes(bytes(data))
    write_bundle(tmp_path / "b", body, version="3")
    proc = cli_build(bundle, tmp_path / "o3", cache_dir, "--offline", "--debian-mirror", mirror.url)
    assert proc.returncode == 1, proc.stderr
    assert "corrupt or tampered with" in proc.stderr and "sysext.yaml:4" in proc.stderr
    assert not blob.exists() and not (tmp_path / "o3").exists()
    # ... and online it is fetched again and verified.
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(bytes(data))
    proc = cli_build(bundle, tmp_path / "o4", cache_dir, "--debian-mirror", mirror.url)
    assert proc.returncode == 0, proc.stderr
    assert "does not match sha256" in proc.stderr and len(mirror.requests) == 2
    assert sha_file(blob) == sha_file(deb)


def test_bytes_changed_after_the_cache_check_are_refused(tmp_path: Path, cache_dir: Path,
                                                         monkeypatch) -> None:  # fmt: skip
    """The archive is hashed again while it is unpacked: a file swapped after fetch verified
    it (a race with another process) never reaches the image."""
    from acl_compose import fetch
    from acl_compose.sysext.assemble import assemble

    deb = make_deb(tmp_path)
    other = make_deb(tmp_path / "other", version="1.0-1")
    bundle = write_bundle(tmp_path / "b", deb_entry(deb, "    exclude: [/etc/*]\n"))
    monkeypatch.setattr(fetch, "download", lambda *a, **k: other)
    tree = tmp_path / "tree"
    tree.mkdir()
    with pytest.raises(VerificationError, match="of the file read does not match the pinned"):
        assemble(load_bundle(bundle), tree, sources.SourceOptions(cache_dir))


# ----------------------------------------------------------------------------- url archives
def make_tar(tmp_path: Path, flag: str, suffix: str) -> Path:
    src = tmp_path / "src"
    (src / "pkg/bin").mkdir(parents=True)
    (src / "pkg/bin/tool").write_bytes(TOOL)
    (src / "pkg/bin/tool").chmod(0o755)
    (src / "pkg/bin/other").write_bytes(b"other\n")
    (src / "pkg/README").write_text("readme\n")
    out = tmp_path / f"pkg.tar{suffix}"
    subprocess.run(["tar", "-C", str(src), f"-c{flag}f", str(out), "pkg"], check=True)
    return out


@pytest.mark.parametrize(("flag", "suffix"), [("z", ".gz"), ("J", ".xz"), ("j", ".bz2"),
                                              ("-zstd -", ".zst")])  # fmt: skip
def test_url_archive_members(tmp_path: Path, cache_dir: Path, flag: str, suffix: str) -> None:
    if flag.startswith("-"):  # tar --zstd -cf
        archive = tmp_path / f"pkg.tar{suffix}"
        src = make_tar(tmp_path, "", "").parent / "src"
        subprocess.run(["tar", "-C", str(src), "--zstd", "-cf", str(archive), "pkg"], check=True)
    else:
        archive = make_tar(tmp_path, flag, suffix)
    digest = sha_file(archive)
    with httpserve.serve(archive.parent) as server:
        url = f"{server.url}{archive.name}"
        body = (
            f"files:\n  - path: /usr/bin/tool\n    url: {url}\n    sha256: {digest}\n"
            f"    extract: pkg/bin/tool\n"
            f"  - path: /usr/lib/pkg\n    url: {url}\n    sha256: {digest}\n    extract: pkg\n"
            f"    exclude: [/usr/lib/pkg/README]\n"
        )
        bundle = write_bundle(tmp_path / "b", body)
        result = sysext.build(bundle, tmp_path / "out", fmt="raw", cache_dir=cache_dir)
    got = unpack_image(Path(result["path"]), tmp_path / "image")
    assert (got / "usr/bin/tool").read_bytes() == TOOL
    assert (got / "usr/bin/tool").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in (got / "usr/lib/pkg/bin").iterdir()) == ["other", "tool"]
    assert not (got / "usr/lib/pkg/README").exists()
    files = {f["path"]: f for f in result["contents"]}
    assert files["/usr/lib/pkg/bin/other"]["origin"] == {
        "kind": "url",
        "bundle": "pkgtest",
        "url": url,
        "sha256": digest,
        "extract": "pkg",
    }
    assert files["/usr/lib/pkg/bin/other"]["member"] == "pkg/bin/other"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("    extract: pkg/missing\n", "has no member 'pkg/missing'"),
        ("    extract: pkg\n    include: [/usr/lib/x/bin/*, /usr/lib/x/nothing*]\n",
         "include pattern /usr/lib/x/nothing* matches nothing"),
        ("    include: [/usr/*]\n", "include/exclude need an archive"),
    ],
)  # fmt: skip
def test_url_archive_selection_errors(tmp_path: Path, cache_dir: Path, entry: str,
                                      message: str) -> None:  # fmt: skip
    archive = make_tar(tmp_path, "z", ".gz")
    with httpserve.serve(archive.parent) as server:
        body = (f"files:\n  - path: /usr/lib/x\n    url: {server.url}{archive.name}\n"
                f"    sha256: {sha_file(archive)}\n{entry}")  # fmt: skip
        bundle = write_bundle(tmp_path / "b", body)
        proc = cli_build(bundle, tmp_path / "out", cache_dir)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert "sysext.yaml:4" in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../evil"), "climbs out with '..'"),
        (tarfile.TarInfo("dev/null"), "is a device node or FIFO"),
        (tarfile.TarInfo("bin/sh"), "outside /usr and /opt"),  # symlink to /etc/passwd
    ],
)
def test_hostile_archive_members_refused(tmp_path: Path, cache_dir: Path, member, message) -> None:
    archive = tmp_path / "evil.tar"
    if member.name == "dev/null":
        member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
    elif member.name == "bin/sh":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(member, None if member.size == 0 else None)
    with httpserve.serve(tmp_path) as server:
        body = (f"files:\n  - path: /usr/lib/x\n    url: {server.url}evil.tar\n"
                f"    sha256: {sha_file(archive)}\n    extract: .\n")  # fmt: skip
        bundle = write_bundle(tmp_path / "b", body)
        with pytest.raises(PolicyError, match=message) as info:
            sysext.build(bundle, tmp_path / "out", cache_dir=cache_dir)
    assert "sysext.yaml:4" in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "etc").exists()


# ----------------------------------------------------------------------------- preload images
def test_images_become_reproducible_oci_archives(tmp_path: Path, cache_dir: Path) -> None:
    files = tmp_path / "b" / "files"
    files.mkdir(parents=True)
    shutil.copyfile("/bin/busybox", files / "busybox")
    (files / "busybox").chmod(0o755)
    body = (
        "images:\n  - name: box\n    ref: localhost/test/box:1.0\n    namespace: acl-test\n"
        "    entrypoint: [/bin/busybox, sh]\n    files:\n"
        "      - path: /bin/busybox\n        from: files/busybox\n"
        "      - path: /bin/sh\n        symlink: busybox\n"
        "      - path: /etc/motd\n        inline: hello\n"
    )
    bundle = write_bundle(tmp_path / "b", body)
    a = sysext.build(bundle, tmp_path / "o1", fmt="raw", cache_dir=tmp_path / "c1")
    b = sysext.build(bundle, tmp_path / "o2", fmt="raw", cache_dir=tmp_path / "c2")
    assert a["sha256"] == b["sha256"]
    got = unpack_image(Path(a["path"]), tmp_path / "image")
    archive = got / "usr/share/container-runtime/preload/acl-test/box.tar"
    # skopeo (containers/image) reads the layout and checks every blob digest while copying.
    inspect = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True,
                             text=True, check=True)  # fmt: skip
    info = json.loads(inspect.stdout)
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    copy = tmp_path / "copy"
    subprocess.run(["skopeo", "copy", f"oci-archive:{archive}", f"oci:{copy}:x"], check=True,
                   capture_output=True)  # fmt: skip
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        ann = index["manifests"][0]["annotations"]
        assert ann == {"io.containerd.image.name": "localhost/test/box:1.0",
                       "org.opencontainers.image.ref.name": "1.0"}  # fmt: skip
        manifest = json.load(
            tar.extractfile("blobs/" + index["manifests"][0]["digest"].replace(":", "/"))
        )  # type: ignore[arg-type]  # noqa: E501
        layer = tar.extractfile("blobs/" + manifest["layers"][0]["digest"].replace(":", "/"))
        with tarfile.open(fileobj=layer) as lt:  # type: ignore[arg-type]
            names = {m.name: m for m in lt.getmembers()}
    assert names["bin/busybox"].mode == 0o755 and names["bin/sh"].linkname == "busybox"
    assert all(m.mtime == 0 and m.uid == 0 for m in names.values())
    rec = next(f for f in a["contents"] if f["path"].endswith("box.tar"))["origin"]
    assert rec["kind"] == "oci-image" and rec["ref"] == "localhost/test/box:1.0"
    assert rec["manifest_digest"] == index["manifests"][0]["digest"]
    inner = {f["path"]: f for f in rec["files"]}
    assert inner["/bin/busybox"]["sha256"] == sha_file(Path("/bin/busybox"))
    assert inner["/etc/motd"]["origin"] == {"kind": "inline", "bundle": "pkgtest", "inline": True}
    assert inner["/bin/busybox"]["origin"] == {"kind": "from", "bundle": "pkgtest",
                                               "from": "files/busybox"}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("images:\n  - name: x\n    ref: x:1\n    files: [{path: /a, inline: a}]\n",
         "is not a full reference"),
        ("images:\n  - name: x\n    ref: r.io/x:1\n    files: []\n", "non-empty list"),
        ("images:\n  - name: x\n    ref: r.io/x:1\n    colour: red\n"
         "    files: [{path: /a, inline: a}]\n",
         "unknown key 'colour'"),
        ("files:\n  - path: /usr/x\n    inline: a\n    extract: b\n",
         "extract only applies to url and deb entries"),
        ("files:\n  - deb: hello\n    sha256: " + "a" * 64 + "\n", "needs version:"),
        ("files:\n  - url: http://x/y\n    path: /\n    sha256: " + "a" * 64 + "\n",
         "path / is only for a whole Debian package"),
        ("files:\n  - deb: hello\n    version: '1'\n    sha256: " + "a" * 64 + "\n    arch: '!'\n",
         "arch must be a Debian name"),
    ],
)  # fmt: skip
def test_bundle_errors_name_the_line(tmp_path: Path, body: str, message: str) -> None:
    bundle = write_bundle(tmp_path / "b", body)
    proc = run_cli("sysext", "build", bundle, "-o", tmp_path / "out")
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert f"{bundle}/sysext.yaml:" in proc.stderr and "Traceback" not in proc.stderr


def test_upstream_pinning_example_is_a_valid_bundle(tmp_path: Path) -> None:
    """The README's url-pinned runtime (containerd, runc, CNI, kubelet) parses as a bundle."""
    readme = (REPO / "sysext/container-runtime/README.md").read_text()
    snippet = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    b = load_bundle(write_bundle(tmp_path / "b", snippet))
    assert [(f.path, f.source, f.options.get("extract")) for f in b.files] == [
        ("/usr/bin", "url", "bin"),
        ("/usr/bin/runc", "url", None),
        ("/usr/lib/cni", "url", ""),
        ("/usr/bin/kubelet", "url", None),
    ]
    assert all(len(f.sha256 or "") == 64 for f in b.files)
