"""The health of a camera source as a pure core: open, watch, fail, back off, retry.

A camera source (a video file, an RTSP or HTTP MJPEG stream, a V4L2 device) is read by a
decoding thread in `roost.device.sources`; this core decides when that thread is started,
when a silent source counts as stalled, how long to wait before the next attempt, and what
the device's status shows (docs/hub-and-device.md, "Camera sources"). It reads no clock:
every input carries ``now`` (monotonic seconds), and the only randomness is the injected
``random.Random`` that spreads retries.

The adapter loop follows the aioquic shape: ``start(now)``, then report
``frame_received(attempt, now)`` and ``attempt_failed(attempt, reason, now)`` as they
happen, call ``handle_timer(now)`` at ``get_timer()``, and after every input perform what
``next_event()`` returns: `OpenSource` (start attempt N), `CloseSource` (abandon attempt N)
and `HealthChanged` (the state the status shows moved). Reports about an attempt that is no
longer current (a thread that was abandoned but still finished) are ignored, so a late
report can never undo a newer state.
"""

from __future__ import annotations

import collections
import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from roost.errors import ConfigError, LocalProtocolError
from roost.reasons import Reason

__all__ = [
    "CloseSource",
    "HealthChanged",
    "OpenSource",
    "SourceEvent",
    "SourceHealth",
    "SourceHealthConfig",
    "SourceHealthView",
    "SourceState",
]


