"""RREG, RACK and RWAK (PROTOCOL.md section 5): tags, counters, limits and refusals."""

from __future__ import annotations

import ipaddress

import pytest

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.rendezvous.messages import (
    MAX_CANDIDATES,
    MAX_REGISTRATION,
    Ack,
    Candidate,
    Registration,
    Wake,
    check_counter,
    check_reply_size,
    decode_ack,
    decode_candidates,
    decode_registration,
    decode_wake,
    encode_ack,
    encode_candidates,
    encode_registration,
    encode_wake,
    verify_registration,
    verify_wake,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
HUB = "hcsp:PtPvXYJSQsqwTJpPGjw0gA"
DEVICE = "ab:EIW6Qe0ARnWrsJZTsHWadA"
V6 = Candidate.parse("[2001:db8::1]:65535")


def _reason(error: pytest.ExceptionInfo[Exception]) -> str:
    return str(getattr(error.value, "reason", ""))


def test_registration_round_trip_and_tag() -> None:
    registration = Registration(HUB, 9, (Candidate.parse("10.0.0.2:4000"), V6))
    data = encode_registration(registration, KEY)
    received = decode_registration(data)
    assert received.signed == data[:-16] and received.tag == data[-16:]
    assert verify_registration(received, KEY) == registration
    with pytest.raises(VerificationError) as caught:
        verify_registration(received, OTHER_KEY)
    assert _reason(caught) == "bad-tag"


def test_every_altered_byte_of_a_registration_is_refused() -> None:
    data = encode_registration(Registration(DEVICE, 1, (V6,)), KEY)
    for index in range(len(data)):
        altered = bytearray(data)
        altered[index] ^= 0x40
        with pytest.raises((RemoteProtocolError, VerificationError)):
            verify_registration(decode_registration(bytes(altered)), KEY)


def test_registration_for_another_identifier_fails_under_its_key() -> None:
    # Equipment B signs a registration naming A: the broker checks it under A's key.
    forged = encode_registration(Registration(HUB, 100, ()), OTHER_KEY)
    received = decode_registration(forged)
    assert received.registration.identifier == HUB
    with pytest.raises(VerificationError):
        verify_registration(received, KEY)


def test_counter_must_increase() -> None:
    check_counter(None, 0)
    check_counter(4, 5)
    for counter in (4, 3, 0):
        with pytest.raises(VerificationError) as caught:
            check_counter(4, counter)
        assert _reason(caught) == "counter-not-increasing"


def test_registration_structure_refusals() -> None:
    good = encode_registration(Registration(HUB, 1, ()), KEY)
    identifier_end = 6 + len(HUB)
    cases = {
        "bad-magic": b"RRXG" + good[4:],
        "bad-version": good[:4] + b"\x02" + good[5:],
        "bad-identifier": good[:6] + b"hcsp?" + good[11:],
        "truncated": good[:-1],
        "trailing-bytes": good + b"\x00",
        "too-many-candidates": good[: identifier_end + 8] + bytes([MAX_CANDIDATES + 1]),
        "bad-family": good[: identifier_end + 8] + b"\x01\x05" + bytes(40),
        "oversized": good + bytes(MAX_REGISTRATION),
    }
    for reason, data in cases.items():
        with pytest.raises(RemoteProtocolError) as caught:
            decode_registration(data)
        assert _reason(caught) == reason, reason
    # Non-ASCII identifiers are refused as identifiers, not as crashes.
    with pytest.raises(RemoteProtocolError) as caught:
        decode_registration(good[:6] + "hcsp\u00e9".encode("latin-1") + good[11:])
    assert _reason(caught) == "bad-identifier"


def test_largest_registration_fits_512_bytes() -> None:
    candidates = tuple(Candidate(ipaddress.IPv6Address(i + 1), 1000 + i) for i in range(16))
    data = encode_registration(Registration(HUB, 2**64 - 1, candidates), KEY)
    assert len(data) <= MAX_REGISTRATION
    assert decode_registration(data).registration.candidates == candidates
    with pytest.raises(LocalProtocolError) as caught:
        encode_registration(Registration(HUB, 1, (*candidates, V6)), KEY)
    assert _reason(caught) == "too-many-candidates"


def test_encoder_refusals() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        encode_registration(Registration("hub-a", 1, ()), KEY)
    assert _reason(caught) == "bad-identifier"
    with pytest.raises(LocalProtocolError) as caught:
        encode_registration(Registration(HUB, 1, ()), b"short")
    assert _reason(caught) == "bad-registration-key"
    with pytest.raises(LocalProtocolError):
        encode_registration(Registration(HUB, 2**64, ()), KEY)
    with pytest.raises(LocalProtocolError) as caught:
        Wake(1, b"short")
    assert _reason(caught) == "bad-field"


def test_ack_is_never_larger_than_the_registration() -> None:
    smallest = encode_registration(Registration(DEVICE, 1, ()), KEY)
    ack = Ack(1, V6)
    reply = encode_ack(ack, smallest)
    assert len(reply) <= len(smallest) and decode_ack(reply) == ack
    with pytest.raises(LocalProtocolError) as caught:
        encode_ack(ack, smallest[:30])
    assert _reason(caught) == "reply-too-large"
    with pytest.raises(LocalProtocolError):
        check_reply_size(b"x" * 3, b"x" * 2)
    check_reply_size(b"x" * 2, b"x" * 2)


def test_ack_refusals() -> None:
    good = encode_ack(Ack(3, V6))
    short = encode_ack(Ack(3, Candidate.parse("192.0.2.1:5")))
    for reason, data in {
        "bad-magic": b"RREG" + good[4:],
        "truncated": good[:-1],
        "trailing-bytes": short + b"\x00",
        "bad-family": good[:12] + b"\x07" + good[13:],
        "oversized": good + bytes(100),
    }.items():
        with pytest.raises(RemoteProtocolError) as caught:
            decode_ack(data)
        assert _reason(caught) == reason, reason


def test_wake_round_trip_forgery_and_replay() -> None:
    wake = Wake(5, bytes(16))
    data = encode_wake(wake, KEY)
    assert len(data) == 45
    assert verify_wake(decode_wake(data), KEY) == wake
    with pytest.raises(VerificationError):
        verify_wake(decode_wake(data), OTHER_KEY)
    # A resent wake-up carries the same token with a new counter; the old one is a replay.
    check_counter(wake.counter, 6)
    with pytest.raises(VerificationError):
        check_counter(6, wake.counter)
    for index in range(len(data)):
        altered = bytearray(data)
        altered[index] ^= 0x01
        with pytest.raises((RemoteProtocolError, VerificationError)):
            verify_wake(decode_wake(bytes(altered)), KEY)


def test_candidate_forms() -> None:
    assert str(Candidate.parse("192.0.2.1:80")) == "192.0.2.1:80"
    assert Candidate.parse("[2001:DB8::1]:80") == Candidate.parse("[2001:db8::1]:80")
    assert Candidate.of("::1", 9).as_tuple() == ("::1", 9)
    assert Candidate.parse("[::1]:9").family == 6 and Candidate.parse("1.2.3.4:9").family == 4
    for text in (
        "192.0.2.1",
        "192.0.2.1:0",
        "192.0.2.1:65536",
        "192.0.2.1:+80",
        "2001:db8::1:80",
        "[192.0.2.1]:80",
        "[fe80::1%eth0]:80",
        "host.example:80",
        "192.000.2.1:80",
        "[::1]:٨٠",
        "x" * 100,
    ):
        with pytest.raises(LocalProtocolError) as caught:
            Candidate.parse(text)
        assert _reason(caught) == "bad-candidate", text
    with pytest.raises(LocalProtocolError):
        Candidate(ipaddress.IPv6Address("fe80::1%2"), 80)
    with pytest.raises(LocalProtocolError):
        Candidate(ipaddress.IPv4Address("1.2.3.4"), True)


def test_candidate_list_round_trip() -> None:
    candidates = (Candidate.parse("10.0.0.1:1"), V6)
    assert decode_candidates(encode_candidates(candidates)) == candidates
    assert decode_candidates(b"\x00") == ()
    with pytest.raises(RemoteProtocolError):
        decode_candidates(encode_candidates(candidates) + b"\x00")
