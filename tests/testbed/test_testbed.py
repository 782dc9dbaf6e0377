"""The testbed release: layout, verity, signatures, serving, fetching, booting.

Unit tests (unmarked) check the pure pieces and `testbed serve`. Integration tests share one
cached build (tests/fixtures_testbed.py) and boot it twice: once healthy, once corrupted.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from acl_compose.image import biosboot, firmware, fs, gpt
from acl_compose.testbed import disk, esp, guest, sign
from acl_compose.testbed import oem as tb_oem
from tests import btrfs_tools
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
    "oem-azure.raw",  # Flatcar's Azure OEM sysext, pinned to the release (testbed/oem_azure.py)
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


TYPE_GUIDS = {
    "efi": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "bios": "21686148-6449-6E6F-744E-656564454649",
    "flatcar-rootfs": "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
    "data": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    "flatcar-reserved": "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0",
    "flatcar-resize": "3884DD41-8582-4404-B9A8-E9B84F2DF50E",
}


def reference_placement(layout_file: Path) -> tuple[dict[int, dict], int]:
    """disk_util's LoadPartitionConfig, re-done from its description: each non-blank
    partition aligned to part_alignment after the previous one, from sector 34; the disk
    rounded up to disk_alignment after 34 more sectors. Returns ({number: part}, sectors)."""
    doc = json.loads(layout_file.read_text())
    meta, base = doc["metadata"], doc["layouts"]["base"]
    align, lba, parts = int(meta["part_alignment"]), 34, {}
    for number in sorted(base, key=int):
        p = dict(base[number])
        if p["type"] == "blank":
            continue
        lba = -(-lba // align) * align
        p["first"], p["blocks"] = lba, int(p["blocks"])
        parts[int(number)] = p
        lba += p["blocks"]
    disk_align = int(meta["disk_alignment"])
    return parts, -(-(lba + 34) // disk_align) * disk_align


def test_layout_is_flatcar_current(reference: Path) -> None:
    """The current flavour's GPT is the reference disk_layout.json's, partition by partition."""
    want, sectors = reference_placement(reference / "flatcar-disk_layout.json")
    parts = disk.partitions()
    assert [p.number for p in parts] == sorted(want) == [1, 2, 3, 4, 6, 7, 9]
    for p in parts:
        w = want[p.number]
        assert (p.name, p.first_lba, p.last_lba - p.first_lba + 1) == (
            w["label"], w["first"], w["blocks"]), p  # fmt: skip
        assert p.type_guid == TYPE_GUIDS[w["type"]], p
        if "uuid" in w:
            assert p.guid == w["uuid"].upper(), p
    assert disk.disk_size() == sectors * 512
    assert disk.DISK_GUID == "00000000-0000-0000-0000-000000000001"
    assert disk.USR_HASH_OFFSET == 1065345024  # Flatcar's --hash-offset
    assert disk.USR_HASH_OFFSET < disk.part("USR-A").size
    # disk_util gives the "prioritize" partition priority 1 and the successful flag.
    assert disk.part("USR-A").attributes == (1 << 48) | (1 << 56)


def test_old_layout_is_flatcar_before_3815() -> None:
    """Sizes of disk_layout.json before flatcar/scripts 07cc8512 (2025-09: 128 MiB ESP and
    OEM, 1 GiB USR, ROOT 4427776 sectors; the ESP has the hybrid/legacy-boot feature)."""
    old = disk.FLAVORS["old"]
    sizes = {p.name: p.last_lba - p.first_lba + 1 for p in disk.partitions(old)}
    assert sizes == {"EFI-SYSTEM": 262144, "BIOS-BOOT": 4096, "USR-A": 2097152,
                     "USR-B": 2097152, "OEM": 262144, "OEM-CONFIG": 131072,
                     "ROOT": 4427776}  # fmt: skip
    assert old.part("EFI-SYSTEM").attributes == 1 << 2 and old.usr_fs == "ext2"
    assert all(p.first_lba % 4096 == 0 for p in disk.partitions(old))


def test_kernel_hash_round_trip(tmp_path: Path) -> None:
    k = tmp_path / "vmlinuz"
    k.write_bytes(bytes(range(256)) * 4)
    disk.write_kernel_hash(k, "ab" * 32)
    assert disk.read_kernel_hash(k) == "ab" * 32
    assert k.read_bytes()[:64] == bytes(range(64))  # nothing else touched
    with pytest.raises(ValueError):
        disk.write_kernel_hash(k, "abc")


def test_grub_cfg_is_flatcars_with_the_hash() -> None:
    """Flatcar's grub.cfg: no arguments of our own; the one departure is the baked hash."""
    cfg = esp.grub_cfg("cd" * 32).decode()
    assert not re.search(r"@[A-Z_]+@", cfg)
    assert 'set usrhash="' + "cd" * 32 + '"' in cfg
    assert 'set usr_uuid="7130c94a-213a-4e5a-8e26-6cce9662f132"' in cfg
    assert 'set gptprio_cmdline="mount.usr=/dev/mapper/usr verity.usr=PARTUUID=$usr_uuid"' in cfg
    assert (
        'set linux_cmdline="rootflags=rw mount.usrflags=ro consoleblank=0 $linux_root '
        '$linux_console $first_boot $randomize_disk_guid $oem $linux_append"'
    ) in cfg
    assert "linux $gptprio_kernel $gptprio_cmdline $linux_cmdline verity.usrhash=$usrhash" in cfg
    assert re.search(r'if \[ -f "\(\$root\)/flatcar/first_boot" \]; then\s+'
                     r'set first_boot="flatcar.first_boot=detected"', cfg)  # fmt: skip
    for made_up in ("ignition.firstboot", "ignition.platform.id", "verity.usrhashoffset",
                    "mount.usrfstype", "rootfstype"):  # fmt: skip
        assert made_up not in cfg
    tar = esp.memdisk_tar(cfg.encode(), 0)
    assert tar == esp.memdisk_tar(cfg.encode(), 0)  # reproducible
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        assert t.getnames() == ["grub.cfg"]
        assert t.extractfile("grub.cfg").read() == cfg.encode()


