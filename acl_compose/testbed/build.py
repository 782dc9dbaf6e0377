"""Orchestrate a testbed release build, cached by a hash of everything that goes into it.

Cache layout under `<cache_dir>/testbed/`:
  bootstrap/<suite>-<pkgkey>.tar   mmdebstrap output, reused while the package list is unchanged
  gnupg/                           the testbed OpenPGP key (private GNUPGHOME)
  <key>/release/                   the release tree: <version>/, current -> <version>, key file
  <key>/flatcar_production_image.bin   the raw (sparse) disk image, for tests and boots
  <key>/build.json                 what was built (root hash, fingerprint, sizes, timings)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from acl_compose import ui
from acl_compose.errors import InputError
from acl_compose.image import oem as oem_fs
from acl_compose.run import run, which
from acl_compose.testbed import disk, esp, guest, oem_azure, sign
from acl_compose.testbed import oem as tb_oem
from acl_compose.trust import verity
from acl_compose.util import atomic_dir

DEFAULT_VERSION = disk.CURRENT.default_version
SOURCE_DATE_EPOCH = 1767225600  # 2026-01-01T00:00:00Z: fixed timestamps where tools honour it
IMAGE = "flatcar_production_image.bin"
KEY_FILE = "testbed-signing-key.asc"
PKG_DIR = Path(__file__).parent
VERITY_SALT = hashlib.sha256(b"acl-compose testbed USR-A").digest()
VERITY_UUID = disk.fixed_uuid("USR-A verity").lower()
KEEP_BUILDS = 4  # two flavours, and an older build of each while another session runs
# Other modules whose code shapes the image: a change to them rebuilds the testbed too.
SHAPING_MODULES = ("image/oem.py", "image/btrfs.py", "image/fs.py", "image/gpt.py",
                   "image/biosboot.py", "sysext/builder.py", "sysext/bundle.py",
                   "sysext/ddi.py")  # fmt: skip


def check_version(version: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        raise InputError(
            f"--version {version!r} is not a Flatcar version",
            hint="use BUILD.BRANCH.PATCH, e.g. 9999.2.0 (middle number 2 = stable)",
        )
    return int(m[1]), int(m[2]), int(m[3])


def check_flavor(flavor: str) -> disk.Flavor:
    if flavor not in disk.FLAVORS:
        raise InputError(
            f"testbed flavour {flavor!r} does not exist",
            hint=f"use one of: {', '.join(disk.FLAVORS)}",
        )
    return disk.FLAVORS[flavor]


def cache_key(version: str, fingerprint: str, flavor: str = "current") -> str:
    """Hash of the recipe: this package's code and files, the image code it uses, package
    list, version, key, flavour."""
    h = hashlib.sha256()
    h.update(f"v2\n{version}\n{fingerprint}\n{flavor}\n{guest.SUITE}\n".encode())
    h.update(f"{','.join(guest.PACKAGES)}\n".encode())
    files = [p for p in sorted(PKG_DIR.rglob("*")) if p.is_file()]
    files += [PKG_DIR.parent / m for m in SHAPING_MODULES]
    for path in files:
        if "__pycache__" not in path.parts:
            h.update(str(path.relative_to(PKG_DIR.parent)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:32]


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    """One build at a time per cache (parallel test sessions share it)."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def require_root() -> None:
    if os.geteuid() != 0:
        raise InputError(
            "testbed build needs root (mmdebstrap and chroot create files owned by other users)",
            hint="run it as root, e.g. `sudo acl-compose testbed build`",
        )


