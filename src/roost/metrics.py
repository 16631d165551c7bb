"""Prometheus metrics from typed status documents: one table per component, one collector.

Every metric is one row of a table: its name, help text, kind, label names and an accessor
on the component's status dataclass (``lambda s: s.counters.frames_stored``). mypy checks
the accessors against the dataclasses, so a misspelt counter is a type error rather than a
metric that silently reads 0. `StatusCollector` takes one status snapshot per scrape and
walks the table; nothing is counted here, so the scrape cannot disagree with the status
document or count anything twice (docs/dashboard.md, "Metrics").

Names follow prometheus_client's family convention: the exposition appends ``_total`` to
a counter and ``_info`` to an info metric, so the row ``roost_hub_frames_stored`` is
scraped as ``roost_hub_frames_stored_total`` and ``roost_hub`` as ``roost_hub_info``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from roost.hub.status import BrokerAgentStatus, HubStatus, RemoteStatus
from roost.rendezvous.broker_status import BrokerStatus, SharedStatus

__all__ = [
    "BROKER_METRICS",
    "HUB_METRICS",
    "MetricKind",
    "MetricRow",
    "Samples",
    "StatusCollector",
    "counter",
    "counter_by",
    "gauge",
    "info",
]

S = TypeVar("S")
T = TypeVar("T")

# One family's samples: each is (label values in the row's label order, value).
Samples = tuple[tuple[tuple[str, ...], float], ...]


class MetricKind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class MetricRow(Generic[S]):
    """One metric family read from a status snapshot of type ``S``.

    ``samples`` returns None when the family does not apply to this snapshot (the remote
    entrance of a hub that has none); an empty tuple still exports the family's help and
    type, as a counter by reason does before its first refusal.
    """

    name: str
    documentation: str
    kind: MetricKind
    labels: tuple[str, ...]
    samples: Callable[[S], Samples | None]

    def family(self, status: S) -> Metric | None:
        """The family for one snapshot, or None when the row does not apply to it."""
        samples = self.samples(status)
        if samples is None:
            return None
        if self.kind is MetricKind.INFO:
            # An info metric's labels carry its value; the family itself has no label names.
            info_family = InfoMetricFamily(self.name, self.documentation)
            for label_values, _ in samples:
                info_family.add_metric([], dict(zip(self.labels, label_values, strict=True)))
            return info_family
        family = self._valued()
        for label_values, value in samples:
            family.add_metric(list(label_values), value)
        return family

    def empty(self) -> Metric:
        """The family with its name, help and type but no samples (for `describe`)."""
        if self.kind is MetricKind.INFO:
            return InfoMetricFamily(self.name, self.documentation)
        return self._valued()

    def _valued(self) -> CounterMetricFamily | GaugeMetricFamily:
        if self.kind is MetricKind.COUNTER:
            return CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labels)


def counter(name: str, documentation: str, read: Callable[[S], float | None]) -> MetricRow[S]:
    """A counter without labels; ``read`` returns the total, or None when absent."""
    return MetricRow(name, documentation, MetricKind.COUNTER, (), lambda s: _single(read(s)))


def gauge(name: str, documentation: str, read: Callable[[S], float | None]) -> MetricRow[S]:
    """A gauge without labels; ``read`` returns the value, or None when absent."""
    return MetricRow(name, documentation, MetricKind.GAUGE, (), lambda s: _single(read(s)))


def counter_by(
    name: str, documentation: str, label: str, read: Callable[[S], Mapping[str, int] | None]
) -> MetricRow[S]:
    """A counter with one label; ``read`` returns the count for each label value."""
    return MetricRow(
        name, documentation, MetricKind.COUNTER, (label,), lambda s: _by_label(read(s))
    )


def info(
    name: str, documentation: str, labels: tuple[str, ...], read: Callable[[S], tuple[str, ...]]
) -> MetricRow[S]:
    """An info metric; ``read`` returns one value for each of ``labels``, in order."""
    return MetricRow(name, documentation, MetricKind.INFO, labels, lambda s: ((read(s), 1.0),))


def _single(value: float | None) -> Samples | None:
    return None if value is None else (((), float(value)),)


def _by_label(counts: Mapping[str, int] | None) -> Samples | None:
    if counts is None:
        return None
    return tuple(((str(key),), float(count)) for key, count in sorted(counts.items()))


class StatusCollector(Collector, Generic[S]):
    """Yields the families of ``table`` from one ``snapshot()`` per scrape.

    Counters are the component's own totals since it started, so a restart resets them,
    which Prometheus' rate() handles; nothing is accumulated here.
    """

    def __init__(self, snapshot: Callable[[], S], table: Sequence[MetricRow[S]]) -> None:
        names = [row.name for row in table]
        if len(set(names)) != len(names):
            raise ValueError("a metrics table names a family twice")
        self._snapshot = snapshot
        self._table = tuple(table)

    def collect(self) -> Iterator[Metric]:
        """The table's families for the current snapshot (called at each scrape)."""
        status = self._snapshot()
        for row in self._table:
            family = row.family(status)
            if family is not None:
                yield family

    def describe(self) -> Iterator[Metric]:
        """The table's families without samples, so a registry can refuse a clash."""
        for row in self._table:
            yield row.empty()