def test_root_tree_becomes_tmpfiles_lines(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("usr/bin", "var/lib/x", "home/core", "tmp", "etc", "boot"):
        (root / d).mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)
    (root / "bin").symlink_to("usr/bin")
    (root / "var/run").symlink_to("/run")
    (root / "var/lib/x/file").write_text("not recreated")
    os.chown(root / "home/core", 1000, 1000)
    lines = guest.baselayout(root).splitlines()
    assert "L /bin - - - - usr/bin" in lines
    assert "d /tmp 1777 0 0 -" in lines and "d /boot 0755 0 0 -" in lines
    assert "d /home/core 0755 1000 1000 -" in lines
    assert not [ln for ln in lines if ln.startswith(("d /usr", "d /etc", "d /var"))]
    var = guest.tmpfiles_lines(root, "var").splitlines()
    assert var == ["d /var 0755 0 0 -", "d /var/lib 0755 0 0 -", "L /var/run - - - - /run",
                   "d /var/lib/x 0755 0 0 -"]  # fmt: skip


def test_oem_sysext_bundle_is_flatcar_shaped(tmp_path: Path) -> None:
    from acl_compose.sysext import load_bundle

    bundle = load_bundle(tb_oem._bundle(tmp_path / "b", "9999.2.0"))
    assert bundle.name == "oem-qemu" and bundle.version == tb_oem.OEM_VERSION
    release = bundle.extension_release()
    assert release["ID"] == "flatcar" and release["VERSION_ID"] == "9999.2.0"
    assert "SYSEXT_LEVEL" not in release and release["EXTENSION_RELOAD_MANAGER"] == "1"
    assert tb_oem.oem_release().splitlines()[0] == "ID=qemu"


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


