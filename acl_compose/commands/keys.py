"""`acl-compose keys`: release signing keys."""

from __future__ import annotations

from pathlib import Path

import click

from acl_compose.ui import App, pass_app


@click.group("keys")
def keys_group() -> None:
    """Release signing keys and certificates."""


@keys_group.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory.")
@click.option("--common-name", default="acl-compose release signing", show_default=True)
@click.option("--rsa", is_flag=True, help="RSA 4096 instead of EC P-256.")
@click.option("--passphrase-file", type=click.Path(path_type=Path), help="Encrypt the key.")
@click.option("--passphrase-env", metavar="VAR", help="Encrypt with the passphrase in $VAR.")
@click.option("--force", is_flag=True, help="Replace an existing key in DIR.")
@pass_app
def generate_cmd(
    app: App,
    out_dir: Path,
    common_name: str,
    rsa: bool,
    passphrase_file: Path | None,
    passphrase_env: str | None,
    force: bool,
) -> None:
    """Write DIR/release.key (0600) and a self-signed DIR/release.crt (PEM)."""
    from acl_compose.trust import signing  # cryptography is slow to import: only when used

    passphrase = signing.read_passphrase(passphrase_file, passphrase_env)
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
