"""STUN Binding (RFC 8489) as the broker answers it and the issuer and agent ask it (pure).

PROTOCOL.md section 5: the broker's UDP port answers Binding requests with
XOR-MAPPED-ADDRESS, so a party learns its reflexive address from the very socket it will
punch with. Message layout (RFC 8489 section 5), big-endian::

    0b00 | u14 message type | u16 length (after the header, a multiple of 4)
    | u32 magic cookie 0x2112A442 | 12-byte transaction id
    | attribute… = u16 type | u16 value length | value | padding to a multiple of 4

The decoder walks every attribute and keeps it (type and value; padding content is
ignored, RFC 8489 section 14), so attributes we do not use (MESSAGE-INTEGRITY, USERNAME,
PRIORITY, …) are skipped safely. FINGERPRINT (section 14.7) must be the last attribute
and is verified when present: ``CRC-32(message before it) XOR 0x5354554E``, where the
header's length already counts the FINGERPRINT. CRC-32 is ``zlib.crc32``, the standard
library's ISO-HDLC CRC (the one RFC 8489 names), not a hand-written replacement.

A response is sent to an unauthenticated source, so the broker should not answer a
request smaller than the response (``check_reply_size`` in messages.py); our own client
pads its requests with SOFTWARE so that they are never smaller than any response we build
(``MAX_RESPONSE``), and the broker can hold every Roost client to that rule.

Every decoder takes arbitrary bytes and returns a value or raises ``RemoteProtocolError``
with a ``roost.reasons.Reason``, so a fuzz harness may call it directly.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from dataclasses import dataclass

from roost.errors import LocalProtocolError, RemoteProtocolError, peer_input
from roost.reasons import Reason
from roost.rendezvous.messages import Candidate, IPAddress
from roost.wire import Reader, Writer, check_size

__all__ = [
    "BINDING_ERROR",
    "BINDING_REQUEST",
    "BINDING_SUCCESS",
    "CLIENT_SOFTWARE",
    "FINGERPRINT",
    "FINGERPRINT_XOR",
    "HEADER_SIZE",
    "MAGIC_COOKIE",
    "MAX_RESPONSE",
    "MAX_STUN_MESSAGE",
    "MESSAGE_INTEGRITY",
    "SOFTWARE",
    "TRANSACTION_ID_SIZE",
    "XOR_MAPPED_ADDRESS",
    "StunAttribute",
    "StunMessage",
    "answer_binding_request",
    "build_binding_request",
    "build_binding_response",
    "decode_stun",
    "decode_xor_address",
    "encode_stun",
    "encode_xor_address",
    "fingerprint_of",
    "looks_like_stun",
    "parse_binding_request",
    "parse_binding_response",
]

MAGIC_COOKIE = 0x2112A442
_COOKIE = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_SIZE = 20
TRANSACTION_ID_SIZE = 12
# RFC 8489 section 5: method Binding (0x001) in the request, success and error classes.
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111
# RFC 8489 section 18.3 attribute registry.
MESSAGE_INTEGRITY = 0x0008
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
# RFC 8489 section 6.1: without path MTU knowledge a message should fit 576 bytes (IPv4)
# or 1280 (IPv6); nothing larger is read.
MAX_STUN_MESSAGE = 1280
_XOR_FAMILY = {1: 4, 2: 16}
_XOR_HEAD = struct.Struct(">BBH")
_ATTRIBUTE_HEAD = struct.Struct(">HH")
_FINGERPRINT_ATTRIBUTE = struct.Struct(">HHI")
_BINDING_SUCCESS_HEAD = struct.Struct(">HHI")
# Header, XOR-MAPPED-ADDRESS for IPv6 (4 + 20) and FINGERPRINT (8): our largest response.
MAX_RESPONSE = HEADER_SIZE + 4 + 20 + 8
# 23 characters pad to 24: 20 + 28 + 8 = 56 bytes, never smaller than MAX_RESPONSE.
CLIENT_SOFTWARE = "roost/1 binding request"


@dataclass(frozen=True, slots=True)
class StunAttribute:
    """One attribute: its type and value (padding removed)."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A decoded message; ``fingerprint`` says a FINGERPRINT ended it and verified."""

    message_type: int
    transaction_id: bytes
    attributes: tuple[StunAttribute, ...] = ()
    fingerprint: bool = False

    def first(self, attribute_type: int) -> bytes | None:
        """The value of the first attribute of that type, or None."""
        for attribute in self.attributes:
            if attribute.type == attribute_type:
                return attribute.value
        return None


def looks_like_stun(data: bytes) -> bool:
    """The cheap demultiplexing test of RFC 8489 section 5: two zero bits and the cookie."""
    return len(data) >= HEADER_SIZE and data[0] < 0x40 and data[4:8] == _COOKIE