def build(
    cache_dir: Path,
    version: str | None = None,
    output: Path | None = None,
    force: bool = False,
    flavor: str = "current",
) -> dict[str, Any]:
    """Build (or reuse) the testbed release; copy it to `output` if given. Returns build.json."""
    fl = check_flavor(flavor)
    version = version or fl.default_version
    check_version(version)
    start = time.monotonic()
    base = Path(cache_dir) / "testbed"
    with _locked(base), sign.gnupg_home(base / "gnupg") as home:
        fpr = sign.fingerprint(home)
        key = cache_key(version, fpr, flavor) if fpr else None
        entry = base / key if key else None
        cached = entry is not None and (entry / "build.json").exists() and not force
        if not cached:
            require_root()
            fpr = sign.ensure_key(home)
            key = cache_key(version, fpr, flavor)
            entry = base / key
            with ui.step(f"building testbed {version}, {flavor} flavour (cache {entry})"):
                with atomic_dir(entry) as tmp:
                    _build(tmp, base, home, fpr, version, key, fl)
            _prune(base, keep=entry)
        assert entry is not None
        info: dict[str, Any] = json.loads((entry / "build.json").read_text())
    info["cached"] = cached
    info["cache_entry"] = str(entry)
    info["image"] = str(entry / IMAGE)
    info["release_dir"] = str(entry / "release")
    if output is not None:
        _copy_release(entry / "release", Path(output))
        info["release_dir"] = str(Path(output).resolve())
    info["key_file"] = str(Path(info["release_dir"]) / KEY_FILE)
    info["seconds"] = round(time.monotonic() - start, 1)
    return info


def _copy_release(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dest / item.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if item.is_symlink():
            target.symlink_to(os.readlink(item))
        elif item.is_dir():
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)


def _prune(base: Path, keep: Path) -> None:
    """Keep the newest few builds; the bootstrap tarball and key are kept regardless."""
    entries = [p for p in base.iterdir() if p.is_dir() and re.fullmatch(r"[0-9a-f]{32}", p.name)]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP_BUILDS:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _verity(path: Path) -> str:
    """dm-verity tree + superblock inside USR-A after the filesystem; returns the root hash."""
    result = verity.create(
        path,
        hash_offset=disk.USR_HASH_OFFSET,
        data_blocks=disk.USR_FS_BLOCKS,
        salt=VERITY_SALT,
        uuid=VERITY_UUID,
    )
    return result.root_hash


def version_txt(version: str, build_id: str) -> str:
    b, br, p = check_version(version)
    return (
        f"FLATCAR_BUILD={b}\nFLATCAR_BRANCH={br}\nFLATCAR_PATCH={p}\n"
        f"FLATCAR_VERSION={version}\nFLATCAR_VERSION_ID={version}\n"
        f'FLATCAR_BUILD_ID="{build_id}"\nFLATCAR_SDK_VERSION={b}.0.0\n'
    )


def _compress(image: Path) -> Path:
    tool = "lbzip2" if which("lbzip2") else "bzip2"
    run([tool, "-k", "-f", "-9", image])
    return image.with_name(image.name + ".bz2")


