"""The streams the guard adapters run on (docs/guard.md, "Remote calls").

A guard session needs only an ordered, reliable byte stream: TLS over TCP today, a QUIC
stream or a relayed stream through the broker later. asyncio's ``StreamReader`` and
``StreamWriter`` satisfy these protocols as they are.
"""

from __future__ import annotations

import ssl
from typing import Protocol

__all__ = ["READ_CHUNK", "STREAM_ERRORS", "ByteStreamReader", "ByteStreamWriter"]


class ByteStreamReader(Protocol):
    """The receiving half of a stream (``asyncio.StreamReader`` is one): ``read`` returns
    whatever arrived, at most ``n`` bytes, and ``b""`` at the end of the stream."""

    async def read(self, n: int) -> bytes: ...


class ByteStreamWriter(Protocol):
    """The sending half (``asyncio.StreamWriter`` is one). ``close`` ends the stream in
    both directions: a pending ``read`` on its reader then returns ``b""``."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...

    def is_closing(self) -> bool: ...


# Read size: one read may complete several records or part of one; the framer keeps the
# rest (roost.framing), so a 1 MiB frame costs about 16 reads.
READ_CHUNK = 64 * 1024
# Errors a stream may raise on read or write besides our own.
STREAM_ERRORS = (OSError, ssl.SSLError)
