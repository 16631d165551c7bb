"""Recordings by capture-time range: list, read, delete; order kept across the u64 mapping."""

from __future__ import annotations

from pathlib import Path

from roost.hub.recorder import IncomingFrame, Recorder

CAM = "ab:AAAAAAAAAAAAAAAAAAAAAA"
OTHER = "ab:BBBBBBBBBBBBBBBBBBBBBB"


def _frame(device: str, seq: int, at_ms: int) -> IncomingFrame:
    return IncomingFrame(device, seq, at_ms, "image/jpeg", b"\xff\xd8" + bytes([seq]), seq)


def test_ranges_list_read_and_delete(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, retention_bytes=1 << 20)
    recorder.store_many([_frame(CAM, seq, 1_000 * seq) for seq in range(1, 11)])
    recorder.store_many([_frame(OTHER, 1, 5_500), _frame(CAM, 11, 2**64 - 1)])
    cameras = {c.device_id: c for c in recorder.cameras()}
    assert cameras[CAM].frames == 11 and cameras[CAM].first_ms == 1_000
    assert cameras[CAM].last_ms == 2**64 - 1 and cameras[OTHER].frames == 1
    middle = recorder.index(CAM, 3_000, 5_000)
    assert [(e.seq, e.captured_at_ms) for e in middle] == [(3, 3_000), (4, 4_000), (5, 5_000)]
    assert [e.seq for e in recorder.index(CAM, -5, 2_000)] == [1, 2]
    assert [e.seq for e in recorder.index(CAM, 10_500, 2**70)] == [11]
    frame = recorder.read(CAM, 4)
    assert frame is not None and frame.payload == b"\xff\xd8\x04" and frame.captured_at_ms == 4_000
    assert recorder.read(CAM, 99) is None
    before = recorder.bytes_stored
    assert recorder.delete_range(CAM, 3_000, 5_000) == 3
    assert [e.seq for e in recorder.index(CAM, 0, 10_000)] == [1, 2, 6, 7, 8, 9, 10]
    assert recorder.read(CAM, 4) is None and recorder.bytes_stored == before - 9
    assert recorder.count(OTHER) == 1
    recorder.close()
    reopened = Recorder(tmp_path, retention_bytes=1 << 20)
    assert reopened.count(CAM) == 8 and reopened.orphans_removed == 0
    reopened.close()
