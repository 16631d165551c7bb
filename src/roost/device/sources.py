"""Camera sources: the test pattern, video files, RTSP and HTTP MJPEG streams, V4L2 devices.

The device's capture loop asks its source for the newest frame at the configured rate
(``take``); a source answers with JPEG bytes at the configured size, or None when nothing
new arrived since the last call (a frame is never sent twice). Real sources are decoded by
FFmpeg through PyAV in a thread of their own, so a slow network or a blocking read never
stalls the event loop; the thread keeps one frame, the newest (latest frame wins: no queue
can grow behind a slow consumer), and encodes at most 1.25 × ``fps`` frames a second.
Whether the
source is opened, retried or given up as stalled is decided by the pure core
`roost.device.source_health.SourceHealth`; this module performs its decisions with one
timer (docs/hub-and-device.md, "Camera sources").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import io
import logging
import random
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from roost.clock import SYSTEM_CLOCK, Clock
from roost.device.source_health import (
    CloseSource,
    HealthChanged,
    OpenSource,
    SourceHealth,
    SourceHealthConfig,
    SourceState,
)
from roost.device.status import CameraStatus
from roost.reasons import Reason
from roost.timer import CoreTimer

if TYPE_CHECKING:
    from roost.device.camera import SyntheticCamera

__all__ = [
    "TEST_PATTERN",
    "AvSource",
    "CameraSettings",
    "CameraSource",
    "SourceKind",
    "SourceSpec",
    "TestPatternSource",
    "open_camera_source",
    "parse_source",
    "redact",
]

log = logging.getLogger("roost.device.camera")

TEST_PATTERN = "test-pattern"
# The decoding thread encodes up to this many times ``fps`` frames a second.
_ENCODE_HEADROOM = 1.25
# How long stop() waits for each decoding thread to notice its stop flag.
_JOIN_TIMEOUT = 2.0
# Error texts quoted in the status are cut to this many characters.
_DETAIL_LIMIT = 200


class SourceKind(enum.Enum):
    """What a ``[camera] source`` names; the value is the status document's ``camera.kind``."""

    TEST_PATTERN = "test-pattern"
    FILE = "file"
    RTSP = "rtsp"
    HTTP = "http"
    V4L2 = "v4l2"


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A parsed ``source``: its kind and what FFmpeg opens (a path, a URL or a device)."""

    kind: SourceKind
    target: str

    @property
    def display(self) -> str:
        """The source as the status shows it: a URL's password is never shown."""
        return (
            redact(self.target) if self.kind in (SourceKind.RTSP, SourceKind.HTTP) else self.target
        )

    @property
    def is_live(self) -> bool:
        """Live sources deliver in real time; a file is paced to its own timestamps."""
        return self.kind is not SourceKind.FILE


def parse_source(text: str) -> SourceSpec:
    """Classify a ``[camera] source`` value; a relative file path is left to the caller."""
    if text == TEST_PATTERN:
        return SourceSpec(SourceKind.TEST_PATTERN, text)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("rtsp", "rtsps"):
        return SourceSpec(SourceKind.RTSP, text)
    if scheme in ("http", "https"):
        return SourceSpec(SourceKind.HTTP, text)
    if text.startswith("/dev/video"):
        return SourceSpec(SourceKind.V4L2, text)
    return SourceSpec(SourceKind.FILE, text)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (status, logs, error texts)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True, slots=True)
class CameraSettings:
    """The ``[camera]`` table of a device config (docs/hub-and-device.md, "Camera sources")."""

    # "test-pattern", a video file, an rtsp:// or http(s):// URL, or a /dev/videoN device.
    source: str = TEST_PATTERN
    # JPEG quality of the re-encoded frames (1..95).
    quality: int = 70
    # A video file starts over at its end; without it the end counts as the source lost.
    loop: bool = True
    # An FFmpeg input format to force (e.g. "mpjpeg", "mjpeg"); empty: FFmpeg probes.
    input_format: str = ""
    # RTSP over "tcp" (default: passes firewalls, no loss) or "udp".
    rtsp_transport: str = "tcp"
    # How long opening a network source may take before it counts as unavailable.
    open_timeout: float = 5.0
    health: SourceHealthConfig = field(default_factory=SourceHealthConfig)

    @property
    def spec(self) -> SourceSpec:
        """The parsed source."""
        return parse_source(self.source)


