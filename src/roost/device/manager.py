"""The device's connection manager as a pure core (PROTOCOL.md section 4).

A device keeps exactly one authenticated channel to a hub. This core decides which hub to
try next, how long to wait between rounds, when a redirect may be followed, and what to do
when the hub goes away; its adapter (the device daemon) performs each decision and reports
the outcome. It reads no clock and touches no socket: every input carries ``now``
(monotonic seconds) and the only randomness comes from the injected ``random.Random``, so a
test can replay any sequence under a fake clock.

The adapter loop is: ``action = manager.next_action(now)``, perform it, report back.

* ``Connect`` is answered with ``connect_succeeded`` or ``connect_failed``.
* ``FollowRedirect`` is answered with ``redirect_completed`` or ``redirect_failed``.
* ``Wait``, ``Stream``, ``Drain`` and ``Close`` need no answer: the next call of
  ``next_action`` means the wait ended (time passed, or an input arrived), the drain or
  close is done, or the stream was interrupted by the input just reported.

Candidate order (section 4): the verified live hubs best first, skipping any whose
failed-until time has not passed and any with no free capacity, then the hubs DNS-SD
suggested that no announcement covers (each must prove the identifier its record named;
docs/hub-and-device.md, "Finding hubs with DNS-SD"), then the configured bootstrap hubs,
which carry no expected identifier.
"""

from __future__ import annotations

import collections
import enum
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol

from roost.errors import ConfigError, LocalProtocolError
from roost.hcsp.documents import HubAddress, Redirect
from roost.hcsp.events import LiveHub

__all__ = [
    "Action",
    "Close",
    "Connect",
    "ConnectionCounters",
    "ConnectionManager",
    "Drain",
    "FollowRedirect",
    "Idle",
    "ManagerConfig",
    "ManagerCounters",
    "State",
    "Stream",
    "Wait",
]


