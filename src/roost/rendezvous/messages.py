"""The broker's UDP datagrams of PROTOCOL.md section 5: RREG, RACK and RWAK (pure codecs).

Layouts, big-endian::

    RREG | u8 version=1 | u8 id_len | identifier (ASCII) | u64 counter
         | u8 cand_count | candidate… | 16-byte tag                      (at most 512 bytes)
    RACK | u64 counter | candidate (the observed source address)
    RWAK | u8 version=1 | u64 counter | 16-byte one-time token | 16-byte tag   (45 bytes)

    candidate = u8 family (4 or 6) | address (4 or 16 bytes) | u16 port

The tag is ``HMAC-SHA256(registration key, every byte before the tag)[0:16]``; the key is
the 32 bytes the broker returned at enrollment. Decoding checks structure only and returns
the signed bytes with the tag, because the broker needs the identifier before it can look
up the key: ``verify_registration`` / ``verify_wake`` then check the tag in constant time,
and ``check_counter`` the replay rule ("counter increases"). A RACK is sent without a tag
and must never be larger than the registration it answers (``check_reply_size``), so the
UDP port cannot amplify a spoofed flood (research/rendezvous.md §3.3).

Every decoder takes arbitrary bytes and either returns a value or raises
``RemoteProtocolError`` / ``VerificationError`` with a ``roost.reasons.Reason``, so a fuzz
harness may call it directly.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError, as_remote
from roost.reasons import Reason
from roost.wire import Reader, Writer, check_size

__all__ = [
    "ACK_MAGIC",
    "MAX_ACK",
    "MAX_CANDIDATES",
    "MAX_REGISTRATION",
    "REGISTRATION_KEY_SIZE",
    "REGISTRATION_MAGIC",
    "TAG_SIZE",
    "TOKEN_SIZE",
    "VERSION",
    "WAKE_MAGIC",
    "WAKE_SIZE",
    "Ack",
    "Candidate",
    "IPAddress",
    "ReceivedRegistration",
    "ReceivedWake",
    "Registration",
    "Wake",
    "candidate_wire",
    "check_counter",
    "check_identifier",
    "check_reply_size",
    "compute_tag",
    "decode_ack",
    "decode_candidates",
    "decode_registration",
    "decode_wake",
    "encode_ack",
    "encode_candidates",
    "encode_registration",
    "encode_wake",
    "registration_candidates",
    "scan_registration",
    "verify_registration",
    "verify_tag",
    "verify_wake",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REGISTRATION_MAGIC = b"RREG"
ACK_MAGIC = b"RACK"
WAKE_MAGIC = b"RWAK"
VERSION = 1
# Section 5: a registration datagram is at most 512 bytes.
MAX_REGISTRATION = 512
TAG_SIZE = 16
TOKEN_SIZE = 16
REGISTRATION_KEY_SIZE = 32
# A home rarely has more than a few interfaces; 16 IPv6 candidates (304 bytes) keep the
# longest registration (362 bytes) well inside the 512-byte cap.
MAX_CANDIDATES = 16
_FAMILY_SIZE = {4: 4, 6: 16}
# RACK carries one candidate: 4 + 8 + 1 + 16 + 2 bytes at most.
MAX_ACK = len(ACK_MAGIC) + 8 + 1 + 16 + 2
WAKE_SIZE = len(WAKE_MAGIC) + 1 + 8 + TOKEN_SIZE + TAG_SIZE

# Section 1: a role prefix followed by 22 base64url characters (16 bytes of SHA-256).
_NODE_ID = re.compile(r"(?:hcsp|ab):[A-Za-z0-9_-]{22}")


def check_identifier(identifier: object) -> None:
    """Raise LocalProtocolError("bad-identifier") unless ``identifier`` is a node
    identifier (PROTOCOL.md section 1). Decoders convert it to the peer's fault."""
    if not isinstance(identifier, str) or _NODE_ID.fullmatch(identifier) is None:
        raise LocalProtocolError("not a node identifier", reason=Reason.BAD_IDENTIFIER)


