"""STUN Binding (RFC 8489) against the published RFC 5769 test vectors, and its refusals."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography.hazmat.primitives import hashes, hmac

from roost.errors import RemoteProtocolError
from roost.rendezvous.messages import Candidate
from roost.rendezvous.stun import (
    BINDING_ERROR,
    BINDING_REQUEST,
    BINDING_SUCCESS,
    MAX_RESPONSE,
    MAX_STUN_MESSAGE,
    MESSAGE_INTEGRITY,
    SOFTWARE,
    XOR_MAPPED_ADDRESS,
    StunAttribute,
    StunMessage,
    build_binding_request,
    build_binding_response,
    decode_stun,
    encode_stun,
    encode_xor_address,
    looks_like_stun,
    parse_binding_request,
    parse_binding_response,
)


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 ("Test Vectors for STUN", April 2010), sections 2.1, 2.2 and 2.3, byte for byte as
# published. The padding of SOFTWARE and USERNAME is 0x20 in the RFC on purpose: receivers
# must ignore padding content. All three use the short-term password below.
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TRANSACTION = _hex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
RFC5769_REQUEST = _hex(
    """
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf
    """
)
RFC5769_IPV4_RESPONSE = _hex(
    """
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96
    """
)
RFC5769_IPV6_RESPONSE = _hex(
    """
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c
    """
)


def _integrity_offset(message: StunMessage) -> int:
    """Where MESSAGE-INTEGRITY's attribute header starts, from the decoded attributes."""
    offset = 20
    for attribute in message.attributes:
        if attribute.type == MESSAGE_INTEGRITY:
            return offset
        offset += 4 + len(attribute.value) + (-len(attribute.value) % 4)
    raise AssertionError("no MESSAGE-INTEGRITY")


def _check_message_integrity(data: bytes, password: bytes) -> None:
    """RFC 8489 section 14.5: HMAC-SHA1 over the message up to MESSAGE-INTEGRITY, with the
    header's length counting up to and including MESSAGE-INTEGRITY."""
    message = decode_stun(data)
    offset = _integrity_offset(message)
    covered = bytearray(data[:offset])
    covered[2:4] = (offset - 20 + 24).to_bytes(2, "big")
    mac = hmac.HMAC(password, hashes.SHA1())
    mac.update(bytes(covered))
    mac.verify(message.first(MESSAGE_INTEGRITY) or b"")


def test_rfc5769_sample_request_parses_and_verifies() -> None:
    message = parse_binding_request(RFC5769_REQUEST)
    assert message.fingerprint
    assert message.transaction_id == RFC5769_TRANSACTION
    assert message.first(SOFTWARE) == b"STUN test client"
    assert message.first(0x0006) == b"evtj:h6vY"  # USERNAME, skipped by us, kept intact
    assert [a.type for a in message.attributes] == [0x8022, 0x0024, 0x8029, 0x0006, 0x0008]
    _check_message_integrity(RFC5769_REQUEST, RFC5769_PASSWORD)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (RFC5769_IPV4_RESPONSE, Candidate.parse("192.0.2.1:32853")),
        (RFC5769_IPV6_RESPONSE, Candidate.parse("[2001:db8:1234:5678:11:2233:4455:6677]:32853")),
    ],
    ids=["ipv4", "ipv6"],
)
def test_rfc5769_responses_give_the_mapped_address(data: bytes, expected: Candidate) -> None:
    assert parse_binding_response(data, RFC5769_TRANSACTION) == expected
    message = decode_stun(data)
    assert message.fingerprint and message.message_type == BINDING_SUCCESS
    assert message.first(SOFTWARE) == b"test vector"
    _check_message_integrity(data, RFC5769_PASSWORD)
    # Our XOR-MAPPED-ADDRESS encoder writes exactly the RFC's value for that address.
    assert encode_xor_address(expected, RFC5769_TRANSACTION) == message.first(XOR_MAPPED_ADDRESS)


def test_a_wrong_password_fails_the_integrity_check_we_use_on_the_vectors() -> None:
    # The MESSAGE-INTEGRITY helper of this file must be able to fail.
    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        _check_message_integrity(RFC5769_REQUEST, b"not the password")


@pytest.mark.parametrize("data", [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE])
def test_any_altered_byte_breaks_the_fingerprint(data: bytes) -> None:
    # Every byte after the cookie up to the FINGERPRINT attribute is covered; flip each.
    for index in range(8, len(data) - 8):
        altered = bytearray(data)
        altered[index] ^= 0x01
        with pytest.raises(RemoteProtocolError):
            decode_stun(bytes(altered))
    # Altering FINGERPRINT's own type makes it an unknown attribute: the message then has
    # no fingerprint, which a decoder reports rather than hides.
    altered = bytearray(data)
    altered[-7] ^= 0x01
    assert not decode_stun(bytes(altered)).fingerprint


