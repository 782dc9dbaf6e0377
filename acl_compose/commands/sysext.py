"""`acl-compose sysext build|check`: signed system extension images and pre-boot checks."""

from __future__ import annotations

from pathlib import Path

import click

from acl_compose import sysext
from acl_compose.commands import options
from acl_compose.ui import App, pass_app, step, warn


@click.group("sysext")
def sysext_group() -> None:
    """Build signed systemd-sysext images from bundles, and check them before boot."""


@sysext_group.command("build")
@click.argument("bundle_dir", type=click.Path(file_okay=False, path_type=Path))
@options.output_dir(
    "Folder for NAME.raw: new, empty, or an earlier `sysext build` output (builds accumulate)."
)
@options.FORCE
@click.option(
    "--key", type=click.Path(dir_okay=False, path_type=Path),
    help="Signing key (PEM) for the root-hash signature [default: unsigned].",
)  # fmt: skip
@click.option(
    "--cert", type=click.Path(dir_okay=False, path_type=Path), help="Certificate matching --key."
)
@options.passphrase
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ddi", "raw"]),
    default="ddi",
    show_default=True,
    help="ddi: a GPT disk image; raw: a bare filesystem with systemd's side files.",
)
@click.option("--offline", is_flag=True, help="Take url/deb sources only from the download cache.")
@click.option(
    "--debian-mirror",
    metavar="URL",
    help="Debian mirror for deb sources (default: $ACL_COMPOSE_DEBIAN_MIRROR or "
    "https://deb.debian.org/debian).",
)
@pass_app
def build_cmd(
    app: App,
    bundle_dir: Path,
    out_dir: Path,
    force: bool,
    key: Path | None,
    cert: Path | None,
    passphrase_file: Path | None,
    passphrase_env: str | None,
    fmt: str,
    offline: bool,
    debian_mirror: str | None,
) -> None:
    """Build OUT_DIR/<name>.raw from BUNDLE_DIR (sysext.yaml + files/)."""
    if (key is None) != (cert is None):
        raise click.UsageError("--key and --cert go together: give both, or neither (unsigned)")
    passphrase = options.read_passphrase(passphrase_file, passphrase_env)
    with step(f"building sysext from {bundle_dir}"):
        result = sysext.build(
            bundle_dir,
            out_dir,
            key=key,
            cert=cert,
            passphrase=passphrase,
            fmt=fmt,
            cache_dir=app.cache_dir,
            force=force,
            offline=offline,
            debian_mirror=debian_mirror,
            progress=app.interactive,
        )
    if not result["signed"]:
        warn(f"{result['path']} is unsigned: pass --key and --cert to sign its dm-verity root hash")
    lines = [
        f"{result['path']}: {result['name']} {result['version']} ({fmt}, "
        f"{'signed' if result['signed'] else 'unsigned'})",
        f"  root hash: {result['root_hash']}",
        f"  sha256:    {result['sha256']}",
    ]
    for d in sysext.downloads(result["contents"]):
        what = f"{d['package']} {d['version']}" if d["kind"] == "deb" else d["url"]
        lines.append(f"  {d['kind']}: {what} (sha256 {d['sha256'][:16]}…)")
    for kind, path in result.get("side_files", {}).items():
        lines.append(f"  {kind}: {path}")
    app.emit(result, lines)


@sysext_group.command("check")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--base",
    "base",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The base image's os-release file (ID, VERSION_ID, SYSEXT_LEVEL).",
)
@click.option(
    "--cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Certificate the images must be signed with [default: signatures not checked].",
)
@pass_app
@click.pass_context
def check_cmd(
    ctx: click.Context, app: App, images: tuple[Path, ...], base: Path, cert: Path | None
) -> None:
    """Check offline that systemd-sysext on BASE would merge each IMAGE (exit 0 if all do)."""
    results = sysext.check(list(images), base, cert=cert)
    if len(images) > 1:  # what one extension would hide of another once both are merged
        listings = {}
        for r in results:
            if r.ok:
                listings[Path(r.image).name] = sysext.image_contents(r.image, {})
        for line in sysext.overlap_warnings(listings):
            warn(line)
    app.emit([r.to_json() for r in results], [r.line() for r in results])
    if not all(r.ok for r in results):
        ctx.exit(1)


COMMANDS: list[click.Command] = [sysext_group]
