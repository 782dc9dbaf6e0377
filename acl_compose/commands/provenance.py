"""`acl-compose sbom|diff`: what a release is made of, and what changed between two."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from acl_compose.errors import InputError
from acl_compose.ui import App, pass_app


@click.command("sbom")
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
    help="Write the SPDX JSON here [default: stdout].",
)  # fmt: skip
@click.option(
    "--cert", type=click.Path(dir_okay=False, path_type=Path),
    help="Check release.json.p7s with this certificate first (recommended).",
)  # fmt: skip
@pass_app
def sbom_cmd(app: App, out_dir: Path, output: Path | None, cert: Path | None) -> None:
    """Write the SPDX 2.3 SBOM of the release in OUT_DIR, checked against its release.json."""
    from acl_compose import util
    from acl_compose.compose import read_release_sbom

    rj = out_dir / "release.json"
    if not rj.is_file():
        raise InputError(f"{rj}: missing", hint="give the directory written by `compose -o`")
    data = rj.read_bytes()
    if cert is not None:
        from acl_compose.trust import signing

        p7s = out_dir / "release.json.p7s"
        if not p7s.is_file():
            raise InputError(f"{p7s}: missing", hint="copy the whole release directory")
        signing.verify_detached(data, p7s.read_bytes(), signing.load_cert(cert))
    try:
        release = json.loads(data)
    except ValueError as e:
        raise InputError(f"{rj}: not JSON: {e}") from None
    sbom = read_release_sbom(out_dir, release)
    if output is None:
        sys.stdout.buffer.write(sbom)
        return
    if output.exists() and output.read_bytes() != sbom:
        raise InputError(
            f"{output} exists and holds something else",
            hint="choose another --output path or remove that file yourself",
        )
    util.atomic_write(output, sbom)
    app.emit({"sbom": str(output), "sha256": release["sbom"]["sha256"]}, f"{output}")


@click.command("diff")
@click.argument("old", metavar="OLD", type=click.Path(path_type=Path))
@click.argument("new", metavar="NEW", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result (as global --json).")
@pass_app
def diff_cmd(app: App, old: Path, new: Path, as_json: bool) -> int:
    """What changed from OLD to NEW: two release directories or two disk images.

    Exit status as diff(1): 0 no differences, 1 differences, 2 trouble.
    """
    from acl_compose.errors import AclComposeError
    from acl_compose.provenance import diff, format_text

    try:
        result = diff(old, new)
    except AclComposeError as e:
        e.exit_code = 2  # type: ignore[attr-defined]
        raise
    if as_json:
        app.json = True
    app.emit(result, format_text(result))
    return 1 if result["changed"] else 0


COMMANDS: list[click.Command] = [sbom_cmd, diff_cmd]
