"""The broker's status document, typed (what `BrokerDaemon.status()` returns), pure.

`BrokerStatus.to_json()` is the object the broker's ``GET /api/status`` serves and ``roost
broker status`` prints; `BrokerStatus.from_json()` reads it back. The Prometheus table
(`roost.metrics.BROKER_METRICS`) reads the same dataclasses, so the page and the scrape
cannot disagree (like `roost.hub.status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from roost.status import TrustSummary, read_counts, read_float, read_int, read_object, read_str

__all__ = ["BrokerCountersView", "BrokerStatus", "SharedStatus"]


@dataclass(frozen=True, slots=True)
class BrokerCountersView:
    """Totals since start (``BrokerCounters``) and refusals by reason."""

    stun_answers: int
    registrations: int
    enrollments: int
    lookups: int
    connects: int
    wakes_sent: int
    wake_pushes: int
    presents: int
    accepts: int
    rejects: int
    relayed_sessions: int
    relayed_bytes: int
    relay_closes: int
    keepalives: int
    expired: int
    channels_opened: int
    equipment_channels: int
    holds: int
    requests_pushed: int
    refusals: Mapping[str, int]
    connections_rejected: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        """The status document's ``counters`` object."""
        doc: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            doc[item.name] = dict(value) if isinstance(value, Mapping) else value
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BrokerCountersView:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            counts = item.name in ("refusals", "connections_rejected")
            values[item.name] = read_counts(doc, item.name) if counts else read_int(doc, item.name)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class SharedStatus:
    """The shared registry of a broker running with Redis/Valkey (docs/broker-scale.md)."""

    node: str
    epoch: int
    up: bool
    writes: int
    reads: int
    published: int
    received: int
    pipelines: int
    outages: int
    outage_s: float
    resyncs: int
    dropped_writes: int
    adopted: int
    forwarded: int
    hosted: int
    # Lookups answered from a presence record read within presence_cache_s.
    lookups_cached: int = 0
    # Node messages dropped for naming no channel forwarded or hosted here (it closed
    # meanwhile, or the message came by another path or from another instance), and
    # forwarded channels whose answer came from the owner's restarted successor.
    hops_dropped: int = 0
    forwarded_to_successor: int = 0
    # The node link (docs/broker-scale.md, "Node link"): the advertised address ("" when
    # off), links up now, outbound links opened (of them over the local socket of a process
    # on this host), inbound accepted, node messages sent and
    # received over links, channels routed over pub/sub for want of a link, and the
    # failures to open or keep one by reason (refusals of inbound links are counted with
    # the broker's connections_rejected).
    node_link: str = ""
    links_up: int = 0
    link_opened: int = 0
    link_opened_local: int = 0
    link_accepted: int = 0
    link_sent: int = 0
    link_received: int = 0
    link_fallbacks: int = 0
    link_failures: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The status document's ``shared`` object."""
        doc: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            doc[item.name] = dict(value) if isinstance(value, Mapping) else value
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SharedStatus:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        values: dict[str, Any] = {"node": read_str(doc, "node"), "up": bool(doc.get("up"))}
        values["outage_s"] = read_float(doc, "outage_s")
        values["node_link"] = read_str(doc, "node_link")
        values["link_failures"] = read_counts(doc, "link_failures")
        for item in fields(cls):
            if item.name not in values:
                values[item.name] = read_int(doc, item.name)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """One snapshot of a running broker, taken on the event loop."""

    name: str
    udp: str
    tls: str
    registry_size: int
    channels: int
    sessions: int
    relaying: int
    trust: TrustSummary
    counters: BrokerCountersView
    uptime_s: float
    # None with the in-memory registry.
    shared: SharedStatus | None = None
    # Connections holding for their equipment (``hold`` accepted) right now.
    holding: int = 0

    def to_json(self) -> dict[str, Any]:
        """The status document."""
        return {
            "name": self.name,
            "udp": self.udp,
            "tls": self.tls,
            "registry_size": self.registry_size,
            "channels": self.channels,
            "sessions": self.sessions,
            "relaying": self.relaying,
            "holding": self.holding,
            "trust": self.trust.to_json(),
            "counters": self.counters.to_json(),
            "uptime_s": self.uptime_s,
            "shared": None if self.shared is None else self.shared.to_json(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BrokerStatus:
        """Read the object `to_json` wrote; raises RemoteProtocolError if it is malformed."""
        return cls(
            name=read_str(doc, "name"),
            udp=read_str(doc, "udp"),
            tls=read_str(doc, "tls"),
            registry_size=read_int(doc, "registry_size"),
            channels=read_int(doc, "channels"),
            sessions=read_int(doc, "sessions"),
            relaying=read_int(doc, "relaying"),
            trust=TrustSummary.from_json(read_object(doc, "trust")),
            counters=BrokerCountersView.from_json(read_object(doc, "counters")),
            uptime_s=read_float(doc, "uptime_s"),
            shared=None if doc.get("shared") is None else SharedStatus.from_json(doc["shared"]),
            holding=read_int(doc, "holding") if "holding" in doc else 0,
        )
