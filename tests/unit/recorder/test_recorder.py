"""Hub recorder: durable, at-most-once, size-bounded frame storage (PROTOCOL.md section 4)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from roost.errors import StateError
from roost.hub.recorder import IncomingFrame, Recorder, device_dir_name

CAMERA = "ab:EIW6Qe0ARnWrsJZTsHWadA"
OTHER_CAMERA = "ab:gC3YWhxMRQGZVBboYIEgxw"
MIME = "image/jpeg"


def _payload(seq: int, size: int = 100) -> bytes:
    return bytes([seq % 256]) * size


def _frame(device: str, seq: int, size: int = 100) -> IncomingFrame:
    return IncomingFrame(device, seq, 1_000 + seq, MIME, _payload(seq, size), 2_000 + seq)


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path, retention_bytes=1_000_000)


def test_store_then_read_back(recorder: Recorder, tmp_path: Path) -> None:
    assert recorder.store(CAMERA, 1, 1_001, MIME, b"first", 2_001)
    assert recorder.store(CAMERA, 2, 1_002, MIME, b"second", 2_002)
    latest = recorder.latest(CAMERA)
    assert latest is not None
    assert (latest.seq, latest.captured_at_ms, latest.received_at_ms) == (2, 1_002, 2_002)
    assert (latest.mime, latest.payload, latest.device_id) == (MIME, b"second", CAMERA)
    assert recorder.count() == 2
    assert recorder.count(CAMERA) == 2
    assert recorder.count(OTHER_CAMERA) == 0
    assert recorder.seqs(CAMERA) == [1, 2]
    assert recorder.highest_seq(CAMERA) == 2
    assert recorder.highest_seq(OTHER_CAMERA) is None
    assert recorder.latest(OTHER_CAMERA) is None
    assert recorder.stored == 2
    assert recorder.bytes_stored == len(b"first") + len(b"second")
    assert (tmp_path / "index.sqlite3").exists()
    files = sorted((tmp_path / "frames" / "ab-EIW6Qe0ARnWrsJZTsHWadA").iterdir())
    assert [path.read_bytes() for path in files] == [b"first", b"second"]


def test_duplicate_is_stored_once_and_counted(recorder: Recorder) -> None:
    assert recorder.store(CAMERA, 5, 1, MIME, b"original", 1)
    assert not recorder.store(CAMERA, 5, 9, MIME, b"resent", 9)
    assert recorder.duplicates == 1
    assert recorder.stored == 1
    assert recorder.count() == 1
    latest = recorder.latest(CAMERA)
    assert latest is not None and latest.payload == b"original"
    # The same seq from another device is a different frame.
    assert recorder.store(OTHER_CAMERA, 5, 1, MIME, b"other", 1)


def test_store_many_commits_a_batch_and_reports_duplicates(recorder: Recorder) -> None:
    recorder.store(CAMERA, 2, 0, MIME, b"x", 0)
    frames = [_frame(CAMERA, seq) for seq in (1, 2, 3, 3)] + [_frame(OTHER_CAMERA, 1)]
    assert recorder.store_many(frames) == [True, False, True, False, True]
    assert recorder.duplicates == 2
    assert recorder.seqs(CAMERA) == [1, 2, 3]
    assert recorder.count() == 4
    assert recorder.store_many([]) == []


def test_retention_deletes_oldest_arrivals_across_devices(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, retention_bytes=1_000)
    for seq in range(1, 6):
        recorder.store_many([_frame(CAMERA, seq, 100), _frame(OTHER_CAMERA, seq, 100)])
    assert recorder.bytes_stored == 1_000
    assert recorder.evicted == 0
    recorder.store_many([_frame(CAMERA, 6, 250)])
    # 250 bytes over the bound: the three oldest arrivals (100 bytes each) go.
    assert recorder.evicted == 3
    assert recorder.evicted_bytes == 300
    assert recorder.bytes_stored == 950
    assert recorder.seqs(CAMERA) == [3, 4, 5, 6]
    assert recorder.seqs(OTHER_CAMERA) == [2, 3, 4, 5]
    stored_files = list((tmp_path / "frames").rglob("*.jpg"))
    assert len(stored_files) == recorder.count() == 8


def test_evicted_frame_is_not_stored_again(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, retention_bytes=200)
    for seq in (1, 2, 3):
        recorder.store(CAMERA, seq, 0, MIME, _payload(seq), 0)
    assert recorder.seqs(CAMERA) == [2, 3]
    # A resend of an evicted frame must not be stored twice (section 4).
    assert not recorder.store(CAMERA, 1, 0, MIME, _payload(1), 0)
    assert recorder.expired == 1
    assert recorder.seqs(CAMERA) == [2, 3]
    recorder.store(CAMERA, 4, 0, MIME, _payload(4), 0)
    recorder.store(CAMERA, 5, 0, MIME, _payload(5), 0)
    recorder.close()
    reopened = Recorder(tmp_path, retention_bytes=200)
    assert reopened.highest_seq(CAMERA) == 5
    assert not reopened.store(CAMERA, 3, 0, MIME, _payload(3), 0)


def test_highest_seq_survives_eviction_of_everything(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, retention_bytes=0)
    assert recorder.store(CAMERA, 9, 0, MIME, b"gone", 0)
    assert recorder.count() == 0
    assert recorder.highest_seq(CAMERA) == 9
    assert recorder.latest(CAMERA) is None


def test_restart_keeps_everything(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, retention_bytes=1_000_000)
    recorder.store_many([_frame(CAMERA, seq) for seq in range(1, 11)])
    recorder.close()
    reopened = Recorder(tmp_path, retention_bytes=1_000_000)
    assert reopened.count() == 10
    assert reopened.bytes_stored == 1_000
    assert reopened.seqs(CAMERA) == list(range(1, 11))
    assert not reopened.store(CAMERA, 10, 0, MIME, b"again", 0)
    latest = reopened.latest(CAMERA)
    assert latest is not None and latest.payload == _payload(10)
    assert reopened.orphans_removed == 0


def test_smaller_retention_applies_on_reopen(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, retention_bytes=1_000_000)
    recorder.store_many([_frame(CAMERA, seq) for seq in range(1, 11)])
    recorder.close()
    reopened = Recorder(tmp_path, retention_bytes=500)
    assert reopened.seqs(CAMERA) == [6, 7, 8, 9, 10]


def test_orphan_files_are_removed_on_start(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, retention_bytes=1_000_000)
    recorder.store(CAMERA, 1, 0, MIME, b"kept", 0)
    recorder.close()
    # A crash after the file was fsynced but before the row was committed leaves this.
    device_dir = tmp_path / "frames" / device_dir_name(CAMERA)
    (device_dir / f"{2:020d}.jpg").write_bytes(b"orphan")
    stray_dir = tmp_path / "frames" / device_dir_name(OTHER_CAMERA)
    stray_dir.mkdir()
    (stray_dir / f"{7:020d}.jpg").write_bytes(b"orphan too")
    reopened = Recorder(tmp_path, retention_bytes=1_000_000)
    assert reopened.orphans_removed == 2
    assert sorted(path.name for path in device_dir.iterdir()) == [f"{1:020d}.jpg"]
    assert list(stray_dir.iterdir()) == []
    # The frame whose row was never committed was never acknowledged, so it is stored anew.
    assert reopened.store(CAMERA, 2, 0, MIME, b"resent", 0)
    assert reopened.seqs(CAMERA) == [1, 2]


def test_missing_file_of_an_indexed_frame_is_a_state_error(recorder: Recorder) -> None:
    recorder.store(CAMERA, 1, 0, MIME, b"x", 0)
    for path in (recorder._frames_root).rglob("*.jpg"):
        path.unlink()
    with pytest.raises(StateError) as caught:
        recorder.latest(CAMERA)
    assert caught.value.reason == "missing-frame"


def test_full_u64_range_keeps_order(recorder: Recorder) -> None:
    top = 2**64 - 1
    for seq in (0, 2**63 - 1, 2**63, top):
        assert recorder.store(CAMERA, seq, top, MIME, b"x", 0)
    assert recorder.seqs(CAMERA) == [0, 2**63 - 1, 2**63, top]
    assert recorder.highest_seq(CAMERA) == top
    latest = recorder.latest(CAMERA)
    assert latest is not None and latest.captured_at_ms == top
    assert not recorder.store(CAMERA, top, 0, MIME, b"x", 0)


@pytest.mark.parametrize(
    "device_id", ["../../etc", "ab:../x", "", "hcsp:" + "A" * 200, "ab:a/b", "ab:EIW6\x00"]
)
def test_device_dir_name_is_always_a_safe_single_component(device_id: str) -> None:
    name = device_dir_name(device_id)
    assert name and "/" not in name and "\x00" not in name and name not in {".", ".."}
    assert name.startswith("_id-")


def test_device_dir_names_do_not_collide() -> None:
    assert device_dir_name(CAMERA) == "ab-EIW6Qe0ARnWrsJZTsHWadA"
    assert device_dir_name("hcsp:EIW6Qe0ARnWrsJZTsHWadA") != device_dir_name(CAMERA)


def test_concurrent_stores_from_threads(recorder: Recorder) -> None:
    def store_range(device: str) -> None:
        for seq in range(50):
            recorder.store(device, seq, 0, MIME, b"y" * 10, 0)
            recorder.store(device, seq, 0, MIME, b"y" * 10, 0)

    threads = [
        threading.Thread(target=store_range, args=(f"ab:camera{index}",)) for index in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorder.count() == 200
    assert recorder.stored == 200
    assert recorder.duplicates == 200


def test_device_names_survive_a_restart(tmp_path: Path) -> None:
    # The name a hello gave (PROTOCOL.md section 4) labels recordings and offline tiles
    # after the hub restarts; a later hello's name replaces it.
    first = Recorder(tmp_path, retention_bytes=1_000_000)
    assert first.names() == {}
    first.remember_name(CAMERA, "porch")
    first.remember_name(OTHER_CAMERA, "garage")
    first.remember_name(CAMERA, "front door")
    first.close()
    again = Recorder(tmp_path, retention_bytes=1_000_000)
    try:
        assert again.names() == {CAMERA: "front door", OTHER_CAMERA: "garage"}
    finally:
        again.close()
