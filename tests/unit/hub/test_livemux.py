"""The tile connection's pure parts: messages, newest-only slots, the MJPEG part reader."""

from __future__ import annotations

import pytest

from roost.errors import RemoteProtocolError
from roost.hub.live import BOUNDARY, mjpeg_part
from roost.hub.livemux import (
    FrameSlots,
    LiveMuxConfig,
    MjpegPartReader,
    decode_tile_message,
    encode_tile_message,
)

CAMERA_A = "ab:" + "A" * 22
CAMERA_B = "ab:" + "B" * 22


def test_a_tile_message_carries_the_identifier_then_the_picture() -> None:
    message = encode_tile_message(CAMERA_A, b"\xff\xd8jpeg")
    assert message[0] == len(CAMERA_A) and message[1 : 1 + len(CAMERA_A)] == CAMERA_A.encode()
    assert decode_tile_message(message) == (CAMERA_A, b"\xff\xd8jpeg")
    for broken in (b"", b"\x00abc", bytes([30]) + b"short"):
        with pytest.raises(RemoteProtocolError):
            decode_tile_message(broken)
    with pytest.raises(ValueError):
        encode_tile_message("", b"x")


def test_slots_keep_only_the_newest_frame_of_each_camera_in_turn() -> None:
    slots = FrameSlots()
    assert slots.take() is None
    slots.offer(CAMERA_A, b"a1")
    slots.offer(CAMERA_B, b"b1")
    slots.offer(CAMERA_A, b"a2")  # replaces a1, keeps A's turn
    assert slots.replaced == 1 and len(slots) == 2 and slots.buffered_bytes == 4
    assert slots.take() == (CAMERA_A, b"a2")
    assert slots.take() == (CAMERA_B, b"b1")
    assert slots.take() is None and slots.buffered_bytes == 0


def test_a_slow_client_never_holds_more_than_its_byte_budget() -> None:
    slots = FrameSlots(LiveMuxConfig(buffered_bytes=1000))
    cameras = [f"ab:{index:022d}" for index in range(8)]
    for round_ in range(50):
        for camera in cameras:
            slots.offer(camera, bytes(300 + round_))
            assert slots.buffered_bytes <= 1000
    assert slots.over_budget > 0 and len(slots) <= 3
    slots.discard(cameras[0])
    while slots.take() is not None:
        pass
    assert slots.buffered_bytes == 0


def test_the_part_reader_splits_a_stream_cut_anywhere() -> None:
    frames = [bytes([index]) * (100 + index) + b"\r\n--roostframe" for index in range(5)]
    stream = b"".join(mjpeg_part("image/jpeg", f, i, 1000 + i) for i, f in enumerate(frames))
    for step in (1, 7, 64, len(stream)):
        reader = MjpegPartReader(BOUNDARY)
        parts = []
        for offset in range(0, len(stream), step):
            reader.receive_data(stream[offset : offset + step])
            while (part := reader.next_part()) is not None:
                parts.append(part)
        assert [p.payload for p in parts] == frames
        assert parts[0].mime == "image/jpeg" and parts[3].headers["x-roost-seq"] == "3"


def test_the_part_reader_refuses_what_is_not_the_stream() -> None:
    cases = [
        b"--other\r\nContent-Length: 1\r\n\r\nx",
        b"--roostframe\r\nContent-Type: image/jpeg\r\n\r\nx",
        b"--roostframe\r\nContent-Length: 99999999999\r\n\r\n",
        b"--roostframe\r\nbroken header\r\n\r\n",
    ]
    for data in cases:
        reader = MjpegPartReader(BOUNDARY)
        reader.receive_data(data)
        with pytest.raises(RemoteProtocolError):
            reader.next_part()
    reader = MjpegPartReader(BOUNDARY, LiveMuxConfig(max_part_head_bytes=64))
    reader.receive_data(b"--roostframe\r\n" + b"X" * 100)
    with pytest.raises(RemoteProtocolError):
        reader.next_part()
