"""The sealed connection request of PROTOCOL.md section 5: credentials sealed to the target.

The issuer seals a user name and password to the public key of the target's certificate
(which it verified against its trust store, with the target's identifier as SAN URI), so the broker
forwards the request but can neither read it nor send it to anyone else::

    sealed = u8 version=1 | ephemeral public key (65 bytes, uncompressed SEC1 P-256)
           | AES-256-GCM ciphertext of the padded credentials, with its 16-byte tag

    shared  = ECDH(ephemeral private key, target public key)                  P-256
    key, nonce = HKDF-SHA256(shared, salt = none, length 44,
                 info = "roost/1 connect" | u8 len | target identifier
                        | ephemeral public key | target public key)           [0:32], [32:44]
    associated data = u8 version | u8 count | issuer candidate…   (messages.encode_candidates)
    plaintext = u8 user length | user (UTF-8) | u16 password length | password (UTF-8)
                | zeros to a multiple of 64 bytes

Every key is fresh per request, so the nonce derived with it is used exactly once. The
info binds the target's identifier and both public keys (as HPKE's key schedule does), so
a request opened under another identity fails; the candidates are associated data, so a
broker that re-targets the issuer's candidates makes the target reject the request. The
padding hides the credentials' length from the broker up to 64-byte steps. The user is
sealed with the password so the target checks that user's password before any punching
starts (docs/broker.md, "Sealed connection request"), and the broker never learns who is
connecting.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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
    "MAX_USER",
    "MIN_SEALED",
    "SEAL_VERSION",
    "SealedCredentials",
    "open_request",
    "seal_request",
]

SEAL_VERSION = 1
INFO_LABEL = b"roost/1 connect"
# Passwords are typed by people; 256 UTF-8 bytes is far above any the guard would store.
MAX_PASSWORD = 256
# The guard's hello carries user ids of at most 64 UTF-8 bytes (guard.messages); a longer
# name could never log in, so it is refused before it is sealed.
MAX_USER = 64
_POINT = 65
_TAG = 16
_PAD = 64
_KEY = 32
_NONCE = 12


def _padded(length: int) -> int:
    """``length`` rounded up to a multiple of 64 bytes (at least one block)."""
    return max(_PAD, -(-length // _PAD) * _PAD)


# The smallest plaintext names a one-byte user with an empty password.
MIN_SEALED = 1 + _POINT + _padded(1 + 1 + 2) + _TAG
MAX_SEALED = 1 + _POINT + _padded(1 + MAX_USER + 2 + MAX_PASSWORD) + _TAG


@dataclass(frozen=True, slots=True)
class SealedCredentials:
    """What a sealed request carries: the user to log in as and that user's password."""

    user: str
    password: str

    def __repr__(self) -> str:
        # The password must never reach a log line through a repr.
        return f"SealedCredentials(user={self.user!r}, password=<hidden>)"


def _encoded(text: str, what: str, low: int, high: int) -> bytes:
    try:
        data = text.encode("utf-8")
    except (UnicodeEncodeError, AttributeError) as exc:
        raise LocalProtocolError(f"{what} is not encodable", reason=Reason.BAD_FIELD) from exc
    if len(data) > high:
        raise LocalProtocolError(f"{what} above {high} bytes", reason=Reason.OVERSIZED)
    if len(data) < low:
        raise LocalProtocolError(f"{what} is empty", reason=Reason.EMPTY)
    return data


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
    user: str,
    password: str,
    ephemeral_key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """Seal ``user`` and ``password`` to the target's certificate key, bound to
    ``target_id`` and the issuer's candidates. ``ephemeral_key`` is for golden vectors
    only: a fresh key is made when it is None, and a key must never be used twice."""
    _check_p256(target_public_key)
    check_identifier(target_id)
    name = _encoded(user, "user", 1, MAX_USER)
    secret = _encoded(password, "password", 0, MAX_PASSWORD)
    if ephemeral_key is None:
        ephemeral_key = ec.generate_private_key(ec.SECP256R1())
    _check_p256(ephemeral_key)
    ephemeral = _point(ephemeral_key.public_key())
    shared = ephemeral_key.exchange(ec.ECDH(), target_public_key)
    key, nonce = _key_and_nonce(shared, target_id, ephemeral, _point(target_public_key))
    plaintext = bytes([len(name)]) + name + struct.pack(">H", len(secret)) + secret
    plaintext += bytes(_padded(len(plaintext)) - len(plaintext))
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _associated_data(issuer_candidates))
    return bytes([SEAL_VERSION]) + ephemeral + ciphertext


def open_request(
    target_private_key: ec.EllipticCurvePrivateKey,
    target_id: str,
    sealed: bytes,
    candidates: tuple[Candidate, ...],
) -> SealedCredentials:
    """The user and password, if ``sealed`` was made for this key and identifier with exactly these
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
    user_length = plaintext[0]
    if not 1 <= user_length <= MAX_USER or len(plaintext) < 1 + user_length + 2:
        raise RemoteProtocolError("sealed user length is wrong", reason=Reason.MALFORMED)
    (length,) = struct.unpack(">H", plaintext[1 + user_length : 3 + user_length])
    end = 3 + user_length + length
    # Exactly the padding seal_request writes: one plaintext, one encoding.
    if length > MAX_PASSWORD or len(plaintext) != _padded(end) or any(plaintext[end:]):
        raise RemoteProtocolError("sealed password padding is wrong", reason=Reason.MALFORMED)
    try:
        user = plaintext[1 : 1 + user_length].decode("utf-8")
        password = plaintext[3 + user_length : end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("sealed text is not UTF-8", reason=Reason.MALFORMED) from exc
    return SealedCredentials(user, password)
