"""The signed announcement datagram of PROTOCOL.md section 3 (seed FIG. 8A).

Layout, big-endian::

    "HCSP" | u8 version=1 | u16 doc_len | document | u16 cert_len | certificate DER
           | u8 sig_len | signature (ECDSA P-256 / SHA-256, DER, over every byte before sig_len)

The signature is detached and covers the exact document bytes, never a canonicalised XML
tree, so what is verified is exactly what the parser reads (research/handover.md §2.6).
Decoding checks structure only; trust is a separate step (``verify_announcement_signature``)
so a receiver can run its cheap checks in between (section 3 receive order).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.wire import Reader, Writer, check_size

__all__ = [
    "MAGIC",
    "MAX_DATAGRAM",
    "MAX_SIGNATURE",
    "VERSION",
    "SignedAnnouncement",
    "check_preamble",
    "decode_announcement",
    "encode_announcement",
    "verify_announcement_signature",
]

MAGIC = b"HCSP"
VERSION = 1
MAX_DATAGRAM = 1400
# A DER ECDSA P-256 signature is a SEQUENCE of two INTEGERs of at most 33 bytes: 72 bytes.
MAX_SIGNATURE = 72
_MIN_SIGNATURE = 8
_PREAMBLE = len(MAGIC) + 1


@dataclass(frozen=True, slots=True)
class SignedAnnouncement:
    """The three fields of a datagram whose lengths were consistent; nothing is trusted yet."""

    document: bytes
    certificate: bytes
    signature: bytes

    @property
    def signed_bytes(self) -> bytes:
        """Every byte of the datagram before ``sig_len``: what the signature covers."""
        return _signed_part(self.document, self.certificate)


def _signed_part(document: bytes, certificate: bytes) -> bytes:
    return (
        Writer()
        .raw(MAGIC)
        .u8(VERSION)
        .u16(len(document))
        .raw(document)
        .u16(len(certificate))
        .raw(certificate)
        .bytes()
    )


def encode_announcement(
    document: bytes,
    certificate_der: bytes,
    private_key: ec.EllipticCurvePrivateKey,
    max_size: int = MAX_DATAGRAM,
) -> bytes:
    """Sign and frame one announcement; raises LocalProtocolError if it would not fit."""
    if len(document) > 0xFFFF or len(certificate_der) > 0xFFFF:
        raise LocalProtocolError(
            "announcement field longer than its u16 length", reason="oversized"
        )
    signed = _signed_part(document, certificate_der)
    signature = private_key.sign(signed, ec.ECDSA(hashes.SHA256()))
    datagram = Writer().raw(signed).u8(len(signature)).raw(signature).bytes()
    if len(datagram) > max_size:
        raise LocalProtocolError(
            f"announcement is {len(datagram)} bytes, above the {max_size}-byte limit",
            reason="oversized",
        )
    return datagram


def check_preamble(data: bytes, max_size: int = MAX_DATAGRAM) -> None:
    """The first, cheapest checks of section 3: size cap, then magic and version."""
    check_size(data, max_size, "HCSP announcement")
    if data[: len(MAGIC)] != MAGIC:
        raise RemoteProtocolError("datagram does not start with HCSP", reason="bad-magic")
    if len(data) < _PREAMBLE or data[len(MAGIC)] != VERSION:
        raise RemoteProtocolError("unsupported announcement version", reason="bad-version")


def decode_announcement(data: bytes, max_size: int = MAX_DATAGRAM) -> SignedAnnouncement:
    """Split a datagram into document, certificate and signature (structure only).

    Raises RemoteProtocolError when the size, magic, version or lengths are wrong or bytes
    trail the signature. The caller verifies the certificate and the signature next.
    """
    check_preamble(data, max_size)
    reader = Reader(data, "HCSP announcement")
    reader.take(_PREAMBLE)
    document = reader.take(reader.u16())
    certificate = reader.take(reader.u16())
    signature_length = reader.u8()
    if not _MIN_SIGNATURE <= signature_length <= MAX_SIGNATURE:
        raise RemoteProtocolError(
            f"signature length {signature_length} is not an ECDSA P-256 length",
            reason="bad-signature-length",
        )
    signature = reader.take(signature_length)
    reader.expect_end()
    if not document or not certificate:
        raise RemoteProtocolError("announcement has an empty field", reason="truncated")
    return SignedAnnouncement(document, certificate, signature)


def verify_announcement_signature(
    announcement: SignedAnnouncement, public_key: ec.EllipticCurvePublicKey
) -> None:
    """Raise VerificationError("bad-signature") unless the signature verifies under the key.

    The key must come from a certificate that already chained to a trusted CA generation.
    """
    try:
        public_key.verify(
            announcement.signature, announcement.signed_bytes, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature as exc:
        raise VerificationError(
            "announcement signature is invalid", reason="bad-signature"
        ) from exc