def test_altered_attribute_value_is_bad_fingerprint() -> None:
    altered = bytearray(RFC5769_IPV4_RESPONSE)
    altered[30] ^= 0xFF  # inside XOR-MAPPED-ADDRESS
    with pytest.raises(RemoteProtocolError) as caught:
        decode_stun(bytes(altered))
    assert caught.value.reason == "bad-fingerprint"


def test_fingerprint_must_be_last() -> None:
    request = build_binding_request(bytes(12))
    # Append a SOFTWARE attribute after the FINGERPRINT, fixing up the length.
    extra = bytes.fromhex("80220004") + b"late"
    data = bytearray(request + extra)
    data[2:4] = (len(data) - 20).to_bytes(2, "big")
    with pytest.raises(RemoteProtocolError) as caught:
        decode_stun(bytes(data))
    assert caught.value.reason in {"bad-attribute", "bad-fingerprint"}


def test_header_checks() -> None:
    request = build_binding_request(bytes(12))
    cases = {
        "bad-magic": request[:4] + b"\x00\x00\x00\x00" + request[8:],
        "truncated": request[:-4],
        "trailing-bytes": request + b"\x00\x00\x00\x00",
        "malformed": request[:2] + (len(request) - 21).to_bytes(2, "big") + request[4:-1],
        "oversized": request + bytes(MAX_STUN_MESSAGE),
    }
    for reason, data in cases.items():
        with pytest.raises(RemoteProtocolError) as caught:
            decode_stun(data)
        assert caught.value.reason == reason, reason
    assert not looks_like_stun(b"RREG" + bytes(30))
    assert not looks_like_stun(b"\xc0" + request[1:])
    assert looks_like_stun(request)


def test_broker_round_trip_ipv4_and_ipv6() -> None:
    transaction = bytes(range(12))
    request = parse_binding_request(build_binding_request(transaction))
    for text in ("198.51.100.1:1", "[2001:db8::7]:65535", "[::ffff:192.0.2.9]:4000"):
        mapped = Candidate.parse(text)
        response = build_binding_response(request, mapped)
        assert len(response) <= MAX_RESPONSE
        assert parse_binding_response(response, transaction) == mapped


def test_client_requests_are_at_least_as_large_as_any_response() -> None:
    request = build_binding_request(bytes(12))
    assert len(request) >= MAX_RESPONSE
    biggest = build_binding_response(
        parse_binding_request(request), Candidate(ipaddress.IPv6Address(2**128 - 1), 65535)
    )
    assert len(biggest) == MAX_RESPONSE


def test_response_refusals() -> None:
    transaction = bytes(range(12))
    request = parse_binding_request(build_binding_request(transaction))
    good = build_binding_response(request, Candidate.parse("192.0.2.1:9"))
    with pytest.raises(RemoteProtocolError) as caught:
        parse_binding_response(good, bytes(12))
    assert caught.value.reason == "transaction-mismatch"
    error = encode_stun(StunMessage(BINDING_ERROR, transaction, (), True))
    with pytest.raises(RemoteProtocolError) as caught:
        parse_binding_response(error, transaction)
    assert caught.value.reason == "not-binding"
    empty = encode_stun(StunMessage(BINDING_SUCCESS, transaction, (), True))
    with pytest.raises(RemoteProtocolError) as caught:
        parse_binding_response(empty, transaction)
    assert caught.value.reason == "no-mapped-address"
    for value, reason in (
        (bytes.fromhex("0003a147e112a643"), "bad-family"),
        (bytes.fromhex("0001a147e112a6"), "bad-attribute"),
        (bytes.fromhex("0001a147e112a64300"), "bad-attribute"),
        (bytes.fromhex("00012112e112a643"), "bad-candidate"),  # port 0 after the XOR
    ):
        message = StunMessage(
            BINDING_SUCCESS, transaction, (StunAttribute(XOR_MAPPED_ADDRESS, value),), True
        )
        with pytest.raises(RemoteProtocolError) as caught:
            parse_binding_response(encode_stun(message), transaction)
        assert caught.value.reason == reason, value.hex()


def test_broker_refuses_what_is_not_a_binding_request() -> None:
    success = encode_stun(StunMessage(BINDING_SUCCESS, bytes(12)))
    with pytest.raises(RemoteProtocolError) as caught:
        parse_binding_request(success)
    assert caught.value.reason == "not-binding"
    # A request without FINGERPRINT or attributes is still a Binding request.
    bare = parse_binding_request(encode_stun(StunMessage(BINDING_REQUEST, bytes(12))))
    assert not bare.fingerprint and bare.attributes == ()
