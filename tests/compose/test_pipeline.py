"""compose / inspect / verify end to end.

Fast tests compose the small Flatcar-shaped image from tests/fixtures_compose.py (a local
`base.path`) with the product's real bundles and Ignition configs; integration tests compose
the testbed release served on loopback (the session fixture `composed_release`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from acl_compose.image import fs, gpt, usr
from acl_compose.image.outputs import copy_sparse
from acl_compose.image.sparse import data_ranges
from tests import btrfs_tools
from tests.conftest import run_cli
from tests.fixtures_compose import PRODUCT_SYSEXTS, REPO, build_mini_flatcar, write_manifest
from tests.image.test_vhd_footer import assert_azure_fixed_vhd

BUNDLES = [REPO / "sysext" / "azure-base", REPO / "sysext" / "aks-node"]
CONFIGS = [REPO / "ignition" / "base.yaml", REPO / "ignition" / "aks-node.yaml"]
SDE = {"SOURCE_DATE_EPOCH": "1700000000"}


def compose(
    manifest: Path, out: Path, cache: Path, check: bool | None = True
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "--cache-dir", cache, "--json", "compose", manifest, "-o", out, check=check, env=SDE
    )


def verify(out: Path, cert: Path, check: bool | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("--json", "verify", out, "--cert", cert, check=check)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def assert_oem_kept(base: Path, new: Path) -> None:
    """Label, UUID, mixed mode, the compression property and xattrs, as btrfs-progs sees them;
    files compose added inherit the property as the kernel would give it to them."""
    assert btrfs_tools.check(new).returncode == 0
    for field in ("label", "fsid"):
        assert btrfs_tools.super_field(base, field) == btrfs_tools.super_field(new, field)
    assert btrfs_tools.mixed(base) and btrfs_tools.mixed(new)
    before, after = btrfs_tools.fs_tree(base), btrfs_tools.fs_tree(new)
    assert before[""]["xattrs"] == {"btrfs.compression": "zlib"}
    for path, attrs in before.items():
        assert after[path] == attrs, path
    for path in set(after) - set(before):
        assert after[path]["xattrs"].get("btrfs.compression") == "zlib", path
        assert after[path]["flags"] & 0x800, path  # COMPRESS


def oem_file_offset(img: Path, rel: str) -> int:
    """Byte offset in the disk image of the first block of a file on the OEM partition
    (found by content: btrfs keeps file data in 4 KiB-aligned blocks)."""
    part = gpt.read(img).by_label("OEM")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "oem.img"
        gpt.copy_out(img, part, copy)
        head = fs.btrfs_read_file(copy, rel)[:4096]
        hits = []
        with open(copy, "rb") as f:
            for start, length in data_ranges(f.fileno()):
                for off in range(start - start % 4096, start + length, 4096):
                    if os.pread(f.fileno(), 4096, off) == head:
                        hits.append(off)
    assert len(hits) == 1, hits
    return part.offset + hits[0]


@pytest.fixture(scope="module")
def mini_release(mini_flatcar, release_key, tmp_path_factory):
    key, cert = release_key
    d = tmp_path_factory.mktemp("mini-release")
    m = write_manifest(d / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=BUNDLES, ignition=CONFIGS)  # fmt: skip
    cache = d / "cache"
    proc = compose(m, d / "out", cache)
    return {"dir": d, "out": d / "out", "manifest": m, "cache": cache, "cert": cert, "key": key,
            "release": json.loads(proc.stdout), "stderr": proc.stderr}  # fmt: skip


def test_compose_writes_signed_release(mini_release, mini_flatcar):
    out, rel = mini_release["out"], mini_release["release"]
    assert sorted(p.name for p in out.iterdir()) == [
        "acl-test-1.0.0.bin", "acl-test-1.0.0.qcow2", "acl-test-1.0.0.spdx.json",
        "acl-test-1.0.0.vhd", "release.json", "release.json.p7s",
    ]  # fmt: skip
    assert json.loads((out / "release.json").read_text()) == rel
    assert rel["usr"]["root_hash"] == mini_flatcar.root_hash
    assert rel["source_date_epoch"] == 1700000000 and rel["tool"]["name"] == "acl-compose"
    assert [(s["name"], s["path"], s["link"]) for s in rel["sysexts"]] == [
        ("azure-base", "/oem/extensions/azure-base/azure-base-1.1.0.raw",
         "/etc/extensions/azure-base.raw"),
        ("aks-node", "/oem/extensions/aks-node/aks-node-1.0.0.raw", "/etc/extensions/aks-node.raw"),
    ]  # fmt: skip
    assert rel["signing"]["verity_d"] == "/etc/verity.d/acl-test.crt"
    assert all(s["signed"] and len(s["root_hash"]) == 64 for s in rel["sysexts"])
    fpr = rel["signing"]["certificate_fingerprint"]
    assert all(s["certificate_fingerprint"] == fpr for s in rel["sysexts"])
    assert {o["format"] for o in rel["outputs"]} == {"raw", "qcow2", "vhd"}
    # The release signature is what openssl accepts, independently of our code.
    r = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                        out / "release.json.p7s", "-content", out / "release.json", "-CAfile",
                        mini_release["cert"], "-purpose", "any", "-out", "/dev/null"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    # Each step printed its progress line.
    for step in (
        "fetch and verify the base",
        "verify the base /usr",
        "build and check 2 sysext",
        "bake 2 Ignition config",
        "write outputs",
        "write and sign release.json",
    ):  # noqa: E501 fmt: skip
        assert step in mini_release["stderr"]
    # ... and its time, and the whole compose its total.
    lines = mini_release["stderr"].splitlines()
    steps = [i for i, ln in enumerate(lines) if ln.startswith("» ")]
    done = [ln for ln in lines if re.fullmatch(r"  done in \d+\.\ds", ln)]
    assert len(steps) >= 9 and len(done) == len(steps), mini_release["stderr"]
    assert re.fullmatch(r"composed acl-test-1\.0\.0 into .*/out in \d+\.\ds", lines[-1])


def _oem_tree(img: Path, dest: Path) -> Path:
    part = dest.with_suffix(".img")
    gpt.copy_out(img, gpt.read(img).by_label("OEM"), part)
    fs.btrfs_restore(part, dest)
    return dest


def test_platform_outputs_differ_only_in_oem(mini_release, mini_flatcar, tmp_path):
    """The .bin/.qcow2 are the qemu platform's, the .vhd Azure's: the same bytes everywhere
    but the OEM partition, which holds each platform's content (read with btrfs restore)."""
    out, rel = mini_release["out"], mini_release["release"]
    assert [(o["file"], o["platform"]) for o in rel["outputs"]] == [
        ("acl-test-1.0.0.bin", "qemu"), ("acl-test-1.0.0.qcow2", "qemu"),
        ("acl-test-1.0.0.vhd", "azure"),
    ]  # fmt: skip
    bin_, vhd = out / "acl-test-1.0.0.bin", out / "acl-test-1.0.0.vhd"
    assert_azure_fixed_vhd(vhd)  # what Azure takes, read by an independent footer parser
    oem = gpt.read(bin_).by_label("OEM")
    with open(bin_, "rb") as a, open(vhd, "rb") as b:
        for start, end in ((0, oem.offset), (oem.offset + oem.size, bin_.stat().st_size)):
            a.seek(start)
            b.seek(start)
            left = end - start
            while left:
                n = min(left, 1 << 22)
                assert a.read(n) == b.read(n), f"outside OEM at {start}"
                left -= n
    azure = _oem_tree(vhd, tmp_path / "azure")
    qemu = _oem_tree(bin_, tmp_path / "qemu")
    assert sorted(p.name for p in (azure / "sysext").iterdir()) == [
        "active-oem-azure", "oem-azure-9999.2.0.raw"]  # fmt: skip
    assert sorted(p.name for p in (qemu / "sysext").iterdir()) == [
        "active-oem-qemu", "oem-qemu-9999.2.0.raw"]  # fmt: skip
    grub = (azure / "grub.cfg").read_text()
    assert 'set oem_id="azure"' in grub and "console=ttyS0,115200n8" in grub
    assert "terminal_output serial" in grub
    assert 'set oem_id="qemu"' in (qemu / "grub.cfg").read_text()
    # oem-release from the sysext's release fields (SYSEXT_VERSION_ID is the bundle's 1.2.3).
    assert (azure / "oem-release").read_text() == (
        'ID=azure\nVERSION_ID=1.2.3\nNAME="Microsoft Azure"\n'
        "HOME_URL=https://azure.microsoft.com/\nBUG_REPORT_URL=https://issues.flatcar.org\n"
    )
    for tree in (azure, qemu):  # the baked config is in every platform's OEM
        assert (tree / "base" / "base.ign").read_bytes() == (
            qemu / "base" / "base.ign"
        ).read_bytes()
    p = rel["platforms"]["azure"]
    assert p["id"] == "azure" and p["grub_oem_id"] == "azure"
    assert p["source"] == "oem-azure.raw beside the base image"
    assert p["sysext"]["path"] == "OEM:/sysext/oem-azure-9999.2.0.raw"
    assert p["sysext"]["sha256"] == __import__("hashlib").sha256(
        (azure / "sysext" / "oem-azure-9999.2.0.raw").read_bytes()).hexdigest()  # fmt: skip
    assert (
        p["sysext"]["signed"] is False
        and p["sysext"]["extension_release"]["VERSION_ID"] == "9999.2.0"
    )
    assert rel["platforms"]["qemu"]["oem_release"]["ID"] == "qemu"