class CameraSource(Protocol):
    """What the device's capture loop needs of a source."""

    mime: str

    async def start(self) -> None:
        """Begin producing frames (a real source starts its first attempt)."""

    async def stop(self) -> None:
        """Stop producing frames and release the source."""

    def take(self, now_ms: int, next_seq: Callable[[], int]) -> tuple[int, int, bytes] | None:
        """The newest frame not taken yet as ``(seq, captured_at_ms, jpeg)``, or None;
        ``next_seq`` allocates the frame's sequence number, only when there is a frame."""

    def status(self) -> CameraStatus:
        """The source's part of the device's status document."""


class TestPatternSource:
    """The synthetic camera (`roost.device.camera`): always ok, one frame per ``take``."""

    mime = "image/jpeg"

    def __init__(self, camera: SyntheticCamera, clock: Clock = SYSTEM_CLOCK) -> None:
        self.camera = camera
        self.clock = clock
        self.frames = 0
        self._started_ms = clock.wall_ms()
        self._last_ms: int | None = None

    async def start(self) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Nothing to release."""

    def take(self, now_ms: int, next_seq: Callable[[], int]) -> tuple[int, int, bytes] | None:
        """Render the next frame at ``now_ms``."""
        seq = next_seq()
        self.frames += 1
        self._last_ms = now_ms
        return seq, now_ms, self.camera.capture(seq, now_ms)

    def status(self) -> CameraStatus:
        """Always ok: the pattern cannot fail."""
        return CameraStatus(
            source=TEST_PATTERN,
            kind=SourceKind.TEST_PATTERN.value,
            state=SourceState.OK.value,
            reason=None,
            detail=None,
            since=self._started_ms / 1000,
            retries=0,
            frames=self.frames,
            last_frame_at=None if self._last_ms is None else self._last_ms / 1000,
            retry_at=None,
            failures={},
        )


# ----------------------------------------------------------------------- decoding thread


@dataclass(eq=False)
class _Attempt:
    """One decoding thread: its number, its stop flag, and where it puts its frames."""

    number: int
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass(frozen=True, slots=True)
class _DecodeJob:
    spec: SourceSpec
    settings: CameraSettings
    width: int
    height: int
    fps: float
    clock: Clock
    # Called from the thread: a frame (captured_at_ms, jpeg), or the end with its reason.
    on_frame: Callable[[int, bytes], None]
    on_end: Callable[[str, str], None]


class _SourceEnded(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _open_container(job: _DecodeJob) -> Any:
    import av

    spec, settings = job.spec, job.settings
    options: dict[str, str] = {}
    input_format = settings.input_format or None
    if spec.kind is SourceKind.RTSP:
        options["rtsp_transport"] = settings.rtsp_transport
    elif spec.kind is SourceKind.V4L2:
        input_format = input_format or "v4l2"
        options["video_size"] = f"{job.width}x{job.height}"
        options["framerate"] = f"{job.fps:g}"
    timeout = None
    if spec.is_live:
        # (open, read): a read blocked longer than the stall timeout ends the attempt.
        timeout = (settings.open_timeout, settings.health.stall_timeout)
    try:
        return av.open(spec.target, format=input_format, options=options, timeout=timeout)
    except av.error.InvalidDataError as exc:
        raise _SourceEnded(Reason.SOURCE_UNDECODABLE, str(exc)) from exc
    except (av.error.FFmpegError, OSError) as exc:
        raise _SourceEnded(Reason.SOURCE_UNAVAILABLE, str(exc)) from exc


def _frames(container: Any, job: _DecodeJob, stop: threading.Event) -> Iterator[Any]:
    """Decoded frames, a file paced to its timestamps and looped when asked."""
    import av

    if not container.streams.video:
        raise _SourceEnded(Reason.SOURCE_UNDECODABLE, "no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    lost = Reason.SOURCE_LOST if job.spec.is_live else Reason.SOURCE_UNDECODABLE
    while not stop.is_set():
        started = job.clock.now()
        first_pts: float | None = None
        decoded = 0
        try:
            for frame in container.decode(stream):
                decoded += 1
                time_base = frame.time_base or stream.time_base
                if not job.spec.is_live and frame.pts is not None and time_base:
                    # A file plays at its own speed, as a camera would deliver it.
                    at = float(frame.pts * time_base)
                    first_pts = at if first_pts is None else first_pts
                    delay = started + (at - first_pts) - job.clock.now()
                    if delay > 0 and stop.wait(delay):
                        return
                yield frame
                if stop.is_set():
                    return
        except av.error.FFmpegError as exc:
            raise _SourceEnded(lost, str(exc)) from exc
        except OSError as exc:
            raise _SourceEnded(Reason.SOURCE_LOST, str(exc)) from exc
        if job.spec.is_live or not job.settings.loop:
            raise _SourceEnded(Reason.SOURCE_LOST, "the source ended")
        if decoded == 0:
            raise _SourceEnded(Reason.SOURCE_UNDECODABLE, "the file holds no decodable frame")
        container.seek(0)


def _encode(frame: Any, job: _DecodeJob) -> bytes:
    image = frame.to_image(width=job.width, height=job.height)
    output = io.BytesIO()
    image.save(output, format="JPEG", quality=job.settings.quality)
    return output.getvalue()


def _decode(job: _DecodeJob, stop: threading.Event) -> None:
    """The thread's body: open, decode, encode what is due, report the end."""
    # A little faster than the capture loop takes frames, so each of its ticks finds a new
    # one despite the two clocks drifting; the surplus is overwritten in the slot.
    period = 1.0 / (job.fps * _ENCODE_HEADROOM) if job.fps > 0 else 0.0
    next_due = 0.0
    try:
        container = _open_container(job)
        try:
            for frame in _frames(container, job, stop):
                now = job.clock.now()
                if now < next_due:
                    continue  # decoded faster than it is sent: keep only what is due
                # Keep the cadence; after a gap (a slow source) start it again from now.
                next_due = max(next_due + period, now + period / 2)
                job.on_frame(job.clock.wall_ms(), _encode(frame, job))
        finally:
            container.close()
    except _SourceEnded as ended:
        if not stop.is_set():
            job.on_end(ended.reason, ended.detail)
        return
    except Exception as exc:  # Any decoder failure is this source failing, never a crash.
        if not stop.is_set():
            job.on_end(Reason.SOURCE_UNDECODABLE, f"{type(exc).__name__}: {exc}")
        return
    if not stop.is_set():
        job.on_end(Reason.SOURCE_LOST, "the source ended")


