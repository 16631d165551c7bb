"""Live viewers hold one frame: a slow viewer skips frames, it never queues them."""

from __future__ import annotations

from pathlib import Path

from roost.hub.live import BOUNDARY, LiveFeed, mjpeg_part
from roost.hub.recorder import IncomingFrame, Recorder

CAM = "ab:AAAAAAAAAAAAAAAAAAAAAA"


def _frame(seq: int) -> IncomingFrame:
    return IncomingFrame(CAM, seq, seq * 200, "image/jpeg", b"\xff\xd8" + bytes([seq]), 0)


async def test_a_slow_viewer_gets_the_newest_frame_only(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, retention_bytes=1 << 20)
    feed = LiveFeed(recorder, max_viewers=2)
    fast, slow = feed.watch(CAM), feed.watch(CAM)
    assert fast is not None and slow is not None
    assert feed.watch(CAM) is None  # the viewer bound
    for seq in range(1, 6):
        feed.publish([_frame(seq)])
        got = await fast.next(1.0)
        assert got is not None and got.seq == seq
    newest = await slow.next(1.0)
    assert newest is not None and newest.seq == 5 and slow.dropped == 4
    assert await slow.next(0.05) is None  # nothing new: no frame is sent twice
    fast.close()
    slow.close()
    assert feed.viewers == 0
    # Frames stored while nobody watches are not even handed to the loop.
    recorder.store_many([_frame(9)])
    feed.close()
    recorder.close()


def test_a_part_carries_its_headers_and_boundary() -> None:
    part = mjpeg_part("image/jpeg", b"\xff\xd8xyz", 7, 1234)
    head, _, body = part.partition(b"\r\n\r\n")
    assert head.startswith(f"--{BOUNDARY}\r\n".encode())
    assert b"Content-Length: 5" in head and b"X-Roost-Seq: 7" in head
    assert body == b"\xff\xd8xyz\r\n"


def test_the_daemon_and_the_peer_link_name_one_alpn_protocol() -> None:
    from roost.hub import daemon, peers

    assert daemon._PEER_ALPN == peers.PEER_ALPN == "roost-web/1"