def test_composed_image_contents(mini_release, mini_flatcar, tmp_path):
    img = mini_release["out"] / "acl-test-1.0.0.bin"
    base, new = gpt.read(mini_flatcar.path), gpt.read(img)
    assert [p.to_json() for p in base.partitions] == [p.to_json() for p in new.partitions]
    # ESP, USR-A and ROOT are untouched: everything compose adds is on the OEM partition
    # (which a ROOT reset keeps).
    for label in ("EFI-SYSTEM", "USR-A", "ROOT"):
        p = base.by_label(label)
        with open(mini_flatcar.path, "rb") as a, open(img, "rb") as b:
            a.seek(p.offset)
            b.seek(p.offset)
            assert a.read(p.size) == b.read(p.size), label
    # OEM rebuilt with the same label and UUID, base.ign inside, oem-release kept.
    parts = {}
    for which, path in (("base", mini_flatcar.path), ("new", img)):
        f = tmp_path / f"{which}-oem.img"
        gpt.copy_out(path, gpt.read(path).by_label("OEM"), f)
        parts[which] = f
    a, b = fs.btrfs_info(parts["base"]), fs.btrfs_info(parts["new"])
    assert (a.uuid, a.label) == (b.uuid, b.label)
    assert_oem_kept(parts["base"], parts["new"])
    ign = fs.btrfs_read_file(parts["new"], "base/base.ign")
    assert (
        __import__("hashlib").sha256(ign).hexdigest()
        == mini_release["release"]["ignition"]["sha256"]
    )
    config = json.loads(ign)
    assert config["ignition"]["version"].startswith("3.")
    # The .bin is the qemu platform's: its OEM content as Flatcar's install_oem_sysext lays it.
    assert fs.btrfs_read_file(parts["new"], "README") == b"generic image: no platform OEM content\n"
    assert fs.btrfs_read_file(parts["new"], "oem-release").startswith(b"ID=qemu\n")
    assert fs.btrfs_read_file(parts["new"], "sysext/active-oem-qemu") == b""
    sx = fs.btrfs_read_file(parts["new"], "sysext/oem-qemu-9999.2.0.raw")
    assert sx == (mini_flatcar.path.parent / "oem-qemu.raw").read_bytes()
    assert fs.btrfs_read_file(parts["new"], "sysext/oem-azure-9999.2.0.raw") is None
    # The base config links each sysext image on OEM into /etc/extensions and installs the
    # release certificate: Ignition re-applies it on every first boot, resets included.
    links = {e["path"]: e["target"] for e in config["storage"]["links"]}
    for s in mini_release["release"]["sysexts"]:
        assert links[s["link"]] == s["path"]
        inner = s["path"].removeprefix("/oem/")
        data = fs.btrfs_read_file(parts["new"], inner)
        assert __import__("hashlib").sha256(data).hexdigest() == s["sha256"]
    cert_entry = next(f for f in config["storage"]["files"]
                      if f["path"] == "/etc/verity.d/acl-test.crt")  # fmt: skip
    from acl_compose.ignition import resource_bytes

    assert resource_bytes(cert_entry["contents"]) == mini_release["cert"].read_bytes()
    if shutil.which("ignition-validate"):
        (tmp_path / "base.ign").write_bytes(ign)
        r = subprocess.run(
            ["ignition-validate", str(tmp_path / "base.ign")], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout + r.stderr


def test_inspect_shows_everything(mini_release):
    for name in ("acl-test-1.0.0.bin", "acl-test-1.0.0.qcow2", "acl-test-1.0.0.vhd"):
        proc = run_cli("--json", "inspect", mini_release["out"] / name, check=True)
        r = json.loads(proc.stdout)
        assert r["flatcar_version"] == "9999.2.0"
        assert (
            r["usr"]["verified"] is True
            and r["usr"]["kernel_root_hash"] == mini_release["release"]["usr"]["root_hash"]
        )
        platform = "azure" if name.endswith(".vhd") else "qemu"
        assert r["oem"]["id"] == r["oem"]["grub_oem_id"] == platform
        assert r["oem"]["release"]["VERSION_ID"] == "1.2.3"
        (sx,) = r["oem"]["sysexts"]
        assert (sx["file"], sx["id"], sx["version"], sx["active"], sx["status"]) == (
            f"sysext/oem-{platform}-9999.2.0.raw", platform, "9999.2.0", True, "ok")  # fmt: skip
        assert sx["sha256"] == mini_release["release"]["platforms"][platform]["sysext"]["sha256"]
        assert (
            r["oem"]["configs"]["base/base.ign"]["sha256"]
            == mini_release["release"]["ignition"]["sha256"]
        )
        got = {
            s["name"]: (s["version"], s["signed"], s["status"], s["enabled_by"])
            for s in r["sysexts"]
        }
        assert got == {
            "azure-base": ("1.1.0", True, "ok", "/etc/extensions/azure-base.raw"),
            "aks-node": ("1.0.0", True, "ok", "/etc/extensions/aks-node.raw"),
        }
        assert [p["label"] for p in r["disk"]["partitions"]][2] == "USR-A"
    text = run_cli("inspect", mini_release["out"] / "acl-test-1.0.0.bin", check=True).stdout
    assert (
        "sysext aks-node 1.0.0" in text
        and "/usr verity: verified" in text
        and "OEM id: qemu (oem-release: QEMU 1.2.3; grub.cfg oem_id=qemu)" in text
        and "OEM sysext oem-qemu 9999.2.0: OEM:/sysext/oem-qemu-9999.2.0.raw (active; unsigned; ok)"
        in text
    )


def test_verify_passes(mini_release):
    proc = verify(mini_release["out"], mini_release["cert"], check=True)
    checks = {c["check"]: c["ok"] for c in json.loads(proc.stdout)["checks"]}
    assert all(checks.values())
    assert {"release.json.p7s", "/usr verity", "sysext azure-base", "sysext aks-node",
            "ignition (azure)", "ignition (qemu)", "platform azure", "platform qemu",
            "output acl-test-1.0.0.vhd"} <= set(checks)  # fmt: skip


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("release.json", "release.json signature"),
        ("release.json.p7s", "release.json signature"),
        ("acl-test-1.0.0.qcow2", "acl-test-1.0.0.qcow2: sha256"),
        ("acl-test-1.0.0.vhd", "acl-test-1.0.0.vhd: sha256"),
        ("sysext", "sysext aks-node (/oem/extensions/aks-node/aks-node-1.0.0.raw): sha256"),
        ("usr", "/usr"),
        ("oem-sysext", "acl-test-1.0.0.vhd: OEM:/sysext/oem-azure-9999.2.0.raw sha256"),
    ],
)
def test_flipped_byte_fails_verify(mini_release, mini_flatcar, tmp_path, target, needle):
    out = tmp_path / "out"
    out.mkdir()
    for f in mini_release["out"].iterdir():
        copy_sparse(f, out / f.name)
    img = out / "acl-test-1.0.0.bin"
    if target == "sysext":
        flip(img, oem_file_offset(img, "extensions/aks-node/aks-node-1.0.0.raw") + 100)
    elif target == "usr":
        flip(img, gpt.read(img).by_label("USR-A").offset + 0x10000 + 3 * 4096 + 5)
    elif target == "oem-sysext":  # a byte of the OEM sysext's filesystem, in the Azure VHD
        vhd = out / "acl-test-1.0.0.vhd"
        sx = (mini_flatcar.path.parent / "oem-azure.raw").read_bytes()
        at = next(i for i in range(1 << 20, len(sx), 4096) if any(sx[i : i + 4096]))
        oem = gpt.read(vhd).by_label("OEM")
        with open(vhd, "rb") as f:
            f.seek(oem.offset)
            data = f.read(oem.size)
        found = data.find(sx[at : at + 4096])
        assert found > 0, "the OEM sysext's bytes are not stored plainly in the OEM partition"
        flip(vhd, oem.offset + found + 17)
    else:
        size = (out / target).stat().st_size
        flip(out / target, size - 10 if target.startswith("release.json") else size // 2)
    proc = verify(out, mini_release["cert"], check=False)
    assert proc.returncode == 1
    assert needle in proc.stderr, proc.stderr
    if target in ("sysext", "usr"):
        assert "acl-test-1.0.0.bin: sha256" in proc.stderr  # the image checksum too
    if target == "oem-sysext":
        assert "acl-test-1.0.0.vhd: sha256" in proc.stderr
        assert "platform qemu" not in proc.stderr  # the qemu outputs are intact


def test_verify_wrong_cert(mini_release, tmp_path):
    run_cli("keys", "generate", "-o", tmp_path / "other", check=True)
    proc = verify(mini_release["out"], tmp_path / "other" / "release.crt", check=False)
    assert "release.json signature" in proc.stderr
    assert "sysext azure-base" in proc.stderr  # signed by a key the consumer does not trust


def test_same_manifest_twice_same_release(mini_release, tmp_path):
    """Composing the same manifest again (warm cache) gives the same release.json, byte for
    byte (tests/provenance/test_reproducible.py covers cold caches and every output)."""
    proc = compose(mini_release["manifest"], tmp_path / "again", mini_release["cache"])
    assert json.loads(proc.stdout) == mini_release["release"]
    assert "cached" in proc.stderr  # warm: the verified base was reused
    assert (tmp_path / "again" / "release.json").read_bytes() == (
        mini_release["out"] / "release.json"
    ).read_bytes()


def test_mismatched_sysext_stops_before_output(mini_flatcar, release_key, tmp_path):
    bundle = tmp_path / "wrong"
    shutil.copytree(BUNDLES[0], bundle)
    text = (bundle / "sysext.yaml").read_text()
    text = re.sub(r"(?m)^sysext_level:.*$", "", text)
    (bundle / "sysext.yaml").write_text(text + "\nsysext_level: '2.0'\n")
    key, cert = release_key
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=[BUNDLES[1], bundle], outputs=("raw",))  # fmt: skip
    out = tmp_path / "out"
    proc = compose(m, out, tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert "error: sysext azure-base" in proc.stderr and "SYSEXT_LEVEL" in proc.stderr
    assert "write outputs" not in proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cache",
        "m.yaml",
        "wrong",
    ]  # no temp dir left


