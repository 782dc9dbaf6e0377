"""Release keys and PKCS#7 signatures over dm-verity root hashes (FACTS section 4).

The kernel (`root_hash_sig_key_desc`) and systemd check a DER PKCS#7 *detached* signature over
the ASCII lowercase hex root hash (no newline). `cryptography` can sign but not verify PKCS#7,
so verification parses the DER SignedData with a small reader and checks the signer's
signature with the certificate's public key.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from acl_compose.errors import InputError, VerificationError
from acl_compose.ui import opt
from acl_compose.util import OutputDir, atomic_write

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]  # noqa: UP007

KEY_NAME = "release.key"
CERT_NAME = "release.crt"
DEFAULT_CN = "acl-compose release signing"
CERT_DAYS = 3650

_SIGN_OPTIONS = [
    pkcs7.PKCS7Options.DetachedSignature,
    pkcs7.PKCS7Options.Binary,
    pkcs7.PKCS7Options.NoAttributes,
]


# ---------------------------------------------------------------- keys and certificates


def generate(
    out_dir: str | os.PathLike[str],
    common_name: str = DEFAULT_CN,
    rsa: bool = False,
    passphrase: bytes | None = None,
    *,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write `release.key` (PEM PKCS#8, mode 0600) and a self-signed `release.crt` to out_dir.

    EC P-256 by default, RSA 4096 with rsa=True. Refuses to replace an existing key unless
    force, since losing a release key strands every image signed with it.
    """
    out = Path(out_dir)
    key_path, cert_path = out / KEY_NAME, out / CERT_NAME
    # The output-folder rule, and stricter for keys: replacing one (even one we wrote)
    # strands every image signed with it, so that takes force too.
    output = OutputDir(out, "keys generate", force=force)
    if not force and (key_path.exists() or cert_path.exists()):
        force_opt = opt("--force", "")
        raise InputError(
            f"{key_path if key_path.exists() else cert_path} already exists",
            hint="choose another output folder; a release key is replaced only "
            + (f"with {force_opt}" if force_opt else "on request"),
        )
    output.check([KEY_NAME, CERT_NAME])
    if not common_name.strip():
        raise InputError(
            "the certificate common name is empty",
            hint=f"give a name with {opt('--common-name', 'the common name setting')}",
        )
    key: PrivateKey
    if rsa:
        from cryptography.hazmat.primitives.asymmetric import rsa as rsa_mod

        key = rsa_mod.generate_private_key(public_exponent=65537, key_size=4096)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    # Both land together (staging): never a key without its certificate.
    with output.staging() as stage:
        atomic_write(stage / KEY_NAME, key_pem, mode=0o600)
        atomic_write(stage / CERT_NAME, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return key_path, cert_path


def read_passphrase(
    file: str | os.PathLike[str] | None = None, env_var: str | None = None
) -> bytes | None:
    """A key passphrase from a file (first line) or an environment variable; never argv."""
    if file is not None and env_var is not None:
        raise InputError(
            "both a passphrase file and a passphrase environment variable were given",
            hint="use only one of them",
        )
    if file is not None:
        try:
            raw = Path(file).read_bytes()
        except OSError as e:
            raise InputError(f"cannot read passphrase file {file}: {e.strerror}") from None
        value = raw.split(b"\n", 1)[0].rstrip(b"\r")
        if not value:
            raise InputError(
                f"passphrase file {file} is empty", hint="put the passphrase on its first line"
            )
        return value
    if env_var is not None:
        env_value = os.environ.get(env_var)
        if not env_value:
            raise InputError(
                f"passphrase environment variable {env_var} is not set or empty",
                hint=f"export {env_var}=... before running",
            )
        return env_value.encode()
    return None


def load_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM (or DER) private key; InputError naming the file if it cannot be used."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read key {path}: {e.strerror}") from None
    loader = (
        serialization.load_pem_private_key
        if b"-----BEGIN" in raw
        else serialization.load_der_private_key
    )
    try:
        key = loader(raw, password=passphrase)
    except TypeError as e:
        if passphrase is None:
            raise InputError(
                f"key {path} is encrypted and no passphrase was given",
                hint=f"give it with {opt('--passphrase-file FILE', 'a passphrase file')} or "
                f"{opt('--passphrase-env VAR', 'a passphrase variable')}",
            ) from None
        if "not encrypted" in str(e):  # a passphrase for a plain key: just use the key
            key = loader(raw, password=None)
        else:
            raise InputError(f"cannot load key {path}: {e}") from None
    except (ValueError, UnsupportedAlgorithm):
        what = "wrong passphrase or not a private key" if passphrase else "not a private key"
        raise InputError(
            f"cannot load key {path}: {what}",
            hint="check the passphrase and that the file is a PEM private key",
        ) from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise InputError(f"key {path} is neither an EC nor an RSA key", hint="use `keys generate`")
    return key


