"""The sealed connection request (PROTOCOL.md section 5): only the target opens it, and only
with the issuer's candidates unchanged; it names the user as well as the password."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.rendezvous.messages import Candidate
from roost.rendezvous.seal import (
    MAX_PASSWORD,
    MAX_SEALED,
    MAX_USER,
    MIN_SEALED,
    SealedCredentials,
    open_request,
    seal_request,
)


def _key(label: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") >> 8
    return ec.derive_private_key(scalar, ec.SECP256R1())


TARGET = _key("target")
OTHER = _key("other")
TARGET_ID = "hcsp:PtPvXYJSQsqwTJpPGjw0gA"
OTHER_ID = "hcsp:AAAAAAAAAAAAAAAAAAAAAA"
CANDIDATES = (Candidate.parse("198.51.100.7:50000"), Candidate.parse("[2001:db8::7]:50000"))


def _reason(error: pytest.ExceptionInfo[Exception]) -> str:
    return str(getattr(error.value, "reason", ""))


def _seal(password: str = "s3cret", user: str = "owner") -> bytes:
    return seal_request(TARGET.public_key(), TARGET_ID, CANDIDATES, user, password)


def test_round_trip_and_fresh_ephemeral_keys() -> None:
    first, second = _seal(), _seal()
    assert first != second  # a fresh ephemeral key each time
    opened = open_request(TARGET, TARGET_ID, first, CANDIDATES)
    assert opened == SealedCredentials("owner", "s3cret")
    assert (opened.user, opened.password) == ("owner", "s3cret")
    assert open_request(TARGET, TARGET_ID, second, CANDIDATES) == SealedCredentials(
        "owner", "s3cret"
    )
    # The password never shows through the value's repr (log lines, tracebacks).
    assert "s3cret" not in repr(opened) and "owner" in repr(opened)


@pytest.mark.parametrize("password", ["", "x", "é" * 40, "p" * 58, "p" * 59, "p" * MAX_PASSWORD])
@pytest.mark.parametrize("user", ["a", "owner", "ü" * 32, "u" * MAX_USER])
def test_lengths_are_padded_to_64_byte_steps(user: str, password: str) -> None:
    sealed = _seal(password, user)
    assert MIN_SEALED <= len(sealed) <= MAX_SEALED
    assert (len(sealed) - 1 - 65 - 16) % 64 == 0
    plaintext = 1 + len(user.encode()) + 2 + len(password.encode())
    assert len(sealed) - 1 - 65 - 16 == max(64, -(-plaintext // 64) * 64)
    assert open_request(TARGET, TARGET_ID, sealed, CANDIDATES) == SealedCredentials(user, password)


def test_short_credentials_are_indistinguishable_by_length() -> None:
    # 1 + 5 ("owner") + 2 + 56 = 64 bytes: one block, like the shortest request.
    assert len(_seal("", "a")) == len(_seal("a" * 56)) == MIN_SEALED
    assert len(_seal("a" * 57)) == MIN_SEALED + 64
    assert len(_seal("p" * MAX_PASSWORD, "u" * MAX_USER)) == MAX_SEALED


def test_user_and_password_are_bound_together() -> None:
    # Two requests whose concatenated text is equal still open to different credentials.
    one = open_request(TARGET, TARGET_ID, _seal("bc", "a"), CANDIDATES)
    two = open_request(TARGET, TARGET_ID, _seal("c", "ab"), CANDIDATES)
    assert one == SealedCredentials("a", "bc") and two == SealedCredentials("ab", "c")


def test_wrong_target_key_or_identifier_fails() -> None:
    sealed = _seal()
    with pytest.raises(VerificationError) as caught:
        open_request(OTHER, TARGET_ID, sealed, CANDIDATES)
    assert _reason(caught) == "bad-seal"
    with pytest.raises(VerificationError):
        open_request(TARGET, OTHER_ID, sealed, CANDIDATES)


def test_altered_candidates_fail() -> None:
    sealed = _seal()
    for altered in (
        CANDIDATES[:1],
        CANDIDATES[::-1],
        (*CANDIDATES, Candidate.parse("203.0.113.9:1")),
        (Candidate.parse("203.0.113.9:50000"), CANDIDATES[1]),
        (),
    ):
        with pytest.raises(VerificationError):
            open_request(TARGET, TARGET_ID, sealed, altered)


def test_every_altered_byte_fails() -> None:
    sealed = _seal()
    for index in range(len(sealed)):
        altered = bytearray(sealed)
        altered[index] ^= 0x01
        with pytest.raises((VerificationError, RemoteProtocolError)):
            open_request(TARGET, TARGET_ID, bytes(altered), CANDIDATES)


def test_structure_refusals() -> None:
    sealed = _seal()
    for data, reason in (
        (sealed[:-1], "truncated"),
        (sealed[: MIN_SEALED - 1], "truncated"),
        (bytes([2]) + sealed[1:], "bad-version"),
        (sealed + bytes(MAX_SEALED), "oversized"),
    ):
        with pytest.raises(RemoteProtocolError) as caught:
            open_request(TARGET, TARGET_ID, data, CANDIDATES)
        assert _reason(caught) == reason
    # A block more of ciphertext has a valid length but is no longer what was sealed.
    with pytest.raises(VerificationError):
        open_request(TARGET, TARGET_ID, sealed + bytes(64), CANDIDATES)
    # A point not on the curve is a tampered request.
    off_curve = sealed[:1] + b"\x04" + bytes(64) + sealed[66:]
    with pytest.raises(VerificationError) as caught:
        open_request(TARGET, TARGET_ID, off_curve, CANDIDATES)
    assert _reason(caught) == "bad-seal"


def test_seal_refusals() -> None:
    public = TARGET.public_key()
    with pytest.raises(LocalProtocolError) as caught:
        seal_request(public, TARGET_ID, CANDIDATES, "u", "p" * (MAX_PASSWORD + 1))
    assert _reason(caught) == "oversized"
    with pytest.raises(LocalProtocolError) as caught:
        seal_request(public, TARGET_ID, CANDIDATES, "u" * (MAX_USER + 1), "p")
    assert _reason(caught) == "oversized"
    with pytest.raises(LocalProtocolError) as caught:
        seal_request(public, TARGET_ID, CANDIDATES, "", "p")
    assert _reason(caught) == "empty"
    with pytest.raises(LocalProtocolError) as caught:
        seal_request(public, "hub", CANDIDATES, "u", "p")
    assert _reason(caught) == "bad-identifier"
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(LocalProtocolError) as caught:
        seal_request(p384.public_key(), TARGET_ID, CANDIDATES, "u", "p")
    assert _reason(caught) == "bad-key"
    with pytest.raises(LocalProtocolError) as caught:
        open_request(p384, TARGET_ID, _seal(), CANDIDATES)
    assert _reason(caught) == "bad-key"
    for user, password in (("u", "\ud800"), ("\ud800", "p")):
        with pytest.raises(LocalProtocolError) as caught:
            seal_request(public, TARGET_ID, CANDIDATES, user, password)
        assert _reason(caught) == "bad-field"


def test_fixed_ephemeral_key_is_deterministic() -> None:
    ephemeral = _key("ephemeral")
    one = seal_request(TARGET.public_key(), TARGET_ID, CANDIDATES, "u", "pw", ephemeral)
    two = seal_request(TARGET.public_key(), TARGET_ID, CANDIDATES, "u", "pw", ephemeral)
    assert one == two


def _sealed_plaintext(plaintext: bytes) -> bytes:
    """A request sealed exactly as seal_request does, but around any ``plaintext``: the
    tag verifies, so only the plaintext rules decide."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from roost.rendezvous.messages import encode_candidates

    ephemeral = _key("ephemeral")
    point = ephemeral.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    target = TARGET.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    shared = ephemeral.exchange(ec.ECDH(), TARGET.public_key())
    identifier = TARGET_ID.encode()
    info = b"roost/1 connect" + bytes([len(identifier)]) + identifier + point + target
    okm = HKDF(hashes.SHA256(), 44, salt=None, info=info).derive(shared)
    associated = b"\x01" + encode_candidates(CANDIDATES)
    return b"\x01" + point + AESGCM(okm[:32]).encrypt(okm[32:], plaintext, associated)