def test_failed_compose_keeps_previous_output(mini_release, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("previous release")
    m = tmp_path / "m.yaml"
    m.write_text(
        mini_release["manifest"].read_text().replace("name: acl-test", "name: acl-test\nbogus: 1")
    )
    proc = compose(m, out, mini_release["cache"], check=False)
    assert "bogus: unknown key" in proc.stderr and f"{m}:" in proc.stderr
    assert (out / "keep").read_text() == "previous release"


def test_compose_never_deletes_the_users_files(mini_release, tmp_path):
    """`compose -o precious/` used to replace the whole folder (a thesis.txt there was gone)."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    m = tmp_path / "m.yaml"
    m.write_text(mini_release["manifest"].read_text().replace("- qcow2\n- vhd\n", ""))
    proc = compose(m, precious, mini_release["cache"], check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"error: output folder {precious} is not empty")
    assert "--force" in proc.stderr and "load the release signing key" not in proc.stderr
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    proc = run_cli("--cache-dir", mini_release["cache"], "compose", m, "-o", precious,
                   "--check-reproducible")  # fmt: skip
    assert proc.returncode == 1 and "is not empty" in proc.stderr and "build A" not in proc.stderr
    # --force: the release is added beside the user's file.
    run_cli("--cache-dir", mini_release["cache"], "compose", m, "-o", precious, "--force",
            check=True, env=SDE)  # fmt: skip
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in precious.iterdir()) == [
        "acl-test-1.0.0.bin", "acl-test-1.0.0.spdx.json", "release.json", "release.json.p7s",
        "thesis.txt",
    ]  # fmt: skip
    verify(precious, mini_release["cert"], check=True)
    # A previous compose output (release.json) is replaced without --force: its own files
    # go or are rewritten, the user's stay.
    m.write_text(m.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    compose(m, precious, mini_release["cache"])
    assert sorted(p.name for p in precious.iterdir()) == [
        "acl-test-1.0.1.bin", "acl-test-1.0.1.spdx.json", "release.json", "release.json.p7s",
        "thesis.txt",
    ]  # fmt: skip
    assert (precious / "thesis.txt").read_text() == "years of work"
    verify(precious, mini_release["cert"], check=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_compose_refuses_to_replace_a_file_it_did_not_write(mini_release, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "acl-test-1.0.0.bin").write_text("the user's own image")
    proc = run_cli("--cache-dir", mini_release["cache"], "compose", mini_release["manifest"],
                   "-o", out, "--force")  # fmt: skip
    assert proc.returncode == 1
    assert f"error: {out / 'acl-test-1.0.0.bin'} exists and was not written by" in proc.stderr
    assert "load the release signing key" not in proc.stderr  # refused before any work
    assert (out / "acl-test-1.0.0.bin").read_text() == "the user's own image"


def test_bad_base_path_names_the_users_file_not_a_work_file(mini_release, tmp_path):
    notimg = tmp_path / "notimg.bin"
    notimg.write_text("not a disk image")
    proc = run_cli("--cache-dir", tmp_path / "cache", "compose", mini_release["manifest"],
                   "-o", tmp_path / "out", "--base-path", notimg)  # fmt: skip
    assert proc.returncode == 1
    error = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error: "))
    assert error.startswith(f"error: base {notimg}: no GPT found"), proc.stderr
    assert ".tmp" not in proc.stderr and "disk.bin" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_altered_usr_base_is_refused(release_key, tmp_path):
    mini = build_mini_flatcar(tmp_path / "base.bin", tmp_path / "work")
    part = gpt.read(mini.path).by_label("USR-A")
    flip(mini.path, part.offset + 0x10000 + 3 * 4096 + 5)  # inside the filesystem
    key, cert = release_key
    m = write_manifest(
        tmp_path / "m.yaml", base={"path": mini.path}, key=key, cert=cert, outputs=("raw",)
    )
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert "does not match the root hash in flatcar/vmlinuz-a" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_kernel_without_root_hash_is_refused(release_key, tmp_path):
    mini = build_mini_flatcar(tmp_path / "base.bin", tmp_path / "work")
    disk = gpt.read(mini.path)
    esp = usr.esp(disk)
    kernel = tmp_path / "vmlinuz-a"
    kernel.write_bytes(b"\0" * 4096)
    subprocess.run(["mcopy", "-o", "-i", f"{mini.path}@@{esp.offset}", kernel, "::/flatcar/vmlinuz-a"],  # noqa: E501
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
    key, cert = release_key
    m = write_manifest(
        tmp_path / "m.yaml", base={"path": mini.path}, key=key, cert=cert, outputs=("raw",)
    )
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert "carries no /usr root hash at byte 64" in proc.stderr


# --------------------------------------------------------------------------- testbed


@pytest.mark.integration
def test_testbed_compose_inspect_verify(composed_release, testbed_image, tmp_path):
    rel = composed_release.release
    parts = {}
    for which, path in (("base", testbed_image), ("new", composed_release.raw)):
        parts[which] = tmp_path / f"{which}-oem.img"
        gpt.copy_out(path, gpt.read(path).by_label("OEM"), parts[which])
    assert_oem_kept(parts["base"], parts["new"])
    assert gpt.read(composed_release.raw).guid == gpt.read(testbed_image).guid
    assert [s["name"] for s in rel["sysexts"]] == list(PRODUCT_SYSEXTS)
    assert rel["base"]["signature_verified"] is True
    assert any(a["name"] == "flatcar_production_image.bin.bz2" and len(a["sha512"]) == 128
               for a in rel["base"]["artifacts"])  # fmt: skip
    # release.json says which checks vouched for each base file (fetch's default chain).
    assert {tuple(a["checks"]) for a in rel["base"]["artifacts"]} == {
        ("digests-signature", "sha512")}  # fmt: skip
    r = json.loads(run_cli("--json", "inspect", composed_release.raw, check=True).stdout)
    assert r["usr"]["verified"] is True
    assert r["flatcar_version"] == rel["os_release"].get("VERSION")
    assert {s["name"]: (s["signed"], s["status"]) for s in r["sysexts"]} == {
        name: (True, "ok") for name in PRODUCT_SYSEXTS
    }
    assert r["oem"]["configs"]["base/base.ign"]["sha256"] == rel["ignition"]["sha256"]
    proc = verify(composed_release.out_dir, composed_release.cert, check=True)
    assert json.loads(proc.stdout)["ok"] is True


@pytest.mark.integration
def test_testbed_flipped_sysext_byte_fails_verify(composed_release):
    img = composed_release.raw
    off = oem_file_offset(img, "extensions/azure-base/azure-base-1.1.0.raw") + 4096
    flip(img, off)
    try:
        proc = verify(composed_release.out_dir, composed_release.cert, check=False)
    finally:
        flip(img, off)  # the session fixture is shared: restore it
    assert (
        "sysext azure-base (/oem/extensions/azure-base/azure-base-1.1.0.raw): sha256" in proc.stderr
    )
    assert f"{img.name}: sha256" in proc.stderr


@pytest.mark.integration
def test_testbed_altered_usr_refused(composed_release, tmp_path):
    """The testbed base with one byte of /usr changed (as a local image) is refused."""
    cache = Path(composed_release.out_dir).parent.parent / "compose-cache" / "compose" / "base"
    cached = next(cache.glob("*/image.bin"))
    base = tmp_path / "flatcar_production_image.bin"
    copy_sparse(cached, base)
    os.chmod(base, 0o644)
    flip(base, gpt.read(base).by_label("USR-A").offset + 0x10000 + 64 * 4096)
    m = write_manifest(tmp_path / "m.yaml", base={"path": base}, key=composed_release.key,
                       cert=composed_release.cert, outputs=("raw",))  # fmt: skip
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert "does not match the root hash" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_kill_leaves_no_output(mini_release, tmp_path):
    """SIGTERM mid-compose: exit 130, no OUT_DIR and no temporary directory left behind."""
    import signal
    import sys

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "acl_compose", "--cache-dir", str(tmp_path / "cache"), "compose",
         str(mini_release["manifest"]), "-o", str(out)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stderr:
        if "decompress the base" in line:  # the work image is being written now
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "error: interrupted" in rest
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # nor in the cache


def test_prebuilt_sysext_and_qcow2_only(mini_flatcar, release_key, tmp_path):
    """A prebuilt signed .raw is placed like a bundle; verify works from a qcow2 alone."""
    key, cert = release_key
    run_cli("sysext", "build", BUNDLES[1], "-o", tmp_path / "built", "--key", key, "--cert", cert,
            check=True)  # fmt: skip
    prebuilt = tmp_path / "built" / "aks-node.raw"
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=[prebuilt], outputs=("qcow2",))  # fmt: skip
    rel = json.loads(compose(m, tmp_path / "out", tmp_path / "cache").stdout)
    assert [(s["name"], s["version"], s["signed"]) for s in rel["sysexts"]] == [
        ("aks-node", "1.0.0", True)
    ]
    assert [o["file"] for o in rel["outputs"]] == ["acl-test-1.0.0.qcow2"]
    proc = verify(tmp_path / "out", cert, check=True)
    assert {c["check"] for c in json.loads(proc.stdout)["checks"]} >= {
        "sysext aks-node",
        "/usr verity",
    }


def test_azure_image_as_base_keeps_its_oem(mini_release, release_key, tmp_path):
    """A base that already is an Azure image (here the .vhd composed above, read as raw, as
    flatcar_production_azure_image.vhd would be) keeps its OEM content for azure outputs;
    a qemu output then needs oem-qemu.raw, and says where it looked."""
    key, cert = release_key
    base = tmp_path / "base"
    base.mkdir()
    os.link(mini_release["out"] / "acl-test-1.0.0.vhd", base / "azure.vhd")
    m = write_manifest(tmp_path / "m.yaml", base={"path": base / "azure.vhd"}, key=key,
                       cert=cert, outputs=("vhd",))  # fmt: skip
    rel = json.loads(compose(m, tmp_path / "out", tmp_path / "cache").stdout)
    was = mini_release["release"]["platforms"]["azure"]
    now = rel["platforms"]["azure"]
    assert now["source"] == "base image"
    assert now["sysext"]["sha256"] == was["sysext"]["sha256"]
    assert now["oem_release"] == was["oem_release"]
    assert verify(tmp_path / "out", cert, check=True).returncode == 0
    m2 = write_manifest(tmp_path / "m2.yaml", base={"path": base / "azure.vhd"}, key=key,
                        cert=cert, outputs=("qcow2",))  # fmt: skip
    proc = compose(m2, tmp_path / "out2", tmp_path / "cache", check=False)
    assert proc.returncode == 1 and not (tmp_path / "out2").exists()
    assert "error: platform qemu: the base" in proc.stderr
    assert "(oem-release ID is azure, not qemu)" in proc.stderr
    assert "no oem-qemu.raw beside it" in proc.stderr


def test_oem_sysext_the_base_does_not_trust_is_refused(release_key, tmp_path):
    """A signed OEM sysext that no certificate of the base's /usr/lib/verity.d accepts would
    never be merged by systemd-sysext: compose refuses it before writing anything."""
    from tests.fixtures_compose import build_oem_sysext

    key, cert = release_key
    mini = build_mini_flatcar(tmp_path / "base" / "flatcar_production_image.bin",
                              tmp_path / "work", oem_platforms=("qemu",))  # fmt: skip
    build_oem_sysext(tmp_path / "base", tmp_path / "w2", "azure", "9999.2.0", key, cert)
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini.path}, key=key, cert=cert,
                       outputs=("vhd",))  # fmt: skip
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    assert "platform azure: oem-azure.raw is signed, but by no certificate the base trusts" in (
        proc.stderr
    )
    # Pinned to another OS version: systemd-sysext would refuse it too.
    (tmp_path / "base" / "oem-azure.raw").unlink()
    build_oem_sysext(tmp_path / "base", tmp_path / "w3", "azure", "1.2.3")
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert "platform azure: oem-azure.raw would not be merged" in proc.stderr
    assert "VERSION_ID" in proc.stderr


def test_legacy_platform_oem_is_kept(release_key, tmp_path):
    """A base from before OEM sysexts (Flatcar < 3760) whose OEM partition is already the
    platform's (oem-release and grub.cfg say qemu) is kept as it is, and verify accepts it."""
    key, cert = release_key
    mini = build_mini_flatcar(tmp_path / "base" / "flatcar_production_image.bin",
                              tmp_path / "work", oem_platforms=(), legacy_oem="qemu")  # fmt: skip
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini.path}, key=key, cert=cert,
                       ignition=CONFIGS[:1], outputs=("raw",))  # fmt: skip
    rel = json.loads(compose(m, tmp_path / "out", tmp_path / "cache").stdout)
    p = rel["platforms"]["qemu"]
    assert p["sysext"] is None and p["source"].startswith("base image (OEM files without")
    assert p["oem_release"] == {"ID": "qemu", "VERSION_ID": "0.0.1"}
    checks = {
        c["check"]: c for c in json.loads(verify(tmp_path / "out", cert, True).stdout)["checks"]
    }
    assert checks["platform qemu"]["ok"] and "no OEM sysext" in checks["platform qemu"]["detail"]
    assert checks["ignition (qemu)"]["ok"]
    # An azure output of the same base has nowhere to get its OEM content from.
    m2 = write_manifest(tmp_path / "m2.yaml", base={"path": mini.path}, key=key, cert=cert,
                        outputs=("vhd",))  # fmt: skip
    proc = compose(m2, tmp_path / "out2", tmp_path / "cache", check=False)
    assert "error: platform azure: the base" in proc.stderr and "no oem-azure.raw" in proc.stderr


