"""A minimal DER reader and writer for PKCS#7/CMS SignedData (RFC 2315 / RFC 5652).

Reading takes only what signature checking needs: the optional embedded content, and per
signer the issuer+serial (or subject key identifier), digest algorithm, signed attributes and
signature. Writing (`encode_detached`) emits exactly the structure `cryptography`'s
PKCS7SignatureBuilder makes with DetachedSignature+Binary+NoAttributes, around a signature
computed elsewhere: that builder cannot sign deterministically, this module does not care how
the signature was made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509

from acl_compose.errors import VerificationError

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"

SEQUENCE, SET, INTEGER, OCTET_STRING, OID = 0x30, 0x31, 0x02, 0x04, 0x06


class _Malformed(VerificationError):
    pass


def _bad(what: str) -> _Malformed:
    err = _Malformed(f"the signature is not valid DER PKCS#7: {what}")
    err.reason = "format"  # type: ignore[attr-defined]
    return err


@dataclass
class _TLV:
    tag: int
    start: int  # first byte of the tag
    value: int  # first byte of the value
    end: int  # one past the last byte of the value

    def raw(self, buf: bytes) -> bytes:
        return buf[self.start : self.end]

    def body(self, buf: bytes) -> bytes:
        return buf[self.value : self.end]


def _read(buf: bytes, pos: int, end: int) -> _TLV:
    if pos + 2 > end:
        raise _bad("truncated")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise _bad("multi-byte tags are not supported")
    length = buf[pos + 1]
    p = pos + 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or p + n > end:
            raise _bad("indefinite or oversized length")
        length = int.from_bytes(buf[p : p + n], "big")
        p += n
    if p + length > end:
        raise _bad("length runs past the end")
    return _TLV(tag, pos, p, p + length)


def _children(buf: bytes, tlv: _TLV) -> list[_TLV]:
    out, pos = [], tlv.value
    while pos < tlv.end:
        child = _read(buf, pos, tlv.end)
        out.append(child)
        pos = child.end
    return out


def _expect(tlv: _TLV, tag: int, what: str) -> _TLV:
    if tlv.tag != tag:
        raise _bad(f"expected {what}")
    return tlv


def _algorithm(buf: bytes, tlv: _TLV, what: str) -> str:
    """The OID of an AlgorithmIdentifier SEQUENCE."""
    parts = _children(buf, _expect(tlv, SEQUENCE, what))
    if not parts:
        raise _bad(f"empty {what}")
    return _oid(buf, parts[0])


def _oid(buf: bytes, tlv: _TLV) -> str:
    body = _expect(tlv, OID, "an object identifier").body(buf)
    if not body:
        raise _bad("empty object identifier")
    parts = [body[0] // 40, body[0] % 40] if body[0] < 80 else [2, body[0] - 80]
    value = 0
    for byte in body[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


@dataclass
class Signer:
    issuer_der: bytes | None
    serial: int | None
    key_id: bytes | None
    digest_oid: str
    signature_oid: str  # rsaEncryption, sha*WithRSAEncryption, ecdsa-with-SHA* or ecPublicKey
    signed_attrs: bytes | None  # DER re-tagged as SET, the bytes the signature covers
    message_digest: bytes | None
    signature: bytes

    def matches(self, cert: x509.Certificate) -> bool:
        if self.key_id is not None:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                return False
            return bool(ski.value.digest == self.key_id)
        return self.issuer_der == cert.issuer.public_bytes() and self.serial == cert.serial_number

    def describe(self, certificates: list[bytes]) -> str:
        """Who signed, for messages: the embedded certificate's subject when there is one."""
        for der in certificates:
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError:
                continue
            if self.matches(cert):
                fingerprint = hashlib.sha256(der).hexdigest()
                return f"{cert.subject.rfc4514_string()}, sha256 {fingerprint[:16]}..."
        if self.key_id is not None:
            return f"key id {self.key_id.hex()}"
        return f"serial {self.serial:x}"


@dataclass
class SignedData:
    content: bytes | None
    signers: list[Signer]
    certificates: list[bytes]


def parse_signed_data(der: bytes) -> SignedData:
    """Parse a DER ContentInfo holding SignedData; VerificationError if it is not one."""
    if not der:
        raise _bad("empty signature")
    top = _read(der, 0, len(der))
    if top.end != len(der):
        raise _bad("trailing bytes after the structure")
    ci = _children(der, _expect(top, SEQUENCE, "ContentInfo"))
    if len(ci) < 2 or _oid(der, ci[0]) != OID_SIGNED_DATA:
        raise _bad("not a SignedData structure")
    explicit = _expect(ci[1], 0xA0, "[0] content")
    sd_seq = _children(der, explicit)
    if len(sd_seq) != 1:
        raise _bad("bad SignedData wrapper")
    sd = _children(der, _expect(sd_seq[0], SEQUENCE, "SignedData"))
    if len(sd) < 4:
        raise _bad("SignedData too short")
    # version, digestAlgorithms, encapContentInfo, [0] certs, [1] crls, signerInfos
    encap = _children(der, _expect(sd[2], SEQUENCE, "content info"))
    content = None
    if len(encap) > 1:
        inner = _children(der, _expect(encap[1], 0xA0, "[0] content"))
        if len(inner) != 1 or inner[0].tag != OCTET_STRING:
            raise _bad("embedded content is not an OCTET STRING")
        content = inner[0].body(der)
    certificates = []
    for item in sd[3:-1]:
        if item.tag == 0xA0:
            certificates = [c.raw(der) for c in _children(der, item)]
    signer_infos = _children(der, _expect(sd[-1], SET, "signerInfos"))
    return SignedData(content, [_signer(der, si) for si in signer_infos], certificates)


