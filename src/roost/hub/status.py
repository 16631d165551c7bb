"""The hub's status document, typed (what `HubDaemon.status()` returns), pure.

`HubStatus.to_json()` is the object `GET /api/status` serves (docs/dashboard.md, "Status
document"), the remote ``status`` call returns and ``roost hub status --json`` prints; its
keys and value shapes are the wire contract of those readers and do not change with the
field names here. `HubStatus.from_json()` reads it back for clients; keys it does not know (the
API adds ``devices``) are ignored. The Prometheus exporter reads the same dataclasses
(`roost.metrics.HUB_METRICS`), so the page and the scrape cannot disagree.

Counts by reason are read-only mappings: the dataclasses are frozen, and a copy is taken
when they are built, so a snapshot never changes after the daemon moves on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from roost.errors import RemoteProtocolError
from roost.reasons import Reason
from roost.status import (
    TrustSummary,
    read_bool,
    read_counts,
    read_float,
    read_int,
    read_object,
    read_objects,
    read_optional_str,
    read_str,
    read_strings,
)

__all__ = ["BrokerAgentStatus", "HubCountersView", "HubEntry", "HubStatus", "RemoteStatus"]


def _read_names(doc: Mapping[str, Any], key: str) -> dict[str, str]:
    """``doc[key]`` as identifier → name: an object of strings."""
    value = read_object(doc, key)
    if not all(isinstance(name, str) for name in value.values()):
        raise RemoteProtocolError(
            f"status document: {key!r} is not an object of strings", reason=Reason.MALFORMED
        )
    return dict(value)


@dataclass(frozen=True, slots=True)
class HubEntry:
    """One verified live hub, this one included, in election order (PROTOCOL.md section 3)."""

    identifier: str
    endpoint: str
    features: tuple[str, ...]
    connected: int
    max_clients: int
    # 1 is the hub the devices should be on.
    rank: int
    is_self: bool
    last_seen_s_ago: float

    def to_json(self) -> dict[str, Any]:
        """One element of the status document's ``hubs`` list."""
        return {
            "id": self.identifier,
            "endpoint": self.endpoint,
            "features": list(self.features),
            "connected": self.connected,
            "max": self.max_clients,
            "rank": self.rank,
            "self": self.is_self,
            "last_seen_s_ago": self.last_seen_s_ago,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> HubEntry:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        return cls(
            identifier=read_str(doc, "id"),
            endpoint=read_str(doc, "endpoint"),
            features=read_strings(doc, "features"),
            connected=read_int(doc, "connected"),
            max_clients=read_int(doc, "max"),
            rank=read_int(doc, "rank"),
            is_self=read_bool(doc, "self"),
            last_seen_s_ago=read_float(doc, "last_seen_s_ago"),
        )


@dataclass(frozen=True, slots=True)
class HubCountersView:
    """The hub's totals since start: announcements (section 3), device channels (section
    4), redirects, and rejected CA information updates."""

    announcements_accepted: int
    announcements_rejected: Mapping[str, int]
    announcements_sent: int
    own_echoes: int
    redirects_sent: int
    frames_stored: int
    frames_duplicate: int
    connections_rejected: Mapping[str, int]
    channel_errors: Mapping[str, int]
    trust_rejected: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        """The status document's ``counters`` object."""
        return {
            "announcements_accepted": self.announcements_accepted,
            "announcements_rejected": dict(self.announcements_rejected),
            "announcements_sent": self.announcements_sent,
            "own_echoes": self.own_echoes,
            "redirects_sent": self.redirects_sent,
            "frames_stored": self.frames_stored,
            "frames_duplicate": self.frames_duplicate,
            "connections_rejected": dict(self.connections_rejected),
            "channel_errors": dict(self.channel_errors),
            "trust_rejected": dict(self.trust_rejected),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> HubCountersView:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        return cls(
            announcements_accepted=read_int(doc, "announcements_accepted"),
            announcements_rejected=read_counts(doc, "announcements_rejected"),
            announcements_sent=read_int(doc, "announcements_sent"),
            own_echoes=read_int(doc, "own_echoes"),
            redirects_sent=read_int(doc, "redirects_sent"),
            frames_stored=read_int(doc, "frames_stored"),
            frames_duplicate=read_int(doc, "frames_duplicate"),
            connections_rejected=read_counts(doc, "connections_rejected"),
            channel_errors=read_counts(doc, "channel_errors"),
            trust_rejected=read_counts(doc, "trust_rejected"),
        )


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    """The owner's remote entrance (docs/guard.md): open connections and the guard
    server's totals since start (``GuardServerCounters``), plus refusals by reason."""

    active: int
    connections: int
    refused_busy: int
    refused_rate: int
    logins_ok: int
    logins_granted: int
    logins_failed: int
    calls: int
    sessions_expired: int
    stream_errors: int
    rejected: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        """The status document's ``remote`` object."""
        return {
            "active": self.active,
            "connections": self.connections,
            "refused_busy": self.refused_busy,
            "refused_rate": self.refused_rate,
            "logins_ok": self.logins_ok,
            "logins_granted": self.logins_granted,
            "logins_failed": self.logins_failed,
            "calls": self.calls,
            "sessions_expired": self.sessions_expired,
            "stream_errors": self.stream_errors,
            "rejected": dict(self.rejected),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RemoteStatus:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        return cls(
            active=read_int(doc, "active"),
            connections=read_int(doc, "connections"),
            refused_busy=read_int(doc, "refused_busy"),
            refused_rate=read_int(doc, "refused_rate"),
            logins_ok=read_int(doc, "logins_ok"),
            logins_granted=read_int(doc, "logins_granted"),
            logins_failed=read_int(doc, "logins_failed"),
            calls=read_int(doc, "calls"),
            sessions_expired=read_int(doc, "sessions_expired"),
            stream_errors=read_int(doc, "stream_errors"),
            rejected=read_counts(doc, "rejected"),
        )


@dataclass(frozen=True, slots=True)
class BrokerAgentStatus:
    """The hub's link to the broker (docs/broker.md, "Running it"): the agent's state and
    totals since start. ``direct`` and ``relayed`` count sessions by the path they began on,
    ``switched`` relayed sessions a direct path took over, ``learned`` peer-reflexive
    addresses the punches learned (a probe from an address not among the candidates)."""

    state: str
    enrolled: bool
    reflexive: str | None
    registrations: int
    acks: int
    enrollments: int
    fallbacks: int
    wakes: int
    accepted: int
    rejected: Mapping[str, int]
    direct: int
    relayed: int
    switched: int
    learned: int
    sessions: int
    ignored: Mapping[str, int]
    # The broker in use (TLS HOST:PORT) and how often the agent moved to the next of its
    # list (docs/broker-scale.md).
    broker: str | None = None
    rehomed: int = 0
    # hold_connection (docs/broker.md, "Held connections"): whether the broker holds the
    # agent's connection right now, the requests that came over it, keepalives left
    # unanswered (each reopened the connection), and ``hold`` refusals by reason.
    holding: bool = False
    held_requests: int = 0
    keepalive_timeouts: int = 0
    hold_refused: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The status document's ``broker`` object."""
        return {
            "state": self.state,
            "enrolled": self.enrolled,
            "reflexive": self.reflexive,
            "registrations": self.registrations,
            "acks": self.acks,
            "enrollments": self.enrollments,
            "fallbacks": self.fallbacks,
            "wakes": self.wakes,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "direct": self.direct,
            "relayed": self.relayed,
            "switched": self.switched,
            "learned": self.learned,
            "sessions": self.sessions,
            "ignored": dict(self.ignored),
            "broker": self.broker,
            "rehomed": self.rehomed,
            "holding": self.holding,
            "held_requests": self.held_requests,
            "keepalive_timeouts": self.keepalive_timeouts,
            "hold_refused": dict(self.hold_refused),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BrokerAgentStatus:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        return cls(
            state=read_str(doc, "state"),
            enrolled=read_bool(doc, "enrolled"),
            reflexive=read_optional_str(doc, "reflexive"),
            registrations=read_int(doc, "registrations"),
            acks=read_int(doc, "acks"),
            enrollments=read_int(doc, "enrollments"),
            fallbacks=read_int(doc, "fallbacks"),
            wakes=read_int(doc, "wakes"),
            accepted=read_int(doc, "accepted"),
            rejected=read_counts(doc, "rejected"),
            direct=read_int(doc, "direct"),
            relayed=read_int(doc, "relayed"),
            switched=read_int(doc, "switched"),
            learned=read_int(doc, "learned"),
            sessions=read_int(doc, "sessions"),
            ignored=read_counts(doc, "ignored"),
            broker=read_optional_str(doc, "broker"),
            rehomed=read_int(doc, "rehomed") if "rehomed" in doc else 0,
            holding=read_bool(doc, "holding") if "holding" in doc else False,
            held_requests=read_int(doc, "held_requests") if "held_requests" in doc else 0,
            keepalive_timeouts=(
                read_int(doc, "keepalive_timeouts") if "keepalive_timeouts" in doc else 0
            ),
            hold_refused=read_counts(doc, "hold_refused") if "hold_refused" in doc else {},
        )


@dataclass(frozen=True, slots=True)
class HubStatus:
    """One snapshot of a running hub, taken on the event loop by `HubDaemon.status()`."""

    identifier: str
    name: str
    endpoint: str
    features: tuple[str, ...]
    max_devices: int
    # Device identifiers with an open channel, sorted.
    connected: tuple[str, ...]
    winner: str | None
    hubs: tuple[HubEntry, ...]
    trust: TrustSummary
    counters: HubCountersView
    # None when the hub's config has no remote address.
    remote: RemoteStatus | None
    uptime_s: float
    # None when the hub's config has no [broker] table.
    broker: BrokerAgentStatus | None = None
    # The hubs DNS-SD found (unverified hints, `roost.dnssd.records.HubRecord.to_json`);
    # None when DNS-SD is off.
    dns_sd: tuple[Mapping[str, Any], ...] | None = None
    # Device identifier → the name its hello gave (PROTOCOL.md section 4), for connected
    # devices that sent one; a label for people, never identity.
    connected_names: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_winner(self) -> bool:
        """Whether this hub is the elected hub right now."""
        return self.winner is not None and self.winner == self.identifier

    def to_json(self) -> dict[str, Any]:
        """The status document (docs/dashboard.md, "Status document")."""
        return {
            "id": self.identifier,
            "name": self.name,
            "endpoint": self.endpoint,
            "features": list(self.features),
            "max": self.max_devices,
            "connected": list(self.connected),
            "connected_names": dict(self.connected_names),
            "winner": self.winner,
            "hubs": [hub.to_json() for hub in self.hubs],
            "trust": self.trust.to_json(),
            "counters": self.counters.to_json(),
            "remote": self.remote.to_json() if self.remote is not None else None,
            "uptime_s": self.uptime_s,
            "broker": self.broker.to_json() if self.broker is not None else None,
            "dns_sd": [dict(hub) for hub in self.dns_sd] if self.dns_sd is not None else None,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> HubStatus:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed.

        A missing ``remote`` (``broker``) key reads as None, like a hub without a remote
        entrance (a broker link); a missing ``connected_names`` (an older hub) reads as no
        names.
        """
        remote = doc.get("remote") if isinstance(doc, Mapping) else None
        broker = doc.get("broker") if isinstance(doc, Mapping) else None
        return cls(
            identifier=read_str(doc, "id"),
            name=read_str(doc, "name"),
            endpoint=read_str(doc, "endpoint"),
            features=read_strings(doc, "features"),
            max_devices=read_int(doc, "max"),
            connected=read_strings(doc, "connected"),
            connected_names=_read_names(doc, "connected_names") if "connected_names" in doc else {},
            winner=read_optional_str(doc, "winner"),
            hubs=tuple(HubEntry.from_json(hub) for hub in read_objects(doc, "hubs")),
            trust=TrustSummary.from_json(read_object(doc, "trust")),
            counters=HubCountersView.from_json(read_object(doc, "counters")),
            remote=None if remote is None else RemoteStatus.from_json(read_object(doc, "remote")),
            uptime_s=read_float(doc, "uptime_s"),
            broker=None
            if broker is None
            else BrokerAgentStatus.from_json(read_object(doc, "broker")),
            dns_sd=None
            if doc.get("dns_sd") is None
            else tuple(dict(hub) for hub in read_objects(doc, "dns_sd")),
        )
