"""`acl-compose fetch` against a real loopback HTTP server serving a signed Flatcar-shaped tree.

The tree is signed by a throwaway ed25519 key (certify-only primary + signing subkey) made
once per session; every case runs the real CLI in a subprocess with its own cache dir.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from acl_compose import fetch
from acl_compose.errors import FetchError, InputError, VerificationError
from acl_compose.fetch.httpserve import serve
from tests.conftest import run_cli
from tests.flatcar_tree import (
    IMAGE,
    VERSION,
    Faults,
    Key,
    copy_tree,
    fault_handler,
    make_key,
    make_tree,
    publish,
    write_digests,
)

FAST = {"ACL_COMPOSE_BACKOFF": "0.05", "ACL_COMPOSE_RETRIES": "3"}


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("gnupg-release"), "Test Release <rel@example.org>")


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("gnupg-other"), "Mallory <m@example.org>")


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory, signing_key: Key) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree") / "amd64-usr", signing_key)


@dataclass
class Site:
    root: Path
    url: str
    faults: Faults
    key: Key
    cache: Path

    @property
    def vdir(self) -> Path:
        return self.root / VERSION

    def fetch(
        self,
        *args: str,
        check: bool | None = None,
        env: dict[str, str] | None = None,
        key: Key | None = None,
        json_out: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        key = key or self.key
        pre = ["--cache-dir", str(self.cache)] + (["--json"] if json_out else [])
        return run_cli(
            *pre,
            "fetch",
            "--base-url",
            self.url,
            "--keyring",
            str(key.public),
            "--trusted-key",
            key.fingerprint,
            *args,
            check=check,
            env={**FAST, **(env or {})},
            timeout=120,
        )

    def assert_refused(self, proc: subprocess.CompletedProcess[str], *needles: str) -> None:
        """Exit 1, one `error:` line naming the URL/file, nothing usable left in the cache."""
        assert proc.returncode == 1, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        for needle in needles:
            assert needle in errors[0], errors[0]
        assert not list((self.cache / "tmp").glob("*")) if (self.cache / "tmp").exists() else True
        # Only version.txt (verified before the failure) may have entered the store.
        allowed = {_sha512(self.vdir / "version.txt")}
        assert {p.name for p in self.cache.glob("blobs/sha512/*/*")} <= allowed
        offline = self.fetch("--release", VERSION, "--offline")
        assert offline.returncode == 1, offline.stdout


@pytest.fixture
def site(tmp_path: Path, pristine: Path, signing_key: Key, cache_dir: Path):
    root = copy_tree(pristine, tmp_path / "amd64-usr")
    faults = Faults()
    with serve(root, handler=fault_handler(faults)) as server:
        yield Site(root, server.url, faults, signing_key, cache_dir)


def _sha512(path: Path) -> str:
    return hashlib.sha512(path.read_bytes()).hexdigest()


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
    assert image["sha512"] == _sha512(site.vdir / IMAGE) == _sha512(path)
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


@pytest.mark.parametrize("json_out", [False, True])
def test_progress_only_on_a_terminal_without_json(site: Site, json_out: bool) -> None:
    site.faults.rules[IMAGE] = "slow"
    argv = [sys.executable, "-m", "acl_compose", "--cache-dir", str(site.cache)]
    argv += ["--json"] if json_out else []
    argv += [
        "fetch",
        "--base-url",
        site.url,
        "--release",
        VERSION,
        "--keyring",
        str(site.key.public),
        "--trusted-key",
        site.key.fingerprint,
    ]
    # script(1) gives the command a pseudo-terminal, like a user at a shell.
    proc = subprocess.run(
        ["script", "-qec", shlex.join(argv), "/dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout
    assert ("MiB/s" in proc.stdout and "ETA" in proc.stdout) is not json_out


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
    assert image["sha512"] == _sha512(site.vdir / IMAGE)
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
    text = digests.read_text().replace(_sha512(site.vdir / IMAGE), "0" * 128)
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


def test_cached_file_gets_its_signature_checked_in_place(site: Site) -> None:
    site.fetch("--release", VERSION, check=True)
    # Cached on DIGESTS alone: --offline cannot vouch for F.sig.
    proc = site.fetch("--release", VERSION, "--offline", "--check-file-signatures")
    assert proc.returncode == 1 and "file signature" in proc.stderr, proc.stderr
    site.faults.log.clear()
    proc = site.fetch("--release", VERSION, "--check-file-signatures", json_out=True, check=True)
    image = json.loads(proc.stdout)["artifacts"][1]
    assert image["cached"] and "file-signature" in image["checks"]
    assert site.faults.gets(IMAGE) == 0 and site.faults.gets(f"{IMAGE}.sig") == 1
    # Recorded: offline now suffices, and a default fetch still reports only what it asked for.
    again = json.loads(
        site.fetch("--release", VERSION, "--offline", "--strict", json_out=True, check=True).stdout
    )
    assert again["artifacts"][1]["file_signature"] == image["file_signature"]
    plain = json.loads(site.fetch("--release", VERSION, "--offline", json_out=True).stdout)
    assert plain["artifacts"][1]["checks"] == ["digests-signature", "sha512"]
    assert "file_signature" not in plain["artifacts"][1]


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
    digest = _sha512(site.vdir / IMAGE)
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


def test_dropped_connection_resumes_with_range(site: Site) -> None:
    site.faults.rules[IMAGE] = "drop"
    data = json.loads(site.fetch("--release", VERSION, json_out=True, check=True).stdout)
    assert data["artifacts"][1]["sha512"] == _sha512(site.vdir / IMAGE)
    assert site.faults.gets(IMAGE, ranged=False) == 1
    size = (site.vdir / IMAGE).stat().st_size
    ranges = [r for p, r in site.faults.log if p.endswith(IMAGE) and r]
    assert ranges == [f"bytes={size // 2}-"]


def test_5xx_is_retried(site: Site) -> None:
    site.faults.rules[IMAGE] = "503x2"
    site.fetch("--release", VERSION, check=True)
    assert site.faults.gets(IMAGE) == 3


def test_html_error_page_refused(site: Site) -> None:
    site.faults.rules[IMAGE] = "html"
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "HTML")


def test_html_page_with_binary_content_type_refused(site: Site) -> None:
    site.faults.rules[IMAGE] = "html-octet"
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "HTML")


def test_404_names_the_url(site: Site) -> None:
    (site.vdir / IMAGE).unlink()
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "not found")


def test_unknown_release_404(site: Site) -> None:
    proc = site.fetch("--release", "9999.0.0")
    assert proc.returncode == 1
    assert f"error: {site.url}9999.0.0/version.txt: not found" in proc.stderr


def test_missing_digests_refused(site: Site) -> None:
    for suffix in (".DIGESTS", ".DIGESTS.asc", ".DIGESTS.sig"):
        (site.vdir / f"{IMAGE}{suffix}").unlink()
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}.DIGESTS", "missing")


def test_stalled_server_times_out(site: Site) -> None:
    site.faults.rules[IMAGE] = "stall"
    start = time.monotonic()
    proc = site.fetch(
        "--release", VERSION, env={"ACL_COMPOSE_READ_TIMEOUT": "1", "ACL_COMPOSE_RETRIES": "0"}
    )
    assert time.monotonic() - start < 30
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "timed out after 1s")


def test_concurrent_fetches_download_once(site: Site) -> None:
    site.faults.rules[IMAGE] = "slow"
    base = [
        sys.executable,
        "-m",
        "acl_compose",
        "--cache-dir",
        str(site.cache),
        "--json",
        "fetch",
        "--base-url",
        site.url,
        "--keyring",
        str(site.key.public),
        "--trusted-key",
        site.key.fingerprint,
        "--release",
        VERSION,
    ]
    procs = [
        subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(o[0])["artifacts"][1] for o in outs]
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["cached"] for r in results) == [False, True]
    assert site.faults.gets(IMAGE) == 1
    assert _sha512(Path(results[0]["path"])) == _sha512(site.vdir / IMAGE)


def test_offline_without_cache_fails(site: Site) -> None:
    proc = site.fetch("--release", VERSION, "--offline")
    assert proc.returncode == 1
    assert "not in the cache (--offline)" in proc.stderr and VERSION in proc.stderr
    assert site.faults.log == []


def test_offline_with_cache_makes_no_requests(site: Site) -> None:
    first = json.loads(site.fetch("--release", VERSION, json_out=True, check=True).stdout)
    site.faults.log.clear()
    again = json.loads(
        site.fetch("--release", VERSION, "--offline", json_out=True, check=True).stdout
    )
    assert site.faults.log == []
    assert [a["sha512"] for a in again["artifacts"]] == [a["sha512"] for a in first["artifacts"]]
    assert again["artifacts"][1]["signature"] == first["artifacts"][1]["signature"]


def test_tampered_cache_is_rechecked(site: Site) -> None:
    data = json.loads(site.fetch("--release", VERSION, json_out=True, check=True).stdout)
    blob = Path(data["artifacts"][1]["path"]).resolve()
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(1000)
        f.write(b"X")
    proc = site.fetch("--release", VERSION, "--offline")
    assert proc.returncode == 1 and "re-check" in proc.stderr
    site.faults.log.clear()
    site.fetch("--release", VERSION, check=True)  # online: fetched again
    assert site.faults.gets(IMAGE) == 1


def test_cache_from_another_trusted_key_not_reused(site: Site, other_key: Key) -> None:
    site.fetch("--release", VERSION, check=True)
    proc = site.fetch("--release", VERSION, "--offline", key=other_key)
    assert proc.returncode == 1 and "not in the cache (--offline)" in proc.stderr
    # Even an index entry planted under the other key's name is re-checked against its trust.
    planted = site.cache / "releases" / other_key.fingerprint
    shutil.copytree(site.cache / "releases" / site.key.fingerprint, planted, symlinks=True)
    proc = site.fetch("--release", VERSION, "--offline", key=other_key)
    assert proc.returncode == 1 and "another key" in proc.stderr


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


def test_cache_does_not_depend_on_host_or_port(site: Site, pristine: Path) -> None:
    """The same signed release served elsewhere (another port, another host name) is a cache
    hit: offline without any request, online without downloading the image again."""
    first = json.loads(site.fetch("--release", VERSION, json_out=True, check=True).stdout)
    faults = Faults()
    with serve(site.root, handler=fault_handler(faults)) as other:
        assert other.url != site.url
        elsewhere = Site(site.root, other.url.replace("127.0.0.1", "localhost"), faults,
                         site.key, site.cache)  # fmt: skip
        offline = elsewhere.fetch("--release", VERSION, "--offline", json_out=True, check=True)
        assert faults.log == []
        data = json.loads(offline.stdout)
        assert [a["sha512"] for a in data["artifacts"]] == [a["sha512"] for a in first["artifacts"]]
        assert all(a["cached"] for a in data["artifacts"])
        assert data["artifacts"][1]["url"].startswith(elsewhere.url)  # where it is now
        online = json.loads(elsewhere.fetch(json_out=True, check=True).stdout)  # `current`
        assert all(a["cached"] for a in online["artifacts"])
        assert faults.gets(IMAGE) == 0 and faults.gets(f"{IMAGE}.DIGESTS.sig") == 1
        # `current` seen on one server is known offline on the other.
        site.fetch("--offline", check=True)


def test_resigned_release_with_the_same_version_is_not_served_stale(site: Site) -> None:
    """Online, a cached entry is reused only if the server's signed DIGESTS still name it."""
    site.fetch("--release", VERSION, check=True)
    image = site.vdir / IMAGE
    image.write_bytes(bz2.compress(b"rebuilt" * 100000, 1))
    publish(image, site.key)
    data = json.loads(site.fetch("--release", VERSION, json_out=True, check=True).stdout)
    assert not data["artifacts"][1]["cached"]
    assert Path(data["artifacts"][1]["path"]).read_bytes() == image.read_bytes()
    assert data["artifacts"][0]["cached"]  # version.txt did not change


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