def _build(
    tmp: Path, base: Path, home: Path, fpr: str, version: str, key: str, fl: disk.Flavor
) -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal t0
        now = time.monotonic()
        timings[name] = round(now - t0, 1)
        t0 = now

    os.environ.setdefault("SOURCE_DATE_EPOCH", str(SOURCE_DATE_EPOCH))
    build_id = f"testbed-{key[:12]}"
    work = tmp / "work"
    parts = work / "parts"
    parts.mkdir(parents=True)
    with ui.step("mmdebstrap (cached by package list)"):
        tar = guest.bootstrap(base, SOURCE_DATE_EPOCH)
    lap("bootstrap")
    with ui.step("guest: customise, dracut, remove package manager"):
        trees = guest.build_guest(tar, work, version, build_id)
    lap("guest")
    with ui.step(f"OEM: the {tb_oem.OEM_ID} OEM sysext, oem-release, grub.cfg"):
        sysext_key, sysext_cert = tb_oem.signing_key(base / "sysext-key")
        verity_d = trees.usr / "lib/verity.d"
        verity_d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sysext_cert, verity_d / "sysexts.crt")  # as Flatcar ships its own
        oem_tree = work / "oem"
        oem_sysext = tb_oem.oem_tree(oem_tree, work, version, sysext_key, sysext_cert)
        oem_fs.make_oem_filesystem(
            oem_tree, parts / "oem.img", fl.part("OEM").size, "OEM", disk.fixed_uuid("OEM fs")
        )
        published = {}
        if oem_azure.ARTIFACT in fl.oem_artifacts:
            rec = oem_azure.build(work, version, base.parent, key=sysext_key, cert=sysext_cert)
            published[oem_azure.ARTIFACT] = Path(rec["path"])
    lap("oem")
    with ui.step(f"USR-A: {fl.usr_fs} + dm-verity"):
        usr_img = parts / "usr-a.img"
        if fl.usr_fs == "ext2":
            disk.make_ext2_usr(usr_img, disk.USR_FS_BLOCKS, trees.usr)
        else:
            disk.make_btrfs(
                usr_img, disk.USR_HASH_OFFSET, trees.usr, "USR-A", disk.fixed_uuid("USR-A fs")
            )
        with open(usr_img, "r+b") as f:
            f.truncate(fl.part("USR-A").size)
        root_hash = _verity(usr_img)
    lap("usr")
    with ui.step("ESP: GRUB (EFI, BIOS) with grub.cfg in its memdisk, kernel (hash at byte 64)"):
        kernel = work / "vmlinuz-a"
        shutil.copyfile(trees.kernel, kernel)
        disk.write_kernel_hash(kernel, root_hash)
        files = esp.esp_files(kernel, trees.initrd, root_hash, work, SOURCE_DATE_EPOCH)
        disk.make_vfat(
            parts / "esp.img", fl.part("EFI-SYSTEM").size, "EFI-SYSTEM", esp.ESP_VOLUME_ID, files
        )
    with ui.step("ROOT: mount points only"):
        disk.make_ext4(
            parts / "root.img",
            fl.part("ROOT").size,
            trees.root,
            "ROOT",
            disk.fixed_uuid("ROOT fs"),
        )
    lap("filesystems")
    with ui.step("GPT disk image"):
        image = tmp / IMAGE
        disk.assemble(
            image,
            {
                "EFI-SYSTEM": parts / "esp.img",
                "USR-A": usr_img,
                "OEM": parts / "oem.img",
                "ROOT": parts / "root.img",
            },
            fl,
        )
    with ui.step("GRUB for BIOS: boot.img in the MBR, the core image in BIOS-BOOT"):
        esp.install_bios(image, work)
    lap("image")
    release = tmp / "release"
    vdir = release / version
    vdir.mkdir(parents=True)
    with ui.step("release files: bz2, signatures, DIGESTS"):
        contents = guest.contents_txt(trees)
        bz2 = _compress(image)
        os.replace(bz2, vdir / f"{IMAGE}.bz2")
        lap("compress")
        shutil.copyfile(kernel, vdir / "flatcar_production_image.vmlinuz")
        (vdir / "flatcar_production_image_packages.txt").write_text(trees.packages_txt)
        (vdir / "flatcar_production_image_contents.txt").write_text(contents)
        (vdir / "version.txt").write_text(version_txt(version, build_id))
        for name, path in published.items():
            shutil.copyfile(path, vdir / name)
        artifacts = sorted(vdir.iterdir())
        for f in artifacts:
            sign.sign_artifact(home, fpr, f)
        (release / "current").symlink_to(version)
        (release / KEY_FILE).write_bytes(sign.export_public(home, fpr))
    lap("sign")
    shutil.rmtree(work)
    info = {
        "version": version,
        "build_id": build_id,
        "fingerprint": fpr,
        "root_hash": root_hash,
        "kernel_version": trees.kernel_version,
        "flavor": fl.name,
        "usr_fs": fl.usr_fs,
        "usr_partuuid": fl.part("USR-A").guid,
        "esp_fs_uuid": esp.ESP_FS_UUID,
        "oem_sysext": {k: oem_sysext[k] for k in ("name", "version", "root_hash")},
        "disk_guid": disk.DISK_GUID,
        "hash_offset": disk.USR_HASH_OFFSET,
        "data_blocks": disk.USR_FS_BLOCKS,
        "partitions": {p.label: {"number": p.number, "size": p.size} for p in fl.layout},
        "artifacts": [f.name for f in artifacts],
        "timings": timings,
        "key": key,
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
