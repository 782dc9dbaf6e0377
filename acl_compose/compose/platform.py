"""Platform OEM content: what makes an image an Azure (or QEMU) image, as Flatcar makes it.

Flatcar builds each platform's image from the generic one by changing only the OEM partition
(flatcar/scripts build_library/vm_image_util.sh `install_oem_sysext`, and
coreos-base/common-oem-files for `oem-release` and `grub.cfg`):

  sysext/oem-<id>-<VERSION>.raw   the platform's OEM sysext; VERSION is the OS version, so an
                                  update that brings a new /usr finds no stale extension
  sysext/active-oem-<id>          the flag the initrd checks before linking the image to
                                  /etc/extensions/oem-<id>.raw (initrd-setup-root-after-ignition)
  oem-release                     ID=<id>, VERSION_ID=<the OEM's own version>, NAME, HOME_URL, ...
  grub.cfg                        `set oem_id="<id>"`, which GRUB turns into
                                  `flatcar.oem.id=<id>` (Ignition's platform), and the
                                  platform's console (Azure has only a serial console)

`read_layout` reads that from an OEM tree, `missing` says what a platform lacks, `changes`
computes the edits that turn an OEM tree into a platform's (other platforms' content removed,
the rest, e.g. base/base.ign, kept) and `apply` rebuilds the OEM filesystem with them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acl_compose.image import fs, gpt, oem
from acl_compose.image.osrelease import format_os_release, parse_os_release

# Each platform's name and home page, as its coreos-base/oem-<id> ebuild has them (NAME and
# HOME_URL of oem-release, when the sysext does not carry them).
KNOWN = {
    "azure": ("Microsoft Azure", "https://azure.microsoft.com/"),
    "qemu": ("QEMU", "https://www.qemu.org/"),
}
BUG_REPORT_URL = "https://issues.flatcar.org"
# What each platform's grub.cfg sets besides oem_id (common-oem-files' grub.cfg.frag): Azure
# has only a serial console, so GRUB and the kernel talk there.
GRUB_EXTRA = {
    "azure": (
        'set linux_append="flatcar.autologin"\n'
        "\n"
        "# Azure has a serial console only.\n"
        "serial --unit=0 --speed=115200 --word=8 --parity=no\n"
        "terminal_input serial\n"
        "terminal_output serial\n"
        "\n"
        'if [ "$grub_cpu" = arm64 ]; then\n'
        '  set linux_console="console=tty1 console=ttyAMA0,115200n8 earlycon=pl011,0xeffec000"\n'
        "else\n"
        '  set linux_console="console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0,115200"\n'
        "fi\n"
    ),
    "qemu": "",
}
_SYSEXT_FILE = re.compile(r"^oem-([a-z0-9]+(?:-[a-z][a-z0-9]*)*)-([0-9][A-Za-z0-9._+~-]*)\.raw$")
_GRUB_OEM_ID = re.compile(r"""^\s*set\s+oem_id=["']?([^"'\s]*)["']?\s*$""", re.M)

Content = bytes | Path | None  # new bytes, a file to copy, or None to delete


def sysext_target(platform: str, os_version: str) -> str:
    """The OEM path of a platform's sysext for this OS version."""
    return f"sysext/oem-{platform}-{os_version}.raw"


def grub_cfg(platform: str) -> bytes:
    head = f'# Flatcar GRUB settings\n\nset oem_id="{platform}"\n'
    return (head + GRUB_EXTRA.get(platform, "")).encode()


def grub_oem_id(text: str) -> str | None:
    found = _GRUB_OEM_ID.findall(text)
    return found[-1] if found else None


def read_layout(tree: Path) -> dict[str, Any]:
    """The platform content of an OEM tree: oem-release, grub.cfg's oem_id, OEM sysexts."""
    out: dict[str, Any] = {"id": None, "release": {}, "grub_oem_id": None, "sysexts": []}
    rel = tree / "oem-release"
    if rel.is_file() and not rel.is_symlink():
        out["release"] = parse_os_release(rel.read_text(errors="replace"))
        out["id"] = out["release"].get("ID")
    grub = tree / "grub.cfg"
    if grub.is_file() and not grub.is_symlink():
        out["grub_oem_id"] = grub_oem_id(grub.read_text(errors="replace"))
    sx = tree / "sysext"
    names = sorted(os.listdir(sx)) if sx.is_dir() and not sx.is_symlink() else []
    active = {n.removeprefix("active-oem-") for n in names if n.startswith("active-oem-")}
    out["active"] = sorted(active)
    for n in names:
        m = _SYSEXT_FILE.match(n)
        if m is None or not (sx / n).is_file():
            continue
        oem_id, version = m.group(1), m.group(2)
        # An id with a dash (rackspace-onmetal) parses ambiguously: prefer an active id.
        for a in active:
            if n.startswith(f"oem-{a}-") and n[len(f"oem-{a}-")][:1].isdigit():
                oem_id, version = a, n[len(f"oem-{a}-") : -len(".raw")]
        out["sysexts"].append({"file": f"sysext/{n}", "id": oem_id, "version": version,
                               "active": oem_id in active})  # fmt: skip
    return out


