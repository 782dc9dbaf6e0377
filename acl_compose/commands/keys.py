"""`acl-compose keys`: release signing keys."""

from __future__ import annotations

from pathlib import Path

import click

from acl_compose.commands import options
from acl_compose.ui import App, pass_app, warn


@click.group("keys")
def keys_group() -> None:
    """Release signing keys and certificates."""


@keys_group.command("generate")
@options.output_dir(
    "Folder for release.key and release.crt: new, empty, or an earlier `keys generate` output "
    "(an existing key is replaced only with --force).  [required]",
    required=False,
)
@click.option("--out", "old_out", hidden=True, type=click.Path(file_okay=False, path_type=Path),
              help="Deprecated spelling of -o/--output.")  # fmt: skip
@click.option("--common-name", default="acl-compose release signing", show_default=True,
              help="Common name (CN) of the self-signed certificate.")  # fmt: skip
@click.option("--rsa", is_flag=True, help="RSA 4096 instead of EC P-256.")
@click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Encrypt the key with the passphrase on this file's first line.",
)  # fmt: skip
@click.option(
    "--passphrase-env", metavar="VAR", help="Encrypt the key with the passphrase in $VAR."
)
@click.option(
    "--force", is_flag=True,
    help="Write into a non-empty folder, and replace a key acl-compose generated there before.",
)  # fmt: skip
@pass_app
def generate_cmd(
    app: App,
    out_dir: Path | None,
    old_out: Path | None,
    common_name: str,
    rsa: bool,
    passphrase_file: Path | None,
    passphrase_env: str | None,
    force: bool,
) -> None:
    """Write DIR/release.key (0600) and a self-signed DIR/release.crt (PEM)."""
    from acl_compose.trust import signing  # cryptography is slow to import: only when used

    if old_out is not None:
        if out_dir is not None:
            raise click.UsageError("give -o/--output only once (--out is its old spelling)")
        warn("--out is deprecated: use -o/--output")
        out_dir = old_out
    if out_dir is None:
        raise click.UsageError("missing option '-o' / '--output'")
    if not common_name.strip():
        raise click.UsageError("--common-name is empty")
    passphrase = options.read_passphrase(passphrase_file, passphrase_env)
    key_path, cert_path = signing.generate(
        out_dir, common_name=common_name, rsa=rsa, passphrase=passphrase, force=force
    )
    fingerprint = signing.cert_fingerprint(signing.load_cert(cert_path))
    app.emit(
        {
            "key": str(key_path),
            "cert": str(cert_path),
            "certificate_fingerprint": fingerprint,
            "algorithm": "rsa4096" if rsa else "ec-p256",
            "encrypted": passphrase is not None,
        },
        [f"key:         {key_path}", f"certificate: {cert_path}", f"sha256:      {fingerprint}"],
    )


COMMANDS: list[click.Command] = [keys_group]
