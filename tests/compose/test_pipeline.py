"""compose end to end: the signed release it writes, what it puts in the image, warm caches,
and the base images and inputs it refuses before writing anything.

Fast tests compose the small Flatcar-shaped image from tests/fixtures_compose.py (a local
`base.path`, composed once as `mini_release` in tests/compose/conftest.py) with the product's
real bundles and Ignition configs; integration tests compose the testbed release served on
loopback (the session fixture `composed_release`). What `verify`, `inspect`, the platforms'
OEM content, sysext placement and the output folder do with those releases is tested in
test_verification.py, test_inspect.py, test_platform.py, test_oem_content.py,
test_placement.py and test_release_dir.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from acl_compose.image import fs, gpt, usr
from acl_compose.image.outputs import copy_sparse
from tests import btrfs_tools
from tests.compose.runs import compose, flip, verify
from tests.conftest import run_cli
from tests.fixtures_compose import BUNDLES, PRODUCT_SYSEXTS, build_mini_flatcar, write_manifest


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


@pytest.mark.parametrize(
    "step", ["decompress the base", "verify the base /usr", "build and check", "bake"]
)
def test_kill_leaves_no_output(mini_release, tmp_path, step):
    """SIGTERM mid-compose, in each of these steps: exit 130, no OUT_DIR and no temporary
    file or folder left behind, in the cache neither.

    No sleeping: the step's first line on stderr is the cue, and the test then fills the
    stderr pipe, so compose blocks at its next line at the latest and cannot finish (or
    leave the step) before the signal lands, however loaded the machine."""
    import signal
    import sys

    out = tmp_path / "out"
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "acl_compose", "--cache-dir", str(tmp_path / "cache"), "compose",
         str(mini_release["manifest"]), "-o", str(out)],
        stderr=w,
    )  # fmt: skip
    with os.fdopen(r, "rb", buffering=0) as err:
        try:
            lines = iter(err.readline, b"")
            if not any(line.startswith(f"» {step}".encode()) for line in lines):
                raise AssertionError(f"compose never started {step!r}")
            os.set_blocking(w, False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(w, b"\0" * 4096)
            proc.send_signal(signal.SIGTERM)
        finally:
            os.close(w)
        rest = err.read().replace(b"\0", b"").decode()  # unblocks compose
    assert proc.wait(timeout=60) == 130, rest
    assert "error: interrupted" in rest
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []
    left = [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".")]
    left += [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith((".tmp", ".part"))]
    assert not left  # no temp file, no scratch folder


def test_interrupt_while_caching_a_sysext_leaves_no_half_copy(mini_release, tmp_path, monkeypatch):
    """Ctrl-C while the built sysext is copied into compose's cache (deterministic: raised as
    the copy ends): the `.NAME.PID.tmp` copy goes with it (it stayed in the cache before)."""
    from acl_compose.compose import compose as compose_in_process
    from acl_compose.compose import load_manifest

    real = shutil.copyfile

    def copy_then_interrupt(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        if str(dst).endswith(".tmp"):
            raise KeyboardInterrupt
        return dst

    monkeypatch.setattr(shutil, "copyfile", copy_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        compose_in_process(load_manifest(mini_release["manifest"]), tmp_path / "out",
                           tmp_path / "cache")  # fmt: skip
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


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
