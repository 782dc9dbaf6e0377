"""The testbed's OEM partition content, as Flatcar's vm_image_util.sh install_oem_sysext
lays out a platform image (here the `qemu` platform, like flatcar_production_qemu_uefi):

  sysext/oem-qemu-<VERSION>.raw   the platform's OEM sysext (signed; the certificate is in
                                  /usr/lib/verity.d/sysexts.crt, as Flatcar ships its own)
  sysext/active-oem-qemu          the flag the initrd looks for before linking it
  oem-release                     the sysext's SYSEXT_* fields without the prefix
  grub.cfg                        build_library/oem/qemu/grub.cfg

The initrd links /etc/extensions/oem-qemu.raw to the active image on every boot
(initrd-setup-root-after-ignition).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from acl_compose import sysext
from acl_compose.image.osrelease import format_os_release
from acl_compose.trust import signing

FILES = Path(__file__).parent / "files"
OEM_ID = "qemu"
# coreos-base/oem-qemu: SYSEXT_NAME, HOMEPAGE, and the ebuild's version (SYSEXT_VERSION_ID).
OEM_NAME = "QEMU"
OEM_VERSION = "0.0.2"
OEM_HOME_URL = "https://www.qemu.org/"
BUG_REPORT_URL = "https://issues.flatcar.org"
NOTE = "/usr/share/oem-qemu/README"


def signing_key(cache: Path) -> tuple[Path, Path]:
    """The testbed's sysext signing key and certificate, made once per cache."""
    key, cert = cache / "release.key", cache / "release.crt"
    if not (key.is_file() and cert.is_file()):
        shutil.rmtree(cache, ignore_errors=True)
        signing.generate(cache, common_name="acl-compose testbed sysexts")
    return key, cert


def _bundle(directory: Path, version: str) -> Path:
    """A sysext bundle like Flatcar's OEM sysexts: pinned to the OS version, reload manager."""
    directory.mkdir(parents=True)
    (directory / "sysext.yaml").write_text(
        f"name: oem-{OEM_ID}\n"
        f"version: {OEM_VERSION}\n"
        f"description: {OEM_NAME} OEM extension of the acl-compose testbed\n"
        "os: flatcar\n"
        f'version_id: "{version}"\n'
        "architecture: x86-64\n"
        "reload_manager: true\n"
        "files:\n"
        f"  - path: {NOTE}\n"
        "    inline: |\n"
        f"      {OEM_NAME} platform extension ({OEM_HOME_URL}), merged from the OEM partition.\n"
    )
    return directory


def oem_release() -> str:
    """What install_oem_sysext derives from the sysext's SYSEXT_* fields."""
    return format_os_release({
        "ID": OEM_ID,
        "NAME": OEM_NAME,
        "VERSION_ID": OEM_VERSION,
        "HOME_URL": OEM_HOME_URL,
        "BUG_REPORT_URL": BUG_REPORT_URL,
    })  # fmt: skip


def oem_tree(tree: Path, work: Path, version: str, key: Path, cert: Path) -> dict[str, Any]:
    """Fill `tree` with the OEM partition's files; returns the OEM sysext's build record."""
    built = sysext.build(_bundle(work / f"oem-{OEM_ID}", version), work / "oem-sysext",
                         key=key, cert=cert)  # fmt: skip
    (tree / "sysext").mkdir(parents=True)
    shutil.copyfile(built["path"], tree / "sysext" / f"oem-{OEM_ID}-{version}.raw")
    (tree / "sysext" / f"active-oem-{OEM_ID}").write_bytes(b"")
    (tree / "oem-release").write_text(oem_release())
    shutil.copyfile(FILES / "oem/grub.cfg", tree / "grub.cfg")
    return dict(built)
