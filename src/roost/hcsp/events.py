"""What the HCSP announce core tells its owner: live hubs and the events about them.

Events are frozen, slotted dataclasses under one base, ``HcspEvent`` (STYLE.md, "Data and
errors"); the daemon drains them with ``AnnounceCore.next_event()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from roost.hcsp.documents import Endpoint
from roost.hcsp.election import HubRank

__all__ = [
    "AnnouncementRefused",
    "HcspEvent",
    "HubDown",
    "HubUp",
    "HubUpdated",
    "LiveHub",
    "WinnerChanged",
]


@dataclass(frozen=True, slots=True)
class LiveHub:
    """A hub whose latest announcement verified (or this node's own hub, ``is_self``)."""

    identifier: str
    endpoint: Endpoint
    features: tuple[str, ...]
    connected: int
    max_clients: int
    rank: HubRank
    first_heard: float
    last_seen: float
    is_self: bool = False

    @property
    def free_capacity(self) -> int:
        """How many more devices this hub said it can take (section 3: ``max − connected``)."""
        return max(0, self.max_clients - self.connected)


@dataclass(frozen=True, slots=True)
class HcspEvent:
    """Base of every event the announce core emits."""


@dataclass(frozen=True, slots=True)
class HubUp(HcspEvent):
    """A hub verified for the first time, or again after it had gone away."""

    hub: LiveHub


@dataclass(frozen=True, slots=True)
class HubUpdated(HcspEvent):
    """A live hub announced a different endpoint, feature list, load or maximum.

    A losing hub re-plans its redirects when the winner's free capacity changes (§3).
    """

    hub: LiveHub


@dataclass(frozen=True, slots=True)
class HubDown(HcspEvent):
    """A hub was not heard for ``3 × advert_interval`` plus skew; ``hub`` is its last state."""

    hub: LiveHub


@dataclass(frozen=True, slots=True)
class WinnerChanged(HcspEvent):
    """The elected hub changed; either side is None while no hub is eligible."""

    winner: LiveHub | None
    previous: LiveHub | None


@dataclass(frozen=True, slots=True)
class AnnouncementRefused(HcspEvent):
    """A datagram from ``source_host`` was refused and a log line for that host is due.

    Every refusal is counted in ``AnnounceCounters.rejected``; this event is queued at most
    once per source host per ``refusal_log_interval`` (PROTOCOL.md preamble), so a flood
    costs one event per host per interval. ``suppressed`` is how many refusals from that
    host were counted silently since its previous event; ``source_port`` is the port of
    the datagram that made this line due.
    """

    source_host: str
    source_port: int
    reason: str
    suppressed: int
