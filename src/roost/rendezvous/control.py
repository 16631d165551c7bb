"""Bodies of the broker's TLS control channels (PROTOCOL.md section 5), pure codecs.

Every TLS connection to the broker carries ``u32 length | body`` records (``roost.framing``,
at most ``MAX_CHANNEL_BODY`` bytes). Section 5: a body that starts with ``{`` is a UTF-8 JSON
object with an ``op`` field (a *control message*); any other body is a *relay record*.

Control messages. Every field is required unless marked "opt."; no other key is allowed.
Bytes travel as unpadded base64url; candidates as ``"192.0.2.1:3478"`` or
``"[2001:db8::1]:3478"`` strings (at most 16); ``reason`` is a ``roost.reasons.Reason``
value; ``session`` a u32 the broker assigns; times are integer milliseconds.

==============  =========================  =================================================
op              direction                  fields
==============  =========================  =================================================
enroll          equipment → broker (mTLS)  — (the identity is the client certificate)
enrolled        broker → equipment         identifier, key (32 bytes), interval_ms
lookup          issuer → broker            target
lookup-result   broker → issuer            target, certificate (DER, at most 4096 bytes)
connect         issuer → broker            target, candidates, sealed (seal.py)
connecting      broker → issuer            session (the target is being woken)
wake            broker → equipment         token (16 bytes; pushed on a held connection
                                           when UDP gets no RACK, instead of RWAK)
present         target → broker (mTLS)     token (from RWAK or ``wake``)
hold            equipment → broker         — (on its enrolled connection: keep it open and
                                           send connection requests over it)
holding         broker → equipment         — (``hold`` accepted; refused: ``error``)
request         broker → target            session, candidates (the issuer's), sealed
                                           (on the present connection, or pushed over a
                                           holding one: several sessions may share it)
accept          target → broker            session, candidates (the target's local ones)
reject          target → broker → issuer   session, reason
start           broker → both              session, candidates (the other side's),
                                           start_in_ms (probe this long after receipt; the
                                           broker subtracts half of each side's round
                                           trip), deadline_ms (then ask for the relay)
relay-open      either → broker → both     session; from the broker also max_bytes and
                                           max_ms, the session's relay limits (opt.)
relay-close     any → any                  session, reason
keepalive       equipment ↔ broker         — (every 20 s on a held connection)
error           broker → any               reason, session (opt.)
==============  =========================  =================================================

Relay records carry the QUIC datagrams of a session that has no direct path::

    u8 kind = 0x01 (datagram) | u32 session | payload (1 to 1500 bytes)

The kind byte is never ``{`` (0x7B), so the first byte alone tells the two apart. The broker
forwards the payload to the other side of ``session`` unchanged; it is QUIC ciphertext.

Encoding writes ``op`` first and the fields in the table's order, compact, ASCII-only, so
the same message always gives the same bytes. Decoding rejects oversized bodies before
parsing, duplicate keys, non-integer numbers, NaN and Infinity, and raises
``RemoteProtocolError`` with a ``Reason`` for anything else wrong: a fuzz harness may call
``decode_channel_body`` directly.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from roost.errors import LocalProtocolError, RemoteProtocolError, peer_input
from roost.reasons import Reason
from roost.rendezvous.messages import (
    MAX_CANDIDATES,
    REGISTRATION_KEY_SIZE,
    TOKEN_SIZE,
    Candidate,
    check_identifier,
)
from roost.rendezvous.seal import MAX_SEALED, MIN_SEALED
from roost.wire import Reader, Writer, check_size

__all__ = [
    "MAX_CERTIFICATE",
    "MAX_CHANNEL_BODY",
    "MAX_CONTROL_BODY",
    "MAX_RELAY_PAYLOAD",
    "RELAY_DATAGRAM",
    "Accept",
    "Connect",
    "Connecting",
    "ControlMessage",
    "Enroll",
    "Enrolled",
    "Error",
    "Hold",
    "Holding",
    "Keepalive",
    "Lookup",
    "LookupResult",
    "Present",
    "Reject",
    "RelayClose",
    "RelayOpen",
    "RelayRecord",
    "Request",
    "Start",
    "WakePush",
    "decode_channel_body",
    "decode_control",
    "decode_relay",
    "encode_control",
    "encode_control_message",
    "encode_relay",
    "is_control",
]

MAX_CONTROL_BODY = 8192
# A certificate of the PROTOCOL.md section 1 profiles is well under 1 KiB; 4 KiB leaves
# room for more SANs and still fits the 8 KiB body once base64 encoded.
MAX_CERTIFICATE = 4096
RELAY_DATAGRAM = 0x01
# QUIC never sends a UDP payload above the path MTU; 1500 bytes (Ethernet) is above any
# datagram aioquic sends by default (max_datagram_size 1200).
MAX_RELAY_PAYLOAD = 1500
_RELAY_HEADER = 1 + 4
MAX_CHANNEL_BODY = max(MAX_CONTROL_BODY, _RELAY_HEADER + MAX_RELAY_PAYLOAD)
_MAX_U32 = (1 << 32) - 1
# One day: no wait or limit of this protocol is longer.
_MAX_MS = 86_400_000
# 2**53: JSON numbers stay exact in every JSON implementation below this.
_MAX_COUNT = 1 << 53
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# Reason is a StrEnum: its members hash and compare as their string values.
_REASONS: frozenset[str] = frozenset(Reason)


# --------------------------------------------------------------------------- field kinds


class _Kind:
    """How one field is checked, written to JSON and read back."""

    __slots__ = ()

    def check(self, value: object) -> None:
        raise NotImplementedError

    def to_json(self, value: Any) -> object:
        return value

    def from_json(self, raw: object) -> Any:
        self.check(raw)
        return raw


def _bad(message: str) -> LocalProtocolError:
    return LocalProtocolError(message, reason=Reason.BAD_FIELD)


class _Identifier(_Kind):
    __slots__ = ()

    def check(self, value: object) -> None:
        check_identifier(value)


class _Int(_Kind):
    __slots__ = ("_high",)

    def __init__(self, high: int) -> None:
        self._high = high

    def check(self, value: object) -> None:
        # bool is an int in Python but not a number in JSON.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad("field is not an integer")
        if not 0 <= value <= self._high:
            raise _bad(f"integer {value} outside 0..{self._high}")


class _Bytes(_Kind):
    __slots__ = ("_high", "_low")

    def __init__(self, low: int, high: int) -> None:
        self._low = low
        self._high = high

    def check(self, value: object) -> None:
        if not isinstance(value, bytes):
            raise _bad("field is not bytes")
        if not self._low <= len(value) <= self._high:
            raise _bad(f"{len(value)} bytes, not {self._low}..{self._high}")

    def to_json(self, value: Any) -> object:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")

    def from_json(self, raw: object) -> Any:
        # Four characters carry three bytes: reject long text before decoding it.
        if not isinstance(raw, str) or len(raw) > (self._high * 4 + 2) // 3:
            raise _bad("field is not a short base64url string")
        if _BASE64URL.fullmatch(raw) is None or len(raw) % 4 == 1:
            raise _bad("field is not unpadded base64url")
        try:
            value = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError) as exc:
            raise _bad("field is not base64url") from exc
        # Only the canonical spelling (zero spare bits) is accepted: one value, one text.
        if self.to_json(value) != raw:
            raise _bad("field is not canonical base64url")
        self.check(value)
        return value


class _Candidates(_Kind):
    __slots__ = ()

    def check(self, value: object) -> None:
        if not isinstance(value, tuple):
            raise _bad("candidates are not a tuple")
        if len(value) > MAX_CANDIDATES:
            raise LocalProtocolError("too many candidates", reason=Reason.TOO_MANY_CANDIDATES)
        for candidate in value:
            if not isinstance(candidate, Candidate):
                raise LocalProtocolError("not a Candidate", reason=Reason.BAD_CANDIDATE)

    def to_json(self, value: Any) -> object:
        return [str(candidate) for candidate in value]

    def from_json(self, raw: object) -> Any:
        if not isinstance(raw, list):
            raise _bad("candidates are not a list")
        if len(raw) > MAX_CANDIDATES:
            raise LocalProtocolError("too many candidates", reason=Reason.TOO_MANY_CANDIDATES)
        return tuple(Candidate.parse(item) for item in raw)


class _Reason(_Kind):
    __slots__ = ()

    def check(self, value: object) -> None:
        if not isinstance(value, str) or value not in _REASONS:
            raise _bad("reason is not in the catalogue")

    def to_json(self, value: Any) -> object:
        return str(value)

    def from_json(self, raw: object) -> Any:
        self.check(raw)
        return Reason(str(raw))


_Schema = tuple[tuple[str, _Kind, bool], ...]
_IDENTIFIER = _Identifier()
_SESSION = _Int(_MAX_U32)
_MS = _Int(_MAX_MS)
_COUNT = _Int(_MAX_COUNT)
_KEY = _Bytes(REGISTRATION_KEY_SIZE, REGISTRATION_KEY_SIZE)
_TOKEN = _Bytes(TOKEN_SIZE, TOKEN_SIZE)
_CERTIFICATE = _Bytes(1, MAX_CERTIFICATE)
_SEALED = _Bytes(MIN_SEALED, MAX_SEALED)
_CANDIDATES = _Candidates()
_REASON = _Reason()


# --------------------------------------------------------------------------- messages


class ControlMessage:
    """Base of every control message; ``op`` names it on the wire."""

    __slots__ = ()
    op: ClassVar[str]
    # (field name, kind, optional) in wire order.
    _schema: ClassVar[_Schema] = ()

    def __post_init__(self) -> None:
        for name, kind, optional in self._schema:
            value = getattr(self, name)
            if value is None and optional:
                continue
            kind.check(value)


@dataclass(frozen=True, slots=True)
class Enroll(ControlMessage):
    op: ClassVar[str] = "enroll"


@dataclass(frozen=True, slots=True)
class Enrolled(ControlMessage):
    op: ClassVar[str] = "enrolled"
    _schema: ClassVar[_Schema] = (
        ("identifier", _IDENTIFIER, False),
        ("key", _KEY, False),
        ("interval_ms", _MS, False),
    )
    identifier: str
    key: bytes
    interval_ms: int


@dataclass(frozen=True, slots=True)
class Lookup(ControlMessage):
    op: ClassVar[str] = "lookup"
    _schema: ClassVar[_Schema] = (("target", _IDENTIFIER, False),)
    target: str


@dataclass(frozen=True, slots=True)
class LookupResult(ControlMessage):
    op: ClassVar[str] = "lookup-result"
    _schema: ClassVar[_Schema] = (
        ("target", _IDENTIFIER, False),
        ("certificate", _CERTIFICATE, False),
    )
    target: str
    certificate: bytes


@dataclass(frozen=True, slots=True)
class Connect(ControlMessage):
    op: ClassVar[str] = "connect"
    _schema: ClassVar[_Schema] = (
        ("target", _IDENTIFIER, False),
        ("candidates", _CANDIDATES, False),
        ("sealed", _SEALED, False),
    )
    target: str
    candidates: tuple[Candidate, ...]
    sealed: bytes


@dataclass(frozen=True, slots=True)
class Connecting(ControlMessage):
    op: ClassVar[str] = "connecting"
    _schema: ClassVar[_Schema] = (("session", _SESSION, False),)
    session: int


@dataclass(frozen=True, slots=True)
class WakePush(ControlMessage):
    op: ClassVar[str] = "wake"
    _schema: ClassVar[_Schema] = (("token", _TOKEN, False),)
    token: bytes


@dataclass(frozen=True, slots=True)
class Present(ControlMessage):
    op: ClassVar[str] = "present"
    _schema: ClassVar[_Schema] = (("token", _TOKEN, False),)
    token: bytes


@dataclass(frozen=True, slots=True)
class Hold(ControlMessage):
    op: ClassVar[str] = "hold"


@dataclass(frozen=True, slots=True)
class Holding(ControlMessage):
    op: ClassVar[str] = "holding"


@dataclass(frozen=True, slots=True)
class Request(ControlMessage):
    op: ClassVar[str] = "request"
    _schema: ClassVar[_Schema] = (
        ("session", _SESSION, False),
        ("candidates", _CANDIDATES, False),
        ("sealed", _SEALED, False),
    )
    session: int
    candidates: tuple[Candidate, ...]
    sealed: bytes


@dataclass(frozen=True, slots=True)
class Accept(ControlMessage):
    op: ClassVar[str] = "accept"
    _schema: ClassVar[_Schema] = (
        ("session", _SESSION, False),
        ("candidates", _CANDIDATES, False),
    )
    session: int
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class Reject(ControlMessage):
    op: ClassVar[str] = "reject"
    _schema: ClassVar[_Schema] = (
        ("session", _SESSION, False),
        ("reason", _REASON, False),
    )
    session: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class Start(ControlMessage):
    op: ClassVar[str] = "start"
    _schema: ClassVar[_Schema] = (
        ("session", _SESSION, False),
        ("candidates", _CANDIDATES, False),
        ("start_in_ms", _MS, False),
        ("deadline_ms", _MS, False),
    )
    session: int
    candidates: tuple[Candidate, ...]
    start_in_ms: int
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class RelayOpen(ControlMessage):
    op: ClassVar[str] = "relay-open"
    _schema: ClassVar[_Schema] = (
        ("session", _SESSION, False),
        ("max_bytes", _COUNT, True),
        ("max_ms", _MS, True),
    )
    session: int
    max_bytes: int | None = None
    max_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RelayClose(ControlMessage):
    op: ClassVar[str] = "relay-close"
    _schema: ClassVar[_Schema] = (
        ("session", _SESSION, False),
        ("reason", _REASON, False),
    )
    session: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class Keepalive(ControlMessage):
    op: ClassVar[str] = "keepalive"


@dataclass(frozen=True, slots=True)
class Error(ControlMessage):
    op: ClassVar[str] = "error"
    _schema: ClassVar[_Schema] = (
        ("reason", _REASON, False),
        ("session", _SESSION, True),
    )
    reason: Reason
    session: int | None = None


# Every op above, in the order of the module docstring's table.
_OPS: dict[str, type[ControlMessage]] = {cls.op: cls for cls in ControlMessage.__subclasses__()}


# --------------------------------------------------------------------------- encoding


def encode_control_message(message: ControlMessage) -> bytes:
    """The body of one control message; raises LocalProtocolError if it is too large."""
    if type(message) not in _OPS.values():
        raise LocalProtocolError("not a control message", reason=Reason.UNKNOWN_OP)
    document: dict[str, object] = {"op": message.op}
    for name, kind, optional in message._schema:
        value = getattr(message, name)
        if value is None and optional:
            continue
        document[name] = kind.to_json(value)
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(body) > MAX_CONTROL_BODY:
        raise LocalProtocolError(f"control body is {len(body)} bytes", reason=Reason.OVERSIZED)
    return body


def encode_control(op: str, **values: Any) -> bytes:
    """``encode_control("lookup", target="hcsp:…")``: build the op's message and encode it."""
    cls = _OPS.get(op)
    if cls is None:
        raise LocalProtocolError(f"unknown op {op!r}", reason=Reason.UNKNOWN_OP)
    names = {name for name, _, _ in cls._schema}
    unknown = set(values) - names
    if unknown:
        raise LocalProtocolError(
            f"{op} has no field {sorted(unknown)}", reason=Reason.UNKNOWN_FIELD
        )
    missing = {name for name, _, optional in cls._schema if not optional} - set(values)
    if missing:
        raise LocalProtocolError(f"{op} needs {sorted(missing)}", reason=Reason.MISSING_FIELD)
    return encode_control_message(cls(**values))


