"""The download cache through `acl-compose fetch` (the `site` fixture, tests/fetch/conftest.py):
offline use, re-checks of what is cached, trust and signatures recorded per entry, one
download for concurrent fetches, entries independent of the server's address."""

from __future__ import annotations

import bz2
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from acl_compose.fetch.httpserve import serve
from tests.fetch.conftest import Site, sha512
from tests.flatcar_tree import IMAGE, VERSION, Faults, Key, fault_handler, publish


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
    assert sha512(Path(results[0]["path"])) == sha512(site.vdir / IMAGE)


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
