"""os-release parsing/formatting and systemd-sysext's extension match rules."""

from __future__ import annotations

import pytest

from acl_compose.errors import InputError
from acl_compose.image.osrelease import (
    architecture,
    extension_mismatch,
    format_os_release,
    parse_os_release,
    read_os_release,
)

FLATCAR = """\
NAME="Flatcar Container Linux by Kinvolk"
ID=flatcar
ID_LIKE=coreos
VERSION=3510.2.8
VERSION_ID=3510.2.8
BUILD_ID=2023-09-19-1914
SYSEXT_LEVEL=1.0
PRETTY_NAME="Flatcar Container Linux by Kinvolk 3510.2.8 (Oklo)"
ANSI_COLOR="38;5;75"
HOME_URL="https://flatcar.org/"
FLATCAR_BOARD="amd64-usr"
"""


def test_parse_quotes_comments_escapes() -> None:
    text = (
        FLATCAR
        + '# comment\n\nGARBAGE LINE\nA=\'single $x\'\nB="dq \\"x\\" \\$y"\nC=plain\\ word\n'
    )
    d = parse_os_release(text)
    assert d["NAME"] == "Flatcar Container Linux by Kinvolk"
    assert d["FLATCAR_BOARD"] == "amd64-usr"
    assert d["A"] == "single $x" and d["B"] == 'dq "x" $y' and d["C"] == "plain word"
    assert "GARBAGE LINE" not in d


def test_format_roundtrip() -> None:
    d = {"ID": "flatcar", "NAME": 'A "quoted" $name', "EMPTY": "", "V": "1.0"}
    text = format_os_release(d)
    assert "ID=flatcar\n" in text and 'EMPTY=""' in text
    assert parse_os_release(text) == d
    with pytest.raises(InputError):
        format_os_release({"BAD KEY": "x"})


def test_read_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(InputError, match="cannot read os-release file .*missing"):
        read_os_release(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n# nothing\n")
    with pytest.raises(InputError, match="no KEY=value lines"):
        read_os_release(tmp_path / "empty")


def test_architecture() -> None:
    assert architecture(parse_os_release(FLATCAR)) == "x86-64"
    assert architecture({"FLATCAR_BOARD": "arm64-usr"}) == "arm64"
    assert architecture({"ARCHITECTURE": "arm64", "FLATCAR_BOARD": "amd64-usr"}) == "arm64"
    assert architecture({}) is None


BASE = parse_os_release(FLATCAR)


@pytest.mark.parametrize(
    ("ext", "expect"),
    [
        ({"ID": "flatcar", "SYSEXT_LEVEL": "1.0"}, None),
        ({"ID": "flatcar", "VERSION_ID": "3510.2.8"}, None),  # how Flatcar's own sysexts pin
        ({"ID": "_any"}, None),
        ({"ID": "flatcar", "SYSEXT_LEVEL": "1.0", "ARCHITECTURE": "x86-64"}, None),
        ({"ID": "fedora", "SYSEXT_LEVEL": "1.0"}, "ID=fedora does not match"),
        ({"ID": "flatcar", "SYSEXT_LEVEL": "2.0"}, "SYSEXT_LEVEL=2.0 does not match"),
        ({"ID": "flatcar", "VERSION_ID": "3602.0.0"}, "VERSION_ID=3602.0.0 does not match"),
        ({"ID": "flatcar"}, "has no VERSION_ID and no SYSEXT_LEVEL"),
        ({"ID": "flatcar", "SYSEXT_LEVEL": "1.0", "ARCHITECTURE": "arm64"}, "ARCHITECTURE=arm64"),
        ({"ID": "_any", "ARCHITECTURE": "arm64"}, "ARCHITECTURE=arm64"),
        ({"SYSEXT_LEVEL": "1.0"}, "no ID="),
    ],
)
def test_extension_mismatch(ext: dict, expect: str | None) -> None:
    why = extension_mismatch(ext, BASE)
    assert (why is None) if expect is None else (why is not None and expect in why)


def test_rolling_base_accepts_any_level() -> None:
    assert extension_mismatch({"ID": "arch", "SYSEXT_LEVEL": "9"}, {"ID": "arch"}) is None
