"""Property tests of the fetch stage's parsers of what a release server sends: DIGESTS and
version.txt. Any input ends in a result or the project's own error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acl_compose.errors import InputError, VerificationError
from acl_compose.fetch.fetcher import parse_digests
from acl_compose.fetch.release import Release, parse_version_txt
from tests.flatcar_tree import VERSION_TXT
from tests.properties import mutated, outcome

pytestmark = pytest.mark.property
HEX = {"MD5": 32, "SHA1": 40, "SHA512": 128}
NAMES = st.from_regex(r"[A-Za-z0-9_.+-]{1,30}", fullmatch=True)


@st.composite
def digests(draw: st.DrawFn) -> tuple[str, dict[str, dict[str, str]]]:
    """A well-formed DIGESTS text and what it says."""
    text, want = [], {}
    for algo in draw(st.lists(st.sampled_from(sorted(HEX)), unique=True, max_size=3)):
        text.append(f"# {algo} HASH")
        want[algo] = {}
        for name in draw(st.lists(NAMES, unique=True, max_size=3)):
            digest = draw(st.from_regex(f"[0-9a-f]{{{HEX[algo]}}}", fullmatch=True))
            text.append(f"{digest}  {name}")
            want[algo][name] = digest
    return "\n".join(text) + "\n", want


@given(digests())
def test_digests_round_trip(doc):
    text, want = doc
    assert parse_digests(text) == want


@given(
    st.one_of(st.text(), digests().flatmap(lambda d: mutated(d[0], "# HASH0123456789abcdef\n *")))
)
def test_digests_parser_ends_in_a_table_or_a_verification_error(text):
    result = outcome(parse_digests, text, errors=VerificationError)
    assert isinstance(result, dict | VerificationError)


VALUES = st.one_of(
    st.from_regex(r"[0-9]{1,6}(\.[0-9]{1,6}){0,3}", fullmatch=True),
    st.text(max_size=20),
    st.sampled_from(["²", "٣", "1" * 5000, "'unbalanced", '"x"', "3510.2.8" + "9" * 5000]),
)
KEYS = st.sampled_from(
    ["FLATCAR_VERSION", "FLATCAR_BUILD", "FLATCAR_BRANCH", "FLATCAR_PATCH", "FLATCAR_BUILD_ID"]
)


@given(
    st.one_of(
        st.text(),
        st.lists(st.tuples(KEYS, VALUES), max_size=6).map(
            lambda kv: "\n".join(f"{k}={v}" for k, v in kv)
        ),
        mutated(VERSION_TXT, "=.\"'#\n 0123456789ABCDEF_"),
    )
)
def test_version_txt_parser_ends_in_a_release_or_an_input_error(text):
    result = outcome(parse_version_txt, text, errors=InputError)
    assert isinstance(result, Release | InputError)
    if isinstance(result, Release):  # what it returns is usable as a path part and a number
        assert result.version.isascii() and "/" not in result.version
        assert result.channel in ("alpha", "beta", "stable", "lts")