def load_cert(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load a PEM or DER X.509 certificate; InputError naming the file otherwise."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read certificate {path}: {e.strerror}") from None
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError:
        raise InputError(f"{path} is not an X.509 certificate (PEM or DER)") from None


def cert_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex (systemd's certificateFingerprint)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# ---------------------------------------------------------------- signing


def normalize_root_hash(root_hash_hex: str) -> str:
    """Lowercase hex of a root hash; InputError if it is not hex of a known digest length."""
    return _root_hash_bytes(root_hash_hex).decode()


def _root_hash_bytes(root_hash_hex: str) -> bytes:
    text = root_hash_hex.strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise InputError(f"root hash {root_hash_hex!r} is not hexadecimal") from None
    if len(raw) not in (20, 28, 32, 48, 64) or len(text) != 2 * len(raw):
        raise InputError(
            f"root hash {root_hash_hex!r} has the wrong length ({len(text)} hex digits)",
            hint="a sha256 root hash has 64 hex digits",
        )
    return text.encode("ascii")


def sign_detached(data: bytes, key: PrivateKey, cert: x509.Certificate) -> bytes:
    """DER PKCS#7/CMS detached signature over `data` (SHA-256, no signed attributes).

    Deterministic, so a release rebuilt from the same inputs has the same bytes: RSA
    PKCS#1 v1.5 is deterministic by design, ECDSA uses RFC 6979 nonces (derived from the key
    and the message). The DER around the signature is what PKCS7SignatureBuilder writes
    (tests/trust/test_signing.py compares them byte for byte).
    """
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise InputError(
            "the private key does not belong to the certificate",
            hint="pass the release.key and release.crt generated together",
        )
    from acl_compose.trust import pkcs7 as der

    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return der.encode_detached(cert, OID_SHA256, OID_RSA, signature, True)
    if not deterministic_ecdsa():
        _warn_random_ecdsa()
        return (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(data)
            .add_signer(cert, key, hashes.SHA256())
            .sign(serialization.Encoding.DER, _SIGN_OPTIONS)
        )
    signature = key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    return der.encode_detached(cert, OID_SHA256, OID_ECDSA_SHA256, signature, False)


OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_RSA = "1.2.840.113549.1.1.1"  # rsaEncryption, as OpenSSL's PKCS#7 signer writes it
OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"


@functools.cache
def deterministic_ecdsa() -> bool:
    """Whether this cryptography/OpenSSL pair signs ECDSA with RFC 6979 nonces
    (cryptography >= 44 built with OpenSSL >= 3.2, as its wheels are)."""
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        return bool(backend.ecdsa_deterministic_supported())
    except (ImportError, AttributeError):
        return False


@functools.cache
def _warn_random_ecdsa() -> None:
    from acl_compose import ui

    ui.warn(
        "this cryptography/OpenSSL cannot sign ECDSA deterministically (RFC 6979): EC "
        "signatures differ on every build; install cryptography>=44 or use an RSA key "
        "(`acl-compose keys generate --rsa`) for reproducible releases"
    )


def sign_root_hash(root_hash_hex: str, key: PrivateKey, cert: x509.Certificate) -> bytes:
    """The kernel/systemd root-hash signature: PKCS#7 detached over the lowercase hex."""
    return sign_detached(_root_hash_bytes(root_hash_hex), key, cert)


def verify_root_hash(root_hash_hex: str, signature_der: bytes, cert: x509.Certificate) -> None:
    """Raise VerificationError unless `signature_der` signs this root hash with `cert`."""
    content = _root_hash_bytes(root_hash_hex)
    try:
        verify_detached(content, signature_der, cert)
    except VerificationError as e:
        if getattr(e, "reason", "") == "content":
            raise VerificationError(
                f"the signature is not over root hash {content.decode()}",
                hint="the image or its signature was changed; rebuild or fetch a trusted copy",
            ) from None
        raise


def verify_detached(data: bytes, signature_der: bytes, cert: x509.Certificate) -> None:
    """Check a DER PKCS#7/CMS detached signature over `data` by `cert`'s key."""
    from acl_compose.trust import pkcs7

    signers = pkcs7.parse_signed_data(signature_der)
    if signers.content is not None and signers.content != data:
        raise _fail("the signature carries other content than the data", "content")
    matching = [s for s in signers.signers if s.matches(cert)]
    if not matching:
        others = "; ".join(s.describe(signers.certificates) for s in signers.signers) or "none"
        raise _fail(
            f"the signature was made by another certificate ({others}), "
            f"not {cert.subject.rfc4514_string()} (sha256 {cert_fingerprint(cert)[:16]}...)",
            "certificate",
        )
    public = cert.public_key()
    for signer in matching:
        digest_alg = _HASHES.get(signer.digest_oid)
        if digest_alg is None:
            raise _fail(
                f"unsupported digest algorithm {signer.digest_oid} in the signature", "format"
            )
        if signer.signature_oid not in _RSA_PKCS1 | _ECDSA:
            raise _fail(
                f"unsupported signature algorithm {signer.signature_oid} (RSA PKCS#1 v1.5 and "
                "ECDSA only)",
                "format",
            )
        if signer.signed_attrs is not None:
            # With signed attributes the signature covers them, and they carry H(data).
            if signer.message_digest != hashlib.new(digest_alg.name, data).digest():
                raise _fail("the signed message digest does not match the data", "content")
            signed = signer.signed_attrs
        else:
            signed = data
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signer.signature, signed, ec.ECDSA(digest_alg))
            elif isinstance(public, rsa.RSAPublicKey):
                public.verify(signer.signature, signed, padding.PKCS1v15(), digest_alg)
            else:
                raise _fail(
                    "the certificate's key type is not supported (EC or RSA only)", "format"
                )
        except InvalidSignature:
            raise _fail("the signature does not match the data", "content") from None
    return None


_HASHES: dict[str, hashes.HashAlgorithm] = {
    "1.3.14.3.2.26": hashes.SHA1(),
    "2.16.840.1.101.3.4.2.4": hashes.SHA224(),
    "2.16.840.1.101.3.4.2.1": hashes.SHA256(),
    "2.16.840.1.101.3.4.2.2": hashes.SHA384(),
    "2.16.840.1.101.3.4.2.3": hashes.SHA512(),
}


# rsaEncryption and sha{1,256,384,512,224}WithRSAEncryption; ecPublicKey and ecdsa-with-SHA*
_RSA_PKCS1 = {"1.2.840.113549.1.1.1", *(f"1.2.840.113549.1.1.{n}" for n in (5, 11, 12, 13, 14))}
_ECDSA = {
    "1.2.840.10045.2.1",
    "1.2.840.10045.4.1",
    *(f"1.2.840.10045.4.3.{n}" for n in range(1, 5)),
}


def _fail(message: str, reason: str) -> VerificationError:
    err = VerificationError(
        message, hint="do not trust this artifact; check the certificate and re-sign if needed"
    )
    err.reason = reason  # type: ignore[attr-defined]
    return err
