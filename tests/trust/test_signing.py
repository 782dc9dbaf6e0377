"""acl_compose.trust.signing: keys, root-hash PKCS#7 signatures, cross-checked with openssl."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from acl_compose.errors import InputError, VerificationError
from acl_compose.run import require
from acl_compose.trust import signing

ROOT = "3c0688ef2b17f1b21711717618a23390d0e420436202d3d52b97547156ba5dab"


def openssl_verify(tool: str, sig: Path, content: Path, cert: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require("openssl"), tool, "-verify", "-binary", "-inform", "DER", "-in", sig,
         "-content", content, "-CAfile", cert, "-purpose", "any", "-out", os.devnull],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ec_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return signing.generate(tmp_path_factory.mktemp("ec"), common_name="Test EC")


@pytest.fixture(scope="module")
def rsa_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return signing.generate(tmp_path_factory.mktemp("rsa"), rsa=True, passphrase=b"s3cret pass")


def test_generate_writes_private_key_0600_and_cert(ec_pair, rsa_pair) -> None:
    key_path, cert_path = ec_pair
    assert (key_path.name, cert_path.name) == ("release.key", "release.crt")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    cert = signing.load_cert(cert_path)
    assert cert.subject.rfc4514_string() == "CN=Test EC"
    assert signing.load_key(key_path).key_size == 256  # EC P-256
    assert rsa_pair[0].read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert signing.load_key(rsa_pair[0], b"s3cret pass").key_size == 4096
    fp = subprocess.run(
        [require("openssl"), "x509", "-in", cert_path, "-noout", "-fingerprint", "-sha256"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert fp.split("=", 1)[1].strip().replace(":", "").lower() == signing.cert_fingerprint(cert)


def test_generate_refuses_to_overwrite(ec_pair) -> None:
    before = ec_pair[0].read_bytes()
    with pytest.raises(InputError, match="already exists"):
        signing.generate(ec_pair[0].parent)
    assert ec_pair[0].read_bytes() == before


@pytest.mark.parametrize("pair", ["ec_pair", "rsa_pair"])
def test_root_hash_signature_openssl_and_refusals(request, tmp_path: Path, pair: str) -> None:
    key_path, cert_path = request.getfixturevalue(pair)
    key = signing.load_key(key_path, b"s3cret pass" if pair == "rsa_pair" else None)
    cert = signing.load_cert(cert_path)
    sig = signing.sign_root_hash(ROOT.upper(), key, cert)  # signs the lowercase form
    (tmp_path / "sig").write_bytes(sig)
    (tmp_path / "root").write_text(ROOT)
    (tmp_path / "other").write_text("ab" * 32)
    for tool in ("smime", "cms"):
        assert openssl_verify(tool, tmp_path / "sig", tmp_path / "root", cert_path).returncode == 0
        assert openssl_verify(tool, tmp_path / "sig", tmp_path / "other", cert_path).returncode != 0
    signing.verify_root_hash(ROOT, sig, cert)
    with pytest.raises(VerificationError, match="not over root hash abab"):
        signing.verify_root_hash("ab" * 32, sig, cert)
    other = "rsa_pair" if pair == "ec_pair" else "ec_pair"
    other_cert_path = request.getfixturevalue(other)[1]
    with pytest.raises(VerificationError, match="another certificate"):
        signing.verify_root_hash(ROOT, sig, signing.load_cert(other_cert_path))
    assert openssl_verify("smime", tmp_path / "sig", tmp_path / "root", other_cert_path).returncode
    tampered = bytearray(sig)
    tampered[-5] ^= 1
    with pytest.raises(VerificationError):
        signing.verify_root_hash(ROOT, bytes(tampered), cert)
    for junk in (b"", b"\x30\x03\x02\x01", sig + b"\0"):
        with pytest.raises(VerificationError, match="not valid DER PKCS#7"):
            signing.verify_root_hash(ROOT, junk, cert)


def test_signature_is_the_systemd_format(ec_pair) -> None:
    # FACTS 4: detached, binary, no attributes; the same builder call as systemd-repart's.
    key, cert = signing.load_key(ec_pair[0]), signing.load_cert(ec_pair[1])
    sig = signing.sign_root_hash(ROOT, key, cert)
    parsed = __import__("acl_compose.trust.pkcs7", fromlist=["x"]).parse_signed_data(sig)
    assert parsed.content is None and len(parsed.signers) == 1
    assert parsed.signers[0].signed_attrs is None
    assert parsed.certificates == [cert.public_bytes(serialization.Encoding.DER)]


@pytest.mark.parametrize("pair", ["ec_pair", "rsa_pair"])
def test_signatures_are_deterministic_and_builder_shaped(
    request, pair: str, tmp_path: Path
) -> None:
    """Same data, same key -> same bytes (releases rebuild byte for byte), in the DER shape
    cryptography's PKCS7SignatureBuilder writes, accepted by openssl cms."""
    key_file, cert_file = request.getfixturevalue(pair)
    key = signing.load_key(key_file, b"s3cret pass" if pair == "rsa_pair" else None)
    cert = signing.load_cert(cert_file)
    data = b'{"release": 1}\n'
    a, b = signing.sign_detached(data, key, cert), signing.sign_detached(data, key, cert)
    assert a == b
    assert signing.sign_detached(data + b" ", key, cert) != a
    ref = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, signing._SIGN_OPTIONS)
    )
    if pair == "rsa_pair":  # PKCS#1 v1.5 is deterministic on both sides: identical bytes
        assert a == ref
    else:  # same structure, only the (randomized vs RFC 6979) signature value differs

        def shape(der: bytes) -> list[str]:
            """asn1parse's tree: depth, kind and value per node, without offsets, lengths
            and hex dumps (the signature value)."""
            out = subprocess.run(
                [require("openssl"), "asn1parse", "-inform", "DER", "-i"],
                input=der,
                capture_output=True,
                check=True,
            ).stdout.decode()
            return [re.sub(r"^\s*\d+:(d=\d+)\s+hl=\d+\s+l=\s*\d+", r"\1", ln).split("[HEX")[0]
                    for ln in out.splitlines()]  # fmt: skip

        assert shape(a) == shape(ref)
        assert a != ref
    (tmp_path / "d").write_bytes(data)
    (tmp_path / "d.p7s").write_bytes(a)
    proc = openssl_verify("cms", tmp_path / "d.p7s", tmp_path / "d", cert_file)
    assert proc.returncode == 0, proc.stderr