# ---------------------------------------------------------------------------- the hub


def _remote(read: Callable[[RemoteStatus], T]) -> Callable[[HubStatus], T | None]:
    """Lift an accessor of the remote entrance's status; None when the hub has none."""
    return lambda s: None if s.remote is None else read(s.remote)


def _broker(read: Callable[[BrokerAgentStatus], T]) -> Callable[[HubStatus], T | None]:
    """Lift an accessor of the broker agent's status; None when the hub has no [broker]."""
    return lambda s: None if s.broker is None else read(s.broker)


# The hub's /metrics (docs/dashboard.md, "Metrics"); the order is the page's order.
HUB_METRICS: tuple[MetricRow[HubStatus], ...] = (
    info(
        "roost_hub",
        "This hub's identity and advertised features.",
        ("id", "name", "endpoint", "features"),
        lambda s: (s.identifier, s.name, s.endpoint, ",".join(s.features)),
    ),
    gauge(
        "roost_hub_connected_devices",
        "Devices with an open channel to this hub.",
        lambda s: len(s.connected),
    ),
    MetricRow(
        "roost_hub_device",
        "One sample per device with an open channel: its identifier and the name its hello "
        "gave (empty from a device that sent none).",
        MetricKind.INFO,
        ("device", "name"),
        lambda s: tuple(((d, s.connected_names.get(d, "")), 1.0) for d in s.connected),
    ),
    gauge("roost_hub_max_devices", "Devices this hub accepts at most.", lambda s: s.max_devices),
    gauge(
        "roost_hub_live_hubs",
        "Verified live hubs this hub knows, itself included.",
        lambda s: len(s.hubs),
    ),
    gauge(
        "roost_hub_dns_sd_hubs",
        "Other hubs DNS-SD found (unverified hints); absent when DNS-SD is off.",
        lambda s: None if s.dns_sd is None else len(s.dns_sd),
    ),
    gauge(
        "roost_hub_is_winner",
        "1 when this hub is the elected hub, else 0.",
        lambda s: 1 if s.is_winner else 0,
    ),
    gauge(
        "roost_hub_uptime_seconds",
        "Seconds since the hub daemon started.",
        lambda s: s.uptime_s,
    ),
    counter(
        "roost_hub_announcements_accepted",
        "Verified announcements accepted from other hubs.",
        lambda s: s.counters.announcements_accepted,
    ),
    counter(
        "roost_hub_announcements_sent",
        "Announcements this hub sent.",
        lambda s: s.counters.announcements_sent,
    ),
    counter(
        "roost_hub_own_echoes",
        "This hub's own announcements heard back.",
        lambda s: s.counters.own_echoes,
    ),
    counter(
        "roost_hub_redirects_sent",
        "Redirects sent to devices to move them to the elected hub.",
        lambda s: s.counters.redirects_sent,
    ),
    counter(
        "roost_hub_frames_stored",
        "Frames stored durably.",
        lambda s: s.counters.frames_stored,
    ),
    counter(
        "roost_hub_frames_duplicate",
        "Frames received again and recognised as already stored.",
        lambda s: s.counters.frames_duplicate,
    ),
    counter_by(
        "roost_hub_announcements_rejected",
        "Announcements rejected, by reason.",
        "reason",
        lambda s: s.counters.announcements_rejected,
    ),
    counter_by(
        "roost_hub_connections_rejected",
        "Device connections rejected, by reason.",
        "reason",
        lambda s: s.counters.connections_rejected,
    ),
    counter_by(
        "roost_hub_channel_errors",
        "Device channels ended by an error, by reason.",
        "reason",
        lambda s: s.counters.channel_errors,
    ),
    counter_by(
        "roost_hub_trust_rejected",
        "CA information updates rejected, by reason.",
        "reason",
        lambda s: s.counters.trust_rejected,
    ),
    gauge(
        "roost_hub_remote_sessions",
        "Open connections on the remote (guard) entrance.",
        _remote(lambda r: r.active),
    ),
    counter(
        "roost_hub_remote_connections",
        "Connections accepted on the remote entrance.",
        _remote(lambda r: r.connections),
    ),
    counter(
        "roost_hub_remote_refused_busy",
        "Remote connections refused: every slot, or the source's share, taken.",
        _remote(lambda r: r.refused_busy),
    ),
    counter(
        "roost_hub_remote_refused_rate",
        "Remote connections refused by the per-source connection rate.",
        _remote(lambda r: r.refused_rate),
    ),
    counter(
        "roost_hub_remote_logins_ok",
        "Guard logins that succeeded.",
        _remote(lambda r: r.logins_ok),
    ),
    counter(
        "roost_hub_remote_logins_granted",
        "Guard logins whose password a brokered request had just checked (no second KDF).",
        _remote(lambda r: r.logins_granted),
    ),
    counter(
        "roost_hub_remote_logins_failed",
        "Guard logins refused or timed out.",
        _remote(lambda r: r.logins_failed),
    ),
    counter(
        "roost_hub_remote_calls",
        "Calls answered in guard sessions.",
        _remote(lambda r: r.calls),
    ),
    counter(
        "roost_hub_remote_sessions_expired",
        "Guard sessions ended by the idle or absolute limit.",
        _remote(lambda r: r.sessions_expired),
    ),
    counter(
        "roost_hub_remote_stream_errors",
        "Remote streams ended by a framing or transport error.",
        _remote(lambda r: r.stream_errors),
    ),
    counter_by(
        "roost_hub_remote_rejected",
        "Guard logins, frames and calls refused, by reason.",
        "reason",
        _remote(lambda r: r.rejected),
    ),
    gauge(
        "roost_hub_broker_enrolled",
        "1 while the broker agent holds a registration key.",
        _broker(lambda b: int(b.enrolled)),
    ),
    counter(
        "roost_hub_broker_registrations",
        "Registrations (RREG) sent to the broker.",
        _broker(lambda b: b.registrations),
    ),
    counter(
        "roost_hub_broker_acks",
        "Registration acknowledgements (RACK) received.",
        _broker(lambda b: b.acks),
    ),
    counter(
        "roost_hub_broker_enrollments",
        "Enrollments the broker answered (each gives a fresh registration key).",
        _broker(lambda b: b.enrollments),
    ),
    counter(
        "roost_hub_broker_fallbacks",
        "Times registrations got no RACK and the agent held a TLS connection instead.",
        _broker(lambda b: b.fallbacks),
    ),
    gauge(
        "roost_hub_broker_sessions",
        "Brokered sessions being set up or served.",
        _broker(lambda b: b.sessions),
    ),
    counter_by(
        "roost_hub_broker_ignored",
        "Broker input the agent ignored (forged wake-ups, unexpected messages), by reason.",
        "reason",
        _broker(lambda b: b.ignored),
    ),
    counter(
        "roost_hub_broker_wakes",
        "Valid wake-ups from the broker (RWAK or wake over the held connection).",
        _broker(lambda b: b.wakes),
    ),
    counter(
        "roost_hub_broker_accepted",
        "Brokered requests whose password checked.",
        _broker(lambda b: b.accepted),
    ),
    counter_by(
        "roost_hub_broker_rejected",
        "Brokered requests rejected, by reason.",
        "reason",
        _broker(lambda b: b.rejected),
    ),
    counter(
        "roost_hub_broker_direct",
        "Brokered sessions that began on a punched direct path.",
        _broker(lambda b: b.direct),
    ),
    counter(
        "roost_hub_broker_relayed",
        "Brokered sessions that began on the broker's relay.",
        _broker(lambda b: b.relayed),
    ),
    counter(
        "roost_hub_broker_switched",
        "Relayed sessions a direct path took over.",
        _broker(lambda b: b.switched),
    ),
    counter(
        "roost_hub_broker_learned",
        "Peer-reflexive addresses the hub's punches learned.",
        _broker(lambda b: b.learned),
    ),
    counter(
        "roost_hub_broker_rehomed",
        "Moves to the next broker of the hub's list (docs/broker-scale.md).",
        _broker(lambda b: b.rehomed),
    ),
    gauge(
        "roost_hub_broker_holding",
        "1 while the broker holds the agent's connection (requests come over it).",
        _broker(lambda b: int(b.holding)),
    ),
    counter(
        "roost_hub_broker_held_requests",
        "Connection requests that came over the held connection (no wake-up).",
        _broker(lambda b: b.held_requests),
    ),
    counter(
        "roost_hub_broker_keepalive_timeouts",
        "Keepalives the broker left unanswered (the held connection was opened again).",
        _broker(lambda b: b.keepalive_timeouts),
    ),
    counter_by(
        "roost_hub_broker_hold_refused",
        "hold requests the broker refused, by reason (the hub stays on UDP wake-ups).",
        "reason",
        _broker(lambda b: b.hold_refused),
    ),
)


