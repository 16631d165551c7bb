"""A protected session after usage authentication (PROTOCOL.md §6), pure.

Ties the login result to the two ratchets, enforces the idle limit (default 15 min) and
the absolute limit (default 12 h) of NIST SP 800-63B for AAL3/AAL2, and a per-direction
message budget; any of them ends the session, erases its keys and requires a new usage
authentication. Time is the caller's monotonic ``now``. The server passes a
``recorder`` that appends each message digest to the Merkle log.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from roost.errors import LocalProtocolError, RemoteProtocolError, RoostError, VerificationError
from roost.guard.challenge import LoginResult
from roost.guard.log import message_digest
from roost.guard.ratchet import (
    FRAME_HEADER_SIZE,
    Direction,
    ReceivingChain,
    SendingChain,
    chain_keys,
)
from roost.guard.suites import Suite, hkdf_expand, mac_input
from roost.reasons import RejectionCounter
from roost.wire import check_size

__all__ = [
    "GuardSession",
    "Role",
    "SessionLimits",
    "decode_fields",
    "encode_fields",
    "field_permutation",
    "frame_digest",
]

MAX_FIELDS = 255


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    idle_s: float = 15 * 60.0
    absolute_s: float = 12 * 3600.0
    # Messages per direction before the session must be re-authenticated. Far below
    # WireGuard's 2**60, because a new login is cheap and bounds what one key set covers.
    max_messages: int = 1 << 32
    window: int = 1024
    max_frame: int = (1 << 20) + 64
    # Seed option, off by default; it adds no security (docs/guard.md).
    reorder_fields: bool = False


_FIELD_LENGTH = struct.Struct(">I")


def encode_fields(fields: Sequence[bytes]) -> bytes:
    """``u8 count | count × (u32 length | bytes)``."""
    if len(fields) > MAX_FIELDS:
        raise LocalProtocolError("too many fields")
    parts = [bytes([len(fields)])]
    for item in fields:
        if len(item) >= 1 << 32:
            raise LocalProtocolError("field does not fit a u32 length")
        parts.append(_FIELD_LENGTH.pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def decode_fields(data: bytes, max_size: int = 1 << 20) -> tuple[bytes, ...]:
    check_size(data, max_size, "fields")
    if not data:
        raise RemoteProtocolError("fields is truncated", reason="truncated")
    count, offset, end = data[0], 1, len(data)
    fields: list[bytes] = []
    for _ in range(count):
        if offset + 4 > end:
            raise RemoteProtocolError("fields is truncated", reason="truncated")
        (length,) = _FIELD_LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise RemoteProtocolError("fields is truncated", reason="truncated")
        fields.append(bytes(data[offset : offset + length]))
        offset += length
    if offset != end:
        raise RemoteProtocolError(
            f"fields has {end - offset} trailing bytes", reason="trailing-bytes"
        )
    return tuple(fields)


def frame_digest(session_id: bytes, frame: bytes | bytearray) -> bytes:
    """The log's leaf data for one sealed frame (``message_digest`` of its direction,
    position and ciphertext); sender and receiver compute the same value."""
    direction, position = frame[1], int.from_bytes(frame[2:FRAME_HEADER_SIZE], "big")
    ciphertext = bytes(memoryview(frame)[FRAME_HEADER_SIZE:])
    return message_digest(session_id, direction, position, ciphertext)


def field_permutation(suite: Suite, message_key: bytes, count: int) -> list[int]:
    """Order in which ``count`` fields are sent, from ``HKDF-Expand(mk_j, "perm")``.

    This is the seed's field shuffling, made deterministic so the receiver can undo it.
    It hides nothing the AEAD does not already hide: 10 fields give only 2**21.8 orders,
    and the key that drives it is the one sealing the message anyway.
    """
    stream = hkdf_expand(
        suite, prk=message_key, info=mac_input(suite.name, "perm"), length=max(4 * count, 1)
    )
    order = list(range(count))
    for i in range(count - 1, 0, -1):
        j = int.from_bytes(stream[4 * i : 4 * i + 4], "big") % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class GuardSession:
    """One side of a protected session. ``seal``/``open`` raise typed errors, each counted
    by reason; after expiry every call raises and a new login is needed."""

    def __init__(
        self,
        login: LoginResult,
        role: Role,
        *,
        now: float,
        limits: SessionLimits | None = None,
        counter: RejectionCounter | None = None,
        recorder: Callable[[bytes], int] | None = None,
    ) -> None:
        self.limits = limits or SessionLimits()
        self.rejections = counter or RejectionCounter()
        self.suite = login.suite
        self.session_id = login.session_id
        self.user_id = login.user_id
        self._recorder = recorder
        self.last_leaf_index: int | None = None
        up, down = chain_keys(login.suite, login.root_key)
        if role is Role.CLIENT:
            send_dir, recv_dir, send_key, recv_key = (
                Direction.CLIENT_TO_SERVER,
                Direction.SERVER_TO_CLIENT,
                up,
                down,
            )
        else:
            send_dir, recv_dir, send_key, recv_key = (
                Direction.SERVER_TO_CLIENT,
                Direction.CLIENT_TO_SERVER,
                down,
                up,
            )
        self._send_direction, self._recv_direction = send_dir, recv_dir
        self._sender = SendingChain(login.suite, login.session_id, send_dir, send_key)
        self._receiver = ReceivingChain(
            login.suite,
            login.session_id,
            recv_dir,
            recv_key,
            window=self.limits.window,
            max_frame=self.limits.max_frame,
        )
        self._started = now
        self._last_activity = now
        self._state = _State.OPEN
        self.closed_reason: str | None = None

    # -- timers --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next run (None once closed)."""
        if self._state is _State.CLOSED:
            return None
        return min(self._last_activity + self.limits.idle_s, self._started + self.limits.absolute_s)

    def handle_timer(self, now: float) -> None:
        if self._state is _State.OPEN:
            reason = self._expiry_reason(now)
            if reason is not None:
                self.close(reason)

    @property
    def is_open(self) -> bool:
        return self._state is _State.OPEN

    def close(self, reason: str = "closed") -> None:
        """End the session and erase its keys."""
        if self._state is _State.OPEN:
            self._sender.erase()
            self._receiver.erase()
            self._state = _State.CLOSED
            self.closed_reason = reason

    # -- messages ------------------------------------------------------------------------

    def seal(self, plaintext: bytes, *, now: float) -> bytearray:
        """The frame for ``plaintext``; a fresh buffer the caller owns."""
        try:
            self._check_alive(now)
            self._check_budget()
            frame = self._sender.seal(plaintext)
        except RoostError as error:
            self.rejections.count(error)
            raise
        self._after_message(frame, now, self._send_direction)
        return frame

    def open(self, frame: bytes, *, now: float) -> bytes:
        try:
            self._check_alive(now)
            _, plaintext, _ = self._receiver.open(frame)
        except RoostError as error:
            self.rejections.count(error)
            raise
        self._after_message(frame, now, self._recv_direction)
        return plaintext

    def seal_fields(self, fields: Sequence[bytes], *, now: float) -> bytearray:
        """Seal a record of fields, permuted by the message key when reordering is on."""
        try:
            self._check_alive(now)
            self._check_budget()
            position, message_key = self._sender.next_key()
            if self.limits.reorder_fields:
                order = field_permutation(self.suite, message_key, len(fields))
                fields = [fields[i] for i in order]
            frame = self._sender.seal_with(position, message_key, encode_fields(fields))
        except RoostError as error:
            self.rejections.count(error)
            raise
        self._after_message(frame, now, self._send_direction)
        return frame

    def open_fields(self, frame: bytes, *, now: float) -> tuple[bytes, ...]:
        try:
            self._check_alive(now)
            _, plaintext, message_key = self._receiver.open(frame)
            fields = decode_fields(plaintext, self.limits.max_frame)
        except RoostError as error:
            self.rejections.count(error)
            raise
        if self.limits.reorder_fields:
            order = field_permutation(self.suite, message_key, len(fields))
            restored: list[bytes] = [b""] * len(fields)
            for sent_at, original in enumerate(order):
                restored[original] = fields[sent_at]
            fields = tuple(restored)
        self._after_message(frame, now, self._recv_direction)
        return fields

    # -- internals -----------------------------------------------------------------------

    def _expiry_reason(self, now: float) -> str | None:
        if now - self._started >= self.limits.absolute_s:
            return "session-lifetime-expired"
        if now - self._last_activity >= self.limits.idle_s:
            return "session-idle-expired"
        return None

    def _check_alive(self, now: float) -> None:
        if self._state is _State.OPEN:
            reason = self._expiry_reason(now)
            if reason is not None:
                self.close(reason)
                raise VerificationError("session expired; log in again", reason=reason)
            return
        raise VerificationError("session is closed; log in again", reason="session-closed")

    def _check_budget(self) -> None:
        if self._sender.position >= self.limits.max_messages:
            self.close("reauth-required")
            raise LocalProtocolError(
                "message budget used up; log in again", reason="reauth-required"
            )

    def _after_message(self, frame: bytes | bytearray, now: float, direction: Direction) -> None:
        self._last_activity = now
        if self._recorder is not None:
            self.last_leaf_index = self._recorder(frame_digest(self.session_id, frame))