def test_ecdsa_nonce_is_rfc6979() -> None:
    """RFC 6979 appendix A.2.5 (P-256, SHA-256, message "sample"): the published (r, s)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    assert signing.deterministic_ecdsa()
    x = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
    key = ec.derive_private_key(x, ec.SECP256R1())
    cert = _self_signed(key)
    cms = signing.sign_detached(b"sample", key, cert)  # the code path releases are signed by
    (signer,) = __import__("acl_compose.trust.pkcs7", fromlist=["x"]).parse_signed_data(cms).signers
    assert decode_dss_signature(signer.signature) == (
        0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
        0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
    )


def _self_signed(key):
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rfc6979")])
    t = datetime.datetime(2020, 1, 1)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(t).not_valid_after(t + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip


def test_detached_over_arbitrary_data_and_signed_attributes(ec_pair, tmp_path: Path) -> None:
    key, cert = signing.load_key(ec_pair[0]), signing.load_cert(ec_pair[1])
    data = json.dumps({"version": "1.0", "files": list(range(50))}).encode()
    sig = signing.sign_detached(data, key, cert)
    (tmp_path / "release.json").write_bytes(data)
    (tmp_path / "release.json.p7s").write_bytes(sig)
    proc = openssl_verify(
        "cms", tmp_path / "release.json.p7s", tmp_path / "release.json", ec_pair[1]
    )
    assert proc.returncode == 0, proc.stderr
    signing.verify_detached(data, sig, cert)
    with pytest.raises(VerificationError):
        signing.verify_detached(data + b" ", sig, cert)
    # Signatures with signed attributes (openssl's default) verify too.
    with_attrs = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature])
    )
    assert (
        __import__("acl_compose.trust.pkcs7", fromlist=["x"])
        .parse_signed_data(with_attrs)
        .signers[0]
        .signed_attrs
    )
    signing.verify_detached(data, with_attrs, cert)
    with pytest.raises(VerificationError, match="message digest"):
        signing.verify_detached(data[:-1], with_attrs, cert)


def test_key_errors_name_the_file(rsa_pair, ec_pair, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"{rsa_pair[0]}.*wrong passphrase"):
        signing.load_key(rsa_pair[0], b"wrong")
    with pytest.raises(InputError, match=f"{rsa_pair[0]} is encrypted"):
        signing.load_key(rsa_pair[0])
    with pytest.raises(InputError, match="cannot read key .*missing"):
        signing.load_key(tmp_path / "missing")
    with pytest.raises(InputError, match=f"cannot read key {tmp_path}: Is a directory"):
        signing.load_key(tmp_path)
    (tmp_path / "garbage.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(InputError, match="garbage.key: not a private key"):
        signing.load_key(tmp_path / "garbage.key")
    with pytest.raises(InputError, match="not a private key"):
        signing.load_key(ec_pair[1])
    with pytest.raises(InputError, match="not an X.509 certificate"):
        signing.load_cert(ec_pair[0])
    with pytest.raises(InputError, match="does not belong"):
        signing.sign_root_hash(ROOT, signing.load_key(ec_pair[0]), signing.load_cert(rsa_pair[1]))
    for bad in ("xyz", "ab" * 31, ROOT + "0"):
        with pytest.raises(InputError, match="root hash"):
            signing.sign_root_hash(bad, signing.load_key(ec_pair[0]), signing.load_cert(ec_pair[1]))


def test_read_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("hunter2\nignored\n")
    assert signing.read_passphrase(tmp_path / "pw") == b"hunter2"
    monkeypatch.setenv("ACL_TEST_PW", "from env")
    assert signing.read_passphrase(env_var="ACL_TEST_PW") == b"from env"
    assert signing.read_passphrase() is None
    with pytest.raises(InputError, match="ACL_TEST_UNSET"):
        signing.read_passphrase(env_var="ACL_TEST_UNSET")
    with pytest.raises(InputError, match="cannot read passphrase file"):
        signing.read_passphrase(tmp_path / "nope")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InputError, match="empty"):
        signing.read_passphrase(tmp_path / "empty")


# ---------------------------------------------------------------- CLI


def test_cli_keys_sign_check(tmp_path: Path, cli) -> None:
    (tmp_path / "pw").write_text("pass phrase\n")
    proc = cli("--json", "keys", "generate", "-o", tmp_path / "k", "--common-name", "CLI",
               "--passphrase-file", tmp_path / "pw", check=True)  # fmt: skip
    out = json.loads(proc.stdout)
    key, crt = tmp_path / "k" / "release.key", tmp_path / "k" / "release.crt"
    assert out["certificate_fingerprint"] == signing.cert_fingerprint(signing.load_cert(crt))
    assert "pass phrase" not in proc.stdout + proc.stderr
    (tmp_path / "rh").write_text(ROOT + "\n")
    cli("verity", "sign", "--root-hash-file", tmp_path / "rh", "--key", key, "--cert", crt,
        "--passphrase-env", "ACL_PW", "-o", tmp_path / "s.p7s", env={"ACL_PW": "pass phrase"},
        check=True)  # fmt: skip
    (tmp_path / "root").write_text(ROOT)
    assert openssl_verify("smime", tmp_path / "s.p7s", tmp_path / "root", crt).returncode == 0
    cli("verity", "check-signature", ROOT, tmp_path / "s.p7s", "--cert", crt, check=True)
    proc = cli("verity", "check-signature", "ab" * 32, tmp_path / "s.p7s", "--cert", crt)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {tmp_path / 's.p7s'}: the signature is not over root")
    # wrong passphrase: one-line error naming the key, nothing written
    (tmp_path / "bad").write_text("nope\n")
    proc = cli("verity", "sign", ROOT, "--key", key, "--cert", crt, "--passphrase-file",
               tmp_path / "bad", "-o", tmp_path / "x.p7s")  # fmt: skip
    assert proc.returncode == 1 and f"error: cannot load key {key}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.p7s").exists()
    proc = cli("verity", "sign", "nothex", "--key", key, "--cert", crt, "-o", tmp_path / "x.p7s")
    assert proc.returncode == 2 and "root hash 'nothex' is not hex" in proc.stderr  # usage
    assert not (tmp_path / "x.p7s").exists()
    # check-signature reads the root hash from a file too, as sign and verify do.
    cli("verity", "check-signature", "--root-hash-file", tmp_path / "rh", tmp_path / "s.p7s",
        "--cert", crt, check=True)  # fmt: skip
    proc = cli("verity", "check-signature", "--root-hash-file", tmp_path / "rh", ROOT,
               tmp_path / "s.p7s", "--cert", crt)  # fmt: skip
    assert proc.returncode == 2 and "give only SIGNATURE" in proc.stderr
    # An output that is one of the inputs is refused, the key untouched.
    before = key.read_bytes()
    proc = cli("verity", "sign", ROOT, "--key", key, "--cert", crt, "--passphrase-env", "ACL_PW",
               "-o", key, env={"ACL_PW": "pass phrase"})  # fmt: skip
    assert proc.returncode == 1 and "is also an input" in proc.stderr
    assert key.read_bytes() == before


def test_cli_keys_generate_old_out_spelling_still_works(tmp_path: Path, cli) -> None:
    proc = cli("keys", "generate", "--out", tmp_path / "k", check=True)
    assert proc.stderr.startswith("warning: --out is deprecated: use -o/--output")
    assert (tmp_path / "k" / "release.key").is_file()
    assert "--out " not in cli("keys", "generate", "--help", check=True).stdout  # hidden


def test_cli_keys_generate_refusals(tmp_path: Path, cli) -> None:
    proc = cli("keys", "generate", "-o", tmp_path / "k", "--passphrase-env", "ACL_NO_SUCH_VAR")
    assert proc.returncode == 1 and "ACL_NO_SUCH_VAR" in proc.stderr.splitlines()[0]
    assert not (tmp_path / "k").exists()
    cli("keys", "generate", "-o", tmp_path / "k", check=True)
    before = (tmp_path / "k" / "release.key").read_bytes()
    proc = cli("keys", "generate", "-o", tmp_path / "k")
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert (tmp_path / "k" / "release.key").read_bytes() == before
    # --force replaces a key it generated, but never a key file it did not write.
    cli("keys", "generate", "-o", tmp_path / "k", "--force", check=True)
    assert (tmp_path / "k" / "release.key").read_bytes() != before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    proc = cli("keys", "generate", "-o", mine)
    assert proc.returncode == 1 and "is not empty" in proc.stderr
    (mine / "release.key").write_text("my own key")
    proc = cli("keys", "generate", "-o", mine, "--force")
    assert proc.returncode == 1 and "release.key exists and was not written by" in proc.stderr
    assert (mine / "release.key").read_text() == "my own key"


@pytest.mark.parametrize("noattr", [True, False])
def test_openssl_made_signatures_verify(ec_pair, tmp_path: Path, noattr: bool) -> None:
    (tmp_path / "root").write_text(ROOT)
    subprocess.run(
        [require("openssl"), "cms", "-sign", "-binary", "-outform", "DER", "-signer", ec_pair[1],
         "-inkey", ec_pair[0], "-in", tmp_path / "root", "-out", tmp_path / "sig", "-md", "sha256",
         *(["-noattr"] if noattr else [])],
        check=True, capture_output=True,
    )  # fmt: skip
    sig, cert = (tmp_path / "sig").read_bytes(), signing.load_cert(ec_pair[1])
    signing.verify_root_hash(ROOT, sig, cert)
    with pytest.raises(VerificationError):
        signing.verify_root_hash("ab" * 32, sig, cert)