# ---------------------------------------------------------------------------- the broker


def _shared(read: Callable[[SharedStatus], T]) -> Callable[[BrokerStatus], T | None]:
    """Lift an accessor of the shared registry's status; None with the in-memory one."""
    return lambda s: None if s.shared is None else read(s.shared)


# The broker's /metrics (docs/broker.md, "Status and metrics"), from `BrokerStatus`.
BROKER_METRICS: tuple[MetricRow[BrokerStatus], ...] = (
    info(
        "roost_broker",
        "This broker's name and addresses.",
        ("name", "udp", "tls"),
        lambda s: (s.name, s.udp, s.tls),
    ),
    gauge(
        "roost_broker_registry_size",
        "Enrolled identifiers the registry holds.",
        lambda s: s.registry_size,
    ),
    gauge("roost_broker_channels", "Open TLS connections.", lambda s: s.channels),
    gauge("roost_broker_sessions", "Open connection requests.", lambda s: s.sessions),
    gauge("roost_broker_relaying", "Sessions relayed right now.", lambda s: s.relaying),
    gauge(
        "roost_broker_holding",
        "Connections holding for their hub or device (requests pushed over them).",
        lambda s: s.holding,
    ),
    gauge("roost_broker_uptime_seconds", "Seconds since the broker started.", lambda s: s.uptime_s),
    counter(
        "roost_broker_stun_answers",
        "STUN Binding requests answered.",
        lambda s: s.counters.stun_answers,
    ),
    counter(
        "roost_broker_registrations",
        "Registrations verified and acknowledged.",
        lambda s: s.counters.registrations,
    ),
    counter("roost_broker_enrollments", "Enrollments.", lambda s: s.counters.enrollments),
    counter("roost_broker_lookups", "Lookups answered.", lambda s: s.counters.lookups),
    counter(
        "roost_broker_connects", "Connection requests accepted.", lambda s: s.counters.connects
    ),
    counter(
        "roost_broker_wakes_sent",
        "RWAK datagrams sent (first and resends).",
        lambda s: s.counters.wakes_sent,
    ),
    counter(
        "roost_broker_wake_pushes",
        "Wake-ups pushed over held connections.",
        lambda s: s.counters.wake_pushes,
    ),
    counter("roost_broker_presents", "Wake-up tokens presented.", lambda s: s.counters.presents),
    counter(
        "roost_broker_requests_pushed",
        "Connection requests pushed over a holding connection (no wake-up).",
        lambda s: s.counters.requests_pushed,
    ),
    counter("roost_broker_holds", "hold requests accepted.", lambda s: s.counters.holds),
    counter(
        "roost_broker_channels_opened",
        "TLS connections accepted.",
        lambda s: s.counters.channels_opened,
    ),
    counter(
        "roost_broker_equipment_channels",
        "TLS connections accepted from a verified hub or device.",
        lambda s: s.counters.equipment_channels,
    ),
    counter("roost_broker_accepts", "Requests accepted by targets.", lambda s: s.counters.accepts),
    counter("roost_broker_rejects", "Requests rejected by targets.", lambda s: s.counters.rejects),
    counter(
        "roost_broker_relayed_sessions",
        "Sessions that opened the relay.",
        lambda s: s.counters.relayed_sessions,
    ),
    counter(
        "roost_broker_relayed_bytes",
        "Payload bytes forwarded by the relay.",
        lambda s: s.counters.relayed_bytes,
    ),
    counter(
        "roost_broker_expired",
        "Registry entries forgotten past their TTL.",
        lambda s: s.counters.expired,
    ),
    counter_by(
        "roost_broker_refusals",
        "Datagrams, records and requests refused, by reason.",
        "reason",
        lambda s: s.counters.refusals,
    ),
    counter_by(
        "roost_broker_connections_rejected",
        "TLS connections refused before the core (certificate, capacity), by reason.",
        "reason",
        lambda s: s.counters.connections_rejected,
    ),
    # The shared registry (docs/broker-scale.md); absent with the in-memory one.
    gauge(
        "roost_broker_shared_up",
        "1 while the shared registry (Redis/Valkey) answers, else 0.",
        _shared(lambda shared: float(shared.up)),
    ),
    counter(
        "roost_broker_shared_outages",
        "Times the shared registry became unreachable.",
        _shared(lambda shared: shared.outages),
    ),
    counter(
        "roost_broker_shared_outage_seconds",
        "Seconds the shared registry was unreachable.",
        _shared(lambda shared: shared.outage_s),
    ),
    counter(
        "roost_broker_shared_writes",
        "Presence values written to the shared registry.",
        _shared(lambda shared: shared.writes),
    ),
    counter(
        "roost_broker_shared_forwarded",
        "Connections forwarded to the process owning their target.",
        _shared(lambda shared: shared.forwarded),
    ),
    counter(
        "roost_broker_shared_lookups_cached",
        "Lookups answered from a presence record read lately (presence_cache_s).",
        _shared(lambda shared: shared.lookups_cached),
    ),
    counter(
        "roost_broker_shared_hops_dropped",
        "Node messages for no channel forwarded or hosted here, dropped.",
        _shared(lambda shared: shared.hops_dropped),
    ),
    counter(
        "roost_broker_shared_forwarded_to_successor",
        "Forwarded connections answered by the restarted successor of their owner.",
        _shared(lambda shared: shared.forwarded_to_successor),
    ),
    counter(
        "roost_broker_shared_hosted",
        "Connections other processes forwarded here.",
        _shared(lambda shared: shared.hosted),
    ),
    gauge(
        "roost_broker_links_up",
        "Node links to and from other broker processes open now.",
        _shared(lambda shared: shared.links_up),
    ),
    counter(
        "roost_broker_link_sent",
        "Node messages sent over node links.",
        _shared(lambda shared: shared.link_sent),
    ),
    counter(
        "roost_broker_link_fallbacks",
        "Forwarded connections routed over Redis pub/sub for want of a node link.",
        _shared(lambda shared: shared.link_fallbacks),
    ),
    counter_by(
        "roost_broker_link_failures",
        "Node links that could not be opened or were cut, by reason.",
        "reason",
        _shared(lambda shared: shared.link_failures),
    ),
)