class State(enum.Enum):
    """Where the manager is; the value is what the device's status file reports."""

    STARTING = "starting"
    CONNECTING = "connecting"
    SEARCHING = "searching"
    STREAMING = "streaming"
    FOLLOWING_REDIRECT = "following-redirect"
    DRAINING = "draining"
    FAILING_OVER = "failing-over"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    """The manager's constants; the device daemon builds one from its ``DeviceConfig``."""

    backoff_initial: float
    backoff_max: float
    # Minimum dwell time: a device never follows a redirect sooner than this after its
    # channel opened, so it cannot bounce between hubs faster (section 4).
    min_dwell: float
    # A candidate that failed to connect is skipped this long (the daemon uses backoff_max).
    failed_hold: float
    # The hub whose channel ended is skipped this long (the daemon uses backoff_initial).
    lost_hold: float
    hubs: tuple[tuple[str, int], ...] = ()
    # After a round in which nothing connected, the back-off doubles (up to backoff_max)
    # and is then multiplied by a uniform factor in these bounds, so devices that lost the
    # same hub do not retry in step.
    backoff_jitter: tuple[float, float] = (0.8, 1.2)
    # The pause after losing a hub is backoff_initial times a uniform factor in these bounds.
    failover_jitter: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self) -> None:
        for name in ("backoff_initial", "backoff_max", "min_dwell", "failed_hold", "lost_hold"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number of seconds, not {value!r}")
        for name in ("backoff_jitter", "failover_jitter"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
                raise ConfigError(f"{name} must be two finite factors with 0 < low <= high")


class ConnectionCounters(Protocol):
    """The counters the manager keeps; the daemon's ``DeviceCounters`` has these fields."""

    connects: int
    connect_failures: collections.Counter[str]
    redirects_followed: int
    redirects_refused: collections.Counter[str]
    failovers: int


@dataclass(slots=True)
class ManagerCounters:
    """The manager's own counters, used when its owner does not hand it any."""

    connects: int = 0
    connect_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    redirects_followed: int = 0
    redirects_refused: collections.Counter[str] = field(default_factory=collections.Counter)
    failovers: int = 0


# --------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Action:
    """Base of every command the manager gives its adapter."""


@dataclass(frozen=True, slots=True)
class Connect(Action):
    """Open a channel to ``host:port``; the hub must prove ``expected_id`` unless it is None."""

    host: str
    port: int
    expected_id: str | None


@dataclass(frozen=True, slots=True)
class Wait(Action):
    """Nothing to do before ``until``; a search also ends early when the hubs change."""

    until: float


@dataclass(frozen=True, slots=True)
class Stream(Action):
    """Keep streaming to ``hub_id`` until its channel ends, its hub goes down or it redirects."""

    hub_id: str


@dataclass(frozen=True, slots=True)
class FollowRedirect(Action):
    """Open a channel to ``target`` once the clock reaches ``not_before``, old channel kept."""

    target: HubAddress
    not_before: float


@dataclass(frozen=True, slots=True)
class Drain(Action):
    """Drain and close the channel to ``hub_id``, then stream on the redirect's new channel.

    Closing before the last ACK would make the next hub store those frames again.
    """

    hub_id: str


@dataclass(frozen=True, slots=True)
class Close(Action):
    """Close the channel to ``hub_id`` at once: its hub is gone, there is nothing to drain."""

    hub_id: str


@dataclass(frozen=True, slots=True)
class Idle(Action):
    """The manager was stopped; nothing more will be asked."""


_IDLE: Final = Idle()


# ----------------------------------------------------------------------------- transitions


class _Step(enum.Enum):
    BEGIN_ROUND = enum.auto()
    CONNECT_FAILED = enum.auto()
    CONNECTED = enum.auto()
    ROUND_EXHAUSTED = enum.auto()
    REDIRECT = enum.auto()
    REDIRECT_OPENED = enum.auto()
    REDIRECT_REFUSED = enum.auto()
    DRAINED = enum.auto()
    HUB_LOST = enum.auto()


# Every move the manager makes, in one table; stopped() is accepted in every state and
# ends in STOPPED, which has no way out.
_TRANSITIONS: Final[Mapping[State, Mapping[_Step, State]]] = {
    State.STARTING: {_Step.BEGIN_ROUND: State.CONNECTING},
    State.CONNECTING: {
        _Step.CONNECT_FAILED: State.CONNECTING,
        _Step.CONNECTED: State.STREAMING,
        _Step.ROUND_EXHAUSTED: State.SEARCHING,
    },
    State.SEARCHING: {_Step.BEGIN_ROUND: State.CONNECTING},
    State.STREAMING: {_Step.REDIRECT: State.FOLLOWING_REDIRECT, _Step.HUB_LOST: State.FAILING_OVER},
    State.FOLLOWING_REDIRECT: {
        _Step.REDIRECT_OPENED: State.DRAINING,
        _Step.REDIRECT_REFUSED: State.STREAMING,
        # The old hub went away while the redirect was being tried, and the redirect failed.
        _Step.HUB_LOST: State.FAILING_OVER,
    },
    State.DRAINING: {_Step.DRAINED: State.STREAMING},
    State.FAILING_OVER: {_Step.BEGIN_ROUND: State.CONNECTING},
    State.STOPPED: {},
}


class ConnectionManager:
    """Decides the device's next connection step; see the module docstring for the loop.

    Reports that do not answer the last action (``connect_failed`` with no ``Connect`` in
    flight, ``redirect_received`` while not streaming, ...) raise ``LocalProtocolError``.
    ``hubs_changed`` and ``hub_lost`` may arrive at any time; after ``stopped()`` every
    input is ignored and ``next_action`` returns ``Idle``.
    """

    def __init__(
        self,
        config: ManagerConfig,
        rng: random.Random,
        counters: ConnectionCounters | None = None,
    ) -> None:
        self.config = config
        self.counters: ConnectionCounters = counters if counters is not None else ManagerCounters()
        self._rng = rng
        self._state = State.STARTING
        self._live: tuple[LiveHub, ...] = ()
        # DNS-SD hints: (host, port, identifier) of hubs a record named, unverified.
        self._hints: tuple[tuple[str, int, str], ...] = ()
        self._failed_until: dict[str, float] = {}
        self._backoff = config.backoff_initial
        # The current round of connection attempts, fixed when it begins.
        self._round: collections.deque[Connect] = collections.deque()
        self._round_started = 0.0
        self._pending: Connect | None = None
        # SEARCHING and FAILING_OVER wait until this time; a search ends early when woken.
        self._until = 0.0
        self._woken = False
        self._hub: str | None = None
        self._opened_at = 0.0
        self._redirect: Redirect | None = None
        self._follow_issued = False
        self._lost_while_following = False
        self._drain_issued = False
        self._closing: str | None = None

    # ------------------------------------------------------------------------ reading

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def hub_id(self) -> str | None:
        """The hub whose channel carries frames now, or None."""
        return self._hub

    @property
    def backoff(self) -> float:
        """How long the next search waits when a round connects nowhere."""
        return self._backoff

    @property
    def live_hubs(self) -> tuple[LiveHub, ...]:
        """The verified live hubs last reported, best first."""
        return self._live

    @property
    def failed_until(self) -> Mapping[str, float]:
        """Hub identifier to the time before which it is not tried (read-only view)."""
        return MappingProxyType(self._failed_until)

    def candidates(self, now: float) -> list[LiveHub]:
        """Verified live hubs, best first, skipping those that just failed us or are full."""
        return [
            hub
            for hub in self._live
            if self._failed_until.get(hub.identifier, 0.0) <= now and hub.free_capacity > 0
        ]

    # ------------------------------------------------------------------------ deciding

    def next_action(self, now: float) -> Action:
        """What the adapter should do now (see the module docstring for the answers)."""
        state = self._state
        if state is State.STOPPED:
            return _IDLE
        if state is State.STARTING:
            return self._begin_round(now)
        if state is State.CONNECTING:
            return self._next_target(now)
        if state is State.SEARCHING:
            if not self._woken and now < self._until:
                return Wait(self._until)
            low, high = self.config.backoff_jitter
            doubled = min(self.config.backoff_max, self._backoff * 2)
            self._backoff = doubled * self._rng.uniform(low, high)
            return self._begin_round(now)
        if state is State.FAILING_OVER:
            if self._closing is not None:
                hub, self._closing = self._closing, None
                return Close(hub)
            if now < self._until:
                return Wait(self._until)
            return self._begin_round(now)
        if state is State.FOLLOWING_REDIRECT:
            assert self._redirect is not None
            self._follow_issued = True
            return FollowRedirect(self._redirect.target, self._opened_at + self.config.min_dwell)
        if state is State.DRAINING:
            assert self._hub is not None and self._redirect is not None
            if not self._drain_issued:
                self._drain_issued = True
                return Drain(self._hub)
            self._move(_Step.DRAINED)
            self._hub = self._redirect.target.identifier
            self._redirect = None
        assert self._state is State.STREAMING and self._hub is not None
        return Stream(self._hub)

    def _begin_round(self, now: float) -> Action:
        self._move(_Step.BEGIN_ROUND)
        self._forget_expired(now)
        self._round_started = now
        self._round = collections.deque(
            Connect(hub.endpoint.host, hub.endpoint.port, hub.identifier)
            for hub in self.candidates(now)
        )
        announced = {hub.identifier for hub in self._live}
        self._round.extend(
            Connect(host, port, identifier)
            for host, port, identifier in self._hints
            if identifier not in announced and self._failed_until.get(identifier, 0.0) <= now
        )
        self._round.extend(Connect(host, port, None) for host, port in self.config.hubs)
        return self._next_target(now)

    def _next_target(self, now: float) -> Action:
        if self._pending is None and self._round:
            self._pending = self._round.popleft()
        if self._pending is not None:
            return self._pending
        # Nothing connected: wait out the back-off, or until the hubs change.
        self._move(_Step.ROUND_EXHAUSTED)
        self._until = now + self._backoff
        self._woken = False
        return Wait(self._until)

    # -------------------------------------------------------------------------- inputs

    def hubs_changed(self, live_hubs: Iterable[LiveHub], now: float) -> None:
        """The verified live hubs changed (best first); a waiting search ends early."""
        if self._state is State.STOPPED:
            return
        self._live = tuple(live_hubs)
        self._forget_expired(now)
        if self._state is State.SEARCHING:
            self._woken = True

    def hints_changed(self, hints: Iterable[tuple[str, int, str]], now: float) -> None:
        """DNS-SD found these hubs (host, port, identifier); a waiting search ends early."""
        if self._state is State.STOPPED:
            return
        self._hints = tuple(hints)
        if self._state is State.SEARCHING:
            self._woken = True

    @property
    def hints(self) -> tuple[tuple[str, int, str], ...]:
        """The DNS-SD hints last reported."""
        return self._hints

    def connect_succeeded(self, hub_id: str, now: float) -> None:
        """The ``Connect`` just given opened a channel to ``hub_id`` at ``now``."""
        if self._state is State.STOPPED:
            return
        pending = self._answering_connect()
        if pending.expected_id is not None and hub_id != pending.expected_id:
            raise LocalProtocolError(f"connected to {hub_id}, not {pending.expected_id}")
        self._move(_Step.CONNECTED)
        self.counters.connects += 1
        self._pending = None
        self._round.clear()
        self._backoff = self.config.backoff_initial
        self._hub = hub_id
        self._opened_at = now

    def connect_failed(self, expected_id: str | None, reason: str, now: float) -> None:
        """The ``Connect`` just given failed for ``reason``; the next candidate comes next."""
        if self._state is State.STOPPED:
            return
        pending = self._answering_connect()
        if expected_id != pending.expected_id:
            raise LocalProtocolError(f"no connection to {expected_id} was asked for")
        self._move(_Step.CONNECT_FAILED)
        self.counters.connect_failures[reason] += 1
        self._pending = None
        if expected_id is not None:
            # Held from the start of the round, as the candidates were chosen then.
            self._failed_until[expected_id] = self._round_started + self.config.failed_hold

    def redirect_received(self, redirect: Redirect, now: float) -> None:
        """The current hub told this device to move (seed FIG. 8B)."""
        if self._state is State.STOPPED:
            return
        self._move(_Step.REDIRECT)
        self._redirect = redirect
        self._follow_issued = False
        self._lost_while_following = False

    def redirect_failed(self, reason: str, now: float) -> None:
        """The redirect target could not be opened or did not prove its identifier.

        The old channel is kept, unless its hub went away meanwhile: then this fails over.
        """
        if self._state is State.STOPPED:
            return
        self._answering_follow()
        self.counters.redirects_refused[reason] += 1
        self._redirect = None
        if self._lost_while_following:
            self._fail_over(now)
        else:
            self._move(_Step.REDIRECT_REFUSED)

    def redirect_completed(self, now: float) -> None:
        """The redirect target's channel opened at ``now``; the old one is drained next."""
        if self._state is State.STOPPED:
            return
        self._answering_follow()
        self._move(_Step.REDIRECT_OPENED)
        self.counters.redirects_followed += 1
        self._drain_issued = False
        self._opened_at = now

    def hub_lost(self, hub_id: str, now: float) -> None:
        """``hub_id``'s channel ended or its announcements stopped; others are ignored."""
        if hub_id != self._hub:
            return
        if self._state is State.STREAMING:
            self._fail_over(now)
        elif self._state is State.FOLLOWING_REDIRECT:
            self._lost_while_following = True

    def stopped(self) -> None:
        """The device is stopping; nothing more is decided."""
        self._state = State.STOPPED
        self._round.clear()
        self._pending = None

    # ------------------------------------------------------------------------- helpers

    def _fail_over(self, now: float) -> None:
        assert self._hub is not None
        self._move(_Step.HUB_LOST)
        self.counters.failovers += 1
        self._failed_until[self._hub] = now + self.config.lost_hold
        low, high = self.config.failover_jitter
        self._until = now + self.config.backoff_initial * self._rng.uniform(low, high)
        self._closing = self._hub
        self._hub = None

    def _answering_connect(self) -> Connect:
        if self._state is not State.CONNECTING or self._pending is None:
            raise LocalProtocolError(f"no connection attempt in flight ({self._state.value})")
        return self._pending

    def _answering_follow(self) -> None:
        if self._state is not State.FOLLOWING_REDIRECT or not self._follow_issued:
            raise LocalProtocolError(f"no redirect being followed ({self._state.value})")

    def _forget_expired(self, now: float) -> None:
        # Bounded table: an entry whose time has passed means the same as no entry.
        for hub_id in [h for h, until in self._failed_until.items() if until <= now]:
            del self._failed_until[hub_id]

    def _move(self, step: _Step) -> None:
        target = _TRANSITIONS[self._state].get(step)
        if target is None:
            raise LocalProtocolError(
                f"{step.name.lower()} is not allowed while {self._state.value}"
            )
        self._state = target
