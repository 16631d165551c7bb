"""Frames just recorded, for remote calls that watch a camera (docs/guard.md, "Remote calls").

The recorder calls its listeners on the thread that stored a batch, once the batch is
durable (PROTOCOL.md section 4 acknowledges only then, and ``watch`` shows only what the
hub would acknowledge). :class:`FrameFeed` is such a listener: it hops to the event loop
and hands each frame to the :class:`FrameWatch` objects waiting for that camera, each a
bounded queue, so a watcher costs memory for at most the frames it asked for and the
payload is never read back from disk.

A watch starts with the camera's latest stored frame when that frame is recent
(``latest_max_age_ms``): a remote viewer sees a picture at once instead of waiting for the
camera's next one (bench/remote_session.py measured about half a frame interval plus the
call's round trip for the first frame). The feed keeps that one frame per camera in memory;
an older one is not shown, since the watch promises live frames.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Protocol

from roost.clock import SYSTEM_CLOCK, Clock
from roost.errors import StateError
from roost.hub.recorder import IncomingFrame

__all__ = ["FrameFeed", "FrameWatch"]


_Listener = Callable[[list[IncomingFrame]], None]


class _Listened(Protocol):
    """What the feed attaches to (``roost.hub.recorder.Recorder`` is one)."""

    def add_listener(self, listener: _Listener) -> None: ...

    def remove_listener(self, listener: _Listener) -> None: ...


class FrameFeed:
    """Fans recorded frames out to watchers; create it on the event loop that reads them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        latest_max_age_ms: int = 2000,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._watchers: dict[str, set[FrameWatch]] = {}
        self._source: _Listened | None = None
        self._clock = clock
        self._latest_max_age_ms = latest_max_age_ms
        # The newest stored frame per camera (one item each), written on the storing
        # thread: a dict item assignment is atomic in CPython, and a watch that reads an
        # older item at that moment only starts with that older frame.
        self._latest: dict[str, IncomingFrame] = {}

    def attach(self, source: _Listened) -> None:
        """Listen to ``source`` (the recorder) until :meth:`detach`."""
        self.detach()
        source.add_listener(self.stored)
        self._source = source

    def detach(self) -> None:
        if self._source is not None:
            self._source.remove_listener(self.stored)
            self._source = None

    def stored(self, frames: list[IncomingFrame]) -> None:
        """The recorder's listener: runs on the storing thread and only schedules work."""
        for frame in frames:
            self._latest[frame.device_id] = frame
        # Reading the dict's size from another thread is safe in CPython; a watcher added
        # at this very moment may miss this batch, which was stored before it asked.
        if not self._watchers:
            return
        # RuntimeError: the loop has closed, so nobody is watching any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.publish, frames)

    def publish(self, frames: Iterable[IncomingFrame]) -> None:
        """Hand ``frames`` to the watchers of their cameras (on the event loop)."""
        for frame in frames:
            for watch in self._watchers.get(frame.device_id, ()):
                watch.offer(frame)

    def watch(self, device_id: str, frames: int) -> FrameWatch:
        """Start watching ``device_id`` for ``frames`` frames: its latest stored one when
        it is recent, then the next ones; close it after."""
        watch = FrameWatch(self, device_id, frames)
        self._watchers.setdefault(device_id, set()).add(watch)
        latest = self._latest.get(device_id)
        if latest is not None and (
            self._clock.wall_ms() - latest.received_at_ms <= self._latest_max_age_ms
        ):
            watch.offer(latest)
        return watch

    def _forget(self, watch: FrameWatch) -> None:
        watchers = self._watchers.get(watch.device_id)
        if watchers is not None:
            watchers.discard(watch)
            if not watchers:
                del self._watchers[watch.device_id]

    @property
    def watching(self) -> int:
        """Watchers open now, over every camera."""
        return sum(len(watchers) for watchers in self._watchers.values())


class FrameWatch:
    """The next frames of one camera, at most ``limit`` of them held at once."""

    def __init__(self, feed: FrameFeed, device_id: str, limit: int) -> None:
        self.device_id = device_id
        self._feed = feed
        self._queue: asyncio.Queue[IncomingFrame] = asyncio.Queue(maxsize=max(limit, 1))
        self.dropped = 0
        self._newest: IncomingFrame | None = None

    def offer(self, frame: IncomingFrame) -> None:
        newest = self._newest
        if newest is not None and (
            frame.seq <= newest.seq and frame.captured_at_ms <= newest.captured_at_ms
        ):
            # Already shown, or older than what was (the watch began with the latest
            # frame while a batch holding it was still on its way to the loop).
            return
        self._newest = frame
        if self._queue.full():
            # The watcher asked for no more than the queue holds; later ones are not owed.
            self.dropped += 1
            return
        self._queue.put_nowait(frame)

    async def next(self, timeout_s: float) -> IncomingFrame:
        """The next recorded frame; ``StateError("no-frame")`` if none comes in time."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._queue.get()
        except TimeoutError:
            raise StateError(
                f"no frame from {self.device_id} within {timeout_s:g} s", reason="no-frame"
            ) from None

    def close(self) -> None:
        self._feed._forget(self)

    def __enter__(self) -> FrameWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
