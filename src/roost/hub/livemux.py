"""Many live tiles over one connection: the dashboard's tile messages (pure core).

A browser opens at most six HTTP/1.1 connections to one host, so a page holding one
``multipart/x-mixed-replace`` stream per camera starves its own requests past about four
cameras. The page instead holds one WebSocket (``roost.hub.livesocket``) that carries
every tile's frames as binary messages::

    id-length (1 byte) | camera identifier (ASCII) | image payload

This module holds the parts without I/O: the message encoding, the per-client slots that
keep only the newest frame of each camera within a byte budget (a slow client drops
frames, it never queues them), and the reader of a peer hub's ``multipart/x-mixed-replace``
stream, whose parts the hub re-sends as tile messages.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from roost.errors import RemoteProtocolError
from roost.reasons import Reason

__all__ = [
    "DEVICE_ID",
    "INLINE_IMAGE_TYPES",
    "FrameSlots",
    "LiveMuxConfig",
    "MjpegPart",
    "MjpegPartReader",
    "decode_tile_message",
    "encode_tile_message",
]


# Device identifiers are "ab:" plus 22 base64url characters (PROTOCOL.md section 1).
DEVICE_ID = re.compile(r"ab:[A-Za-z0-9_-]{22}")
# Payload types shown as pictures; a device's other payloads are never shown inline.
INLINE_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})


@dataclass(frozen=True, slots=True)
class LiveMuxConfig:
    """Bounds of one page's tile connection."""

    # Bytes of frames waiting for one client at most (besides the one being sent).
    buffered_bytes: int = 8 * 1024 * 1024
    # Cameras one connection may watch at once.
    max_tiles: int = 64
    # A peer's stream part larger than this (headers and payload) is refused.
    max_part_bytes: int = 16 * 1024 * 1024
    max_part_head_bytes: int = 4096


def encode_tile_message(device_id: str, payload: bytes) -> bytes:
    """One binary tile message: id length, identifier, payload."""
    name = device_id.encode("ascii")
    if not 0 < len(name) < 256:
        raise ValueError("a camera identifier is 1 to 255 ASCII bytes")
    return bytes([len(name)]) + name + payload


def decode_tile_message(message: bytes) -> tuple[str, bytes]:
    """The camera identifier and payload of a tile message; raises RemoteProtocolError."""
    if not message or len(message) < 1 + message[0] or message[0] == 0:
        raise RemoteProtocolError("a tile message shorter than its header", reason=Reason.MALFORMED)
    length = message[0]
    try:
        device_id = message[1 : 1 + length].decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError(
            "a tile identifier that is not ASCII", reason=Reason.MALFORMED
        ) from None
    return device_id, message[1 + length :]


class FrameSlots:
    """One client's waiting frames: the newest of each camera only, within a byte budget.

    ``offer`` replaces a camera's waiting frame (the older one is dropped, never queued);
    ``take`` hands frames out in the order their cameras first became ready, so a busy
    camera cannot starve the others.
    """

    def __init__(self, config: LiveMuxConfig | None = None) -> None:
        self.config = config or LiveMuxConfig()
        self._waiting: OrderedDict[str, bytes] = OrderedDict()
        self.buffered_bytes = 0
        self.offered = 0
        self.replaced = 0
        self.over_budget = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, device_id: str, payload: bytes) -> bool:
        """Keep ``payload`` as the camera's next frame; False when it is over the budget."""
        self.offered += 1
        previous = self._waiting.get(device_id)
        if previous is not None:
            self.replaced += 1
            self.buffered_bytes -= len(previous)
            self._waiting[device_id] = payload  # keeps the camera's place in the order
        else:
            self._waiting[device_id] = payload
        self.buffered_bytes += len(payload)
        if self.buffered_bytes > self.config.buffered_bytes:
            # The client is that far behind: this frame waits for the next one instead.
            self.over_budget += 1
            self.discard(device_id)
            return False
        return True

    def take(self) -> tuple[str, bytes] | None:
        """The next camera's waiting frame, or None when nothing waits."""
        if not self._waiting:
            return None
        device_id, payload = self._waiting.popitem(last=False)
        self.buffered_bytes -= len(payload)
        return device_id, payload

    def discard(self, device_id: str) -> None:
        """Drop the camera's waiting frame (it is no longer watched)."""
        payload = self._waiting.pop(device_id, None)
        if payload is not None:
            self.buffered_bytes -= len(payload)


@dataclass(frozen=True, slots=True)
class MjpegPart:
    """One part of a ``multipart/x-mixed-replace`` stream."""

    headers: dict[str, str]
    payload: bytes

    @property
    def mime(self) -> str:
        return self.headers.get("content-type", "application/octet-stream")


class MjpegPartReader:
    """Splits a ``multipart/x-mixed-replace`` body (``roost.hub.live.mjpeg_part``'s
    framing: every part names its ``Content-Length``) into parts."""

    def __init__(self, boundary: str, config: LiveMuxConfig | None = None) -> None:
        self.config = config or LiveMuxConfig()
        self._delimiter = b"--" + boundary.encode("ascii")
        self._buffer = bytearray()
        self._head: dict[str, str] | None = None
        self._length = 0

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_part(self) -> MjpegPart | None:
        """The next complete part, or None until more data; raises RemoteProtocolError."""
        if self._head is None and not self._read_head():
            return None
        assert self._head is not None
        if len(self._buffer) < self._length:
            return None
        payload = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        part = MjpegPart(self._head, payload)
        self._head = None
        return part

    def _read_head(self) -> bool:
        # Line breaks between parts (after a payload, before the delimiter) are skipped.
        while self._buffer[:2] == b"\r\n":
            del self._buffer[:2]
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self.config.max_part_head_bytes:
                raise RemoteProtocolError("a stream part head too long", reason=Reason.OVERSIZED)
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        if lines[0].strip() != self._delimiter.decode("ascii"):
            raise RemoteProtocolError("a stream part without its boundary", reason=Reason.MALFORMED)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise RemoteProtocolError(
                    "a stream part header without a colon", reason=Reason.MALFORMED
                )
            headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers["content-length"])
        except (KeyError, ValueError):
            raise RemoteProtocolError(
                "a stream part without its Content-Length", reason=Reason.MALFORMED
            ) from None
        if not 0 <= length <= self.config.max_part_bytes:
            raise RemoteProtocolError("a stream part too large", reason=Reason.OVERSIZED)
        self._head, self._length = headers, length
        return True
