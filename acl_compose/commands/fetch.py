"""`acl-compose fetch`: download and verify a Flatcar release."""

from __future__ import annotations

from pathlib import Path

import click

from acl_compose.fetch import BOARDS, CHANNELS, CURRENT
from acl_compose.ui import App, human_size, info, pass_app


@click.command("fetch")
@click.option("--channel", type=click.Choice(CHANNELS), default="stable", show_default=True)
@click.option(
    "--release", "release", default=CURRENT, show_default=True, help="VERSION or 'current'."
)
@click.option("--board", type=click.Choice(BOARDS), default="amd64-usr", show_default=True)
@click.option(
    "--base-url",
    help="Board directory holding VERSION/ folders (https://, file://), or a local directory"
    " holding one release's files (SDK output). [default: the channel's release server]",
)
@click.option(
    "--artifact",
    "artifacts",
    multiple=True,
    metavar="NAME",
    help="File to fetch (repeatable) instead of the compose set (version.txt is always fetched).",
)
@click.option(
    "--keyring",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Public key file to trust (armored or binary). [default: download Flatcar's key]",
)
@click.option(
    "--trusted-key",
    metavar="FPR",
    help="Primary fingerprint to trust. [default: Flatcar's F88CFEDE...0593B34A]",
)
@click.option("--offline", is_flag=True, help="Use only the cache; fail if something is missing.")
@click.option(
    "--check-file-signatures",
    is_flag=True,
    help="Also check each file's own detached signature (F.sig) with gpgv, beside the SHA512"
    " from the signed DIGESTS. Slower: gpgv hashes the file a second time.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Every check there is; today the same as --check-file-signatures.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also place the verified files in DIR (hard links when possible).",
)
@pass_app
def fetch_cmd(
    app: App,
    channel: str,
    release: str,
    board: str,
    base_url: str | None,
    artifacts: tuple[str, ...],
    keyring: Path | None,
    trusted_key: str | None,
    offline: bool,
    check_file_signatures: bool,
    strict: bool,
    output: Path | None,
) -> None:
    """Download a Flatcar release and verify it against its signed SHA512 DIGESTS.

    Each file's DIGESTS is checked with gpgv and the pinned key first, then the file is
    accepted only if its SHA512 matches. Prints the verified files' paths, one per line (or a
    JSON object with --json, listing the checks that ran for each file).
    """
    from acl_compose import fetch as fetch_mod

    result = fetch_mod.fetch_release(
        cache_dir=app.cache_dir,
        channel=channel,
        release=release,
        board=board,
        base_url=base_url,
        artifacts=list(artifacts) or None,
        keyring=keyring,
        trusted_key=trusted_key,
        offline=offline,
        progress=app.interactive,
        check_file_signatures=check_file_signatures or strict,
    )
    # Said even without a terminal (and under --json, on stderr): what was checked, by whom.
    for a in result.artifacts:
        info(
            f"verified {a.name}: {human_size(a.size)}, SHA512 against DIGESTS"
            f"{' and file signature' if a.file_signature else ''}, signed by "
            f"{a.signature.primary_fingerprint}{' (cached)' if a.cached else ''}"
        )
    paths = [a.path for a in result.artifacts]
    data = result.to_json()
    if output:
        paths = fetch_mod.export(result.artifacts, output)
        for entry, path in zip(data["artifacts"], paths, strict=True):
            entry["output"] = str(path)
    app.emit(data, [str(p) for p in paths])


COMMANDS: list[click.Command] = [fetch_cmd]
