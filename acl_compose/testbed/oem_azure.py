"""The testbed release's `oem-azure.raw`: Flatcar's Azure OEM extension, from Debian packages.

Flatcar publishes each platform's OEM sysext beside its images (`oem-azure.raw`, built by
build_sysext from coreos-base/oem-azure and pinned to the release: `ID=flatcar`,
`VERSION_ID=<version>`). The testbed does the same from the bundle in `files/oem-azure`
(pinned bookworm packages: WALinuxAgent and its Python, hyperv-daemons, chrony; see its
README), with `version_id` set to the release it builds, signed with the testbed's sysext key
(whose certificate the testbed's /usr ships in /usr/lib/verity.d, so systemd-sysext on the
guest accepts it). The release signs it like every artifact (.sig, DIGESTS).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

FILES = Path(__file__).parent / "files"
BUNDLE = FILES / "oem-azure"
ARTIFACT = "oem-azure.raw"
VERSION_PLACEHOLDER = "@VERSION_ID@"


def bundle_for(version: str, work: Path) -> Path:
    """A copy of the bundle pinned to `version` (its extension-release VERSION_ID)."""
    dest = work / "oem-azure"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(BUNDLE, dest)
    spec = dest / "sysext.yaml"
    text = spec.read_text()
    if VERSION_PLACEHOLDER not in text:
        raise AssertionError(f"{BUNDLE}/sysext.yaml lost its {VERSION_PLACEHOLDER} placeholder")
    spec.write_text(text.replace(VERSION_PLACEHOLDER, version))
    return dest


def build(
    work: Path, version: str, cache_dir: Path, key: Path | None = None, cert: Path | None = None
) -> dict[str, Any]:
    """Build `oem-azure.raw` for the release `version`; returns sysext.build's record."""
    from acl_compose import sysext

    return dict(sysext.build(bundle_for(version, work), work / "oem-azure-out", key=key,
                             cert=cert, cache_dir=cache_dir))  # fmt: skip
