"""Flatcar releases: the typed `version.txt`, channels, and where a release's files live.

Release servers look like `https://{channel}.release.flatcar-linux.net/{board}/{VERSION}/FILE`,
with `current/` pointing at the newest version. A *base URL* is the board directory that
holds the `VERSION/` folders; it may also be `file://...` or a local directory, and a local
directory may hold the files directly (a Flatcar SDK build output such as
`.../images/amd64-usr/latest/`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from acl_compose.errors import InputError
from acl_compose.ui import opt

CHANNELS = ("alpha", "beta", "stable", "lts")
BOARDS = ("amd64-usr", "arm64-usr")
DEFAULT_ARTIFACTS = ("version.txt", "flatcar_production_image.bin.bz2")
CURRENT = "current"

# Versions become path components and cache keys: digits and a few safe characters only
# (SDK builds look like 3510.2.8+dev-2023-09-19), of bounded length (int() of a part must not
# meet Python's 4300-digit limit).
_VERSION_RE = re.compile(r"^[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}([+_~-][A-Za-z0-9._+~-]{0,100})?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_+~-][A-Za-z0-9._+~-]*$")


def channel_for_version(version: str) -> str:
    """Middle number 0 alpha, 1 beta, 2 stable, anything else LTS (FACTS section 1)."""
    check_version(version)
    middle = int(version.split(".")[1])
    return {0: "alpha", 1: "beta", 2: "stable"}.get(middle, "lts")


def check_version(version: str, what: str = "release version") -> str:
    if not _VERSION_RE.match(version):
        raise InputError(
            f"{what} {version!r} is not a Flatcar version like 3510.2.8",
            hint="write it as MAJOR.MINOR.PATCH (or `current` for the newest release)",
        )
    return version


def check_artifact_name(name: str) -> str:
    """Artifact names are plain file names on the release server, never paths."""
    if not _NAME_RE.match(name) or ".." in name:
        raise InputError(
            f"artifact name {name!r} is not a plain file name",
            hint="pass the file name as published, e.g. flatcar_production_image.bin.bz2",
        )
    return name


@dataclass(frozen=True)
class Release:
    """One Flatcar release, as described by its `version.txt`."""

    version: str
    build: int
    branch: int
    patch: int
    version_id: str
    build_id: str
    sdk_version: str
    channel: str
    raw: dict[str, str] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("raw")
        return data


def parse_version_txt(text: str, source: str = "version.txt") -> Release:
    """Parse shell `KEY=value` lines (values may be quoted) into a Release."""
    raw: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.match(r"^[A-Z_][A-Z0-9_]*$", key):
            raise InputError(
                f"{source}: line {lineno} is not KEY=value: {line[:60]!r}",
                hint="this does not look like a Flatcar version.txt",
            )
        try:
            words = shlex.split(value)
        except ValueError as e:
            raise InputError(f"{source}: line {lineno}: {e}") from e
        raw[key] = words[0] if words else ""
    if "FLATCAR_VERSION" not in raw:
        raise InputError(
            f"{source}: FLATCAR_VERSION missing",
            hint="this does not look like a Flatcar version.txt",
        )
    version = check_version(raw["FLATCAR_VERSION"], f"{source}: FLATCAR_VERSION")
    major, minor, patch = (re.match(r"\d+", p).group(0) for p in version.split(".")[:3])  # type: ignore[union-attr]

    def number(key: str, default: str) -> int:
        value = raw.get(key, default)
        if not re.fullmatch(r"[0-9]{1,9}", value):  # not str.isdigit: int("²") fails
            raise InputError(f"{source}: {key}={value!r} is not a number")
        return int(value)

    return Release(
        version=version,
        build=number("FLATCAR_BUILD", major),
        branch=number("FLATCAR_BRANCH", minor),
        patch=number("FLATCAR_PATCH", patch),
        version_id=raw.get("FLATCAR_VERSION_ID", version),
        build_id=raw.get("FLATCAR_BUILD_ID", ""),
        sdk_version=raw.get("FLATCAR_SDK_VERSION", ""),
        channel=channel_for_version(version),
        raw=raw,
    )


def default_base_url(channel: str = "stable", board: str = "amd64-usr") -> str:
    if channel not in CHANNELS:
        raise InputError(f"unknown channel {channel!r}", hint=f"use one of {', '.join(CHANNELS)}")
    if board not in BOARDS:
        raise InputError(f"unknown board {board!r}", hint=f"use one of {', '.join(BOARDS)}")
    return f"https://{channel}.release.flatcar-linux.net/{board}/"


@dataclass(frozen=True)
class Location:
    """Where a release's files are: `base` (normalized URL ending in '/') and its layout.

    `flat` is True for a local directory holding the files directly (no VERSION/ folders).
    """

    base: str
    flat: bool = False

    @property
    def is_local(self) -> bool:
        return self.base.startswith("file://")

    def directory(self, version: str) -> str:
        """URL of the folder holding one release's files (ends in '/')."""
        if self.flat:
            return self.base
        if version != CURRENT:
            check_version(version)
        return f"{self.base}{version}/"

    def url(self, version: str, name: str) -> str:
        return self.directory(version) + check_artifact_name(name)


def local_path(url: str) -> Path:
    """The filesystem path of a file:// URL."""
    return Path(unquote(urlparse(url).path))


def locate(base_url: str) -> Location:
    """Normalize a --base-url: http(s)://, file://, or a local directory path."""
    if base_url.startswith(("http://", "https://")):
        parsed = urlparse(base_url)
        if not parsed.netloc:
            raise InputError(f"base URL {base_url!r} has no host")
        return Location(base_url.rstrip("/") + "/")
    if base_url.startswith("file://"):
        path = local_path(base_url)
    elif "://" in base_url:
        raise InputError(
            f"base URL {base_url!r}: unsupported scheme",
            hint="use https://, http://, file:// or a local directory",
        )
    else:
        path = Path(base_url)
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise InputError(
            f"base directory {path} does not exist",
            hint=f"check {opt('--base-url', 'the base URL')}",
        )
    # A directory with version.txt in it is a release folder itself (SDK output).
    return Location(path.as_uri().rstrip("/") + "/", flat=(path / "version.txt").is_file())
