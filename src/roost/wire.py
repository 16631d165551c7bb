"""Length-prefixed fields and bounds shared by every codec (pure, no I/O).

All integers are big-endian (PROTOCOL.md, preamble). A ``Reader`` raises
``RemoteProtocolError`` on every short read, so decoders never index past the end.
"""

from __future__ import annotations

import struct

from roost.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Reader", "Writer", "check_size"]


def check_size(data: bytes, maximum: int, what: str) -> None:
    """Reject input larger than ``maximum`` before any parsing (PROTOCOL.md preamble)."""
    if len(data) > maximum:
        raise RemoteProtocolError(
            f"{what} is {len(data)} bytes, above the {maximum}-byte limit", reason="oversized"
        )


class Reader:
    """Cursor over received bytes; every read is bounds-checked."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    @property
    def position(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise RemoteProtocolError(f"{self._what} is truncated", reason="truncated")
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def expect_end(self) -> None:
        if self.remaining:
            raise RemoteProtocolError(
                f"{self._what} has {self.remaining} trailing bytes", reason="trailing-bytes"
            )


class Writer:
    """Builds an encoding; refuses values that do not fit their field."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def _int(self, fmt: str, bits: int, value: int) -> Writer:
        if not 0 <= value < (1 << bits):
            raise LocalProtocolError(f"{value} does not fit in u{bits}")
        self._parts.append(struct.pack(fmt, value))
        return self

    def u8(self, value: int) -> Writer:
        return self._int(">B", 8, value)

    def u16(self, value: int) -> Writer:
        return self._int(">H", 16, value)

    def u32(self, value: int) -> Writer:
        return self._int(">I", 32, value)

    def u64(self, value: int) -> Writer:
        return self._int(">Q", 64, value)

    def bytes(self) -> bytes:
        return b"".join(self._parts)
