"""`acl-compose verity`: dm-verity hash trees and root-hash signatures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from acl_compose.commands import options
from acl_compose.commands.options import usage_check
from acl_compose.errors import InputError, VerificationError
from acl_compose.trust import verity
from acl_compose.ui import App, info, opt, pass_app
from acl_compose.util import atomic_write, refuse_overwriting_inputs


def _block_size(value: int) -> int:
    if not (verity.MIN_BLOCK <= value <= verity.MAX_BLOCK) or value & (value - 1):
        raise InputError(
            f"{value} is not a power of two between {verity.MIN_BLOCK} and {verity.MAX_BLOCK}"
        )
    return value


def _layout_options(for_verify: bool) -> Any:
    """Options shared by format and verify; meanings as in veritysetup. Their defaults differ:
    format makes a new layout, verify reads it from the superblock."""

    def default(fmt: str, ver: str) -> str:
        return f"[default: {ver}]" if for_verify else f"[default: {fmt}]"

    sb = "from the superblock; "
    options = [
        click.option(
            "--hash-offset", type=click.IntRange(0), default=None,
            help="Byte offset of the tree: inside HASH, or inside DATA when HASH is not given "
            + default("0 in HASH", "0 in HASH; needed when the tree is inside DATA"),
        ),
        click.option(
            "--salt", default=None, callback=usage_check(verity.parse_salt),
            help="Salt as hex, '-' for none "
            + default("32 random bytes", sb + "none with --no-superblock"),
        ),
        click.option(
            "--hash", "algorithm", type=click.Choice(verity.ALGORITHMS),
            default=None if for_verify else "sha256", show_default=not for_verify,
            help="Hash algorithm" + (" " + default("", sb + "sha256 with --no-superblock")
                                      if for_verify else "."),
        ),
        click.option(
            "--data-block-size", type=int, default=None if for_verify else 4096,
            show_default=not for_verify, callback=usage_check(_block_size),
            help="Bytes per data block (a power of two, 512 to 65536)"
            + (" " + default("", sb + "4096 with --no-superblock") if for_verify else "."),
        ),
        click.option(
            "--hash-block-size", type=int, default=None if for_verify else 4096,
            show_default=not for_verify, callback=usage_check(_block_size),
            help="Bytes per hash block (a power of two, 512 to 65536)"
            + (" " + default("", sb + "4096 with --no-superblock") if for_verify else "."),
        ),
        click.option(
            "--format", "hash_type", type=click.IntRange(0, 1),
            default=None if for_verify else 1, show_default=not for_verify,
            help="Hash type: 1 (current) or 0 (original Chrome OS)"
            + (" " + default("", sb + "1 with --no-superblock") if for_verify else "."),
        ),
        click.option(
            "--no-superblock", is_flag=True,
            help="No verity superblock before the tree (the layout then comes from options).",
        ),
        click.option(
            "--data-blocks", type=click.IntRange(1), default=None,
            help="Data blocks to cover " + default("all of DATA", sb + "all of DATA"),
        ),
        click.option(
            "--uuid", default=None,
            help=("UUID the superblock must carry [default: any]" if for_verify
                  else "Superblock UUID [default: a random UUID]"),
        ),
        click.option(
            "--workers", type=click.IntRange(1), default=None,
            help="Hashing processes [default: one per CPU].",
        ),
    ]  # fmt: skip

    def deco(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return deco


def _root_hash_arg(text: str) -> str:
    """A root hash typed on the command line: malformed is a usage error (exit 2)."""
    try:
        verity.parse_root_hash(text)
    except InputError as e:
        raise click.BadParameter(e.message, param_hint="ROOT_HASH") from None
    return text.strip().lower()


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
@_layout_options(for_verify=False)
@click.option(
    "--in-place", is_flag=True,
    help="Write the tree into DATA, after its data (at the next hash block), as Flatcar's /usr.",
)  # fmt: skip
@click.option(
    "--root-hash-file", type=click.Path(path_type=Path),
    help="Also write the root hash here (hex, no newline, as veritysetup).",
)  # fmt: skip
@pass_app
def format_cmd(
    app: App,
    data: Path,
    hash_file: Path | None,
    hash_offset: int | None,
    salt: bytes | None,
    algorithm: str,
    data_block_size: int,
    hash_block_size: int,
    hash_type: int,
    no_superblock: bool,
    data_blocks: int | None,
    uuid: str | None,
    workers: int | None,
    in_place: bool,
    root_hash_file: Path | None,
) -> None:
    """Build the hash tree of DATA into the file HASH, or into DATA itself with --in-place or
    --hash-offset (DATA is written only when asked).

    Prints the root hash as the last line of stdout.
    """
    if hash_file is None and not in_place and hash_offset is None:
        raise click.UsageError(
            "missing HASH: give a file for the hash tree, or --in-place (or --hash-offset N) "
            "to write the tree into DATA"
        )
    if hash_file is not None and in_place:
        raise click.UsageError("give either HASH or --in-place, not both")
    refuse_overwriting_inputs(root_hash_file, data, hash_file)
    result = verity.create(
        data,
        hash_file,
        hash_offset=hash_offset,
        salt=salt,
        algorithm=algorithm,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
        hash_type=hash_type,
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
@click.argument("args", nargs=-1, metavar="DATA [HASH] [ROOT_HASH]")
@_layout_options(for_verify=True)
@click.option(
    "--root-hash-file", type=click.Path(path_type=Path),
    help="Read the root hash from this file instead of ROOT_HASH.",
)  # fmt: skip
@pass_app
def verify_cmd(
    app: App,
    args: tuple[str, ...],
    hash_offset: int | None,
    salt: bytes | None,
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
    """Check DATA and its hash tree (in HASH, or in DATA at --hash-offset) against ROOT_HASH.

    Says whether the root hash does not match the tree (a wrong hash or salt) or names the
    first corrupted data or hash block.
    """
    paths = list(args)
    if root_hash_file is not None:
        root_hash = _read_root_hash_file(root_hash_file)
    elif len(paths) >= 2:
        root_hash = _root_hash_arg(paths.pop())
    else:
        raise click.UsageError("missing ROOT_HASH (or --root-hash-file)")
    if not 1 <= len(paths) <= 2:
        raise click.UsageError("expected DATA [HASH] ROOT_HASH")
    data = Path(paths[0])
    hash_file = Path(paths[1]) if len(paths) == 2 else None
    result = verity.verify(
        data,
        hash_file,
        root_hash,
        hash_offset=hash_offset,
        salt=salt,
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


def _one_root_hash(args: list[str], root_hash_file: Path | None, rest: str) -> str:
    """ROOT_HASH as the first of `args`, or from --root-hash-file (then it is not given)."""
    if root_hash_file is not None:
        return _read_root_hash_file(root_hash_file)
    if not args:
        raise click.UsageError(f"missing ROOT_HASH (or {opt('--root-hash-file', 'a file')}){rest}")
    return _root_hash_arg(args.pop(0))


@verity_group.command("sign", short_help="Sign a root hash (DER PKCS#7).")
@click.argument("root_hash", metavar="[ROOT_HASH]", required=False)
@click.option(
    "--root-hash-file", type=click.Path(path_type=Path),
    help="Read the root hash from this file instead of ROOT_HASH.",
)  # fmt: skip
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path),
              help="Private key that signs (PEM, from `acl-compose keys generate`).")  # fmt: skip
@click.option("--cert", "cert_path", required=True, type=click.Path(path_type=Path),
              help="Certificate of --key (PEM), embedded in the signature.")  # fmt: skip
@options.passphrase
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Where to write the DER PKCS#7 signature (e.g. usr.roothash.p7s).")  # fmt: skip
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

    if root_hash is not None and root_hash_file is not None:
        raise click.UsageError("give either ROOT_HASH or --root-hash-file, not both")
    root_hash = _one_root_hash([root_hash] if root_hash else [], root_hash_file, "")
    refuse_overwriting_inputs(output, key_path, cert_path, root_hash_file)
    root_hash = signing.normalize_root_hash(root_hash)
    passphrase = options.read_passphrase(passphrase_file, passphrase_env)
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
@click.argument("args", nargs=-1, metavar="[ROOT_HASH] SIGNATURE")
@click.option(
    "--root-hash-file", type=click.Path(path_type=Path),
    help="Read the root hash from this file instead of ROOT_HASH.",
)  # fmt: skip
@click.option("--cert", "cert_path", required=True, type=click.Path(path_type=Path),
              help="The certificate (PEM) the signature must be made with.")  # fmt: skip
@pass_app
def check_signature_cmd(
    app: App, args: tuple[str, ...], root_hash_file: Path | None, cert_path: Path
) -> None:
    """Check SIGNATURE (DER PKCS#7) over ROOT_HASH by --cert; exit 1 with the reason if not."""
    from acl_compose.trust import signing

    rest = list(args)
    if root_hash_file is not None and len(rest) != 1:
        raise click.UsageError("with --root-hash-file, give only SIGNATURE")
    if root_hash_file is None and len(rest) != 2:
        raise click.UsageError("expected ROOT_HASH SIGNATURE (or --root-hash-file F SIGNATURE)")
    root_hash = _one_root_hash(rest, root_hash_file, "")
    signature = Path(rest[0])
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
