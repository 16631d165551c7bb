"""The sealed connection request of PROTOCOL.md section 5: the password, sealed to the target.

The issuer seals the password to the public key of the target's certificate (which it
verified against its trust store, with the target's identifier as SAN URI), so the broker
forwards the request but can neither read it nor send it to anyone else::

    sealed = u8 version=1 | ephemeral public key (65 bytes, uncompressed SEC1 P-256)
           | AES-256-GCM ciphertext of the padded password, with its 16-byte tag

    shared  = ECDH(ephemeral private key, target public key)                  P-256
    key, nonce = HKDF-SHA256(shared, salt = none, length 44,
                 info = "roost/1 connect" | u8 len | target identifier
                        | ephemeral public key | target public key)           [0:32], [32:44]
    associated data = u8 version | u8 count | issuer candidate…   (messages.encode_candidates)
    plaintext = u16 password length | password (UTF-8) | zeros to a multiple of 64 bytes

Every key is fresh per request, so the nonce derived with it is used exactly once. The
info binds the target's identifier and both public keys (as HPKE's key schedule does), so
a request opened under another identity fails; the candidates are associated data, so a
broker that re-targets the issuer's candidates makes the target reject the request. The
padding hides the password's length from the broker up to 64-byte steps.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.reasons import Reason
from roost.rendezvous.messages import Candidate, check_identifier, encode_candidates
from roost.wire import Writer, check_size

__all__ = [
    "INFO_LABEL",
    "MAX_PASSWORD",
    "MAX_SEALED",
    "MIN_SEALED",
    "SEAL_VERSION",
    "open_request",
    "seal_request",
]

SEAL_VERSION = 1
INFO_LABEL = b"roost/1 connect"
# Passwords are typed by people; 256 UTF-8 bytes is far above any the guard would store.
MAX_PASSWORD = 256
_POINT = 65
_TAG = 16
_PAD = 64
_KEY = 32
_NONCE = 12


def _padded(length: int) -> int:
    """``length`` rounded up to a multiple of 64 bytes (at least one block)."""
    return max(_PAD, -(-length // _PAD) * _PAD)


MIN_SEALED = 1 + _POINT + _padded(2) + _TAG
MAX_SEALED = 1 + _POINT + _padded(2 + MAX_PASSWORD) + _TAG


def _point(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _check_p256(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) or not (
        isinstance(key.curve, ec.SECP256R1)
    ):
        raise LocalProtocolError("key is not P-256", reason=Reason.BAD_KEY)


def _key_and_nonce(
    shared: bytes,
    target_id: str,
    ephemeral: bytes,
    target: bytes,
) -> tuple[bytes, bytes]:
    identifier = target_id.encode("ascii")
    info = Writer().raw(INFO_LABEL).u8(len(identifier)).raw(identifier)
    info.raw(ephemeral).raw(target)
    okm = HKDF(hashes.SHA256(), _KEY + _NONCE, salt=None, info=info.bytes()).derive(shared)
    return okm[:_KEY], okm[_KEY:]


def _associated_data(candidates: tuple[Candidate, ...]) -> bytes:
    return bytes([SEAL_VERSION]) + encode_candidates(tuple(candidates))


def seal_request(
    target_public_key: ec.EllipticCurvePublicKey,
    target_id: str,
    issuer_candidates: tuple[Candidate, ...],
    password: str,
    ephemeral_key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """Seal ``password`` to the target's certificate key, bound to ``target_id`` and the
    issuer's candidates. ``ephemeral_key`` is for golden vectors only: a fresh key is made
    when it is None, and a key must never be used twice."""
    _check_p256(target_public_key)
    check_identifier(target_id)
    try:
        secret = password.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError("password is not encodable", reason=Reason.BAD_FIELD) from exc
    if len(secret) > MAX_PASSWORD:
        raise LocalProtocolError("password above 256 bytes", reason=Reason.OVERSIZED)
    if ephemeral_key is None:
        ephemeral_key = ec.generate_private_key(ec.SECP256R1())
    _check_p256(ephemeral_key)
    ephemeral = _point(ephemeral_key.public_key())
    shared = ephemeral_key.exchange(ec.ECDH(), target_public_key)
    key, nonce = _key_and_nonce(shared, target_id, ephemeral, _point(target_public_key))
    plaintext = struct.pack(">H", len(secret)) + secret
    plaintext += bytes(_padded(len(plaintext)) - len(plaintext))
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _associated_data(issuer_candidates))
    return bytes([SEAL_VERSION]) + ephemeral + ciphertext


def open_request(
    target_private_key: ec.EllipticCurvePrivateKey,
    target_id: str,
    sealed: bytes,
    candidates: tuple[Candidate, ...],
) -> str:
    """The password, if ``sealed`` was made for this key and identifier with exactly these
    candidates; otherwise VerificationError("bad-seal"). Structure errors (size, version,
    padding) raise RemoteProtocolError."""
    _check_p256(target_private_key)
    check_identifier(target_id)
    check_size(sealed, MAX_SEALED, "sealed request")
    if len(sealed) < MIN_SEALED or (len(sealed) - 1 - _POINT - _TAG) % _PAD:
        raise RemoteProtocolError("sealed request has a wrong length", reason=Reason.TRUNCATED)
    if sealed[0] != SEAL_VERSION:
        raise RemoteProtocolError("sealed request version", reason=Reason.BAD_VERSION)
    ephemeral = sealed[1 : 1 + _POINT]
    try:
        ephemeral_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ephemeral)
    except ValueError as exc:
        # An altered point is as much a tampered request as an altered ciphertext.
        raise VerificationError("sealed request does not open", reason=Reason.BAD_SEAL) from exc
    if _point(ephemeral_key) != ephemeral:
        raise VerificationError("sealed request does not open", reason=Reason.BAD_SEAL)
    shared = target_private_key.exchange(ec.ECDH(), ephemeral_key)
    target_point = _point(target_private_key.public_key())
    key, nonce = _key_and_nonce(shared, target_id, ephemeral, target_point)
    try:
        plaintext = AESGCM(key).decrypt(
            nonce, sealed[1 + _POINT :], _associated_data(tuple(candidates))
        )
    except InvalidTag as exc:
        raise VerificationError("sealed request does not open", reason=Reason.BAD_SEAL) from exc
    # The issuer wrote what follows and the tag authenticated it: a fault is the issuer's.
    (length,) = struct.unpack(">H", plaintext[:2])
    # Exactly the padding seal_request writes: one plaintext, one encoding.
    if len(plaintext) != _padded(2 + length) or any(plaintext[2 + length :]):
        raise RemoteProtocolError("sealed password padding is wrong", reason=Reason.MALFORMED)
    try:
        return plaintext[2 : 2 + length].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("sealed password is not UTF-8", reason=Reason.MALFORMED) from exc
