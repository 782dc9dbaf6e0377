"""`acl-compose verity`: dm-verity hash trees and root-hash signatures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from acl_compose.errors import InputError, VerificationError
from acl_compose.trust import verity
from acl_compose.ui import App, info, pass_app
from acl_compose.util import atomic_write


def _layout_options(fn: Any) -> Any:
    """Options shared by format and verify; meanings as in veritysetup."""
    options = [
        click.option("--hash-offset", type=int, default=None, help="Byte offset of the hash area."),
        click.option("--salt", default=None, help="Salt as hex, '-' for none [default: random]."),
        click.option("--hash", "algorithm", default=None, help="Hash algorithm [default: sha256]."),
        click.option("--data-block-size", type=int, default=None, help="[default: 4096]"),
        click.option("--hash-block-size", type=int, default=None, help="[default: 4096]"),
        click.option("--format", "hash_type", type=int, default=None, help="Hash type 0 or 1."),
        click.option("--no-superblock", is_flag=True, help="Do not use a verity superblock."),
        click.option("--data-blocks", type=int, default=None, help="Data blocks to cover."),
        click.option("--uuid", default=None, help="Superblock UUID [default: random]."),
        click.option(
            "--workers", type=int, default=None, help="Hashing processes [default: CPUs]."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _read_root_hash_file(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError as e:
        raise InputError(f"cannot read root hash file {path}: {e.strerror}") from None
    if not text:
        raise InputError(f"root hash file {path} is empty")
    return text


@click.group("verity")
def verity_group() -> None:
    """dm-verity hash trees (bit-exact with veritysetup) and root-hash signatures."""


@verity_group.command("format", short_help="Build a hash tree (prints the root hash).")
@click.argument("data", type=click.Path(path_type=Path))
@click.argument("hash_file", metavar="[HASH]", required=False, type=click.Path(path_type=Path))
@_layout_options
@click.option(
    "--root-hash-file", type=click.Path(path_type=Path), help="Also write the root hash here."
)
@pass_app
def format_cmd(
    app: App,
    data: Path,
    hash_file: Path | None,
    hash_offset: int | None,
    salt: str | None,
    algorithm: str | None,
    data_block_size: int | None,
    hash_block_size: int | None,
    hash_type: int | None,
    no_superblock: bool,
    data_blocks: int | None,
    uuid: str | None,
    workers: int | None,
    root_hash_file: Path | None,
) -> None:
    """Build the hash tree of DATA into HASH (or into DATA at --hash-offset).

    Prints the root hash as the last line of stdout.
    """
    result = verity.create(
        data,
        hash_file,
        hash_offset=hash_offset,
        salt=verity.parse_salt(salt),
        algorithm=algorithm or "sha256",
        data_block_size=data_block_size or 4096,
        hash_block_size=hash_block_size or 4096,
        hash_type=1 if hash_type is None else hash_type,
        superblock=not no_superblock,
        data_blocks=data_blocks,
        uuid=uuid,
        workers=workers,
    )
    if root_hash_file is not None:
        atomic_write(root_hash_file, result.root_hash.encode())  # no newline, as veritysetup
    if not app.json:
        info(
            f"{result.data_blocks} data blocks of {result.data_block_size}, "
            f"{result.algorithm} type {result.hash_type}, salt {result.salt.hex() or '-'}, "
            f"hash offset {result.hash_offset}, {result.hash_size} hash bytes"
            + (f", uuid {result.uuid}" if result.uuid else "")
        )
    app.emit(result.to_json(), result.root_hash)


@verity_group.command("verify", short_help="Check data and tree against a root hash.")
@click.argument("args", nargs=-1, metavar="DATA [HASH] ROOT_HASH")
@_layout_options
@click.option(
    "--root-hash-file", type=click.Path(path_type=Path), help="Read the root hash from here."
)
@pass_app
def verify_cmd(
    app: App,
    args: tuple[str, ...],
    hash_offset: int | None,
    salt: str | None,
    algorithm: str | None,
    data_block_size: int | None,
    hash_block_size: int | None,
    hash_type: int | None,
    no_superblock: bool,
    data_blocks: int | None,
    uuid: str | None,
    workers: int | None,
    root_hash_file: Path | None,
) -> None:
    """Check DATA and its hash tree against ROOT_HASH; names the first corrupted block."""
    paths = list(args)
    if root_hash_file is not None:
        root_hash = _read_root_hash_file(root_hash_file)
    elif paths:
        root_hash = paths.pop()
    else:
        raise click.UsageError("missing ROOT_HASH")
    if not 1 <= len(paths) <= 2:
        raise click.UsageError("expected DATA [HASH] ROOT_HASH")
    data = Path(paths[0])
    hash_file = Path(paths[1]) if len(paths) == 2 else None
    result = verity.verify(
        data,
        hash_file,
        root_hash,
        hash_offset=hash_offset,
        salt=verity.parse_salt(salt),
        algorithm=algorithm,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
        hash_type=hash_type,
        superblock=not no_superblock,
        data_blocks=data_blocks,
        uuid=uuid,
        workers=workers,
    )
    app.emit(
        {**result.to_json(), "verified": True},
        f"{data}: {result.data_blocks} data blocks verified against {result.root_hash}",
    )


@verity_group.command("sign", short_help="Sign a root hash (DER PKCS#7).")
@click.argument("root_hash", required=False)
@click.option("--root-hash-file", type=click.Path(path_type=Path), help="Read the root hash here.")
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path))
@click.option("--cert", "cert_path", required=True, type=click.Path(path_type=Path))
@click.option("--passphrase-file", type=click.Path(path_type=Path), help="Key passphrase file.")
@click.option("--passphrase-env", metavar="VAR", help="Environment variable with the passphrase.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="OUT.p7s")
@pass_app
def sign_cmd(
    app: App,
    root_hash: str | None,
    root_hash_file: Path | None,
    key_path: Path,
    cert_path: Path,
    passphrase_file: Path | None,
    passphrase_env: str | None,
    output: Path,
) -> None:
    """Sign a root hash: DER PKCS#7 detached over its ASCII hex, as the kernel/systemd check."""
    from acl_compose.trust import signing  # cryptography is slow to import; format does not need it

    if (root_hash is None) == (root_hash_file is None):
        raise click.UsageError("give either ROOT_HASH or --root-hash-file")
    if root_hash_file is not None:
        root_hash = _read_root_hash_file(root_hash_file)
    assert root_hash is not None
    root_hash = signing.normalize_root_hash(root_hash)
    passphrase = signing.read_passphrase(passphrase_file, passphrase_env)
    cert = signing.load_cert(cert_path)
    key = signing.load_key(key_path, passphrase)
    try:
        signature = signing.sign_root_hash(root_hash, key, cert)
    except InputError as e:
        if "does not belong" in e.message:
            raise InputError(
                f"key {key_path} does not belong to certificate {cert_path}", e.hint
            ) from None
        raise
    atomic_write(output, signature)
    fingerprint = signing.cert_fingerprint(cert)
    app.emit(
        {
            "root_hash": root_hash,
            "signature": str(output),
            "certificate_fingerprint": fingerprint,
        },
        f"signed {root_hash} -> {output}",
    )


@verity_group.command("check-signature", short_help="Check a root-hash signature.")
@click.argument("root_hash")
@click.argument("signature", type=click.Path(path_type=Path))
@click.option("--cert", "cert_path", required=True, type=click.Path(path_type=Path))
@pass_app
def check_signature_cmd(app: App, root_hash: str, signature: Path, cert_path: Path) -> None:
    """Check SIGNATURE (DER PKCS#7) over ROOT_HASH by --cert; exit 1 with the reason if not."""
    from acl_compose.trust import signing

    cert = signing.load_cert(cert_path)
    try:
        der = signature.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read signature {signature}: {e.strerror}") from None
    try:
        signing.verify_root_hash(root_hash, der, cert)
    except VerificationError as e:
        raise VerificationError(f"{signature}: {e.message}", e.hint) from None
    fingerprint = signing.cert_fingerprint(cert)
    app.emit(
        {
            "valid": True,
            "root_hash": root_hash.strip().lower(),
            "certificate_fingerprint": fingerprint,
        },
        f"{signature}: valid signature of {root_hash.strip().lower()} "
        f"by {cert.subject.rfc4514_string()}",
    )


COMMANDS: list[click.Command] = [verity_group]