# Every datagram the broker takes names its source as a host string; the same few hosts
# come back again and again (a NAT's public address), and ipaddress's parse costs about
# two microseconds. The addresses are immutable, so a bounded cache is safe to share.
_ip_address = functools.lru_cache(maxsize=4096)(ipaddress.ip_address)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One transport address a party may be reached at: an unscoped IP and a port."""

    address: IPAddress
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise LocalProtocolError("candidate is not an IP address", reason=Reason.BAD_CANDIDATE)
        # A scope id ("fe80::1%eth0") has no meaning off the host and no wire encoding.
        if isinstance(self.address, ipaddress.IPv6Address) and self.address.scope_id:
            raise LocalProtocolError("candidate has a scope id", reason=Reason.BAD_CANDIDATE)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise LocalProtocolError(
                "candidate port is not an integer", reason=Reason.BAD_CANDIDATE
            )
        # Port 0 means "any port" to a socket; nothing can be reached there.
        if not 1 <= self.port <= 0xFFFF:
            raise LocalProtocolError("candidate port out of range", reason=Reason.BAD_CANDIDATE)

    @classmethod
    def of(cls, host: str, port: int) -> Candidate:
        """A candidate from a socket address ``(host, port)``; raises LocalProtocolError."""
        try:
            address = _ip_address(host)
        except ValueError as exc:
            raise LocalProtocolError(
                "candidate host is not an IP literal", reason=Reason.BAD_CANDIDATE
            ) from exc
        return cls(address, port)

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """``"192.0.2.1:3478"`` or ``"[2001:db8::1]:3478"`` (the control-channel form)."""
        if not isinstance(text, str) or len(text) > 64:
            raise LocalProtocolError("candidate is not a short string", reason=Reason.BAD_CANDIDATE)
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
            raise LocalProtocolError("candidate has no port", reason=Reason.BAD_CANDIDATE)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            if ":" not in host:
                raise LocalProtocolError("bracketed IPv4 candidate", reason=Reason.BAD_CANDIDATE)
        elif ":" in host:
            raise LocalProtocolError("IPv6 candidate needs brackets", reason=Reason.BAD_CANDIDATE)
        if "%" in host:
            raise LocalProtocolError("candidate has a scope id", reason=Reason.BAD_CANDIDATE)
        return cls.of(host, int(port_text))

    @property
    def family(self) -> int:
        """4 or 6, the family byte of the wire encoding."""
        return self.address.version

    @property
    def host(self) -> str:
        return str(self.address)

    def as_tuple(self) -> tuple[str, int]:
        """The ``(host, port)`` a socket call takes."""
        return (str(self.address), self.port)

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@functools.lru_cache(maxsize=4096)
def _host_wire(host: str) -> bytes:
    # The family byte and packed address of a source host, cached like _ip_address: the
    # same NAT addresses send again and again.
    address = Candidate.of(host, 1).address
    return bytes((address.version,)) + address.packed


def candidate_wire(host: str, port: int) -> bytes:
    """The wire form of the candidate ``(host, port)`` (``family | address | port``), as
    ``Candidate.of(host, port)`` would encode it; raises LocalProtocolError likewise."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFF:
        raise LocalProtocolError("candidate port out of range", reason=Reason.BAD_CANDIDATE)
    return _host_wire(host) + port.to_bytes(2, "big")


def _candidate_bytes(candidate: Candidate) -> bytes:
    # Built directly rather than with a Writer: every registration encodes its candidates
    # and its RACK. Candidate has checked the port, so it fits its u16.
    address = candidate.address
    return bytes((address.version,)) + address.packed + candidate.port.to_bytes(2, "big")


def _read_candidate(reader: Reader) -> Candidate:
    family = reader.u8()
    size = _FAMILY_SIZE.get(family)
    if size is None:
        raise RemoteProtocolError(f"address family {family}", reason=Reason.BAD_FAMILY)
    packed = reader.take(size)
    port = reader.u16()
    address: IPAddress = (
        ipaddress.IPv4Address(packed) if family == 4 else ipaddress.IPv6Address(packed)
    )
    # The receive boundary (errors.peer_input), written inline: this runs per candidate
    # of every datagram the broker takes.
    try:
        return Candidate(address, port)
    except LocalProtocolError as error:
        raise as_remote(error) from error


