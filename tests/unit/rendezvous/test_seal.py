"""The sealed connection request (PROTOCOL.md section 5): only the target opens it, and only
with the issuer's candidates unchanged."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.rendezvous.messages import Candidate
from roost.rendezvous.seal import MAX_PASSWORD, MAX_SEALED, MIN_SEALED, open_request, seal_request


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


def _seal(password: str = "s3cret") -> bytes:
    return seal_request(TARGET.public_key(), TARGET_ID, CANDIDATES, password)


def test_round_trip_and_fresh_ephemeral_keys() -> None:
    first, second = _seal(), _seal()
    assert first != second  # a fresh ephemeral key each time
    assert open_request(TARGET, TARGET_ID, first, CANDIDATES) == "s3cret"
    assert open_request(TARGET, TARGET_ID, second, CANDIDATES) == "s3cret"


@pytest.mark.parametrize("password", ["", "x", "é" * 40, "p" * 62, "p" * 63, "p" * MAX_PASSWORD])
def test_lengths_are_padded_to_64_byte_steps(password: str) -> None:
    sealed = _seal(password)
    assert MIN_SEALED <= len(sealed) <= MAX_SEALED
    assert (len(sealed) - 1 - 65 - 16) % 64 == 0
    assert open_request(TARGET, TARGET_ID, sealed, CANDIDATES) == password


def test_short_passwords_are_indistinguishable_by_length() -> None:
    assert len(_seal("")) == len(_seal("a" * 62)) == MIN_SEALED


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
    with pytest.raises(LocalProtocolError) as caught:
        seal_request(TARGET.public_key(), TARGET_ID, CANDIDATES, "p" * (MAX_PASSWORD + 1))
    assert _reason(caught) == "oversized"
    with pytest.raises(LocalProtocolError) as caught:
        seal_request(TARGET.public_key(), "hub", CANDIDATES, "p")
    assert _reason(caught) == "bad-identifier"
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(LocalProtocolError) as caught:
        seal_request(p384.public_key(), TARGET_ID, CANDIDATES, "p")
    assert _reason(caught) == "bad-key"
    with pytest.raises(LocalProtocolError) as caught:
        open_request(p384, TARGET_ID, _seal(), CANDIDATES)
    assert _reason(caught) == "bad-key"
    with pytest.raises(LocalProtocolError) as caught:
        seal_request(TARGET.public_key(), TARGET_ID, CANDIDATES, "\ud800")
    assert _reason(caught) == "bad-field"


def test_fixed_ephemeral_key_is_deterministic() -> None:
    ephemeral = _key("ephemeral")
    one = seal_request(TARGET.public_key(), TARGET_ID, CANDIDATES, "pw", ephemeral)
    two = seal_request(TARGET.public_key(), TARGET_ID, CANDIDATES, "pw", ephemeral)
    assert one == two