def _signer(der: bytes, si_tlv: _TLV) -> Signer:
    si = _children(der, _expect(si_tlv, SEQUENCE, "SignerInfo"))
    if len(si) < 5:
        raise _bad("SignerInfo too short")
    issuer_der = serial = key_id = None
    sid = si[1]
    if sid.tag == SEQUENCE:
        parts = _children(der, sid)
        if len(parts) != 2:
            raise _bad("bad issuerAndSerialNumber")
        issuer_der = parts[0].raw(der)
        serial = int.from_bytes(_expect(parts[1], INTEGER, "serial").body(der), "big", signed=True)
    elif sid.tag == 0x80:
        key_id = sid.body(der)
    else:
        raise _bad("unknown signer identifier")
    digest_oid = _algorithm(der, si[2], "digestAlgorithm")
    idx = 3
    signed_attrs = message_digest = None
    if si[idx].tag == 0xA0:
        attrs = si[idx]
        # The signature covers the attributes DER-encoded with the SET tag, not [0].
        signed_attrs = bytes([SET]) + der[attrs.start + 1 : attrs.end]
        for attr in _children(der, attrs):
            a = _children(der, _expect(attr, SEQUENCE, "attribute"))
            if len(a) == 2 and _oid(der, a[0]) == OID_MESSAGE_DIGEST:
                values = _children(der, _expect(a[1], SET, "attribute values"))
                if len(values) == 1 and values[0].tag == OCTET_STRING:
                    message_digest = values[0].body(der)
        if message_digest is None:
            raise _bad("signed attributes lack a message digest")
        idx += 1
    if idx + 1 >= len(si):
        raise _bad("SignerInfo lacks a signature")
    sig_oid = _algorithm(der, si[idx], "signatureAlgorithm")
    signature = _expect(si[idx + 1], OCTET_STRING, "signature").body(der)
    return Signer(
        issuer_der, serial, key_id, digest_oid, sig_oid, signed_attrs, message_digest, signature
    )


# ---------------------------------------------------------------- writing


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return bytes([tag]) + _len(len(body)) + body


def _oid_der(dotted: str) -> bytes:
    nums = [int(x) for x in dotted.split(".")]
    body = bytearray([40 * nums[0] + nums[1]])
    for n in nums[2:]:
        chunk = [n & 0x7F]
        while n > 0x7F:
            n >>= 7
            chunk.append(0x80 | (n & 0x7F))
        body += bytes(reversed(chunk))
    return _tlv(OID, bytes(body))


def _int_der(n: int) -> bytes:
    return _tlv(INTEGER, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True))


def _alg(oid: str, null_params: bool) -> bytes:
    return _tlv(SEQUENCE, _oid_der(oid), b"\x05\x00" if null_params else b"")


OID_DATA = "1.2.840.113549.1.7.1"


def encode_detached(
    cert: x509.Certificate,
    digest_oid: str,
    signature_oid: str,
    signature: bytes,
    signature_null_params: bool,
) -> bytes:
    """DER ContentInfo(SignedData) with no embedded content, the signer's certificate and one
    SignerInfo (issuer+serial, no signed attributes) carrying `signature`."""
    from cryptography.hazmat.primitives import serialization

    digest_alg = _alg(digest_oid, True)
    signer_info = _tlv(
        SEQUENCE,
        _int_der(1),
        _tlv(SEQUENCE, cert.issuer.public_bytes(), _int_der(cert.serial_number)),
        digest_alg,
        _alg(signature_oid, signature_null_params),
        _tlv(OCTET_STRING, signature),
    )
    signed_data = _tlv(
        SEQUENCE,
        _int_der(1),
        _tlv(SET, digest_alg),
        _tlv(SEQUENCE, _oid_der(OID_DATA)),
        _tlv(0xA0, cert.public_bytes(serialization.Encoding.DER)),
        _tlv(SET, signer_info),
    )
    return _tlv(SEQUENCE, _oid_der(OID_SIGNED_DATA), _tlv(0xA0, signed_data))


__all__ = ["encode_detached", "parse_signed_data", "SignedData", "Signer"]
