"""Capacity-limited, batched, jittered redirect planning (PROTOCOL.md section 3 "Election").

When the local hub loses to a live better hub, it hands its devices over (seed FIG. 6, the
final decision after the comparisons, and FIG. 8B's redirect). The seed redirects every
client at once, which can oversubscribe the winner and makes every camera reconnect in the
same instant (research/handover.md §3 items 7 and 8). This planner instead:

- redirects at most this hub's share of the winner's free capacity (``max − connected``);
  the share splits that capacity among every losing hub that still has devices, in a
  deterministic order all hubs compute alike, so together they never exceed it;
- counts devices it already sent but that the winner has not reported yet ("in flight")
  against that capacity for ``in_flight_grace`` seconds;
- sends them in batches of ``batch_size``, spaced ``batch_spacing`` plus a uniform random
  jitter apart, the first batch after a jitter of its own, never all at once.

The daemon re-plans whenever a fresh announcement changes the winner's free capacity
(``HubUpdated``) or the winner changes (``WinnerChanged``), and calls ``due(now)`` at
``next_deadline()``. Pure: time and randomness are arguments.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from roost.hcsp.events import LiveHub

__all__ = ["RedirectBatch", "RedirectConfig", "RedirectPlanner", "fair_share"]


@dataclass(frozen=True, slots=True)
class RedirectConfig:
    """Bounds of the redirect plan (documented in docs/hcsp.md)."""

    batch_size: int = 8
    # What a hub runs with when its config leaves [redirect] out; the hub daemon uses the
    # configured spacing as the jitter bound too, so both defaults are the same 0.25 s.
    batch_spacing: float = 0.25
    max_jitter: float = 0.25
    in_flight_grace: float = 3.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_spacing < 0 or self.max_jitter < 0:
            raise ValueError("batch_size >= 1, spacing >= 0 and jitter >= 0 are required")
        if self.in_flight_grace < 0:
            raise ValueError("in_flight_grace must not be negative")


@dataclass(frozen=True, slots=True)
class RedirectBatch:
    """Devices to redirect together at ``due_at`` (monotonic seconds)."""

    due_at: float
    devices: tuple[str, ...]


def fair_share(winner: LiveHub, live_hubs: Iterable[LiveHub], own_identifier: str) -> int:
    """This hub's part of the winner's free capacity.

    The free capacity is split evenly among the losing hubs that announce connected
    devices, ordered by identifier; the first ``free % losers`` of them take one more.
    Every hub sees the same announcements, so the shares add up to the free capacity.
    """
    losers = sorted(
        hub.identifier
        for hub in live_hubs
        if hub.identifier != winner.identifier and hub.connected > 0
    )
    if own_identifier not in losers:
        return 0
    base, remainder = divmod(winner.free_capacity, len(losers))
    return base + (1 if losers.index(own_identifier) < remainder else 0)


class RedirectPlanner:
    """Schedules which devices to redirect to the winner, and when."""

    __slots__ = ("_batches", "_config", "_in_flight", "_target")

    def __init__(self, config: RedirectConfig | None = None) -> None:
        self._config = config or RedirectConfig()
        self._target: LiveHub | None = None
        self._batches: list[RedirectBatch] = []
        self._in_flight: dict[str, float] = {}

    @property
    def target(self) -> LiveHub | None:
        """The hub devices are being redirected to, or None."""
        return self._target

    @property
    def batches(self) -> tuple[RedirectBatch, ...]:
        """The pending batches, earliest first."""
        return tuple(self._batches)

    def plan(
        self,
        devices: Sequence[str],
        winner: LiveHub,
        now: float,
        rng: random.Random,
        *,
        share: int | None = None,
    ) -> tuple[RedirectBatch, ...]:
        """Replace the plan: redirect up to the winner's free capacity (or ``share``).

        ``devices`` are those connected to this hub, in the order to move them. Returns the
        new batches; call ``due(now)`` at ``next_deadline()`` to take each one.
        """
        config = self._config
        same_target = self._target is not None and self._target.identifier == winner.identifier
        if not same_target:
            self._in_flight.clear()
        self._in_flight = {
            device: sent_at
            for device, sent_at in self._in_flight.items()
            if now - sent_at < config.in_flight_grace
        }
        # Re-planning for the same winner keeps the next batch's time, so a stream of
        # fresh announcements cannot postpone the redirect indefinitely.
        first_due = self._batches[0].due_at if same_target and self._batches else None
        self._target = winner
        capacity = winner.free_capacity if share is None else min(share, winner.free_capacity)
        capacity = max(0, capacity - len(self._in_flight))
        chosen = [d for d in dict.fromkeys(devices) if d not in self._in_flight][:capacity]
        self._batches = []
        due_at = first_due if first_due is not None else now + rng.uniform(0, config.max_jitter)
        for start in range(0, len(chosen), config.batch_size):
            if start:
                due_at += config.batch_spacing + rng.uniform(0, config.max_jitter)
            self._batches.append(
                RedirectBatch(due_at, tuple(chosen[start : start + config.batch_size]))
            )
        return tuple(self._batches)

    def due(self, now: float) -> list[str]:
        """Devices whose batch time has come; the daemon sends each a redirect now."""
        ready: list[str] = []
        while self._batches and self._batches[0].due_at <= now:
            batch = self._batches.pop(0)
            ready.extend(batch.devices)
            for device in batch.devices:
                self._in_flight[device] = now
        return ready

    def next_deadline(self) -> float | None:
        """When ``due`` next has devices, or None."""
        return self._batches[0].due_at if self._batches else None

    def cancel(self) -> None:
        """Drop the plan, e.g. when this hub wins again or the winner went away."""
        self._target = None
        self._batches = []
        self._in_flight.clear()
