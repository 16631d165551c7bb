"""The one ``u32 length | body`` stream framer, pure (PROTOCOL.md sections 4, 5 and 6).

Three streams use it: the device channel (section 4, where the body is ``u8 type | …``), the
guard's records on the remote entrance (docs/guard.md, "Remote calls") and the broker's
control channel (section 5). A receiver feeds whatever its socket returned into
:class:`RecordFramer` and gets every completed body back; a sender writes
:func:`encode_record`.

A length above the bound is refused as soon as its four bytes arrive, so a peer can never
make a receiver hold more than one maximal body plus one read. After an error the stream is
unusable (boundaries are lost): every later call raises the same reason.
"""

from __future__ import annotations

import struct

from roost.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["RECORD_HEADER_SIZE", "RecordFramer", "encode_record", "record_length"]

RECORD_HEADER_SIZE = 4
_HEADER = struct.Struct(">I")
_MAX_U32 = (1 << 32) - 1


def encode_record(body: bytes | bytearray | memoryview) -> bytes:
    """``u32 length | body``, ready to write to the stream."""
    if len(body) > _MAX_U32:
        raise LocalProtocolError("record body does not fit a u32 length", reason="oversized")
    return _HEADER.pack(len(body)) + bytes(body)


def record_length(header: bytes, max_body: int) -> int:
    """The body length a 4-byte header announces, refused above ``max_body`` before anything
    is read for it."""
    if len(header) != RECORD_HEADER_SIZE:
        raise RemoteProtocolError("record header is truncated", reason="truncated")
    (length,) = _HEADER.unpack(header)
    if length > max_body:
        raise RemoteProtocolError(
            f"record of {length} bytes, above the {max_body}-byte limit", reason="oversized"
        )
    return int(length)


class RecordFramer:
    """Cuts a received byte stream into record bodies.

    ``max_body`` may change between records (the guard allows larger records once a session
    is open); ``min_body`` refuses shorter bodies (the device channel needs its type byte).
    """

    __slots__ = ("_buffer", "_expected", "_failure", "_what", "max_body", "min_body")

    def __init__(self, max_body: int, *, min_body: int = 0, what: str = "record") -> None:
        if max_body < 0 or min_body < 0 or min_body > max_body:
            raise ValueError("record bounds need 0 <= min_body <= max_body")
        self.max_body = max_body
        self.min_body = min_body
        self._what = what
        # One growing bytearray: appends are amortised O(1) and each body is copied out
        # once, so a 4 MiB body arriving in small reads costs linear, not quadratic, time.
        self._buffer = bytearray()
        self._expected: int | None = None
        self._failure: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete body."""
        return len(self._buffer)

    @property
    def inside_record(self) -> bool:
        """True while part of a record has arrived (a close now would cut it off)."""
        return bool(self._buffer) or self._expected is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return the bodies they complete, in order."""
        self._raise_if_failed()
        self._buffer += data
        bodies: list[bytes] = []
        consumed = 0
        buffer = self._buffer
        try:
            while True:
                if self._expected is None:
                    if len(buffer) - consumed < RECORD_HEADER_SIZE:
                        break
                    (length,) = _HEADER.unpack_from(buffer, consumed)
                    self._check_length(length)
                    consumed += RECORD_HEADER_SIZE
                    self._expected = length
                if len(buffer) - consumed < self._expected:
                    break
                end = consumed + self._expected
                bodies.append(bytes(buffer[consumed:end]))
                consumed = end
                self._expected = None
        except RemoteProtocolError as error:
            self._failure = error
            buffer.clear()
            raise
        # Drop consumed bytes once per call rather than once per body.
        del buffer[:consumed]
        return bodies

    def end_of_stream(self) -> None:
        """Call when the peer closed; raise ``RemoteProtocolError`` if a record was cut off."""
        self._raise_if_failed()
        if self.inside_record:
            error = RemoteProtocolError(f"stream closed inside a {self._what}", reason="truncated")
            self._failure = error
            raise error

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise RemoteProtocolError(str(self._failure), reason=self._failure.reason)

    def _check_length(self, length: int) -> None:
        if length < self.min_body:
            reason = "empty" if length == 0 else "truncated"
            raise RemoteProtocolError(f"{self._what} of {length} bytes is too short", reason=reason)
        if length > self.max_body:
            raise RemoteProtocolError(
                f"{self._what} announces {length} bytes, above the {self.max_body}-byte limit",
                reason="oversized",
            )
