"""Property tests of the trust stage's parsers: the PKCS#7 DER reader (and the verification on
top of it) and gpgv's status lines. Any input ends in a result or a VerificationError."""

from __future__ import annotations

import functools
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acl_compose.errors import VerificationError
from acl_compose.trust import gpg, pkcs7, signing
from tests.properties import mutated, outcome, peak_allocation

pytestmark = pytest.mark.property
ROOT_HASH = "ab" * 32


@functools.cache
def pair(rsa: bool) -> tuple[object, object, bytes]:
    """(key, cert, a real root-hash signature), made once per run."""
    with tempfile.TemporaryDirectory() as tmp:
        key_path, cert_path = signing.generate(tmp, common_name="prop", rsa=rsa)
        key, cert = signing.load_key(key_path), signing.load_cert(cert_path)
    return key, cert, signing.sign_root_hash(ROOT_HASH, key, cert)


def long_length(der: bytes, at: int, n: int, value: int) -> bytes:
    """`der` with the length byte after offset `at` replaced by an n-byte long form."""
    at = min(at, len(der) - 2) if len(der) > 1 else 0
    return der[: at + 1] + bytes([0x80 | n]) + value.to_bytes(n, "big") + der[at + 2 :]


@st.composite
def signatures(draw: st.DrawFn) -> tuple[bool, bytes]:
    rsa = draw(st.booleans())
    der = pair(rsa)[2]
    kind = draw(st.sampled_from(["mutated", "length", "random"]))
    if kind == "mutated":
        der = draw(mutated(der))
    elif kind == "length":
        n = draw(st.integers(1, 8))
        value = draw(st.one_of(st.just(2**62 % 256**n), st.integers(0, 256**n - 1)))
        der = long_length(der, draw(st.integers(0, len(der) - 1)), n, value)
    else:
        der = draw(st.binary(max_size=600))
    return rsa, der


@given(signatures())
def test_der_reader_ends_in_signed_data_or_a_verification_error(sig):
    _, der = sig
    result, peak = peak_allocation(pkcs7.parse_signed_data, der, errors=VerificationError)
    assert isinstance(result, pkcs7.SignedData | VerificationError)
    assert peak < 64 * len(der) + (256 << 10)  # proportional to the input, not to a length


@given(signatures())
def test_signature_verification_raises_only_verification_errors(sig):
    rsa, der = sig
    _, cert, good = pair(rsa)
    result = outcome(signing.verify_root_hash, ROOT_HASH, der, cert, errors=VerificationError)
    assert result is None or isinstance(result, VerificationError)
    if der == good:
        assert result is None
    elif result is None:  # verified: then the signature value itself is the original one
        # (bytes the check does not use, such as the embedded certificate, may differ)
        original = pkcs7.parse_signed_data(good).signers[0].signature
        assert pkcs7.parse_signed_data(der).signers[0].signature == original


def test_der_length_of_2_pow_62_is_refused_without_allocating():
    der = bytes([0x30, 0x88]) + (2**62).to_bytes(8, "big") + b"\x02\x01\x01"
    result, peak = peak_allocation(pkcs7.parse_signed_data, der, errors=VerificationError)
    assert isinstance(result, VerificationError) and "oversized length" in result.message
    assert peak < (64 << 10)
    der = bytes([0x30, 0x84]) + (2**32 - 1).to_bytes(4, "big") + b"\x02\x01\x01"
    result = outcome(pkcs7.parse_signed_data, der, errors=VerificationError)
    assert "runs past the end" in result.message


def test_empty_algorithm_identifiers_are_refused():
    _, _, der = pair(False)
    # SignerInfo's digestAlgorithm is the last SEQUENCE { OID sha256, NULL }: empty it and
    # fill the same bytes with an OCTET STRING, so every enclosing length still holds.
    sd = pkcs7.parse_signed_data(der)
    assert sd.signers[0].digest_oid == "2.16.840.1.101.3.4.2.1"
    alg = bytes.fromhex("300d06096086480165030402010500")
    at = der.rindex(alg)
    filler = b"\x04" + bytes([len(alg) - 4]) + bytes(len(alg) - 4)  # an OCTET STRING
    broken = der[:at] + b"\x30\x00" + filler + der[at + len(alg) :]
    assert len(broken) == len(der)
    result = outcome(pkcs7.parse_signed_data, broken, errors=VerificationError)
    assert isinstance(result, VerificationError)


# --- gpgv --status-fd ---------------------------------------------------------------------------

FPR = "F88CFEDEFF29A5B4D9523864E25D9AED0593B34A"
KEYWORDS = ["VALIDSIG", "GOODSIG", "BADSIG", "ERRSIG", "NO_PUBKEY", "REVKEYSIG", "NEWSIG", "X"]
WORDS = st.one_of(
    st.just(FPR),
    st.from_regex(r"[0-9A-F]{1,40}", fullmatch=True),
    st.from_regex(r"[0-9]{1,25}", fullmatch=True),
    st.from_regex(r"[0-9]{8}T[0-9]{6}", fullmatch=True),
    st.text(st.characters(exclude_categories=["Z", "Cc", "Cs"]), min_size=1, max_size=12),
)
STATUS_LINE = st.tuples(st.sampled_from(KEYWORDS), st.lists(WORDS, max_size=12)).map(
    lambda kw: " ".join(["[GNUPG:]", kw[0], *kw[1]])
)


@given(
    st.lists(st.one_of(STATUS_LINE, st.just("[GNUPG:] "), st.text(max_size=40)), max_size=6),
    st.integers(-2, 3),
)
def test_gpgv_status_parser_ends_in_a_signature_or_a_verification_error(lines, code):
    status = "\n".join(lines)
    result = outcome(gpg.parse_status, status, code, FPR, "x", "", errors=VerificationError)
    assert isinstance(result, gpg.Signature | VerificationError)
    if isinstance(result, gpg.Signature):  # only a VALIDSIG by the trusted key gets here
        assert code == 0 and result.primary_fingerprint == FPR
        assert not {"BADSIG", "ERRSIG", "NO_PUBKEY", "REVKEYSIG"} & {
            ln.split()[1] for ln in lines if ln.startswith("[GNUPG:] ") and len(ln.split()) > 1
        }


def test_a_real_validsig_line_parses():
    line = f"[GNUPG:] VALIDSIG {FPR} 2024-01-01 1704067200 0 4 0 1 10 00 {FPR}"
    sig = gpg.parse_status(line, 0, FPR, "x")
    assert sig.created == "2024-01-01T00:00:00Z"
    for bad in (
        "[GNUPG:] VALIDSIG",
        f"[GNUPG:] VALIDSIG {FPR} 2024-01-01",
        f"[GNUPG:] VALIDSIG {FPR} 2024-01-01 99999999999999999999 0 4 0 1 10 00 {FPR}",
        f"[GNUPG:] VALIDSIG {FPR} 2024-01-01 ²³ 0 4 0 1 10 00 {FPR}",
    ):
        assert isinstance(
            outcome(gpg.parse_status, bad, 0, FPR, "x", errors=VerificationError),
            VerificationError,
        ), bad