def test_serve_ctrl_c_right_after_the_url_still_exits_0(tmp_path: Path) -> None:
    """Ctrl-C as soon as the URL is printed, while serve still writes its stderr line: the
    stderr pipe is full, so that write blocks until the signal has landed (deterministic).
    Once the URL is out the server is up, and Ctrl-C is how it stops: exit 0 (it was 130
    when the signal beat serve to its `try`, the flaky case under load)."""
    import fcntl
    import select
    import threading

    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(w, False)
    while True:
        try:
            os.write(w, b"x")
        except BlockingIOError:
            break
    os.set_blocking(w, True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "acl_compose", "testbed", "serve", tmp_path, "--port", "0"],
        stdout=subprocess.PIPE, stderr=w, text=True, cwd=REPO,
    )  # fmt: skip
    os.close(w)
    drained: list[bytes] = []
    drain = threading.Thread(target=lambda: drained.append(_read_all(r)), daemon=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "serve printed no URL (blocked on a stderr write before it?)"
        assert "http://" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        drain.start()  # only now may the blocked stderr write go on
        code = proc.wait(timeout=30)
        drain.join(timeout=10)
        assert code == 0, b"".join(drained)[4096:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if drain.ident is None:  # never started: the read end is still ours to close
            os.close(r)
        drain.join(timeout=10)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


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
def test_gpt_matches_flatcar_layout(testbed_image: Path, reference: Path, tmp_path: Path) -> None:
    """The built image, as sgdisk reads it, against the reference layout; OEM as btrfs-progs
    reads it: mixed, label OEM, compression=zlib on every file and directory."""
    want, sectors = reference_placement(reference / "flatcar-disk_layout.json")
    assert testbed_image.stat().st_size == sectors * 512
    listing = subprocess.run(["sgdisk", "-p", testbed_image], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert "Disk identifier (GUID): 00000000-0000-0000-0000-000000000001" in listing
    numbers = [int(m[1]) for m in re.finditer(r"^\s+(\d+)\s+\d+\s+\d+", listing, re.M)]
    assert numbers == sorted(want) == [1, 2, 3, 4, 6, 7, 9]
    for n in numbers:
        w = want[n]
        info = subprocess.run(["sgdisk", "-i", str(n), testbed_image], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
        assert f"Partition name: '{w['label']}'" in info
        assert re.search(rf"Partition GUID code: {TYPE_GUIDS[w['type']]}\b", info), info
        if "uuid" in w:
            assert f"Partition unique GUID: {w['uuid'].upper()}" in info
        assert f"First sector: {w['first']} " in info, info
        assert f"Partition size: {w['blocks']} sectors" in info, info
        if w["label"] == "USR-A":
            assert "Attribute flags: 0101000000000000" in info, info
    oem = tmp_path / "oem.img"
    gpt.copy_out(testbed_image, gpt.read(testbed_image).by_label("OEM"), oem)
    assert btrfs_tools.check(oem).returncode == 0
    assert btrfs_tools.mixed(oem) and btrfs_tools.super_field(oem, "label") == "OEM"
    tree = btrfs_tools.fs_tree(oem)
    assert {"", "oem-release", "grub.cfg"} <= set(tree)
    for path, attrs in tree.items():
        assert attrs["xattrs"] == {"btrfs.compression": "zlib"}, path
        assert attrs["flags"] & 0x800, path


@pytest.mark.integration
@pytest.mark.parametrize("flavor", ["current", "old"])
def test_grub_for_bios_as_grub_install_sh(flavor: str, request: pytest.FixtureRequest) -> None:
    """Both flavours boot on BIOS as Flatcar's grub_install.sh sets up i386-pc: GRUB's boot code
    in the MBR pointing at its core image in BIOS-BOOT, the other modules (xz), core.img,
    boot.img and load.cfg (finding the ESP) in flatcar/grub/i386-pc, mbr.bin = the disk's first
    448 bytes. (The BIOS boot itself: tests/boot/test_testing.py.)"""
    build = request.getfixturevalue("testbed_build" if flavor == "current" else "testbed_old_build")
    image = Path(build["image"])
    table = gpt.read(image)
    bios = firmware.boot_support(image)["bios"]
    assert bios.bootable and bios.details["boot_code"] == "grub", bios.reason
    assert bios.details["core_lba"] == table.by_label("BIOS-BOOT").first_lba
    off = table.by_label("EFI-SYSTEM").offset
    folder = biosboot.GRUB_DIR
    names = {n.rsplit("/", 1)[-1] for n in fs.fat_list(image, off, folder)}
    assert {"core.img", "boot.img", "load.cfg", "mbr.bin", "linux.mod", "moddep.lst"} <= names
    assert not names & {f"{m}.mod" for m in biosboot.MODULES}  # those are in the core image
    linux = lzma.decompress(fs.fat_read(image, off, f"{folder}/linux.mod"))
    assert linux == (biosboot.GRUB_PC / "linux.mod").read_bytes()
    with open(image, "rb") as f:
        assert fs.fat_read(image, off, f"{folder}/mbr.bin") == f.read(biosboot.MBR_SAVE)
    load_cfg = fs.fat_read(image, off, f"{folder}/load.cfg").decode()
    assert f"search.fs_uuid {esp.ESP_FS_UUID} root hd0,gpt1\n" in load_cfg


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