def test_compose_warns_when_a_product_sysext_shadows_the_oem(mini_flatcar, release_key, tmp_path):
    key, cert = release_key
    bundle = tmp_path / "shadow"
    bundle.mkdir()
    (bundle / "sysext.yaml").write_text(
        "name: shadow\nversion: '1'\nfiles:\n"
        "  - {path: /usr/share/oem-azure/README, inline: 'mine'}\n"  # the mini oem-azure's file
    )
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=[bundle], outputs=("raw", "vhd"))  # fmt: skip
    proc = compose(m, tmp_path / "out", tmp_path / "cache")
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: platform")]
    assert warnings == [
        "warning: platform azure: /usr/share/oem-azure/README is in shadow.raw and "
        "oem-azure.raw: the merged /usr shows one of them, hiding the other"
    ]


def test_ext2_usr_base_composes_inspects_and_verifies(release_key, tmp_path):
    """Flatcar before 3815 had an ext2 /usr: read (debugfs) and verified without mounting."""
    key, cert = release_key
    mini = build_mini_flatcar(tmp_path / "base.bin", tmp_path / "work", usr_fs="ext2")
    part = tmp_path / "usr.img"
    gpt.copy_out(mini.path, gpt.read(mini.path).by_label("USR-A"), part)
    assert usr.filesystem(part) == "ext2"
    assert usr.read_os_release(part)[1]["VERSION_ID"] == "9999.2.0"
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini.path}, key=key, cert=cert,
                       sysexts=BUNDLES[:1], outputs=("raw",))  # fmt: skip
    rel = json.loads(compose(m, tmp_path / "out", tmp_path / "cache").stdout)
    assert rel["usr"]["root_hash"] == mini.root_hash
    assert rel["os_release"]["ID"] == "flatcar"
    report = json.loads(run_cli("--json", "inspect", tmp_path / "out" / "acl-test-1.0.0.bin",
                                check=True).stdout)  # fmt: skip
    assert report["usr"]["verified"] is True and report["usr"]["filesystem"] == "ext2"
    assert report["os_release"]["VERSION_ID"] == "9999.2.0"
    assert json.loads(verify(tmp_path / "out", cert, check=True).stdout)["ok"] is True