# --------------------------------------------------------------------------- decoding


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise RemoteProtocolError("duplicate key in control body", reason=Reason.BAD_CONTROL)
    return document


def _no_constant(name: str) -> Any:
    raise RemoteProtocolError(f"{name} in control body", reason=Reason.BAD_CONTROL)


def _no_float(text: str) -> Any:
    raise RemoteProtocolError("non-integer number in control body", reason=Reason.BAD_FIELD)


def _short_int(text: str) -> int:
    # No field is above 2**53 (16 digits); longer digit strings are refused unparsed.
    if len(text) > 20:
        raise RemoteProtocolError("integer too long in control body", reason=Reason.BAD_FIELD)
    return int(text)


_parse_json: Callable[[str], Any] = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_constant=_no_constant,
    parse_float=_no_float,
    parse_int=_short_int,
).decode


def is_control(body: bytes) -> bool:
    """Section 5: a body starting with ``{`` is a control message."""
    return body[:1] == b"{"


def decode_control(body: bytes) -> ControlMessage:
    """Parse one control body; raises RemoteProtocolError with a Reason."""
    check_size(body, MAX_CONTROL_BODY, "control body")
    if not is_control(body):
        raise RemoteProtocolError("control body does not start with {", reason=Reason.BAD_CONTROL)
    try:
        document = _parse_json(body.decode("utf-8"))
    except RemoteProtocolError:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8 and bad JSON; a deep nest of brackets exhausts the
        # parser's recursion before the size cap would.
        raise RemoteProtocolError("control body is not JSON", reason=Reason.BAD_CONTROL) from exc
    if not isinstance(document, dict) or not isinstance(document.get("op"), str):
        raise RemoteProtocolError("control body has no op", reason=Reason.BAD_CONTROL)
    cls = _OPS.get(document.pop("op"))
    if cls is None:
        raise RemoteProtocolError("unknown control op", reason=Reason.UNKNOWN_OP)
    names = {name for name, _, _ in cls._schema}
    if set(document) - names:
        raise RemoteProtocolError(f"unknown field in {cls.op}", reason=Reason.UNKNOWN_FIELD)
    values: dict[str, Any] = {}
    with peer_input():
        for name, kind, optional in cls._schema:
            if name not in document:
                if optional:
                    continue
                raise RemoteProtocolError(f"{cls.op} lacks {name}", reason=Reason.MISSING_FIELD)
            values[name] = kind.from_json(document[name])
        return cls(**values)