def legacy(layout: Mapping[str, Any], platform: str) -> bool:
    """An OEM partition of Flatcar before 3760: the platform's files directly on OEM, no
    OEM sysext (oem-release and grub.cfg name the platform, no sysext/ at all)."""
    return (layout.get("id") == platform and layout.get("grub_oem_id") == platform
            and not layout.get("sysexts") and not layout.get("active"))  # fmt: skip


def missing(
    layout: Mapping[str, Any], platform: str, os_version: str, sysext: bool = True
) -> list[str]:
    """What the OEM tree lacks to be `platform`'s, for an OS of `os_version` (empty: complete);
    without `sysext`, only oem-release and grub.cfg are looked at (a legacy OEM)."""
    why = []
    if layout.get("id") != platform:
        why.append(f"oem-release ID is {layout.get('id') or 'missing'}, not {platform}")
    if layout.get("grub_oem_id") != platform:
        why.append(f"grub.cfg sets oem_id={layout.get('grub_oem_id') or 'nothing'}")
    if not sysext:
        return why
    files = {s["file"] for s in layout.get("sysexts", [])}
    if sysext_target(platform, os_version) not in files:
        why.append(f"no {sysext_target(platform, os_version)}")
    if platform not in layout.get("active", []):
        why.append(f"no sysext/active-oem-{platform}")
    return why


def oem_release(platform: str, ext_release: Mapping[str, str], fallback_version: str) -> dict:
    """oem-release from the sysext's release fields, as common-oem-files writes it."""
    name, home = KNOWN.get(platform, (platform, ""))
    fields = {
        "ID": platform,
        "VERSION_ID": ext_release.get("SYSEXT_VERSION_ID") or fallback_version,
        "NAME": ext_release.get("SYSEXT_NAME") or name,
    }
    if ext_release.get("SYSEXT_HOME_URL") or home:
        fields["HOME_URL"] = ext_release.get("SYSEXT_HOME_URL") or home
    fields["BUG_REPORT_URL"] = BUG_REPORT_URL
    return fields


def changes(
    layout: Mapping[str, Any],
    platform: str,
    sysext: Path,
    os_version: str,
    release_fields: Mapping[str, str],
) -> dict[str, Content]:
    """OEM edits that make the tree `platform`'s: its sysext, flag, oem-release and grub.cfg;
    every other OEM sysext and flag removed (Flatcar's initrd would link an active one)."""
    target = sysext_target(platform, os_version)
    edits: dict[str, Content] = {}
    for s in layout.get("sysexts", []):
        if s["file"] != target:
            edits[s["file"]] = None
    for a in layout.get("active", []):
        if a != platform:
            edits[f"sysext/active-oem-{a}"] = None
    edits[target] = sysext
    edits[f"sysext/active-oem-{platform}"] = b""
    edits["oem-release"] = format_os_release(dict(release_fields)).encode()
    edits["grub.cfg"] = grub_cfg(platform)
    return edits


def apply(
    img: Path, disk: gpt.Disk, edits: Mapping[str, Content], work: Path, sde: int | None
) -> None:
    """Rebuild the image's OEM btrfs with `edits` applied (image.oem.rebuild_oem_filesystem:
    label, UUID, mixed mode, compression property and xattrs kept, reproducibly)."""
    oem_part = disk.by_label("OEM")
    part_file = work / "oem.img"
    gpt.copy_out(img, oem_part, part_file)
    try:
        oem.rebuild_oem_filesystem(part_file, oem_part.size, edits, work, sde)
        gpt.copy_in(img, oem_part, part_file)
    finally:
        part_file.unlink(missing_ok=True)


def read_oem_tree(img: Path, disk: gpt.Disk, dest: Path) -> Path:
    """Restore the image's OEM filesystem into `dest` (created) and return it."""
    part = dest.with_name(dest.name + ".img")
    gpt.copy_out(img, disk.by_label("OEM"), part)
    try:
        fs.btrfs_restore(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_certificates(usr_file: Path, work: Path) -> dict[str, str]:
    """PEM certificates the base ships in /usr/lib/verity.d (read without mounting; btrfs or,
    before Flatcar 3815, ext2): the keys systemd accepts a signed sysext's signature with, so
    also its OEM sysext's."""
    from acl_compose.image import usr

    if usr.filesystem(usr_file) == "ext2":
        spec = fs.ext4_spec(usr_file)
        return {
            f"/usr/lib/verity.d/{e.name}": fs.ext4_read(spec, f"/lib/verity.d/{e.name}").decode(
                errors="replace"
            )
            for e in sorted(fs.ext4_list(spec, "/lib/verity.d") or [], key=lambda e: e.name)
            if e.name.endswith(".crt") and not e.is_dir and not e.is_symlink
        }
    dest = work / "usr-verity.d"
    shutil.rmtree(dest, ignore_errors=True)
    try:
        fs.btrfs_restore(usr_file, dest, r"^/(lib(|/verity\.d(|/.*)))$")
        d = dest / "lib" / "verity.d"
        if not d.is_dir() or d.is_symlink():
            return {}
        return {
            f"/usr/lib/verity.d/{p.name}": p.read_text(errors="replace")
            for p in sorted(d.iterdir())
            if p.suffix == ".crt" and p.is_file() and not p.is_symlink()
        }
    finally:
        shutil.rmtree(dest, ignore_errors=True)
