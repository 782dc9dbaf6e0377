"""Bit-reproducible releases: the same manifest, inputs, key and SOURCE_DATE_EPOCH composed
with separate cold caches (and once more warm) give byte-identical outputs, whose signatures
openssl, systemd and `verify` still accept; `compose --check-reproducible` proves it or names
the first differing byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from acl_compose.compose import load_manifest
from acl_compose.errors import VerificationError
from acl_compose.image import fs, gpt
from acl_compose.provenance import check_reproducible, first_difference
from acl_compose.provenance import reproducible as repro
from tests.conftest import run_cli
from tests.ddi_tools import dissect, dissect_with_verity_d
from tests.fixtures_compose import BUNDLES, CONFIGS, SDE, write_manifest


def sha256s(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def builds(mini_flatcar, release_key, tmp_path_factory):
    """Three composes of one manifest: cold cache A, cold cache B, warm cache A again."""
    key, cert = release_key
    d = tmp_path_factory.mktemp("repro")
    m = write_manifest(d / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=BUNDLES, ignition=CONFIGS)  # fmt: skip
    outs = []
    for label, cache in (("a", "cache-a"), ("b", "cache-b"), ("warm", "cache-a")):
        run_cli("--cache-dir", d / cache, "compose", m, "-o", d / label, check=True, env=SDE)
        outs.append(d / label)
    return {"outs": outs, "manifest": m, "cert": cert, "dir": d}


def test_every_output_byte_identical(builds):
    a, b, warm = (sha256s(o) for o in builds["outs"])
    assert a == b == warm
    assert set(a) == {"acl-test-1.0.0.bin", "acl-test-1.0.0.qcow2", "acl-test-1.0.0.vhd",
                      "acl-test-1.0.0.spdx.json", "release.json", "release.json.p7s"}  # fmt: skip
    # Including each filesystem: OEM (rebuilt by mkfs.btrfs; ROOT is not touched).
    imgs = [o / "acl-test-1.0.0.bin" for o in builds["outs"]]
    for part in gpt.read(imgs[0]).partitions:
        datas = set()
        for img in imgs:
            with open(img, "rb") as f:
                f.seek(part.offset)
                datas.add(hashlib.sha256(f.read(part.size)).hexdigest())
        assert len(datas) == 1, part.name


def test_signatures_still_verify(builds, tmp_path):
    out, cert = builds["outs"][1], builds["cert"]
    r = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                        out / "release.json.p7s", "-content", out / "release.json", "-CAfile",
                        cert, "-purpose", "any", "-out", "/dev/null"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    proc = run_cli("--json", "verify", out, "--cert", cert, check=True)
    assert json.loads(proc.stdout)["ok"] is True
    # systemd's own view of a sysext taken out of the reproducible image's OEM partition.
    img = out / "acl-test-1.0.0.bin"
    oem = tmp_path / "oem.img"
    gpt.copy_out(img, gpt.read(img).by_label("OEM"), oem)
    raw = tmp_path / "azure-base.raw"
    raw.write_bytes(fs.btrfs_read_file(oem, "extensions/azure-base/azure-base-1.1.0.raw"))
    root = next(m for m in dissect(raw)["mounts"] if m["designator"] == "root")
    assert root["verity"] == "signed"
    copied, log = dissect_with_verity_d(raw, cert, "azure-base")
    assert copied or "Userspace PKCS#7 validation succeeded" in log, log


def test_check_reproducible_writes_the_release(builds, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("--json", "--cache-dir", builds["dir"] / "cache-a", "compose",
                   builds["manifest"], "-o", out, "--check-reproducible", check=True,
                   env=SDE)  # fmt: skip
    result = json.loads(proc.stdout)
    assert result["reproducible"]["builds"] == 2
    assert result["reproducible"]["files"] == sha256s(builds["outs"][0]) == sha256s(out)
    assert "byte-identical across two builds with separate caches" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing else left behind


def test_check_reproducible_names_the_first_differing_byte(builds, tmp_path, monkeypatch):
    """A build that differs (here: one byte of build B's OEM flipped after compose) is
    reported by file, offset and partition; OUT_DIR is not written; both builds are kept."""
    real = repro.compose
    calls = []

    def compose_and_spoil(manifest, out_dir, cache_dir, **kwargs):
        release = real(manifest, out_dir, cache_dir, **kwargs)
        calls.append(out_dir)
        if len(calls) == 2:
            img = Path(out_dir) / "acl-test-1.0.0.bin"
            oem = gpt.read(img).by_label("OEM")
            with open(img, "r+b") as f:
                f.seek(oem.offset + 0x10000 + 0x200)
                byte = f.read(1)
                f.seek(oem.offset + 0x10000 + 0x200)
                f.write(bytes([byte[0] ^ 1]))
        return release

    monkeypatch.setattr(repro, "compose", compose_and_spoil)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    m = load_manifest(builds["manifest"])
    out = tmp_path / "out"
    with pytest.raises(VerificationError) as e:
        check_reproducible(m, out, builds["dir"] / "cache-a")
    oem = gpt.read(builds["outs"][0] / "acl-test-1.0.0.bin").by_label("OEM")
    assert (f"acl-test-1.0.0.bin differs first at byte {oem.offset + 0x10200} "
            f"(partition 6 OEM, +{0x10200})") in e.value.message  # fmt: skip
    assert not out.exists()
    kept = Path(calls[0]).parent
    assert "build-a" in e.value.hint and kept.is_dir()
    assert first_difference(kept / "build-a", kept / "build-b")["offset"] == oem.offset + 0x10200
    assert first_difference(kept / "build-a", kept / "build-a") is None