def fingerprint_of(message_before: bytes) -> int:
    """The FINGERPRINT value for the bytes before it (header length already final)."""
    return (zlib.crc32(message_before) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def encode_stun(message: StunMessage) -> bytes:
    """Encode a message (zero padding), appending FINGERPRINT when ``message.fingerprint``."""
    if not 0 <= message.message_type < 0x4000:
        raise LocalProtocolError("STUN type above 14 bits", reason=Reason.LOCAL_PROTOCOL)
    if len(message.transaction_id) != TRANSACTION_ID_SIZE:
        raise LocalProtocolError("transaction id is not 12 bytes", reason=Reason.LOCAL_PROTOCOL)
    body = Writer()
    for attribute in message.attributes:
        if attribute.type == FINGERPRINT:
            raise LocalProtocolError("FINGERPRINT is added, not given", reason=Reason.BAD_ATTRIBUTE)
        body.u16(attribute.type).u16(len(attribute.value)).raw(attribute.value)
        body.raw(bytes(-len(attribute.value) % 4))
    attributes = body.bytes()
    length = len(attributes) + (8 if message.fingerprint else 0)
    header = Writer().u16(message.message_type).u16(length).raw(_COOKIE)
    data = header.raw(message.transaction_id).bytes() + attributes
    if message.fingerprint:
        data += Writer().u16(FINGERPRINT).u16(4).u32(fingerprint_of(data)).bytes()
    if len(data) > MAX_STUN_MESSAGE:
        raise LocalProtocolError(f"STUN message is {len(data)} bytes", reason=Reason.OVERSIZED)
    return data


def _attribute_spans(data: bytes) -> tuple[list[tuple[int, int, int]], bool]:
    """Check a message's header, every attribute's bounds and the FINGERPRINT if present;
    returns ``(type, value start, value size)`` per attribute before FINGERPRINT, and
    whether one ended the message. Raises RemoteProtocolError."""
    check_size(data, MAX_STUN_MESSAGE, "STUN message")
    if not looks_like_stun(data):
        raise RemoteProtocolError("not a STUN message", reason=Reason.BAD_MAGIC)
    # Offsets rather than a wire.Reader: the broker checks every Binding request it takes,
    # and the cursor's calls cost about a third of the decode. looks_like_stun has checked
    # that the 20-byte header is there; the checks and reasons are the Reader's.
    length = _ATTRIBUTE_HEAD.unpack_from(data, 0)[1]
    end = len(data)
    remaining = end - HEADER_SIZE
    if length % 4:
        raise RemoteProtocolError("STUN length not a multiple of 4", reason=Reason.MALFORMED)
    if length > remaining:
        raise RemoteProtocolError("STUN message is truncated", reason=Reason.TRUNCATED)
    if length < remaining:
        raise RemoteProtocolError("bytes after the STUN message", reason=Reason.TRAILING_BYTES)
    spans: list[tuple[int, int, int]] = []
    position = HEADER_SIZE
    while position < end:
        # The rest is a multiple of 4 bytes, so an attribute header always fits.
        start = position
        attribute_type, size = _ATTRIBUTE_HEAD.unpack_from(data, position)
        position += 4
        following = position + size + (-size % 4)
        if following > end:
            raise RemoteProtocolError("STUN message is truncated", reason=Reason.TRUNCATED)
        if attribute_type != FINGERPRINT:
            spans.append((attribute_type, position, size))
            position = following
            continue
        # RFC 8489 section 14.7: FINGERPRINT is the last attribute, 4 bytes.
        if following < end or size != 4:
            raise RemoteProtocolError("misplaced FINGERPRINT", reason=Reason.BAD_ATTRIBUTE)
        if int.from_bytes(data[position:following], "big") != fingerprint_of(data[:start]):
            raise RemoteProtocolError("FINGERPRINT mismatch", reason=Reason.BAD_FINGERPRINT)
        return spans, True
    return spans, False


def decode_stun(data: bytes) -> StunMessage:
    """Parse any STUN message, checking the header, every attribute's bounds and the
    FINGERPRINT if present; raises RemoteProtocolError."""
    spans, fingerprint = _attribute_spans(data)
    attributes = tuple(
        StunAttribute(kind, bytes(data[start : start + size])) for kind, start, size in spans
    )
    return StunMessage(data[0] << 8 | data[1], bytes(data[8:HEADER_SIZE]), attributes, fingerprint)


# --------------------------------------------------------------------------- addresses


def encode_xor_address(candidate: Candidate, transaction_id: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS value (RFC 8489 section 14.2) for ``candidate``."""
    return _xor_value(candidate.address.packed, candidate.port, transaction_id)


def _xor_value(packed: bytes, port: int, transaction_id: bytes) -> bytes:
    # RFC 8489 section 14.2: the port XOR the cookie's high half, the address XOR the
    # cookie (followed by the transaction id, for IPv6).
    mask = (_COOKIE + transaction_id)[: len(packed)]
    xored = (int.from_bytes(packed, "big") ^ int.from_bytes(mask, "big")).to_bytes(
        len(packed), "big"
    )
    family = 1 if len(packed) == 4 else 2
    return _XOR_HEAD.pack(0, family, port ^ (MAGIC_COOKIE >> 16)) + xored


def decode_xor_address(value: bytes, transaction_id: bytes) -> Candidate:
    """The transport address an XOR-MAPPED-ADDRESS value carries; raises RemoteProtocolError."""
    reader = Reader(value, "XOR-MAPPED-ADDRESS")
    reader.u8()
    family = reader.u8()
    size = _XOR_FAMILY.get(family)
    if size is None:
        raise RemoteProtocolError(f"address family {family}", reason=Reason.BAD_FAMILY)
    port = reader.u16() ^ (MAGIC_COOKIE >> 16)
    if reader.remaining != size:
        raise RemoteProtocolError("XOR-MAPPED-ADDRESS length", reason=Reason.BAD_ATTRIBUTE)
    mask = _COOKIE + transaction_id
    packed = bytes(a ^ b for a, b in zip(reader.take(size), mask, strict=False))
    address: IPAddress = (
        ipaddress.IPv4Address(packed) if size == 4 else ipaddress.IPv6Address(packed)
    )
    with peer_input():
        return Candidate(address, port)


# --------------------------------------------------------------------------- Binding


def parse_binding_request(data: bytes) -> StunMessage:
    """The broker's side: a Binding request, or RemoteProtocolError("not-binding")."""
    message = decode_stun(data)
    if message.message_type != BINDING_REQUEST:
        raise RemoteProtocolError("not a Binding request", reason=Reason.NOT_BINDING)
    return message


def answer_binding_request(data: bytes, observed: bytes) -> bytes:
    """The broker's hot path: check that ``data`` is a well-formed Binding request (as
    ``parse_binding_request`` does, building no attribute objects) and return the success
    response naming ``observed``, the source in candidate wire form (``family | address |
    port``, messages.candidate_wire); raises RemoteProtocolError."""
    _attribute_spans(data)
    if data[0] << 8 | data[1] != BINDING_REQUEST:
        raise RemoteProtocolError("not a Binding request", reason=Reason.NOT_BINDING)
    return _binding_success(data[8:HEADER_SIZE], observed)


def build_binding_response(request: StunMessage, mapped: Candidate) -> bytes:
    """The success response naming ``mapped`` (the request's source address), with
    XOR-MAPPED-ADDRESS and FINGERPRINT; at most ``MAX_RESPONSE`` bytes."""
    if len(request.transaction_id) != TRANSACTION_ID_SIZE:
        raise LocalProtocolError("transaction id is not 12 bytes", reason=Reason.LOCAL_PROTOCOL)
    address = mapped.address
    wire = bytes((address.version,)) + address.packed + mapped.port.to_bytes(2, "big")
    return _binding_success(request.transaction_id, wire)


def _binding_success(transaction_id: bytes, observed: bytes) -> bytes:
    # The bytes encode_stun gives for this one message, packed directly: the broker answers
    # every Binding request it takes (docs/BENCHMARKS.md, "Broker"). The value is 8 or 20
    # bytes, so no padding.
    value = _xor_value(observed[1:-2], int.from_bytes(observed[-2:], "big"), transaction_id)
    data = (
        _BINDING_SUCCESS_HEAD.pack(BINDING_SUCCESS, len(value) + 12, MAGIC_COOKIE)
        + transaction_id
        + _ATTRIBUTE_HEAD.pack(XOR_MAPPED_ADDRESS, len(value))
        + value
    )
    return data + _FINGERPRINT_ATTRIBUTE.pack(FINGERPRINT, 4, fingerprint_of(data))


def build_binding_request(transaction_id: bytes, software: str = CLIENT_SOFTWARE) -> bytes:
    """The client's Binding request: SOFTWARE (which also keeps the request at least as
    large as the response) and FINGERPRINT. ``transaction_id`` is 12 random bytes."""
    attributes = (StunAttribute(SOFTWARE, software.encode("utf-8")),) if software else ()
    return encode_stun(StunMessage(BINDING_REQUEST, transaction_id, attributes, True))


def parse_binding_response(data: bytes, transaction_id: bytes) -> Candidate:
    """The client's side: the reflexive address in a success response to our
    ``transaction_id``; raises RemoteProtocolError otherwise."""
    message = decode_stun(data)
    if message.transaction_id != transaction_id:
        raise RemoteProtocolError("response to another request", reason=Reason.TRANSACTION_MISMATCH)
    if message.message_type != BINDING_SUCCESS:
        raise RemoteProtocolError("not a Binding success response", reason=Reason.NOT_BINDING)
    value = message.first(XOR_MAPPED_ADDRESS)
    if value is None:
        raise RemoteProtocolError("no XOR-MAPPED-ADDRESS", reason=Reason.NO_MAPPED_ADDRESS)
    return decode_xor_address(value, transaction_id)
