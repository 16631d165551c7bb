"""Live camera streams for the dashboard: newest frame only, per viewer (adapter).

The recorder calls its listeners once a batch of frames is durable (``roost.hub.feed``
explains why that is the moment the hub may show them). :class:`LiveFeed` hops to the
event loop and puts each camera's newest frame into every viewer's one-frame slot. A
viewer that has not yet sent the previous frame finds it replaced: a slow browser sees
fewer frames, never a growing queue, so a viewer costs at most one frame plus its socket
buffer however slow it is, and the devices' ingest never waits for a viewer.

``multipart/x-mixed-replace`` is the MJPEG framing every browser shows in an ``<img>``:
each part is one JPEG with its own headers, separated by a boundary line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from roost.hub.recorder import IncomingFrame, Recorder

__all__ = ["BOUNDARY", "LiveFeed", "LiveViewer", "mjpeg_part"]

BOUNDARY = "roostframe"


def mjpeg_part(mime: str, payload: bytes, seq: int, captured_at_ms: int) -> bytes:
    """One part of a ``multipart/x-mixed-replace`` stream."""
    head = (
        f"--{BOUNDARY}\r\nContent-Type: {mime}\r\nContent-Length: {len(payload)}\r\n"
        f"X-Roost-Seq: {seq}\r\nX-Roost-Captured-At: {captured_at_ms}\r\n\r\n"
    )
    return head.encode("ascii") + payload + b"\r\n"


class LiveViewer:
    """One viewer of one camera: a one-frame slot the stream writer drains."""

    def __init__(self, feed: LiveFeed, device_id: str) -> None:
        self.device_id = device_id
        self._feed = feed
        self._frame: IncomingFrame | None = None
        self._ready = asyncio.Event()
        self.sent = 0
        self.dropped = 0

    def offer(self, frame: IncomingFrame) -> None:
        if self._frame is not None:
            self.dropped += 1  # not sent yet: the newer frame replaces it
        self._frame = frame
        self._ready.set()

    async def next(self, timeout_s: float) -> IncomingFrame | None:
        """The newest frame not yet taken, or None if none came within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        frame, self._frame = self._frame, None
        self._ready.clear()
        if frame is not None:
            self.sent += 1
        return frame

    def close(self) -> None:
        self._feed.forget(self)


class LiveFeed:
    """Fans the recorder's newest frames out to viewers; create it on the serving loop."""

    def __init__(self, recorder: Recorder, max_viewers: int = 256) -> None:
        self._loop = asyncio.get_running_loop()
        self._recorder = recorder
        self.max_viewers = max_viewers
        self._viewers: dict[str, set[LiveViewer]] = {}
        self.frames_seen = 0
        recorder.add_listener(self._stored)

    def close(self) -> None:
        self._recorder.remove_listener(self._stored)
        self._viewers.clear()

    @property
    def viewers(self) -> int:
        return sum(len(group) for group in self._viewers.values())

    def _stored(self, frames: list[IncomingFrame]) -> None:
        # Runs on the storing thread: only schedule; a closed loop means nobody watches.
        if not self._viewers:
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.publish, frames)

    def publish(self, frames: Iterable[IncomingFrame]) -> None:
        """Give each camera's newest frame of ``frames`` to its viewers (event loop)."""
        newest: dict[str, IncomingFrame] = {}
        for frame in frames:
            self.frames_seen += 1
            if frame.device_id not in newest or frame.seq > newest[frame.device_id].seq:
                newest[frame.device_id] = frame
        for device_id, frame in newest.items():
            for viewer in self._viewers.get(device_id, ()):
                viewer.offer(frame)

    def watch(self, device_id: str) -> LiveViewer | None:
        """A new viewer of ``device_id``; None when the viewer bound is reached."""
        if self.viewers >= self.max_viewers:
            return None
        viewer = LiveViewer(self, device_id)
        self._viewers.setdefault(device_id, set()).add(viewer)
        return viewer

    def forget(self, viewer: LiveViewer) -> None:
        group = self._viewers.get(viewer.device_id)
        if group is not None:
            group.discard(viewer)
            if not group:
                del self._viewers[viewer.device_id]