def _check_candidate_count(candidates: tuple[Candidate, ...]) -> None:
    if len(candidates) > MAX_CANDIDATES:
        raise LocalProtocolError(
            f"{len(candidates)} candidates, above {MAX_CANDIDATES}",
            reason=Reason.TOO_MANY_CANDIDATES,
        )
    for candidate in candidates:
        if not isinstance(candidate, Candidate):
            raise LocalProtocolError("not a Candidate", reason=Reason.BAD_CANDIDATE)


def encode_candidates(candidates: tuple[Candidate, ...]) -> bytes:
    """``u8 count | candidate…``: the list as RREG carries it, and the associated data
    of a sealed connection request (seal.py)."""
    _check_candidate_count(candidates)
    return bytes((len(candidates),)) + b"".join(map(_candidate_bytes, candidates))


def _read_candidates(reader: Reader) -> tuple[Candidate, ...]:
    count = reader.u8()
    if count > MAX_CANDIDATES:
        raise RemoteProtocolError(
            f"{count} candidates, above {MAX_CANDIDATES}", reason=Reason.TOO_MANY_CANDIDATES
        )
    return tuple(_read_candidate(reader) for _ in range(count))


def decode_candidates(data: bytes) -> tuple[Candidate, ...]:
    """The inverse of ``encode_candidates``; raises RemoteProtocolError."""
    check_size(data, 1 + MAX_CANDIDATES * 19, "candidate list")
    reader = Reader(data, "candidate list")
    candidates = _read_candidates(reader)
    reader.expect_end()
    return candidates


# --------------------------------------------------------------------------- tags


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != REGISTRATION_KEY_SIZE:
        raise LocalProtocolError(
            "registration key is not 32 bytes", reason=Reason.BAD_REGISTRATION_KEY
        )


def compute_tag(key: bytes, signed: bytes) -> bytes:
    """``HMAC-SHA256(key, signed)[0:16]`` (section 5)."""
    _check_key(key)
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(signed)
    return mac.finalize()[:TAG_SIZE]


def verify_tag(key: bytes, signed: bytes, tag: bytes) -> None:
    """Raise VerificationError("bad-tag") unless ``tag`` is the tag of ``signed``; the
    comparison takes the same time wherever the first differing byte is."""
    if not constant_time.bytes_eq(compute_tag(key, signed), tag):
        raise VerificationError("datagram tag does not verify", reason=Reason.BAD_TAG)


def check_counter(last_accepted: int | None, counter: int) -> None:
    """Section 5 replay rule: a counter must be above the last one accepted."""
    if last_accepted is not None and counter <= last_accepted:
        raise VerificationError(
            f"counter {counter} is not above {last_accepted}",
            reason=Reason.COUNTER_NOT_INCREASING,
        )


def check_reply_size(reply: bytes, request: bytes) -> None:
    """Refuse to send an unauthenticated reply larger than its request (section 5, "never
    larger than the request"): a spoofed source must not gain bytes from us."""
    if len(reply) > len(request):
        raise LocalProtocolError(
            f"reply of {len(reply)} bytes to a {len(request)}-byte request",
            reason=Reason.REPLY_TOO_LARGE,
        )


def _check_magic(data: bytes, magic: bytes, what: str) -> None:
    if data[: len(magic)] != magic:
        raise RemoteProtocolError(f"{what} does not start with {magic!r}", reason=Reason.BAD_MAGIC)


def _check_version(reader: Reader, what: str) -> None:
    version = reader.u8()
    if version != VERSION:
        raise RemoteProtocolError(f"{what} version {version}", reason=Reason.BAD_VERSION)


# --------------------------------------------------------------------------- RREG


@dataclass(frozen=True, slots=True)
class Registration:
    """What equipment reports every 20 s: who it is, a counter, its local candidates."""

    identifier: str
    counter: int
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceivedRegistration:
    """A registration whose structure is valid; its tag is not checked yet."""

    registration: Registration
    signed: bytes
    tag: bytes


