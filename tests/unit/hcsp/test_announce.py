"""The signed announcement datagram (PROTOCOL.md section 3): structure and signature."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.hcsp.announce import (
    MAX_DATAGRAM,
    SignedAnnouncement,
    decode_announcement,
    encode_announcement,
    verify_announcement_signature,
)
from roost.hcsp.documents import Endpoint, HubAddress, Subscribe, encode_document
from roost.pki.certs import Role, generate_key
from tests.helpers import pki as pki_helpers
from tests.helpers.pki import Node

CA = pki_helpers.TestCA()
HUB = CA.issue(Role.HUB, ips=("192.168.1.9",))
DER = serialization.Encoding.DER


def _document(node: Node, features: tuple[str, ...] = ("hcsp", "webs", "db")) -> bytes:
    address = HubAddress(node.identifier, Endpoint("192.168.1.9", 17320))
    return encode_document(Subscribe(address, features, 0, 5, 1763900000123, 1763900000123))


def _datagram(node: Node = HUB) -> bytes:
    return encode_announcement(_document(node), node.cert.public_bytes(DER), node.key)


def test_real_datagram_fits_and_round_trips() -> None:
    datagram = _datagram()
    # A hub certificate with a SAN URI and an IP is about 540 bytes; the whole datagram
    # stays well below the 1400-byte cap (docs/hcsp.md records the measurement).
    assert len(datagram) < 900
    announcement = decode_announcement(datagram)
    assert announcement.document == _document(HUB)
    assert announcement.certificate == HUB.cert.public_bytes(DER)
    assert datagram.startswith(announcement.signed_bytes)
    assert datagram[len(announcement.signed_bytes)] == len(announcement.signature)
    verify_announcement_signature(announcement, HUB.cert.public_key())  # type: ignore[arg-type]


def test_every_tampered_byte_is_caught() -> None:
    datagram = _datagram()
    public_key = HUB.cert.public_key()
    for index in range(len(datagram)):
        tampered = bytearray(datagram)
        tampered[index] ^= 0x01
        with pytest.raises((RemoteProtocolError, VerificationError)):
            announcement = decode_announcement(bytes(tampered))
            verify_announcement_signature(announcement, public_key)  # type: ignore[arg-type]


def test_signature_by_another_key_is_rejected() -> None:
    announcement = decode_announcement(_datagram())
    with pytest.raises(VerificationError) as caught:
        verify_announcement_signature(announcement, generate_key().public_key())
    assert caught.value.reason == "bad-signature"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: b"HCSQ" + d[4:], "bad-magic"),
        (lambda d: d[:4] + b"\x02" + d[5:], "bad-version"),
        (lambda d: d[:4], "bad-version"),
        (lambda d: d + b"\x00", "trailing-bytes"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\x00" * (MAX_DATAGRAM - len(d) + 1), "oversized"),
    ],
)
def test_structural_errors_have_reasons(mutate: object, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_announcement(mutate(_datagram()))  # type: ignore[operator]
    assert caught.value.reason == reason


def test_encoder_refuses_a_datagram_above_the_cap() -> None:
    with pytest.raises(LocalProtocolError):
        encode_announcement(b"x" * 1000, HUB.cert.public_bytes(DER), HUB.key)


@settings(max_examples=500)
@given(st.binary(max_size=1500))
def test_arbitrary_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_announcement(data)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(min_size=8, max_size=72))
def test_decode_inverts_framing(document: bytes, certificate: bytes, signature: bytes) -> None:
    original = SignedAnnouncement(document or b"<x/>", certificate or b"\x30", signature)
    framed = original.signed_bytes + bytes([len(signature)]) + signature
    assert decode_announcement(framed) == original


@settings(max_examples=200)
@given(st.data())
def test_prefix_mutations_decode_or_raise(data: st.DataObject) -> None:
    datagram = bytearray(_datagram())
    index = data.draw(st.integers(0, 12))
    datagram[index] = data.draw(st.integers(0, 255))
    with contextlib.suppress(RemoteProtocolError):
        decode_announcement(bytes(datagram))
