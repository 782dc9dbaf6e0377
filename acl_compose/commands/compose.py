"""`acl-compose compose|inspect|verify`: one manifest in, one signed, verifiable release out."""

from __future__ import annotations

from pathlib import Path

import click

from acl_compose import ui
from acl_compose.commands import options
from acl_compose.ui import App, pass_app


@ui.spelled({
    "--release": "base.release in the manifest",
    "--board": "base.board in the manifest",
    "--channel": "base.channel in the manifest",
    "--cert": "the release certificate (signing.cert in the manifest)",
    "--key": "the release key (signing.key in the manifest)",
})  # fmt: skip
@click.command("compose")
@click.argument(
    "manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False, path_type=Path)
)
@options.output_dir(
    "Release folder: new, empty, or an earlier compose output (its files are replaced; "
    "nothing else there is touched)."
)
@options.FORCE
@click.option("--base-url", help="Override base.base_url (e.g. a loopback testbed server).")
@click.option(
    "--base-path", type=click.Path(path_type=Path),
    help="Use this local image or SDK output folder as the base instead of the manifest's base.",
)  # fmt: skip
@click.option("--trusted-key", metavar="FPR", help="Override base.trusted_key (fingerprint).")
@click.option(
    "--keyring", type=click.Path(dir_okay=False, path_type=Path), help="Override base.keyring."
)
@click.option(
    "--offline", is_flag=True, help="Use only cached base artifacts and sysext downloads."
)
@click.option(
    "--debian-mirror",
    metavar="URL",
    help="Debian mirror for the sysexts' deb sources (default: $ACL_COMPOSE_DEBIAN_MIRROR or "
    "https://deb.debian.org/debian).",
)
@click.option(
    "--check-reproducible", is_flag=True,
    help="Compose twice with separate caches; write OUT_DIR only if every byte matches.",
)  # fmt: skip
@options.passphrase
@pass_app
def compose_cmd(
    app: App,
    manifest_path: Path,
    out_dir: Path,
    force: bool,
    base_url: str | None,
    base_path: Path | None,
    trusted_key: str | None,
    keyring: Path | None,
    offline: bool,
    debian_mirror: str | None,
    check_reproducible: bool,
    passphrase_file: Path | None,
    passphrase_env: str | None,
) -> None:
    """Compose the release described by MANIFEST into OUT_DIR, signed.

    The key passphrase options override the manifest's signing.passphrase_file.
    """
    from acl_compose.compose import compose, load_manifest

    overrides = {
        "base_url": base_url,
        "path": base_path,
        "trusted_key": trusted_key,
        "keyring": keyring,
        "offline": offline,
    }
    passphrase = options.read_passphrase(passphrase_file, passphrase_env)
    m = load_manifest(manifest_path, overrides)
    m.debian_mirror = debian_mirror
    if check_reproducible:
        from acl_compose.provenance import check_reproducible as twice

        release = twice(m, out_dir, app.cache_dir, force=force, passphrase=passphrase)
    else:
        release = compose(m, out_dir, app.cache_dir, force=force, passphrase=passphrase)
    lines = [
        f"{out_dir}/{o['file']}  {o['format']}  sha256 {o['sha256']}" for o in release["outputs"]
    ]
    lines += [f"{out_dir}/release.json", f"{out_dir}/release.json.p7s"]
    if "reproducible" in release:
        n = len(release["reproducible"]["files"])
        lines.append(f"reproducible: {n} files byte-identical across two separate builds")
    app.emit(release, lines)


@click.command("inspect")
@click.argument("image_path", metavar="IMAGE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-verify", is_flag=True, help="Skip recomputing the /usr hash tree (faster).")
@pass_app
def inspect_cmd(app: App, image_path: Path, no_verify: bool) -> None:
    """Show what a disk image holds: partitions, version, verity, OEM, Ignition, sysexts."""
    from acl_compose.compose import format_text, inspect_image

    report = inspect_image(image_path, verify_usr=not no_verify)
    app.emit(report, format_text(report))


@click.command("verify")
@click.argument("out_dir", metavar="OUT_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--cert", "cert", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="The release signing certificate you trust (PEM).",
)  # fmt: skip
@pass_app
def verify_cmd(app: App, out_dir: Path, cert: Path) -> None:
    """Check a composed release offline; exit 0 only if everything holds."""
    from acl_compose.compose import raise_on_failure, verify_release

    rep = verify_release(out_dir, cert)
    app.emit(
        rep.to_json(),
        [f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}" for c in rep.checks],
    )
    raise_on_failure(rep)


COMMANDS: list[click.Command] = [compose_cmd, inspect_cmd, verify_cmd]