def _registration_body(registration: Registration) -> bytes:
    check_identifier(registration.identifier)
    identifier = registration.identifier.encode("ascii")
    return (
        Writer()
        .raw(REGISTRATION_MAGIC)
        .u8(VERSION)
        .u8(len(identifier))
        .raw(identifier)
        .u64(registration.counter)
        .raw(encode_candidates(registration.candidates))
        .bytes()
    )


def encode_registration(registration: Registration, key: bytes) -> bytes:
    """The RREG datagram, tagged with the registration key; raises LocalProtocolError."""
    body = _registration_body(registration)
    datagram = body + compute_tag(key, body)
    if len(datagram) > MAX_REGISTRATION:
        raise LocalProtocolError(f"registration is {len(datagram)} bytes", reason=Reason.OVERSIZED)
    return datagram


def scan_registration(data: bytes) -> tuple[str, int, int, int]:
    """Check an RREG datagram's structure without building objects (section 5): returns
    ``(identifier, counter, count, tag_start)``, the candidates being the ``count``
    wire-form entries between ``tag_start - len`` and ``tag_start`` (see
    ``registration_candidates``). The identifier's form is not checked here: the broker
    looks it up among enrolled identifiers first (``decode_registration`` checks it).
    Raises RemoteProtocolError with the same reasons as the full decoder."""
    check_size(data, MAX_REGISTRATION, "registration")
    if data[:4] != REGISTRATION_MAGIC:
        raise RemoteProtocolError(
            f"registration does not start with {REGISTRATION_MAGIC!r}", reason=Reason.BAD_MAGIC
        )
    # Offsets rather than a wire.Reader: the broker scans every registration it takes, and
    # the cursor's calls were half of the decode. Same checks, same reasons.
    end = len(data)
    if end < 6:
        raise _truncated()
    if data[4] != VERSION:
        raise RemoteProtocolError(f"registration version {data[4]}", reason=Reason.BAD_VERSION)
    after_identifier = 6 + data[5]
    if after_identifier + 9 > end:
        raise _truncated()
    try:
        identifier = data[6:after_identifier].decode("ascii")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("identifier is not ASCII", reason=Reason.BAD_IDENTIFIER) from exc
    counter = int.from_bytes(data[after_identifier : after_identifier + 8], "big")
    position = after_identifier + 9
    count = data[position - 1]
    if count > MAX_CANDIDATES:
        raise RemoteProtocolError(
            f"{count} candidates, above {MAX_CANDIDATES}", reason=Reason.TOO_MANY_CANDIDATES
        )
    for _ in range(count):
        if position >= end:
            raise _truncated()
        family = data[position]
        size = _FAMILY_SIZE.get(family)
        if size is None:
            raise RemoteProtocolError(f"address family {family}", reason=Reason.BAD_FAMILY)
        following = position + 3 + size
        if following > end:
            raise _truncated()
        # Any 4 or 16 bytes are an address and the wire has no scope id, so the port is
        # all that Candidate would still refuse (port 0 reaches nothing).
        if data[following - 2] == 0 == data[following - 1]:
            raise RemoteProtocolError("candidate port out of range", reason=Reason.BAD_CANDIDATE)
        position = following
    if position + TAG_SIZE > end:
        raise _truncated()
    if position + TAG_SIZE < end:
        raise RemoteProtocolError(
            f"registration has {end - position - TAG_SIZE} trailing bytes",
            reason=Reason.TRAILING_BYTES,
        )
    return identifier, counter, count, position


def registration_candidates(data: bytes, count: int, tag_start: int) -> tuple[Candidate, ...]:
    """The ``count`` candidates of a datagram ``scan_registration`` accepted, decoded."""
    position = 6 + data[5] + 9
    candidates: list[Candidate] = []
    for _ in range(count):
        family = data[position]
        following = position + 3 + _FAMILY_SIZE[family]
        packed = data[position + 1 : following - 2]
        address: IPAddress = (
            ipaddress.IPv4Address(packed) if family == 4 else ipaddress.IPv6Address(packed)
        )
        candidates.append(
            Candidate(address, int.from_bytes(data[following - 2 : following], "big"))
        )
        position = following
    if position != tag_start:
        raise LocalProtocolError("not a scanned registration", reason=Reason.LOCAL_PROTOCOL)
    return tuple(candidates)