# -- library: download() and decompress() ---------------------------------------------------
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


@pytest.mark.parametrize("use_lbzip2", [True, False])
def test_decompress_sparse(tmp_path: Path, use_lbzip2: bool) -> None:
    raw = os.urandom(70_000) + bytes(8 << 20) + b"tail" + bytes(5000)
    src = tmp_path / "img.bin.bz2"
    src.write_bytes(bz2.compress(raw, 1))
    dest = fetch.decompress(src, tmp_path / "img.bin", use_lbzip2=use_lbzip2)
    assert dest.read_bytes() == raw
    assert dest.stat().st_blocks * 512 < 1 << 20  # the 8 MiB of zeros are holes


def test_sparse_writer_blocks_and_tail(tmp_path: Path) -> None:
    """Zero blocks anywhere in a chunk (and a ragged tail) become holes; the bytes survive."""
    from acl_compose.fetch.unpack import BLOCK, CHUNK, SparseWriter

    rnd = os.urandom(BLOCK)
    pattern = [rnd if i % 3 == 0 else bytes(BLOCK) for i in range(CHUNK // BLOCK)]
    chunks = [b"".join(pattern), bytes(CHUNK), rnd[:100] + bytes(BLOCK * 3 + 7)]
    dest = tmp_path / "out"
    with open(dest, "wb") as f:
        w = SparseWriter(f.fileno())
        for c in chunks:
            buf = bytearray(CHUNK)  # a reused buffer longer than the data, as lbzip2's reader
            buf[: len(c)] = c
            w.write(buf, len(c))
        w.finish()
    assert dest.read_bytes() == b"".join(chunks)
    data_blocks = CHUNK // BLOCK // 3 + 1 + 1  # the random blocks, plus the tail's first block
    assert dest.stat().st_blocks * 512 <= (data_blocks + 2) * BLOCK


def test_decompress_corrupt_is_input_error(tmp_path: Path) -> None:
    src = tmp_path / "bad.bz2"
    good = bz2.compress(os.urandom(50_000))
    src.write_bytes(good[:-40] + bytes(40))
    for use in (True, False):
        with pytest.raises(InputError, match=str(src)):
            fetch.decompress(src, tmp_path / "bad.raw", use_lbzip2=use)
        assert not (tmp_path / "bad.raw").exists()


def test_entry_from_before_checks_were_recorded(site: Site) -> None:
    """Earlier versions checked F.sig on every fetch and recorded its signature only."""
    site.fetch("--release", VERSION, "--strict", check=True)
    for meta in site.cache.glob("releases/**/.meta/*.json"):
        data = json.loads(meta.read_text())
        data["signature"] = data.pop("file_signature")
        del data["checks"]
        meta.write_text(json.dumps(data))
    site.faults.log.clear()
    proc = site.fetch("--release", VERSION, "--offline", "--strict", json_out=True, check=True)
    image = json.loads(proc.stdout)["artifacts"][1]
    assert image["cached"] and image["checks"][-1] == "file-signature"
    assert image["file_signature"]["primary_fingerprint"] == site.key.fingerprint
    assert site.faults.log == []
