"""Device channel framing (PROTOCOL.md section 4), pure: bytes in, messages out.

Every message on the channel is ``u32 length | u8 type | body`` where ``length`` counts the
type byte and the body, and is at most 4 MiB. Three types exist: DOCUMENT (UTF-8 HCSP XML),
FRAME (one captured frame) and ACK (every frame with a sequence number up to ``seq`` is
durably stored).

``encode_message`` gives the bytes a sender writes to the stream (length prefix included).
``decode_message`` parses what follows one length prefix; ``ChannelDecoder`` cuts a byte
stream into such pieces incrementally and is what a receiver feeds its socket reads into.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from roost.errors import LocalProtocolError, RemoteProtocolError
from roost.framing import RecordFramer, encode_record
from roost.wire import Reader, Writer, check_size

__all__ = [
    "MAX_CHANNEL_MESSAGE",
    "AckMessage",
    "ChannelConfig",
    "ChannelDecoder",
    "ChannelMessage",
    "DocumentMessage",
    "FrameMessage",
    "MessageType",
    "decode_message",
    "encode_message",
    "encode_message_body",
]

# PROTOCOL.md section 4: a message (type byte plus body) is at most 4 MiB.
MAX_CHANNEL_MESSAGE = 4 * 1024 * 1024

_MAX_MIME_LENGTH = 255


class MessageType(enum.IntEnum):
    """The type byte of a channel message (PROTOCOL.md section 4 table)."""

    DOCUMENT = 1
    FRAME = 2
    ACK = 3


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Bounds of one channel endpoint; the default is the protocol's own 4 MiB ceiling."""

    max_message: int = MAX_CHANNEL_MESSAGE

    def __post_init__(self) -> None:
        if not 1 <= self.max_message <= MAX_CHANNEL_MESSAGE:
            raise ValueError(f"max_message must be within 1..{MAX_CHANNEL_MESSAGE}")


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    """Base of the three device-channel messages."""


@dataclass(frozen=True, slots=True)
class DocumentMessage(ChannelMessage):
    """An HCSP XML document (hello, welcome, redirect), kept as its UTF-8 bytes."""

    xml: bytes


@dataclass(frozen=True, slots=True)
class FrameMessage(ChannelMessage):
    """One captured frame; ``seq`` is per device and never reused (section 4)."""

    seq: int
    captured_at_ms: int
    mime: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AckMessage(ChannelMessage):
    """The hub has durably stored every frame of this device with a sequence number ≤ seq."""

    seq: int


def _mime_is_valid(mime: bytes) -> bool:
    # A media type is printable ASCII; control characters and non-ASCII bytes would end up in
    # file names, logs and HTTP headers, so they are refused at the edge.
    return 1 <= len(mime) <= _MAX_MIME_LENGTH and all(0x20 <= byte <= 0x7E for byte in mime)


def encode_message_body(message: ChannelMessage, config: ChannelConfig | None = None) -> bytes:
    """Encode the type byte and body of ``message`` (what the length prefix counts)."""
    config = config or ChannelConfig()
    writer = Writer()
    if isinstance(message, DocumentMessage):
        if not message.xml:
            raise LocalProtocolError("a document must not be empty", reason="empty-document")
        writer.u8(MessageType.DOCUMENT).raw(message.xml)
    elif isinstance(message, FrameMessage):
        try:
            mime = message.mime.encode("ascii")
        except UnicodeEncodeError:
            raise LocalProtocolError("frame mime type is not ASCII", reason="bad-mime") from None
        if not _mime_is_valid(mime):
            raise LocalProtocolError("frame mime type is empty or malformed", reason="bad-mime")
        writer.u8(MessageType.FRAME).u64(message.seq).u64(message.captured_at_ms)
        writer.u8(len(mime)).raw(mime).raw(message.payload)
    elif isinstance(message, AckMessage):
        writer.u8(MessageType.ACK).u64(message.seq)
    else:
        raise LocalProtocolError(f"{type(message).__name__} is not a channel message")
    body = writer.bytes()
    if len(body) > config.max_message:
        raise LocalProtocolError(
            f"message is {len(body)} bytes, above the {config.max_message}-byte limit",
            reason="oversized",
        )
    return body


def encode_message(message: ChannelMessage, config: ChannelConfig | None = None) -> bytes:
    """Encode ``message`` with its length prefix, ready to write to the channel stream."""
    return encode_record(encode_message_body(message, config))


def decode_message(body_with_type: bytes, config: ChannelConfig | None = None) -> ChannelMessage:
    """Parse the bytes that follow one length prefix; raise ``RemoteProtocolError`` if bad."""
    config = config or ChannelConfig()
    # PROTOCOL.md preamble: reject oversized input before parsing any of it.
    check_size(body_with_type, config.max_message, "channel message")
    if not body_with_type:
        raise RemoteProtocolError("channel message has no type byte", reason="empty")
    reader = Reader(body_with_type, "channel message")
    kind = reader.u8()
    if kind == MessageType.DOCUMENT:
        xml = reader.take(reader.remaining)
        if not xml:
            raise RemoteProtocolError("document is empty", reason="empty-document")
        try:
            xml.decode("utf-8")
        except UnicodeDecodeError:
            # Section 4 says documents are UTF-8; anything else is refused here so the XML
            # layer never has to guess an encoding.
            raise RemoteProtocolError("document is not UTF-8", reason="bad-document") from None
        return DocumentMessage(xml=xml)
    if kind == MessageType.FRAME:
        seq = reader.u64()
        captured_at_ms = reader.u64()
        mime = reader.take(reader.u8())
        if not _mime_is_valid(mime):
            raise RemoteProtocolError("frame mime type is empty or malformed", reason="bad-mime")
        payload = reader.take(reader.remaining)
        return FrameMessage(
            seq=seq, captured_at_ms=captured_at_ms, mime=mime.decode("ascii"), payload=payload
        )
    if kind == MessageType.ACK:
        seq = reader.u64()
        reader.expect_end()
        return AckMessage(seq=seq)
    raise RemoteProtocolError(f"unknown channel message type {kind}", reason="unknown-type")


class ChannelDecoder:
    """Cuts a received byte stream into channel messages (PROTOCOL.md section 4).

    Feed it whatever the socket returned; it returns every message completed so far. The
    shared :class:`roost.framing.RecordFramer` refuses a length prefix above the bound as
    soon as its four bytes arrive, so a peer cannot make us hold more than one maximal
    message plus one read. After an error the stream is unusable (message boundaries are
    lost) and every later call raises the same reason; messages completed earlier in the
    failing call are discarded, which is safe because unacknowledged frames are resent on
    the next channel.
    """

    __slots__ = ("_config", "_failure", "_framer")

    def __init__(self, max_message: int = MAX_CHANNEL_MESSAGE) -> None:
        self._config = ChannelConfig(max_message=max_message)
        self._framer = RecordFramer(max_message, min_body=1, what="channel message")
        self._failure: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return self._framer.buffered

    def feed(self, data: bytes) -> list[ChannelMessage]:
        """Add received bytes; return the messages they complete, in order."""
        if self._failure is not None:
            raise RemoteProtocolError(str(self._failure), reason=self._failure.reason)
        try:
            return [decode_message(body, self._config) for body in self._framer.feed(data)]
        except RemoteProtocolError as error:
            self._failure = error
            raise

    def end_of_stream(self) -> None:
        """Call when the peer closed; raise ``RemoteProtocolError`` if a message was cut off."""
        if self._failure is not None:
            raise RemoteProtocolError(str(self._failure), reason=self._failure.reason)
        self._framer.end_of_stream()