def decode_registration(data: bytes) -> ReceivedRegistration:
    """Parse an RREG datagram (structure only; call ``verify_registration`` next)."""
    identifier, counter, count, tag_start = scan_registration(data)
    try:
        check_identifier(identifier)
    except LocalProtocolError as error:
        raise as_remote(error) from error
    return ReceivedRegistration(
        Registration(identifier, counter, registration_candidates(data, count, tag_start)),
        bytes(data[:tag_start]),
        bytes(data[tag_start:]),
    )


def _truncated() -> RemoteProtocolError:
    return RemoteProtocolError("registration is truncated", reason=Reason.TRUNCATED)


def verify_registration(received: ReceivedRegistration, key: bytes) -> Registration:
    """Check the tag under the identifier's registration key; raises VerificationError."""
    verify_tag(key, received.signed, received.tag)
    return received.registration


# --------------------------------------------------------------------------- RACK


@dataclass(frozen=True, slots=True)
class Ack:
    """The broker's answer to a registration: its counter and the observed source."""

    counter: int
    observed: Candidate


def encode_ack(ack: Ack, request: bytes | None = None) -> bytes:
    """The RACK datagram; given the ``request`` it answers, refuses to be larger."""
    reply = Writer().raw(ACK_MAGIC).u64(ack.counter).bytes() + _candidate_bytes(ack.observed)
    if request is not None:
        check_reply_size(reply, request)
    return reply


def decode_ack(data: bytes) -> Ack:
    """Parse a RACK datagram; raises RemoteProtocolError."""
    check_size(data, MAX_ACK, "registration ack")
    _check_magic(data, ACK_MAGIC, "registration ack")
    reader = Reader(data, "registration ack")
    reader.take(len(ACK_MAGIC))
    counter = reader.u64()
    observed = _read_candidate(reader)
    reader.expect_end()
    return Ack(counter, observed)


# --------------------------------------------------------------------------- RWAK


@dataclass(frozen=True, slots=True)
class Wake:
    """A wake-up: open TLS to the broker and present ``token`` (section 5)."""

    counter: int
    token: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.token, bytes) or len(self.token) != TOKEN_SIZE:
            raise LocalProtocolError("wake-up token is not 16 bytes", reason=Reason.BAD_FIELD)


@dataclass(frozen=True, slots=True)
class ReceivedWake:
    """A wake-up whose structure is valid; its tag is not checked yet."""

    wake: Wake
    signed: bytes
    tag: bytes


def encode_wake(wake: Wake, key: bytes) -> bytes:
    """The RWAK datagram, tagged with the target's registration key."""
    body = Writer().raw(WAKE_MAGIC).u8(VERSION).u64(wake.counter).raw(wake.token).bytes()
    return body + compute_tag(key, body)


def decode_wake(data: bytes) -> ReceivedWake:
    """Parse an RWAK datagram (structure only; call ``verify_wake`` next)."""
    check_size(data, WAKE_SIZE, "wake-up")
    _check_magic(data, WAKE_MAGIC, "wake-up")
    reader = Reader(data, "wake-up")
    reader.take(len(WAKE_MAGIC))
    _check_version(reader, "wake-up")
    counter = reader.u64()
    token = reader.take(TOKEN_SIZE)
    signed_length = reader.position
    tag = reader.take(TAG_SIZE)
    reader.expect_end()
    return ReceivedWake(Wake(counter, token), bytes(data[:signed_length]), tag)


def verify_wake(received: ReceivedWake, key: bytes) -> Wake:
    """Check the tag under our registration key: a forged wake-up costs nothing more."""
    verify_tag(key, received.signed, received.tag)
    return received.wake