class SourceState(enum.Enum):
    """What the status shows: the value is the status document's ``camera.state``."""

    STARTING = "starting"
    OK = "ok"
    FAILING = "failing"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class SourceHealthConfig:
    """The source's timers; a device config's ``[camera]`` table may change each."""

    # The first retry waits this long; each further failure doubles it up to retry_max.
    retry_initial: float = 0.5
    retry_max: float = 30.0
    # Each wait is multiplied by a uniform factor in these bounds, so cameras that lost the
    # same network do not all retry in step.
    retry_jitter: tuple[float, float] = (0.8, 1.2)
    # An attempt that delivers no frame for this long (the first one included) is
    # abandoned and counted ``source-stalled``.
    stall_timeout: float = 10.0
    # The back-off returns to retry_initial only after frames flowed this long, so a
    # source that fails just after each reconnect still backs off.
    stable_after: float = 10.0

    def __post_init__(self) -> None:
        for name in ("retry_initial", "retry_max", "stall_timeout", "stable_after"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number of seconds, not {value!r}")
        if self.retry_initial > self.retry_max:
            raise ConfigError("retry_initial must not exceed retry_max")
        if self.stall_timeout <= 0:
            raise ConfigError("stall_timeout must be above 0 seconds")
        low, high = self.retry_jitter
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ConfigError("retry_jitter must be two finite factors with 0 < low <= high")


# ---------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """Base of everything the core asks its adapter to do or to show."""


@dataclass(frozen=True, slots=True)
class OpenSource(SourceEvent):
    """Start attempt ``attempt``: open the source and decode until it fails or is closed."""

    attempt: int


@dataclass(frozen=True, slots=True)
class CloseSource(SourceEvent):
    """Abandon attempt ``attempt`` (it stalled); its thread must stop at its next chance."""

    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class HealthChanged(SourceEvent):
    """The state the status shows changed; ``reason`` is set while failing."""

    state: SourceState
    reason: str | None


@dataclass(frozen=True, slots=True)
class SourceHealthView:
    """A snapshot for the status document (times in the core's monotonic clock)."""

    state: SourceState
    reason: str | None
    # Since when the source is in this state.
    since: float
    # Attempts started after the first one (how often the source was reopened).
    retries: int
    frames: int
    last_frame_at: float | None
    # When the next attempt starts, while waiting out a back-off.
    retry_at: float | None
    failures: Mapping[str, int]


# ----------------------------------------------------------------------------- transitions


class _Step(enum.Enum):
    FRAME = enum.auto()
    FAILED = enum.auto()
    RETRY = enum.auto()


# Every move, in one table; stop() is accepted everywhere and ends in STOPPED.
_TRANSITIONS: Final[Mapping[SourceState, Mapping[_Step, SourceState]]] = {
    SourceState.STARTING: {_Step.FRAME: SourceState.OK, _Step.FAILED: SourceState.FAILING},
    SourceState.OK: {_Step.FRAME: SourceState.OK, _Step.FAILED: SourceState.FAILING},
    # A retry keeps the source failing until its first frame arrives.
    SourceState.FAILING: {
        _Step.FRAME: SourceState.OK,
        _Step.FAILED: SourceState.FAILING,
        _Step.RETRY: SourceState.FAILING,
    },
    SourceState.STOPPED: {},
}


class SourceHealth:
    """Decides when a camera source is (re)opened; see the module docstring for the loop."""

    def __init__(self, config: SourceHealthConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._state = SourceState.STARTING
        self._reason: str | None = None
        self._since = 0.0
        self._attempt = 0
        # True while the current attempt's thread is meant to run.
        self._open = False
        self._backoff = config.retry_initial
        self._retry_at: float | None = None
        self._stall_at: float | None = None
        self._ok_since: float | None = None
        self._frames = 0
        self._last_frame_at: float | None = None
        self._failures: collections.Counter[str] = collections.Counter()
        self._events: collections.deque[SourceEvent] = collections.deque()

    # ---------------------------------------------------------------------------- reading

    @property
    def state(self) -> SourceState:
        """The current state."""
        return self._state

    @property
    def attempt(self) -> int:
        """The number of the current (or last) attempt; 0 before ``start``."""
        return self._attempt

    @property
    def backoff(self) -> float:
        """The un-jittered wait the next failure will start with."""
        return self._backoff

    def view(self) -> SourceHealthView:
        """A snapshot for the status document."""
        return SourceHealthView(
            state=self._state,
            reason=self._reason,
            since=self._since,
            retries=max(0, self._attempt - 1),
            frames=self._frames,
            last_frame_at=self._last_frame_at,
            retry_at=self._retry_at,
            failures=dict(self._failures),
        )

    def next_event(self) -> SourceEvent | None:
        """The next thing to perform, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is next due: a retry, or the stall deadline."""
        if self._state is SourceState.STOPPED:
            return None
        return self._retry_at if self._retry_at is not None else self._stall_at

    # ----------------------------------------------------------------------------- inputs

    def start(self, now: float) -> None:
        """Open the first attempt."""
        if self._attempt or self._state is SourceState.STOPPED:
            return
        self._since = now
        self._open_attempt(now)

    def frame_received(self, attempt: int, now: float) -> None:
        """Attempt ``attempt`` delivered a frame at ``now``."""
        if not self._is_current(attempt):
            return
        self._frames += 1
        self._last_frame_at = now
        self._stall_at = now + self.config.stall_timeout
        if self._state is not SourceState.OK:
            self._move(_Step.FRAME, now, None)
            self._ok_since = now
        elif self._ok_since is not None and now - self._ok_since >= self.config.stable_after:
            self._backoff = self.config.retry_initial

    def attempt_failed(self, attempt: int, reason: str, now: float) -> None:
        """Attempt ``attempt`` ended (it could not open, the stream broke or ended)."""
        if not self._is_current(attempt):
            return
        self._open = False
        self._fail(reason, now)

    def handle_timer(self, now: float) -> None:
        """Start a retry that is due, or abandon an attempt that went silent."""
        if self._state is SourceState.STOPPED:
            return
        if self._retry_at is not None:
            if now >= self._retry_at:
                self._retry_at = None
                self._move(_Step.RETRY, now, self._reason)
                self._open_attempt(now)
            return
        if self._open and self._stall_at is not None and now >= self._stall_at:
            self._open = False
            self._events.append(CloseSource(self._attempt, Reason.SOURCE_STALLED))
            self._fail(Reason.SOURCE_STALLED, now)

    def stop(self) -> None:
        """The device is stopping: close the current attempt, decide nothing more."""
        if self._state is SourceState.STOPPED:
            return
        if self._open:
            self._events.append(CloseSource(self._attempt, Reason.NOT_RUNNING))
        self._open = False
        self._retry_at = None
        self._stall_at = None
        self._state = SourceState.STOPPED
        self._reason = None
        self._events.append(HealthChanged(SourceState.STOPPED, None))

    # ---------------------------------------------------------------------------- helpers

    def _is_current(self, attempt: int) -> bool:
        return self._state is not SourceState.STOPPED and self._open and attempt == self._attempt

    def _open_attempt(self, now: float) -> None:
        self._attempt += 1
        self._open = True
        self._stall_at = now + self.config.stall_timeout
        self._events.append(OpenSource(self._attempt))

    def _fail(self, reason: str, now: float) -> None:
        self._failures[reason] += 1
        self._ok_since = None
        self._stall_at = None
        low, high = self.config.retry_jitter
        self._retry_at = now + self._backoff * self._rng.uniform(low, high)
        self._backoff = min(self.config.retry_max, self._backoff * 2)
        self._move(_Step.FAILED, now, reason)

    def _move(self, step: _Step, now: float, reason: str | None) -> None:
        target = _TRANSITIONS[self._state].get(step)
        if target is None:
            raise LocalProtocolError(
                f"{step.name.lower()} is not allowed while {self._state.value}"
            )
        changed = target is not self._state or reason != self._reason
        if target is not self._state:
            self._since = now
        self._state = target
        self._reason = reason
        if changed:
            self._events.append(HealthChanged(target, reason))
