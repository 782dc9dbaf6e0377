"""The testbed release: layout, verity, signatures, serving, fetching, booting.

Unit tests (unmarked) check the pure pieces and `testbed serve`. Integration tests share one
cached build (tests/fixtures_testbed.py) and boot it twice: once healthy, once corrupted.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from acl_compose.image import gpt
from acl_compose.testbed import disk, sign
from tests.conftest import REPO, run_cli

# The package exports the build() function under the same name as the module.
tb = importlib.import_module("acl_compose.testbed.build")
VERSION = tb.DEFAULT_VERSION
ARTIFACTS = (
    "flatcar_production_image.bin.bz2",
    "flatcar_production_image.vmlinuz",
    "flatcar_production_image_packages.txt",
    "flatcar_production_image_contents.txt",
    "version.txt",
)


# --- unit tests -------------------------------------------------------------------------------


def test_version_checked() -> None:
    assert tb.check_version("9999.2.0") == (9999, 2, 0)
    with pytest.raises(Exception, match="not a Flatcar version"):
        tb.check_version("9999.2")


def test_version_txt_has_flatcar_keys() -> None:
    text = tb.version_txt("4081.2.1", "b1")
    keys = dict(line.split("=", 1) for line in text.splitlines())
    assert keys["FLATCAR_VERSION"] == "4081.2.1"
    assert (keys["FLATCAR_BUILD"], keys["FLATCAR_BRANCH"], keys["FLATCAR_PATCH"]) == (
        "4081", "2", "1",
    )  # fmt: skip
    assert keys["FLATCAR_BUILD_ID"] == '"b1"'


def test_cache_key_follows_inputs() -> None:
    a = tb.cache_key("9999.2.0", "F" * 40)
    assert a == tb.cache_key("9999.2.0", "F" * 40)
    assert a != tb.cache_key("9999.2.1", "F" * 40)
    assert a != tb.cache_key("9999.2.0", "E" * 40)


def test_layout_is_flatcar_shaped() -> None:
    parts = disk.partitions()
    assert [p.number for p in parts] == [1, 2, 3, 4, 6, 7, 9]
    for p in parts:
        assert p.offset % disk.ALIGN == 0, p
    assert disk.USR_HASH_OFFSET == 1065345024  # Flatcar's --hash-offset
    assert disk.USR_HASH_OFFSET < disk.part("USR-A").size


def test_kernel_hash_round_trip(tmp_path: Path) -> None:
    k = tmp_path / "vmlinuz"
    k.write_bytes(bytes(range(256)) * 4)
    disk.write_kernel_hash(k, "ab" * 32)
    assert disk.read_kernel_hash(k) == "ab" * 32
    assert k.read_bytes()[:64] == bytes(range(64))  # nothing else touched
    with pytest.raises(ValueError):
        disk.write_kernel_hash(k, "abc")


def test_grub_cfg_carries_hash_and_usr() -> None:
    cfg = tb._grub_cfg("9999.2.0", "cd" * 32).decode()
    assert not re.search(r"@[A-Z_]+@", cfg)
    assert 'set usrhash="' + "cd" * 32 + '"' in cfg
    assert "verity.usr=PARTUUID=$usr_partuuid" in cfg
    assert 'usr_partuuid="7130c94a-213a-4e5a-8e26-6cce9662f132"' in cfg
    assert "mount.usr=/dev/mapper/usr" in cfg and "mount.usrflags=ro" in cfg
    # Ignition only while the first-boot flag file exists on the ESP.
    assert re.search(r"if \[ -f \(\$root\)/flatcar/first_boot \]; then\s+set first_boot=", cfg)


def test_digests_format(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    text = sign.digests(f)
    assert text.splitlines() == [
        "# MD5 HASH",
        f"{hashlib.md5(b'hello').hexdigest()}  a.bin",
        "# SHA1 HASH",
        f"{hashlib.sha1(b'hello').hexdigest()}  a.bin",
        "# SHA512 HASH",
        f"{hashlib.sha512(b'hello').hexdigest()}  a.bin",
    ]


def test_build_refuses_bad_version(tmp_path: Path) -> None:
    proc = run_cli("--cache-dir", tmp_path, "testbed", "build", "--version", "latest", check=False)
    assert "not a Flatcar version" in proc.stderr
    assert not (tmp_path / "testbed").exists() or not any(
        p.name != ".lock" for p in (tmp_path / "testbed").iterdir()
    )


def test_build_output_folder_rule_is_checked_before_building(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    cache = tmp_path / "cache"
    proc = run_cli("--cache-dir", cache, "testbed", "build", "-o", mine)
    assert proc.returncode == 1 and f"error: output folder {mine} is not empty" in proc.stderr
    assert not cache.exists()  # refused before any work
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_build_says_it_needs_root() -> None:
    d = Path(tempfile.mkdtemp(prefix="acl-testbed-nonroot-"))
    try:
        os.chmod(d, 0o777)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "acl_compose", "--cache-dir", d, "testbed", "build"],
            capture_output=True, text=True, cwd=REPO, env={**os.environ, "HOME": str(d)},
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert "needs root" in proc.stderr and "hint:" in proc.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_serve_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "current").mkdir()
    (tmp_path / "current" / "version.txt").write_text("FLATCAR_VERSION=1.2.3\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "acl_compose", "testbed", "serve", tmp_path, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        url = re.search(r"(http://\S+/)", line)
        assert url, line
        body = urllib.request.urlopen(url[1] + "current/version.txt", timeout=10).read()
        assert body == b"FLATCAR_VERSION=1.2.3\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- integration: the built release -------------------------------------------------------------


@pytest.mark.integration
def test_build_report(testbed_build: dict[str, Any], tmp_path: Path) -> None:
    """Cold build time comes from build.json (the fixture may have hit the cache)."""
    timings = testbed_build["timings"]
    print(f"\ntestbed cold build {sum(timings.values()):.0f}s: {timings}; "
          f"this run {testbed_build['seconds']}s (cached={testbed_build['cached']})")  # fmt: skip
    assert set(testbed_build["artifacts"]) == set(ARTIFACTS)
    # A warm build is a cache hit and takes seconds.
    t = time.monotonic()
    proc = run_cli("--json", "--cache-dir", _cache(testbed_build), "testbed", "build", check=True)
    again = json.loads(proc.stdout)
    assert again["cached"] and again["root_hash"] == testbed_build["root_hash"]
    assert time.monotonic() - t < 30
    # -o copies the release tree: current/version.txt must resolve there too.
    out = tmp_path / "rel"
    run_cli("--cache-dir", _cache(testbed_build), "testbed", "build", "-o", out, check=True)
    release = Path(testbed_build["release_dir"])
    assert (out / "current" / "version.txt").read_text() == (
        release / VERSION / "version.txt"
    ).read_text()
    assert (out / "testbed-signing-key.asc").read_bytes() == (
        release / "testbed-signing-key.asc"
    ).read_bytes()


def _cache(info: dict[str, Any]) -> Path:
    return Path(info["cache_entry"]).parent.parent


@pytest.mark.integration
def test_gpt_matches_flatcar_layout(testbed_image: Path, reference: Path) -> None:
    layout = json.loads((reference / "flatcar-disk_layout.json").read_text())["layouts"]["base"]
    types = {
        "efi": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        "bios": "21686148-6449-6E6F-744E-656564454649",
        "flatcar-rootfs": "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
        "data": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        "flatcar-reserved": "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0",
        "flatcar-resize": "3884DD41-8582-4404-B9A8-E9B84F2DF50E",
    }
    listing = subprocess.run(["sgdisk", "-p", testbed_image], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    numbers = [int(m[1]) for m in re.finditer(r"^\s+(\d+)\s+\d+\s+\d+", listing, re.M)]
    expected = sorted(int(n) for n, p in layout.items() if p.get("type") != "blank")
    assert numbers == expected == [1, 2, 3, 4, 6, 7, 9]
    for n in numbers:
        want = layout[str(n)]
        info = subprocess.run(["sgdisk", "-i", str(n), testbed_image], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
        assert f"Partition name: '{want['label']}'" in info
        assert re.search(rf"Partition GUID code: {types[want['type']]}\b", info), info
        if "uuid" in want:
            assert f"Partition unique GUID: {want['uuid'].upper()}" in info
        first = int(re.search(r"First sector: (\d+)", info)[1])
        assert first % 4096 == 0  # Flatcar's 2 MiB alignment


@pytest.mark.integration
def test_usr_verity_with_hash_from_kernel(testbed_release: Path, testbed_image: Path,
                                          tmp_path: Path) -> None:  # fmt: skip
    kernel = testbed_release / VERSION / "flatcar_production_image.vmlinuz"
    with open(kernel, "rb") as f:
        f.seek(64)
        root_hash = f.read(64).decode()
    assert re.fullmatch(r"[0-9a-f]{64}", root_hash)
    usr = tmp_path / "usr-a.img"
    gpt.copy_out(testbed_image, gpt.read(testbed_image).by_label("USR-A"), usr)
    verify = ["veritysetup", "verify", f"--hash-offset={disk.USR_HASH_OFFSET}", usr, usr]
    subprocess.run([*verify, root_hash], check=True, capture_output=True)
    dump = subprocess.run(["veritysetup", "dump", f"--hash-offset={disk.USR_HASH_OFFSET}", usr],
                          check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert re.search(r"Data blocks:\s+260094", dump)
    # One flipped byte inside the filesystem and veritysetup refuses it.
    with open(usr, "r+b") as f:
        f.seek(65536 + 64)  # the btrfs superblock magic
        b = f.read(1)
        f.seek(65536 + 64)
        f.write(bytes([b[0] ^ 0xFF]))
    bad = subprocess.run([*verify, root_hash], capture_output=True, text=True)
    assert bad.returncode != 0


@pytest.mark.integration
def test_release_tree_is_signed(testbed_release: Path, testbed_key: Path, tmp_path: Path,
                                testbed_fingerprint: str) -> None:  # fmt: skip
    assert (
        (testbed_release / "current" / "version.txt")
        .read_text()
        .startswith(f"FLATCAR_BUILD={VERSION.split('.')[0]}\n")
    )
    keyring = tmp_path / "k.gpg"
    subprocess.run(["gpg", "--batch", "--dearmor", "-o", keyring, testbed_key], check=True)
    vdir = testbed_release / VERSION
    for name in ARTIFACTS:
        f = vdir / name
        for sig, data in ((f"{name}.sig", name), (f"{name}.DIGESTS.sig", f"{name}.DIGESTS")):
            out = subprocess.run(["gpgv", "--keyring", keyring, vdir / sig, vdir / data],
                                 capture_output=True, text=True)  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert testbed_fingerprint[-16:] in out.stderr.replace(" ", "")
        out = subprocess.run(["gpgv", "--keyring", keyring, vdir / f"{name}.DIGESTS.asc"],
                             capture_output=True)  # fmt: skip
        assert out.returncode == 0
        digests = (vdir / f"{name}.DIGESTS").read_text()
        sha512 = hashlib.sha512(f.read_bytes()).hexdigest()
        assert f"# SHA512 HASH\n{sha512}  {name}\n" in digests
    pkgs = (vdir / "flatcar_production_image_packages.txt").read_text()
    assert "debian/ignition-" in pkgs and "debian/linux-image-cloud-amd64-" in pkgs
    contents = (vdir / "flatcar_production_image_contents.txt").read_text()
    for module in ("erofs.ko", "squashfs.ko", "overlay.ko", "dm-verity.ko"):
        assert f"/{module}" in contents, module
    assert "/usr/bin/systemd-sysext" in contents
    for gone in ("./usr/bin/apt ", "./usr/bin/dpkg ", "./var/lib/dpkg "):
        assert gone not in contents
    # A tampered artifact fails its signature.
    bad = tmp_path / "version.txt"
    bad.write_text((vdir / "version.txt").read_text() + "X=1\n")
    out = subprocess.run(["gpgv", "--keyring", keyring, vdir / "version.txt.sig", bad],
                         capture_output=True)  # fmt: skip
    assert out.returncode != 0


@pytest.mark.integration
def test_fetch_through_serve(testbed_server: str, testbed_key: Path, testbed_fingerprint: str,
                             testbed_release: Path, tmp_path: Path) -> None:  # fmt: skip
    common = ["--channel", "stable", "--base-url", testbed_server, "--release", "current",
              "--artifact", "flatcar_production_image.vmlinuz"]  # fmt: skip
    proc = run_cli("--json", "--cache-dir", tmp_path / "c", "fetch", *common,
                   "--keyring", testbed_key, "--trusted-key", testbed_fingerprint,
                   "-o", tmp_path / "out", check=True)  # fmt: skip
    assert VERSION in proc.stdout
    got = tmp_path / "out" / "flatcar_production_image.vmlinuz"
    assert got.read_bytes() == (testbed_release / VERSION / got.name).read_bytes()
    # Flatcar's own key is trusted by default: the testbed's signatures must be refused.
    bad = run_cli("--cache-dir", tmp_path / "c2", "fetch", *common, "--keyring", testbed_key,
                  check=False)  # fmt: skip
    assert bad.returncode == 1 and "error:" in bad.stderr


# --- integration: boots (two in total) -----------------------------------------------------------


@pytest.mark.integration
def test_boot_with_ignition(testbed_image: Path, tmp_path: Path) -> None:
    """Ignition by fw_cfg (user config) and from OEM base/base.ign; SSH; /usr via dm-verity."""
    from acl_compose.boot.qemu import VM

    # A base config baked into OEM base/base.ign must be merged under the fw_cfg user config.
    image = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", testbed_image, image], check=True)
    oem = tmp_path / "oem"
    (oem / "base").mkdir(parents=True)
    (oem / "oem-release").write_text("ID=qemu\n")
    (oem / "grub.cfg").write_text('set oem_id="qemu"\n')
    base = {
        "ignition": {"version": "3.3.0"},
        "storage": {"files": [{"path": "/etc/testbed-base", "mode": 420,
                               "contents": {"source": "data:,from%20oem%20base"}}]},
    }  # fmt: skip
    (oem / "base" / "base.ign").write_text(json.dumps(base))
    oem_img = tmp_path / "oem.img"
    with open(oem_img, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-L", "OEM", "--rootdir", oem, oem_img], check=True)
    gpt.copy_in(image, gpt.read(image).by_label("OEM"), oem_img)
    config = {
        "ignition": {"version": "3.3.0"},
        "storage": {"files": [{"path": "/etc/testbed-probe", "mode": 420,
                               "contents": {"source": "data:,hello%20from%20ignition"}}]},
    }  # fmt: skip
    with VM(image, accel="tcg", ignition=config, name="testbed",
            console_log=tmp_path / "console.log") as vm:  # fmt: skip
        result = vm.wait_ssh()
        print(f"\ntestbed boot to SSH under TCG: {result.seconds:.0f}s ({result.state})")
        assert result.state == "running", result.failed_units

        def sh(cmd: str) -> str:
            proc = vm.ssh(cmd, timeout=60)
            assert proc.returncode == 0, (cmd, proc.stderr)
            return proc.stdout.decode()

        assert sh("cat /etc/testbed-probe") == "hello from ignition"
        assert sh("cat /etc/testbed-base") == "from oem base"
        mnt = sh("findmnt -no SOURCE,OPTIONS /usr").split()
        assert mnt[0].startswith("/dev/mapper/usr") or mnt[0].startswith("/dev/dm-")
        assert mnt[1].split(",")[0] == "ro"
        assert " verity " in sh("sudo dmsetup table usr")
        assert "ID=flatcar" in sh("cat /etc/os-release")
        assert sh("for t in apt apt-get dpkg; do command -v $t; done; ls -d /var/lib/dpkg "
                  "2>/dev/null; true") == ""  # fmt: skip
        sh("sudo modprobe -a erofs squashfs overlay dm_verity && systemd-sysext --version")
        # The first-boot flag is gone from the ESP, so the next boot skips Ignition.
        sh("sudo mount -t vfat /dev/disk/by-label/EFI-SYSTEM /mnt && "
           "test ! -e /mnt/flatcar/first_boot && test -e /mnt/flatcar/vmlinuz-a")  # fmt: skip


@pytest.mark.integration
def test_corrupted_usr_reports_verity_error(testbed_image: Path, tmp_path: Path) -> None:
    from acl_compose.boot.qemu import VM

    overlay = tmp_path / "corrupt.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", testbed_image, "-F", "raw",
                    overlay], check=True)  # fmt: skip
    usr = gpt.read(testbed_image).by_label("USR-A")
    offset = usr.offset + 65536 + 64  # inside the btrfs superblock, read at mount
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x41 {offset} 1", overlay],
                   check=True, capture_output=True)  # fmt: skip
    console = tmp_path / "console.log"
    pattern = re.compile(rb"device-mapper: verity: .*(data|metadata) block \d+ is corrupted")
    with VM(overlay, accel="tcg", ssh=False, name="testbed-corrupt", console_log=console) as vm:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            text = console.read_bytes() if console.exists() else b""
            if pattern.search(text):
                break
            assert vm.alive(), vm.console_tail()
            time.sleep(2)
        else:
            pytest.fail(f"no dm-verity error on the console:\n{vm.console_tail()}")
    assert b"Startup finished" not in console.read_bytes()
