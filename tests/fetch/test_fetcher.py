"""`acl-compose fetch` against a real loopback HTTP server serving a signed Flatcar-shaped tree
(the `site` fixture, tests/fetch/conftest.py): what it reports and exports, and the trust
checks (DIGESTS and file signatures, keys) that refuse a tampered or foreign release.
The cache is tested in test_cache.py, the transport (retries, resumes, timeouts, HTML error
pages, progress) in test_transport.py, decompression in test_unpack.py.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from acl_compose import fetch
from acl_compose.errors import FetchError, InputError, VerificationError
from acl_compose.fetch.httpserve import serve
from tests.conftest import run_cli
from tests.fetch.conftest import Site, sha512
from tests.flatcar_tree import IMAGE, VERSION, Key, publish, write_digests


def test_success_json_reports_release_and_signatures(site: Site) -> None:
    proc = site.fetch("--release", VERSION, json_out=True, check=True)
    # No progress bar when not on a terminal: only the verified summary, one line per artifact.
    assert [ln.split(":")[0] for ln in proc.stderr.splitlines()] == [
        "verified version.txt",
        f"verified {IMAGE}",
    ]
    data = json.loads(proc.stdout)
    assert (data["version"], data["build"], data["branch"], data["patch"]) == (VERSION, 3510, 2, 8)
    assert data["channel"] == "stable" and data["build_id"] == "2023-09-19-1914"
    assert [a["name"] for a in data["artifacts"]] == ["version.txt", IMAGE]
    image = data["artifacts"][1]
    path = Path(image["path"])
    assert path.read_bytes() == (site.vdir / IMAGE).read_bytes()
    assert image["sha512"] == sha512(site.vdir / IMAGE) == sha512(path)
    assert image["size"] == (site.vdir / IMAGE).stat().st_size
    assert image["checks"] == ["digests-signature", "sha512"]
    sig = image["signature"]  # over the DIGESTS
    # Signed by the subkey; the primary is the pinned one.
    assert sig["fingerprint"] == site.key.signing_fingerprint != site.key.fingerprint
    assert sig["primary_fingerprint"] == site.key.fingerprint
    created = time.strptime(sig["created"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(time.mktime(created) - time.mktime(time.gmtime())) < 3600
    # The cached file is read-only and decompresses to the published raw image.
    assert not os.access(path.resolve(), os.W_OK) or os.geteuid() == 0
    assert bz2.decompress(path.read_bytes()) == (site.vdir / "raw.bin").read_bytes()
    assert len(site.faults.agents) == 1 and site.faults.agents.pop().startswith("acl-compose/")


def test_text_output_one_path_per_line_and_output_dir(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = site.fetch(
        "--release",
        VERSION,
        "--artifact",
        "flatcar_production_image_packages.txt",
        "-o",
        str(out),
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert lines == [str(out / "version.txt"), str(out / "flatcar_production_image_packages.txt")]
    assert (out / "flatcar_production_image_packages.txt").read_text() == "sys-apps/systemd-252\n"
    assert not (out / IMAGE).exists()  # --artifact replaces the default image
    # The folder is an earlier `fetch` output now: a second export adds to it.
    site.fetch("--release", VERSION, "-o", str(out), check=True)
    assert (out / IMAGE).read_bytes() == (site.vdir / IMAGE).read_bytes()
    # A folder of the user's is refused before any request; nothing there is touched.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "version.txt").write_text("my notes")
    site.faults.log.clear()
    proc = site.fetch("--release", VERSION, "-o", str(mine))
    assert proc.returncode == 1 and f"error: output folder {mine} is not empty" in proc.stderr
    assert site.faults.log == []
    proc = site.fetch("--release", VERSION, "-o", str(mine), "--force")
    assert proc.returncode == 1 and "version.txt exists and was not written by" in proc.stderr
    assert [p.read_text() for p in mine.iterdir()] == ["my notes"]


def test_current_resolution(site: Site) -> None:
    data = json.loads(site.fetch(json_out=True, check=True).stdout)
    assert data["version"] == VERSION
    assert data["url"] == f"{site.url}{VERSION}/"
    assert site.faults.gets("/current/version.txt") == 1
    assert site.faults.gets("/current/version.txt.sig") == 1
    # `current` is remembered for --offline.
    again = json.loads(site.fetch("--offline", json_out=True, check=True).stdout)
    assert again["version"] == VERSION and all(a["cached"] for a in again["artifacts"])


def test_unsigned_current_is_refused(site: Site) -> None:
    (site.vdir / "version.txt.sig").unlink()
    proc = site.fetch()
    site.assert_refused(proc, f"{site.url}current/version.txt.sig", "signature missing")


def test_flipped_byte_refused_by_digest(site: Site) -> None:
    image = site.vdir / IMAGE
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x01
    image.write_bytes(data)
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "SHA512")


def _tamper_and_resign_digests(site: Site) -> None:
    """A changed image whose DIGESTS is re-signed with the trusted key, F.sig left as it was."""
    image = site.vdir / IMAGE
    data = bytearray(image.read_bytes())
    data[100] ^= 0x80
    image.write_bytes(data)
    site.key.sign_digests(write_digests(image))


@pytest.mark.parametrize("flag", ["--check-file-signatures", "--strict"])
def test_flipped_byte_refused_by_file_signature_with_matching_digests(
    site: Site, flag: str
) -> None:
    # An attacker who could get DIGESTS re-signed still cannot forge F.sig.
    _tamper_and_resign_digests(site)
    proc = site.fetch("--release", VERSION, flag)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "BAD signature")


def test_default_trusts_the_signed_digests(site: Site) -> None:
    """By default the signed DIGESTS is the trust root (as apt's signed Release is): a file it
    lists is accepted without F.sig, and the output says exactly which checks ran."""
    _tamper_and_resign_digests(site)
    data = json.loads(site.fetch("--release", VERSION, json_out=True, check=True).stdout)
    image = data["artifacts"][1]
    assert image["checks"] == ["digests-signature", "sha512"]
    assert "file_signature" not in image
    assert image["sha512"] == sha512(site.vdir / IMAGE)
    assert site.faults.gets(f"{IMAGE}.sig") == 0  # F.sig was not even downloaded
    assert site.faults.gets(f"{IMAGE}.DIGESTS.sig") == 1
    # The same cached file, now wanted with its own signature: checked in place, refused, and
    # dropped from the index.
    site.faults.log.clear()
    proc = site.fetch("--release", VERSION, "--strict")
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "BAD signature")
    assert site.faults.gets(IMAGE) == 0 and site.faults.gets(f"{IMAGE}.sig") == 1


def test_wrong_key_refused(site: Site, other_key: Key) -> None:
    proc = site.fetch("--release", VERSION, key=other_key)
    site.assert_refused(proc, f"{site.url}{VERSION}/version.txt", "not the trusted key")


def test_tree_signed_by_another_key_refused(site: Site, other_key: Key) -> None:
    publish(site.vdir / IMAGE, other_key)  # .sig and DIGESTS now by Mallory
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{IMAGE}.DIGESTS", "not the trusted key")


def test_keyring_without_the_trusted_key_refused(site: Site, other_key: Key) -> None:
    proc = run_cli(
        "--cache-dir",
        site.cache,
        "fetch",
        "--base-url",
        site.url,
        "--keyring",
        other_key.public,
        "--trusted-key",
        site.key.fingerprint,
    )
    assert proc.returncode == 1
    assert f"key file {other_key.public}" in proc.stderr and site.key.fingerprint in proc.stderr


def test_missing_sig_refused_when_checked(site: Site) -> None:
    (site.vdir / f"{IMAGE}.sig").unlink()
    proc = site.fetch("--release", VERSION, "--check-file-signatures")
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}.sig", "signature missing")


def test_digests_mismatch_refused(site: Site) -> None:
    digests = site.vdir / f"{IMAGE}.DIGESTS"
    text = digests.read_text().replace(sha512(site.vdir / IMAGE), "0" * 128)
    digests.write_text(text)
    site.key.sign_digests(digests)  # properly signed, but wrong
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "does not match")


def test_strict_checks_both_and_records_them(site: Site) -> None:
    proc = site.fetch("--release", VERSION, "--strict", json_out=True, check=True)
    data = json.loads(proc.stdout)
    for art in data["artifacts"]:
        assert art["checks"] == ["digests-signature", "sha512", "file-signature"]
        assert art["file_signature"]["primary_fingerprint"] == site.key.fingerprint
        assert art["signature"]["primary_fingerprint"] == site.key.fingerprint
    assert site.faults.gets(f"{IMAGE}.sig") == 1 and site.faults.gets(f"{IMAGE}.DIGESTS.sig") == 1


def test_digests_signed_by_another_key_refused(site: Site, other_key: Key) -> None:
    # F.sig is still the genuine one: the default path must refuse on DIGESTS alone.
    other_key.sign_digests(site.vdir / f"{IMAGE}.DIGESTS")
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{IMAGE}.DIGESTS", "not the trusted key")


def test_clearsigned_digests_by_another_key_refused(site: Site, other_key: Key) -> None:
    other_key.sign_digests(site.vdir / f"{IMAGE}.DIGESTS")
    (site.vdir / f"{IMAGE}.DIGESTS.sig").unlink()
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{IMAGE}.DIGESTS.asc", "not the trusted key")


def test_tampered_clearsigned_digests_refused(site: Site) -> None:
    (site.vdir / f"{IMAGE}.DIGESTS.sig").unlink()
    asc = site.vdir / f"{IMAGE}.DIGESTS.asc"
    text = asc.read_text()
    digest = sha512(site.vdir / IMAGE)
    asc.write_text(text.replace(digest, digest[:-1] + ("0" if digest[-1] != "0" else "1")))
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{IMAGE}.DIGESTS.asc", "BAD signature")


def test_unsigned_digests_refused(site: Site) -> None:
    for suffix in (".DIGESTS.asc", ".DIGESTS.sig"):
        (site.vdir / f"{IMAGE}{suffix}").unlink()
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{IMAGE}.DIGESTS.sig and .asc", "missing")
    assert site.faults.gets(IMAGE) == 0  # the big file is never downloaded


def test_digests_altered_after_signing_refused(site: Site) -> None:
    digests = site.vdir / f"{IMAGE}.DIGESTS"
    digests.write_text(digests.read_text().replace("# MD5 HASH", "# MD5 HASH\n"))
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{IMAGE}.DIGESTS", "BAD signature")


def test_clearsigned_digests_used_when_detached_missing(site: Site) -> None:
    for name in ("version.txt", IMAGE):
        (site.vdir / f"{name}.DIGESTS.sig").unlink()
    site.fetch("--release", VERSION, check=True)
    assert site.faults.gets(f"{IMAGE}.DIGESTS.asc") == 1


def test_missing_digests_refused(site: Site) -> None:
    for suffix in (".DIGESTS", ".DIGESTS.asc", ".DIGESTS.sig"):
        (site.vdir / f"{IMAGE}{suffix}").unlink()
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}.DIGESTS", "missing")


def test_summary_line_without_a_terminal(site: Site) -> None:
    proc = site.fetch("--release", VERSION, check=True)
    size = (site.vdir / IMAGE).stat().st_size
    line = next(ln for ln in proc.stderr.splitlines() if IMAGE in ln)
    assert line == (
        f"verified {IMAGE}: {size / 2**20:.1f} MiB, SHA512 against DIGESTS, signed by "
        f"{site.key.fingerprint}"
    )
    strict = site.fetch("--release", VERSION, "--strict", check=True).stderr
    assert f"SHA512 against DIGESTS and file signature, signed by {site.key.fingerprint}" in strict
    again = site.fetch("--release", VERSION, check=True)
    assert f"verified {IMAGE}: " in again.stderr and again.stderr.rstrip().endswith("(cached)")


def test_local_sdk_directory_and_file_url(site: Site, tmp_path: Path) -> None:
    # A Flatcar SDK output dir holds the files directly (no VERSION/ folders).
    data = json.loads(
        run_cli(
            "--cache-dir",
            site.cache,
            "--json",
            "fetch",
            "--base-url",
            site.vdir,
            "--keyring",
            site.key.public,
            "--trusted-key",
            site.key.fingerprint,
            check=True,
        ).stdout
    )
    assert data["version"] == VERSION
    assert Path(data["artifacts"][1]["path"]).read_bytes() == (site.vdir / IMAGE).read_bytes()
    # file:// URL of a board directory with VERSION/ folders.
    data = json.loads(
        run_cli(
            "--cache-dir",
            site.cache,
            "--json",
            "fetch",
            "--base-url",
            site.root.as_uri(),
            "--release",
            VERSION,
            "--keyring",
            site.key.public,
            "--trusted-key",
            site.key.fingerprint,
            check=True,
        ).stdout
    )
    assert data["url"] == f"{site.root.as_uri()}/{VERSION}/"


def test_bad_artifact_name_is_a_usage_error(site: Site) -> None:
    proc = site.fetch("--release", VERSION, "--artifact", "../../etc/passwd")
    assert proc.returncode == 2 and "not a plain file name" in proc.stderr
    assert site.faults.log == []  # refused before any request
    for args in (["--release", "3510.x"], ["--trusted-key", "ABC"]):
        proc = site.fetch(*args)
        assert proc.returncode == 2 and "Invalid value" in proc.stderr, proc.stderr


# -- library: download() ----------------------------------------------------------------------
def test_download_pinned_sha256(tmp_path: Path, cache_dir: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    payload = os.urandom(300_000)
    (src / "tool.tar.gz").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    with serve(src) as server:
        path = fetch.download(server.url + "tool.tar.gz", sha256=digest, cache_dir=cache_dir)
        assert path.name == "tool.tar.gz" and path.read_bytes() == payload
        with pytest.raises(VerificationError, match="does not match the pinned"):
            fetch.download(server.url + "tool.tar.gz", sha256="0" * 64, cache_dir=cache_dir)
        with pytest.raises(FetchError, match="not found"):
            fetch.download(server.url + "nope", sha256=digest, cache_dir=cache_dir)
    # Served from the cache with the server gone; offline miss is a clear error.
    again = fetch.download(
        server.url + "tool.tar.gz", sha256=digest, cache_dir=cache_dir, offline=True
    )
    assert again == path
    with pytest.raises(FetchError, match="--offline"):
        fetch.download(server.url + "x", sha256="1" * 64, cache_dir=cache_dir, offline=True)
    assert not list((cache_dir / "blobs" / "sha256").glob("00/*"))
    with pytest.raises(InputError):
        fetch.download(server.url + "x", sha256="abc", cache_dir=cache_dir)
    # Local paths work too.
    assert fetch.download(str(src / "tool.tar.gz"), sha256=digest, cache_dir=cache_dir) == path