@pytest.mark.parametrize("name", ["oem-azure", "flatcar-podman"])
def test_reserved_sysext_names_are_refused(mini_flatcar, release_key, tmp_path, name):
    """Flatcar's initrd owns /etc/extensions/oem-* and flatcar-*: such a sysext would vanish."""
    bundle = tmp_path / name
    shutil.copytree(BUNDLES[0], bundle)
    text = (bundle / "sysext.yaml").read_text().replace("name: azure-base", f"name: {name}")
    (bundle / "sysext.yaml").write_text(text)
    key, cert = release_key
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=[bundle], outputs=("raw",))  # fmt: skip
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert f"sysext name {name!r} is reserved" in proc.stderr and "hint:" in proc.stderr
    assert "write outputs" not in proc.stderr
    assert not list((tmp_path / "cache").glob("compose/sysext/*"))  # refused before building
    assert not (tmp_path / "out").exists()


def test_config_claiming_a_sysext_link_is_refused(mini_flatcar, release_key, tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n"
        "    - path: /etc/extensions/azure-base.raw\n      target: /opt/x.raw\n"
    )
    key, cert = release_key
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=BUNDLES[:1], ignition=[cfg], outputs=("raw",))  # fmt: skip
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert "/etc/extensions/azure-base.raw is written by compose" in proc.stderr
    assert not (tmp_path / "out").exists()