@pytest.mark.parametrize(
    "plaintext",
    [
        bytes(64),  # an empty user name
        bytes([MAX_USER + 1]) + b"u" * (MAX_USER + 1) + bytes(64 * 2 - MAX_USER - 2),
        b"\x05owner\xff\xff" + bytes(64 - 8),  # a password length past the plaintext
        b"\x05owner\x00\x02pw" + b"\x01" + bytes(64 - 11),  # padding that is not zero
        b"\x05owner\x00\x02pw" + bytes(64 - 10 + 64),  # a block more padding than needed
        b"\x01\xff\x00\x02pw" + bytes(64 - 6),  # a user name that is not UTF-8
        b"\x01u\x00\x02\xff\xfe" + bytes(64 - 6),  # a password that is not UTF-8
        b"\x3f" + b"u" * 63,  # the user name leaves no room for the password length
    ],
)
def test_malformed_plaintexts_are_the_issuers_fault(plaintext: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        open_request(TARGET, TARGET_ID, _sealed_plaintext(plaintext), CANDIDATES)
    assert _reason(caught) == "malformed"


def test_a_hand_sealed_plaintext_opens_like_ours() -> None:
    plaintext = b"\x05owner\x00\x02pw" + bytes(64 - 10)
    assert open_request(TARGET, TARGET_ID, _sealed_plaintext(plaintext), CANDIDATES) == (
        SealedCredentials("owner", "pw")
    )
