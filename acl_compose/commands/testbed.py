"""`acl-compose testbed build|serve`: a local Flatcar-shaped release to test against."""

from __future__ import annotations

import threading
from pathlib import Path

import click

from acl_compose.ui import App, pass_app


@click.group("testbed")
def testbed() -> None:
    """Build and serve a Flatcar-shaped testbed release made from Debian packages."""


@testbed.command("build")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Copy the release tree here (default: use it in place in the cache).",
)
@click.option(
    "--version",
    "version",
    default=None,
    metavar="VERSION",
    help="Release version to build (default 9999.2.0).",
)
@click.option("--force", is_flag=True, help="Rebuild even when the cache has this build.")
@pass_app
def build_cmd(app: App, output: Path | None, version: str | None, force: bool) -> None:
    """Build the testbed release (cached; needs root for a cold build)."""
    from acl_compose.testbed import DEFAULT_VERSION, build

    info = build(app.cache_dir, version or DEFAULT_VERSION, output=output, force=force)
    app.emit(
        info,
        [
            f"release:     {info['release_dir']}",
            f"version:     {info['version']}",
            f"image:       {info['image']}",
            f"root hash:   {info['root_hash']}",
            f"key:         {info['key_file']}",
            f"fingerprint: {info['fingerprint']}",
            f"{'cached' if info['cached'] else 'built'} in {info['seconds']}s",
        ],
    )


@testbed.command("serve")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=int, default=0, show_default=True, help="0 picks a free port.")
@click.option("--bind", default="127.0.0.1", show_default=True)
@pass_app
def serve_cmd(app: App, directory: Path, port: int, bind: str) -> None:
    """Serve a release tree over HTTP until Ctrl-C; prints the --base-url for fetch."""
    from acl_compose.fetch import serve

    with serve(directory, bind, port) as server:
        app.emit(
            {"url": server.url, "directory": str(directory)}, f"serving {directory} at {server.url}"
        )
        click.echo("press Ctrl-C to stop", err=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


COMMANDS: list[click.Command] = [testbed]
