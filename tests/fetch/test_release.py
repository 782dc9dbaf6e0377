"""release.py: version.txt parsing, channels, URL addressing."""

from __future__ import annotations

from pathlib import Path

import pytest

from acl_compose.errors import InputError
from acl_compose.fetch.release import (
    channel_for_version,
    check_artifact_name,
    default_base_url,
    locate,
    parse_version_txt,
)
from tests.flatcar_tree import VERSION_TXT


def test_parse_version_txt() -> None:
    rel = parse_version_txt(VERSION_TXT)
    assert (rel.build, rel.branch, rel.patch) == (3510, 2, 8)
    assert rel.version == rel.version_id == "3510.2.8"
    assert rel.build_id == "2023-09-19-1914"  # quotes removed
    assert rel.sdk_version == "3510.0.0"
    assert rel.channel == "stable"
    assert rel.raw["FLATCAR_BUILD_ID"] == "2023-09-19-1914"
    assert rel.to_json() == {
        "version": "3510.2.8",
        "build": 3510,
        "branch": 2,
        "patch": 8,
        "version_id": "3510.2.8",
        "build_id": "2023-09-19-1914",
        "sdk_version": "3510.0.0",
        "channel": "stable",
    }


@pytest.mark.parametrize(
    ("version", "channel"),
    [
        ("4230.0.0", "alpha"),
        ("4186.1.0", "beta"),
        ("4081.2.0", "stable"),
        ("3510.3.1", "lts"),
        ("2605.12.0", "lts"),
        ("3510.2.8+dev-2023", "stable"),
    ],
)
def test_channel_from_middle_number(version: str, channel: str) -> None:
    assert channel_for_version(version) == channel


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("FLATCAR_BUILD=1\n", "FLATCAR_VERSION missing"),
        ("FLATCAR_VERSION=3510.2.8\nthis is html\n", "line 2"),
        ("FLATCAR_VERSION=../../etc\n", "not a Flatcar version"),
        ("FLATCAR_VERSION=3510.2.8\nFLATCAR_BUILD=abc\n", "FLATCAR_BUILD"),
        ('FLATCAR_VERSION="3510.2.8\n', "line 1"),
    ],
)
def test_bad_version_txt(text: str, needle: str) -> None:
    with pytest.raises(InputError, match="v.txt") as info:
        parse_version_txt(text, "v.txt")
    assert needle in info.value.message


def test_default_base_url() -> None:
    assert default_base_url() == "https://stable.release.flatcar-linux.net/amd64-usr/"
    assert (
        default_base_url("lts", "arm64-usr") == "https://lts.release.flatcar-linux.net/arm64-usr/"
    )
    with pytest.raises(InputError, match="channel"):
        default_base_url("nightly")


def test_locate_http_addresses_versions() -> None:
    loc = locate("http://127.0.0.1:8080/amd64-usr")
    assert loc.base == "http://127.0.0.1:8080/amd64-usr/" and not loc.flat
    assert (
        loc.url("3510.2.8", "version.txt") == "http://127.0.0.1:8080/amd64-usr/3510.2.8/version.txt"
    )
    assert loc.directory("current") == "http://127.0.0.1:8080/amd64-usr/current/"
    with pytest.raises(InputError):
        loc.url("../x", "version.txt")
    with pytest.raises(InputError, match="not a plain file name"):
        loc.url("3510.2.8", "../secret")


def test_locate_local_dirs(tmp_path: Path) -> None:
    board = tmp_path / "amd64-usr"
    (board / "3510.2.8").mkdir(parents=True)
    loc = locate(str(board))
    assert loc.base == board.as_uri() + "/" and not loc.flat and loc.is_local
    assert locate(board.as_uri()) == loc
    # An SDK output dir holds the files directly.
    (board / "3510.2.8" / "version.txt").write_text(VERSION_TXT)
    flat = locate(str(board / "3510.2.8"))
    assert flat.flat and flat.url("3510.2.8", "x.bz2") == (board / "3510.2.8" / "x.bz2").as_uri()
    with pytest.raises(InputError, match="does not exist"):
        locate(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="unsupported scheme"):
        locate("ftp://example.org/")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "x/../y", "a b"])
def test_artifact_names_are_plain(name: str) -> None:
    with pytest.raises(InputError):
        check_artifact_name(name)
