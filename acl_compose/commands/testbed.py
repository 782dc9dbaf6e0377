"""`acl-compose testbed build|serve`: a local Flatcar-shaped release to test against."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import click

from acl_compose.commands import options
from acl_compose.commands.options import usage_check
from acl_compose.fetch import check_version
from acl_compose.ui import App, pass_app
from acl_compose.util import OutputDir


@click.group("testbed")
def testbed() -> None:
    """Build and serve a Flatcar-shaped testbed release made from Debian packages."""


@testbed.command("build")
@options.output_dir(
    "Also copy the release tree here: new, empty, or an earlier `testbed build` output "
    "[default: use it in place in the cache].",
    required=False,
)
@options.FORCE
@click.option(
    "--version",
    "version",
    default=None,
    metavar="VERSION",
    callback=usage_check(lambda v: check_version(v, "testbed version")),
    help="Release version to build (MAJOR.MINOR.PATCH) [default: 9999.2.0; 3760.2.0 with "
    "--flavor old].",
)
@click.option(
    "--flavor",
    type=click.Choice(["current", "old"]),
    default="current",
    show_default=True,
    help="current: today's Flatcar layout (1 GiB ESP/OEM, 2 GiB USR, btrfs /usr); "
    "old: before 3815 (128 MiB ESP/OEM, 1 GiB USR, ext2 /usr).",
)
@click.option("--rebuild", is_flag=True, help="Rebuild even when the cache has this build.")
@pass_app
def build_cmd(
    app: App, out_dir: Path | None, force: bool, version: str | None, flavor: str, rebuild: bool
) -> None:
    """Build the testbed release (cached; needs root for a cold build)."""
    from acl_compose.testbed import KEY_FILE, build

    # The output-folder rule is checked before a build that may take minutes.
    output = OutputDir(out_dir, "testbed build", force=force, replace=True) if out_dir else None
    info = build(app.cache_dir, version, force=rebuild, flavor=flavor)
    if output is not None:
        with output.staging() as stage:
            shutil.copytree(info["release_dir"], stage, symlinks=True, dirs_exist_ok=True)
        info["release_dir"] = str(output.path.resolve())
        info["key_file"] = str(output.path.resolve() / KEY_FILE)
    app.emit(
        info,
        [
            f"release:     {info['release_dir']}",
            f"version:     {info['version']} ({info.get('flavor', 'current')} flavour)",
            f"image:       {info['image']}",
            f"root hash:   {info['root_hash']}",
            f"key:         {info['key_file']}",
            f"fingerprint: {info['fingerprint']}",
            f"{'cached' if info['cached'] else 'built'} in {info['seconds']}s",
        ],
    )


@testbed.command("serve")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
    help="TCP port (the default is examples/manifest.yaml's); 0 picks a free one.",
)  # fmt: skip
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@pass_app
def serve_cmd(app: App, directory: Path, port: int, bind: str) -> None:
    """Serve a release tree over HTTP until Ctrl-C; prints the --base-url for fetch."""
    from acl_compose.fetch import serve

    with serve(directory, bind, port) as server:
        try:  # once the URL is out, Ctrl-C is how one stops: wherever it lands, exit 0
            app.emit(
                {"url": server.url, "directory": str(directory)},
                f"serving {directory} at {server.url}",
            )
            click.echo("press Ctrl-C to stop", err=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


COMMANDS: list[click.Command] = [testbed]