# ---------------------------------------------------------------------------- the adapter


class AvSource:
    """A file, stream or device decoded by PyAV; its health is `SourceHealth`'s."""

    mime = "image/jpeg"

    def __init__(
        self,
        settings: CameraSettings,
        width: int,
        height: int,
        fps: float,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.spec = settings.spec
        self.width = width
        self.height = height
        self.fps = fps
        self.clock = clock
        self.health = SourceHealth(settings.health, rng or random.Random())
        self._lock = threading.Lock()
        # The newest frame (id, captured_at_ms, jpeg): one slot, the latest wins.
        self._latest: tuple[int, int, bytes] | None = None
        self._taken = 0
        self._produced = 0
        self._attempts: dict[int, _Attempt] = {}
        self._detail: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: CoreTimer | None = None

    # ------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the first attempt; later ones follow the core's back-off."""
        self._loop = asyncio.get_running_loop()
        self._timer = CoreTimer(self._loop, self._on_timer, floor=0.001)
        self.health.start(self.clock.now())
        self._service()

    async def stop(self) -> None:
        """Stop the current attempt and wait briefly for its thread."""
        self.health.stop()
        self._service()
        if self._timer is not None:
            self._timer.cancel()
        threads = [a.thread for a in self._attempts.values() if a.thread is not None]
        for attempt in self._attempts.values():
            attempt.stop.set()
        for thread in threads:
            # A read blocked in FFmpeg ends within its timeout; the thread is a daemon, so
            # one still blocked after this short wait cannot keep the process alive.
            await asyncio.to_thread(thread.join, _JOIN_TIMEOUT)
        self._attempts.clear()

    # --------------------------------------------------------------------------- frames

    def take(self, now_ms: int, next_seq: Callable[[], int]) -> tuple[int, int, bytes] | None:
        """The newest decoded frame if it was not taken yet."""
        with self._lock:
            latest = self._latest
        if latest is None or latest[0] == self._taken:
            return None
        self._taken = latest[0]
        return next_seq(), latest[1], latest[2]

    # --------------------------------------------------------------------- core driving

    def _service(self) -> None:
        """Perform what the core decided and re-arm its one timer."""
        while (event := self.health.next_event()) is not None:
            if isinstance(event, OpenSource):
                self._launch(event.attempt)
            elif isinstance(event, CloseSource):
                attempt = self._attempts.pop(event.attempt, None)
                if attempt is not None:
                    attempt.stop.set()
                if event.reason == Reason.SOURCE_STALLED:
                    self._detail = f"no frame for {self.settings.health.stall_timeout:g} s"
            elif isinstance(event, HealthChanged):
                self._report(event)
        if self._timer is not None:
            self._timer.arm(self.health.get_timer())

    def _report(self, event: HealthChanged) -> None:
        if event.state is SourceState.FAILING:
            log.warning(
                "camera source %s failing: %s (%s)", self.spec.display, event.reason, self._detail
            )
        elif event.state is SourceState.OK:
            self._detail = None
            log.info("camera source %s delivering frames", self.spec.display)

    def _on_timer(self) -> None:
        self.health.handle_timer(self.clock.now())
        self._service()

    def _launch(self, number: int) -> None:
        loop = self._loop
        assert loop is not None
        attempt = _Attempt(number)

        def on_frame(captured_ms: int, jpeg: bytes) -> None:
            with self._lock:
                self._produced += 1
                self._latest = (self._produced, captured_ms, jpeg)
            self._call_soon(loop, self._frame_arrived, number)

        def on_end(reason: str, detail: str) -> None:
            self._call_soon(loop, self._attempt_ended, number, reason, detail)

        job = _DecodeJob(
            self.spec,
            self.settings,
            self.width,
            self.height,
            self.fps,
            self.clock,
            on_frame,
            on_end,
        )
        attempt.thread = threading.Thread(
            target=_decode, args=(job, attempt.stop), name=f"camera-{number}", daemon=True
        )
        self._attempts = {
            n: a for n, a in self._attempts.items() if a.thread is not None and a.thread.is_alive()
        }
        self._attempts[number] = attempt
        attempt.thread.start()

    @staticmethod
    def _call_soon(
        loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
    ) -> None:
        # The loop may already be closed when an abandoned thread finishes late.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _frame_arrived(self, number: int) -> None:
        self.health.frame_received(number, self.clock.now())
        self._service()

    def _attempt_ended(self, number: int, reason: str, detail: str) -> None:
        if number == self.health.attempt:
            self._detail = _short(detail.replace(self.spec.target, self.spec.display))
        self._attempts.pop(number, None)
        self.health.attempt_failed(number, reason, self.clock.now())
        self._service()

    # --------------------------------------------------------------------------- status

    def status(self) -> CameraStatus:
        """The core's view in wall-clock seconds, for the status document."""
        view = self.health.view()
        now, wall = self.clock.now(), self.clock.wall_ms() / 1000

        def wall_at(moment: float | None) -> float | None:
            return None if moment is None else round(wall - (now - moment), 3)

        failing = view.state is SourceState.FAILING
        return CameraStatus(
            source=self.spec.display,
            kind=self.spec.kind.value,
            state=view.state.value,
            reason=view.reason,
            detail=self._detail if failing else None,
            since=wall_at(view.since),
            retries=view.retries,
            frames=view.frames,
            last_frame_at=wall_at(view.last_frame_at),
            retry_at=wall_at(view.retry_at),
            failures=dict(view.failures),
        )


def _short(text: str) -> str:
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


def open_camera_source(
    settings: CameraSettings,
    name: str,
    width: int,
    height: int,
    fps: float,
    *,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
) -> CameraSource:
    """The source a device config names: the test pattern, or a PyAV-decoded one."""
    if settings.spec.kind is SourceKind.TEST_PATTERN:
        # Imported here: the config loaders import this module, and only a device drawing
        # the test pattern needs Pillow (hubs and brokers read their configs without it).
        from roost.device.camera import SyntheticCamera

        camera = SyntheticCamera(name, width, height, quality=settings.quality)
        return TestPatternSource(camera, clock)
    return AvSource(settings, width, height, fps, clock=clock, rng=rng)
