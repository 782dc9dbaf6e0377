"""`acl-compose fetch`: download and verify a Flatcar release."""

from __future__ import annotations

from pathlib import Path

import click

from acl_compose.commands import options
from acl_compose.commands.options import usage_check
from acl_compose.fetch import BOARDS, CHANNELS, CURRENT, check_artifact_name, check_version
from acl_compose.trust import gpg
from acl_compose.ui import App, human_size, info, pass_app
from acl_compose.util import OutputDir


def _artifacts(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(check_artifact_name(n) for n in names)


@click.command("fetch")
@click.option("--channel", type=click.Choice(CHANNELS), default="stable", show_default=True,
              help="Release channel (picks Flatcar's server for it).")  # fmt: skip
@click.option(
    "--release", "release", default=CURRENT, show_default=True,
    callback=usage_check(lambda v: v if v == CURRENT else check_version(v)),
    help="VERSION (MAJOR.MINOR.PATCH) or 'current'.",
)  # fmt: skip
@click.option("--board", type=click.Choice(BOARDS), default="amd64-usr", show_default=True,
              help="Architecture board directory.")  # fmt: skip
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
    callback=usage_check(_artifacts),
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
    callback=usage_check(gpg.normalize_fingerprint),
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
@options.output_dir(
    "Also place the verified files here (hard links when possible): a new or empty folder, "
    "or an earlier `fetch` output (exports accumulate).",
    required=False,
)
@options.FORCE
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
    out_dir: Path | None,
    force: bool,
) -> None:
    """Download a Flatcar release and verify it against its signed SHA512 DIGESTS.

    Each file's DIGESTS is checked with gpgv and the pinned key first, then the file is
    accepted only if its SHA512 matches. Prints the verified files' paths, one per line (or a
    JSON object with --json, listing the checks that ran for each file).
    """
    from acl_compose import fetch as fetch_mod

    if out_dir:
        OutputDir(out_dir, "fetch", force=force)  # refused now, not after the download
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
    if out_dir:
        paths = fetch_mod.export(result.artifacts, out_dir, force=force)
        for entry, path in zip(data["artifacts"], paths, strict=True):
            entry["output"] = str(path)
    app.emit(data, [str(p) for p in paths])


COMMANDS: list[click.Command] = [fetch_cmd]