# --------------------------------------------------------------------------- relay records


@dataclass(frozen=True, slots=True)
class RelayRecord:
    """One QUIC datagram of ``session`` travelling through the broker."""

    session: int
    payload: bytes

    def __post_init__(self) -> None:
        _SESSION.check(self.session)
        if not isinstance(self.payload, bytes) or not self.payload:
            raise LocalProtocolError("relay record without payload", reason=Reason.EMPTY)
        if len(self.payload) > MAX_RELAY_PAYLOAD:
            raise LocalProtocolError("relay payload too large", reason=Reason.OVERSIZED)


def encode_relay(record: RelayRecord) -> bytes:
    """``u8 kind=1 | u32 session | payload``."""
    return Writer().u8(RELAY_DATAGRAM).u32(record.session).raw(record.payload).bytes()


def decode_relay(body: bytes) -> RelayRecord:
    """Parse one relay record; raises RemoteProtocolError with a Reason."""
    check_size(body, _RELAY_HEADER + MAX_RELAY_PAYLOAD, "relay record")
    reader = Reader(body, "relay record")
    kind = reader.u8()
    if kind != RELAY_DATAGRAM:
        raise RemoteProtocolError(f"relay record kind {kind}", reason=Reason.UNKNOWN_TYPE)
    session = reader.u32()
    payload = reader.take(reader.remaining)
    with peer_input():
        return RelayRecord(session, payload)


def decode_channel_body(body: bytes) -> ControlMessage | RelayRecord:
    """A control message or a relay record, told apart by the first byte (section 5)."""
    if not body:
        raise RemoteProtocolError("empty channel body", reason=Reason.EMPTY)
    return decode_control(body) if is_control(body) else decode_relay(body)
