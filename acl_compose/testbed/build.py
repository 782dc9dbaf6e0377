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
from acl_compose.run import run, which
from acl_compose.testbed import disk, guest, sign
from acl_compose.trust import verity
from acl_compose.util import atomic_dir

DEFAULT_VERSION = "9999.2.0"
SOURCE_DATE_EPOCH = 1767225600  # 2026-01-01T00:00:00Z: fixed timestamps where tools honour it
IMAGE = "flatcar_production_image.bin"
KEY_FILE = "testbed-signing-key.asc"
PKG_DIR = Path(__file__).parent
VERITY_SALT = hashlib.sha256(b"acl-compose testbed USR-A").digest()
VERITY_UUID = disk.fixed_uuid("USR-A verity").lower()
KEEP_BUILDS = 2


def check_version(version: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        raise InputError(
            f"--version {version!r} is not a Flatcar version",
            hint="use BUILD.BRANCH.PATCH, e.g. 9999.2.0 (middle number 2 = stable)",
        )
    return int(m[1]), int(m[2]), int(m[3])


def cache_key(version: str, fingerprint: str) -> str:
    """Hash of the recipe: this package's code and files, package list, version, key."""
    h = hashlib.sha256()
    h.update(f"v1\n{version}\n{fingerprint}\n{guest.SUITE}\n{','.join(guest.PACKAGES)}\n".encode())
    for path in sorted(PKG_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(PKG_DIR)).encode() + b"\0")
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
    version: str = DEFAULT_VERSION,
    output: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Build (or reuse) the testbed release; copy it to `output` if given. Returns build.json."""
    check_version(version)
    start = time.monotonic()
    base = Path(cache_dir) / "testbed"
    with _locked(base), sign.gnupg_home(base / "gnupg") as home:
        fpr = sign.fingerprint(home)
        key = cache_key(version, fpr) if fpr else None
        entry = base / key if key else None
        cached = entry is not None and (entry / "build.json").exists() and not force
        if not cached:
            require_root()
            fpr = sign.ensure_key(home)
            key = cache_key(version, fpr)
            entry = base / key
            with ui.step(f"building testbed {version} (cache {entry})"):
                with atomic_dir(entry) as tmp:
                    _build(tmp, base, home, fpr, version, key)
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


def _grub_efi(out: Path, work: Path) -> None:
    run(
        [
            "grub-mkstandalone",
            "-O",
            "x86_64-efi",
            "-o",
            out,
            "--modules=part_gpt fat btrfs search search_label normal linux configfile "
            "serial terminal test echo",
            "--locales=",
            "--themes=",
            "--fonts=",
            f"boot/grub/grub.cfg={guest.FILES / 'grub/embedded.cfg'}",
        ],
        env={"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "TMPDIR": str(work)},
    )


def _grub_cfg(version: str, root_hash: str) -> bytes:
    text = (guest.FILES / "grub/grub.cfg").read_text()
    for k, v in {
        "@USRHASH@": root_hash,
        "@USR_PARTUUID@": disk.part("USR-A").guid.lower(),
        "@HASH_OFFSET@": str(disk.USR_HASH_OFFSET),
        "@VERSION@": version,
    }.items():
        text = text.replace(k, v)
    return text.encode()


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


def _build(tmp: Path, base: Path, home: Path, fpr: str, version: str, key: str) -> None:
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
    with ui.step("USR-A: btrfs + dm-verity"):
        usr_img = parts / "usr-a.img"
        disk.make_btrfs(
            usr_img, disk.USR_HASH_OFFSET, trees.usr, "USR-A", disk.fixed_uuid("USR-A fs")
        )
        with open(usr_img, "r+b") as f:
            f.truncate(disk.part("USR-A").size)
        root_hash = _verity(usr_img)
    lap("usr")
    with ui.step("ESP: GRUB, kernel (root hash at byte 64), initramfs"):
        kernel = work / "vmlinuz-a"
        shutil.copyfile(trees.kernel, kernel)
        disk.write_kernel_hash(kernel, root_hash)
        efi = work / "bootx64.efi"
        _grub_efi(efi, work)
        disk.make_vfat(
            parts / "esp.img",
            disk.part("EFI-SYSTEM").size,
            "EFI-SYSTEM",
            {
                "EFI/boot/bootx64.efi": efi,
                "EFI/boot/grub.cfg": _grub_cfg(version, root_hash),
                "flatcar/vmlinuz-a": kernel,
                "flatcar/initrd-a": trees.initrd,
                "flatcar/first_boot": b"",
            },
        )
    with ui.step("OEM and ROOT filesystems"):
        oem = work / "oem"
        oem.mkdir()
        (oem / "oem-release").write_text(
            f'ID=qemu\nVERSION_ID={version}\nNAME="QEMU"\nHOME_URL="https://www.qemu.org/"\n'
        )
        shutil.copyfile(guest.FILES / "oem/grub.cfg", oem / "grub.cfg")
        disk.make_btrfs(
            parts / "oem.img", disk.part("OEM").size, oem, "OEM", disk.fixed_uuid("OEM fs")
        )
        disk.make_ext4(
            parts / "root.img",
            disk.part("ROOT").size,
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
        )
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
        "usr_partuuid": disk.part("USR-A").guid,
        "hash_offset": disk.USR_HASH_OFFSET,
        "data_blocks": disk.USR_FS_BLOCKS,
        "partitions": {p.label: {"number": p.number, "size": p.size} for p in disk.LAYOUT},
        "artifacts": [f.name for f in artifacts],
        "timings": timings,
        "key": key,
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
