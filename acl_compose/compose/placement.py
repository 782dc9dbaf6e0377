"""Where compose puts the product's sysexts, and how the host finds them after a ROOT reset.

Flatcar treats ROOT as disposable (`flatcar-reset`, or an Ignition config that reformats it);
a reset node boots as on its first boot. So the images go to the OEM partition, which a reset
keeps (`OEM:/extensions/<name>/<name>-<version>.raw`), and the links that enable them
(`/etc/extensions/<name>.raw`) and the certificate that makes them trusted
(`/etc/verity.d/<release>.crt`) are one more Ignition config merged into OEM `base/base.ign`,
which Ignition applies on every first boot, resets included. A real Flatcar's initrd knows
nothing of these images, so the base config is the one place every Flatcar honours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from acl_compose.errors import InputError

OEM_MOUNT = "/oem"
OEM_EXTENSIONS = "extensions"  # OEM:/extensions/<name>/<name>-<version>.raw
ETC_EXTENSIONS = "/etc/extensions"
VERITY_D = "/etc/verity.d"
# Flatcar's initrd (initrd-setup-root-after-ignition) owns these names in /etc/extensions:
# it re-links or unlinks them on every boot, so a product sysext by such a name would vanish.
RESERVED_PREFIXES = ("flatcar-", "oem-")


def refuse_reserved(name: str, src: Path) -> None:
    if name.startswith(RESERVED_PREFIXES):
        raise InputError(
            f"{src}: sysext name {name!r} is reserved: Flatcar's initrd manages "
            f"{ETC_EXTENSIONS}/flatcar-* and oem-* and would unlink it on a later boot",
            hint="rename the sysext (`name:` in its sysext.yaml, or the .raw file)",
        )


def sysext_config(
    sysexts: list[dict[str, Any]], cert_pem: bytes, cert_path: str, version: str
) -> dict[str, Any]:
    """The Ignition config that enables the sysexts: a link per image and the certificate."""
    from acl_compose import ignition

    source, compression = ignition.data_url(cert_pem)
    cert: dict[str, Any] = {"source": source}
    if compression:
        cert["compression"] = compression
    return {
        "ignition": {"version": version},
        "storage": {
            "files": [{"path": cert_path, "mode": 0o644, "overwrite": True, "contents": cert}],
            "links": [{"path": s["link"], "target": s["image_path"], "hard": False,
                       "overwrite": True} for s in sysexts],
        },
    }  # fmt: skip


def refuse_overlap(config: dict[str, Any], generated: dict[str, Any], sources: list[Path]) -> None:
    """A product config touching a path the sysext config owns would silently lose to it."""
    storage = config.get("storage", {})
    theirs = {e.get("path") for key in ("files", "links", "directories")
              for e in storage.get(key, [])}  # fmt: skip
    for key in ("files", "links"):
        for entry in generated["storage"][key]:
            if entry["path"] in theirs:
                raise InputError(
                    f"ignition ({', '.join(str(p) for p in sources)}): {entry['path']} is "
                    "written by compose to enable the sysexts",
                    hint="remove that entry from the Ignition config",
                )
