"""The hub's remote methods against a real recorder: latest-frame off the loop, watch fed by
the recorder's listener, and whose fault each refusal is."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from roost.clock import Clock
from roost.errors import RefusedError, RemoteProtocolError, StateError
from roost.hub.feed import FrameFeed
from roost.hub.recorder import IncomingFrame, Recorder
from roost.hub.remote import RemoteCallConfig, hub_call_handler

pytestmark = pytest.mark.timeout(30)
CAMERA = "cam:AAAAAAAAAAAAAAAAAAAAAA"


class _Hub:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def status(self) -> dict[str, Any]:
        return {"id": "hcsp:test"}


def _frame(seq: int) -> IncomingFrame:
    return IncomingFrame(CAMERA, seq, 1000 + seq, "image/jpeg", b"\xff\xd8 %d" % seq, 5)


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path / "recordings", 1 << 24)


async def test_latest_frame_reads_the_recorder_off_the_event_loop(recorder: Recorder) -> None:
    recorder.store_many([_frame(1), _frame(2)])
    threads: list[str] = []
    latest = recorder.latest

    def spying_latest(device_id: str) -> Any:
        threads.append(threading.current_thread().name)
        return latest(device_id)

    recorder.latest = spying_latest  # type: ignore[method-assign]
    handle = hub_call_handler(_Hub(recorder))
    answer = handle("latest-frame", (CAMERA.encode(),))
    assert asyncio.iscoroutine(answer)
    fields = await answer
    assert struct.unpack(">QQ", fields[0]) == (2, 1002) and fields[2] == b"\xff\xd8 2"
    assert threads and threads[0] != threading.main_thread().name
    with pytest.raises(StateError) as none:
        await handle("latest-frame", (b"cam:nobody",))  # type: ignore[misc]
    assert none.value.reason == "no-frame"


async def test_watch_streams_the_next_frames_the_recorder_stores(recorder: Recorder) -> None:
    feed = FrameFeed()
    feed.attach(recorder)
    recorder.store_many([_frame(1)])  # before the call: not part of the watch
    handle = hub_call_handler(_Hub(recorder), feed=feed)
    stream = handle("watch", (CAMERA.encode(), b"3"))
    assert isinstance(stream, AsyncIterator)
    received: list[Sequence[bytes]] = []

    async def consume() -> None:
        async for fields in stream:  # type: ignore[union-attr]
            received.append(fields)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)  # the watch is open
    # Stored from a worker thread, as the hub daemon stores batches.
    await asyncio.to_thread(recorder.store_many, [_frame(2), _frame(3)])
    await asyncio.to_thread(recorder.store_many, [_frame(3), _frame(4), _frame(5)])
    await asyncio.wait_for(task, 5.0)
    seqs = [struct.unpack(">QQ", fields[0])[0] for fields in received]
    assert seqs == [2, 3, 4]  # the duplicate 3 was not stored again, so not shown again
    assert feed.watching == 0  # the watch closed with its stream
    feed.detach()


async def test_watch_bounds_and_timeouts(recorder: Recorder) -> None:
    feed = FrameFeed()
    feed.attach(recorder)
    config = RemoteCallConfig(watch_default_frames=2, watch_max_frames=5, watch_frame_wait_s=0.2)
    handle = hub_call_handler(_Hub(recorder), feed=feed, config=config)
    with pytest.raises(RefusedError) as too_many:
        handle("watch", (CAMERA.encode(), b"6"))
    assert too_many.value.reason == "bad-args"
    for bad in ((CAMERA.encode(), b"0"), (CAMERA.encode(), b"two"), ()):
        with pytest.raises(RemoteProtocolError):
            handle("watch", bad)
    stream = handle("watch", (CAMERA.encode(),))
    assert isinstance(stream, AsyncIterator)
    with pytest.raises(StateError) as silent:
        await anext(stream)
    assert silent.value.reason == "no-frame" and feed.watching == 0


def test_unknown_method_is_the_peers_fault(recorder: Recorder) -> None:
    handle = hub_call_handler(_Hub(recorder))
    with pytest.raises(RemoteProtocolError) as unknown:
        handle("format-disk", ())
    assert unknown.value.reason == "unknown-method"
    # Without a feed there is no watch method.
    with pytest.raises(RemoteProtocolError):
        handle("watch", (CAMERA.encode(),))


async def test_watch_starts_with_a_recent_latest_frame_and_never_shows_it_twice(
    recorder: Recorder,
) -> None:
    wall = [10_000]
    feed = FrameFeed(clock=Clock(now=lambda: 0.0, wall_ms=lambda: wall[0]), latest_max_age_ms=500)

    def received_at(seq: int, at_ms: int) -> IncomingFrame:
        return dataclasses.replace(_frame(seq), received_at_ms=at_ms)

    feed.attach(recorder)
    # Stored before any watcher, 100 ms ago: a new watch shows it at once.
    await asyncio.to_thread(recorder.store_many, [received_at(1, 9_800), received_at(2, 9_900)])
    with feed.watch(CAMERA, 3) as frames:
        first = await frames.next(0.5)
        assert first.seq == 2
        # A batch holding that frame reaching the loop late shows nothing again.
        feed.publish([received_at(1, 9_800), received_at(2, 9_900), received_at(3, 10_000)])
        assert (await frames.next(0.5)).seq == 3
    # A latest frame older than the bound is not live: the watch waits for the next one.
    wall[0] = 20_000
    with feed.watch(CAMERA, 1) as frames, pytest.raises(StateError):
        await frames.next(0.05)
    feed.detach()
