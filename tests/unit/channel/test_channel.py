"""Device channel codec and incremental decoder (PROTOCOL.md section 4)."""

from __future__ import annotations

import contextlib
import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import LocalProtocolError, RemoteProtocolError
from roost.hcsp.channel import (
    MAX_CHANNEL_MESSAGE,
    AckMessage,
    ChannelDecoder,
    ChannelMessage,
    DocumentMessage,
    FrameMessage,
    decode_message,
    encode_message,
    encode_message_body,
)

_U64 = st.integers(min_value=0, max_value=2**64 - 1)
_MIME = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255
)
_XML = st.text(min_size=1, max_size=200).map(lambda text: text.encode("utf-8"))

messages = st.one_of(
    st.builds(DocumentMessage, xml=_XML),
    st.builds(
        FrameMessage,
        seq=_U64,
        captured_at_ms=_U64,
        mime=_MIME,
        payload=st.binary(max_size=300),
    ),
    st.builds(AckMessage, seq=_U64),
)


def _chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges)]


def _feed_all(decoder: ChannelDecoder, chunks: list[bytes]) -> list[ChannelMessage]:
    received: list[ChannelMessage] = []
    for chunk in chunks:
        received.extend(decoder.feed(chunk))
    return received


@given(messages)
def test_round_trip(message: ChannelMessage) -> None:
    assert decode_message(encode_message_body(message)) == message
    wire = encode_message(message)
    assert wire[4:] == encode_message_body(message)
    assert ChannelDecoder().feed(wire) == [message]


@given(st.lists(messages, max_size=8), st.lists(st.integers(min_value=0), max_size=20))
def test_chunked_feeding_yields_the_same_messages(
    sent: list[ChannelMessage], cuts: list[int]
) -> None:
    stream = b"".join(encode_message(message) for message in sent)
    decoder = ChannelDecoder()
    assert _feed_all(decoder, _chunk(stream, cuts)) == sent
    assert decoder.buffered == 0
    decoder.end_of_stream()


@settings(max_examples=300)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes_decode_or_raise_our_error(data: bytes, cuts: list[int]) -> None:
    whole_reason: str | None = None
    try:
        whole = ChannelDecoder(max_message=1024).feed(data)
    except RemoteProtocolError as error:
        whole_reason = error.reason
    chunked_reason: str | None = None
    chunked: list[ChannelMessage] = []
    decoder = ChannelDecoder(max_message=1024)
    try:
        for chunk in _chunk(data, cuts):
            chunked.extend(decoder.feed(chunk))
    except RemoteProtocolError as error:
        chunked_reason = error.reason
    # Message boundaries do not depend on how the bytes were split, so neither does the
    # outcome: the same messages, or a rejection for the same reason.
    assert chunked_reason == whole_reason
    if whole_reason is None:
        assert chunked == whole


@given(st.binary(max_size=300))
def test_decode_message_decodes_or_raises_our_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_message(data)


def test_oversized_prefix_is_rejected_before_the_body_arrives() -> None:
    decoder = ChannelDecoder()
    prefix = (MAX_CHANNEL_MESSAGE + 1).to_bytes(4, "big")
    assert decoder.feed(prefix[:3]) == []
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.feed(prefix[3:])
    assert caught.value.reason == "oversized"
    # The stream is dead from then on, with the same reason.
    with pytest.raises(RemoteProtocolError) as again:
        decoder.feed(b"\x02" * 10)
    assert again.value.reason == "oversized"


def test_configured_bound_applies() -> None:
    decoder = ChannelDecoder(max_message=16)
    wire = encode_message(FrameMessage(1, 2, "a/b", b"x" * 10))
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.feed(wire)
    assert caught.value.reason == "oversized"


def test_largest_allowed_frame_passes_and_one_more_byte_does_not() -> None:
    overhead = 1 + 8 + 8 + 1 + len("image/jpeg")
    largest = FrameMessage(7, 8, "image/jpeg", b"\xab" * (MAX_CHANNEL_MESSAGE - overhead))
    wire = encode_message(largest)
    assert len(wire) == 4 + MAX_CHANNEL_MESSAGE
    assert ChannelDecoder().feed(wire) == [largest]
    too_big = FrameMessage(7, 8, "image/jpeg", b"\xab" * (MAX_CHANNEL_MESSAGE - overhead + 1))
    with pytest.raises(LocalProtocolError):
        encode_message(too_big)
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(encode_message_body(largest) + b"\x00")
    assert caught.value.reason == "oversized"


def test_large_frame_in_small_reads_is_linear() -> None:
    frame = FrameMessage(1, 2, "image/jpeg", bytes(range(256)) * 16000)
    wire = encode_message(frame)
    decoder = ChannelDecoder()
    started = time.perf_counter()
    received: list[ChannelMessage] = []
    for start in range(0, len(wire), 4096):
        received.extend(decoder.feed(wire[start : start + 4096]))
    elapsed = time.perf_counter() - started
    assert received == [frame]
    # Re-copying the buffer on every read would take over a second; linear takes milliseconds.
    assert elapsed < 0.5


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"\x00", "unknown-type"),
        (b"\xff", "unknown-type"),
        (b"\x01", "empty-document"),
        (b"\x01\xff\xfe", "bad-document"),
        (b"\x02" + bytes(16) + b"\x00", "bad-mime"),
        (b"\x02" + bytes(16) + b"\x01\x0a", "bad-mime"),
        (b"\x02" + bytes(16) + b"\x05abc", "truncated"),
        (b"\x02" + bytes(15), "truncated"),
        (b"\x03" + bytes(7), "truncated"),
        (b"\x03" + bytes(9), "trailing-bytes"),
    ],
)
def test_malformed_bodies_are_rejected_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(body)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (FrameMessage(1, 2, "", b""), "bad-mime"),
        (FrameMessage(1, 2, "imäge/jpeg", b""), "bad-mime"),
        (FrameMessage(1, 2, "a\nb", b""), "bad-mime"),
        (FrameMessage(1, 2, "a" * 256, b""), "bad-mime"),
        (DocumentMessage(b""), "empty-document"),
        (AckMessage(2**64), "local-protocol"),
        (FrameMessage(-1, 2, "a/b", b""), "local-protocol"),
    ],
)
def test_encoder_refuses_what_the_protocol_does_not_allow(
    message: ChannelMessage, reason: str
) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        encode_message(message)
    assert caught.value.reason == reason


def test_end_of_stream_inside_a_message_is_truncation() -> None:
    decoder = ChannelDecoder()
    wire = encode_message(AckMessage(5))
    assert decoder.feed(wire[:6]) == []
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.end_of_stream()
    assert caught.value.reason == "truncated"


def test_messages_before_and_after_a_partial_read() -> None:
    first, second = AckMessage(1), DocumentMessage(b"<hcsp/>")
    wire = encode_message(first) + encode_message(second)
    decoder = ChannelDecoder()
    assert decoder.feed(wire[:15]) == [first]
    assert decoder.buffered == 2
    assert decoder.feed(wire[15:]) == [second]
