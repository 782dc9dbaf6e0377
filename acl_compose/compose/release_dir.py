"""The release folder (compose -o OUT_DIR): what compose writes there, under the
output-folder rule (util.OutputDir). release.json lists every file of a release, so it is
the record of what an earlier compose wrote: those files are replaced, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from acl_compose import util
from acl_compose.compose.manifest import Manifest
from acl_compose.image import outputs

RELEASE_JSON = "release.json"
RELEASE_P7S = "release.json.p7s"


def previous_release_files(out_dir: Path) -> set[str]:
    """What an earlier compose wrote in `out_dir`, told by its release.json (older outputs
    carry no output record)."""
    try:
        release = json.loads((out_dir / RELEASE_JSON).read_text())
        files = {str(o["file"]) for o in release["outputs"]}
        if release.get("sbom"):
            files.add(str(release["sbom"]["file"]))
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {RELEASE_JSON, RELEASE_P7S} | {f for f in files if "/" not in f}


def release_output(manifest: Manifest, out_dir: Path, force: bool = False) -> util.OutputDir:
    """OUT_DIR under the output-folder rule, its names checked now, not after minutes of work.
    Stage into it with `staging(last=RELEASE_LAST)`."""
    out = util.OutputDir(
        out_dir, "compose", force=force, replace=True, previous=previous_release_files
    )
    names = [outputs.output_name(manifest.stem, o.format, o.platform) for o in manifest.outputs]
    out.check([*names, sbom_name(manifest), RELEASE_JSON, RELEASE_P7S])
    return out


# Moved in last (and an earlier one removed first): a release.json describes complete files.
RELEASE_LAST = [RELEASE_P7S, RELEASE_JSON]


def sbom_name(manifest: Manifest) -> str:
    return f"{manifest.stem}.spdx.json"
