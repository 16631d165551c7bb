"""Hypothesis strategies for the typed status documents of the hub and the device."""

from __future__ import annotations

from hypothesis import strategies as st

from roost.device.status import CameraStatus, DeviceCountersView, DeviceStatus
from roost.hub.status import (
    BrokerAgentStatus,
    HubCountersView,
    HubEntry,
    HubStatus,
    RemoteStatus,
)
from roost.status import TrustSummary

__all__ = [
    "broker_agent_statuses",
    "camera_statuses",
    "counts",
    "device_statuses",
    "hub_statuses",
    "remote_statuses",
    "trust_summaries",
]

# Counters are exported as Prometheus floats, exact up to 2**53.
totals = st.integers(min_value=0, max_value=2**53)
seconds = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
# Reasons and names come from peers and operators; quotes, backslashes and newlines must
# survive the JSON and the Prometheus text format alike (UTF-8 rules out lone surrogates).
_characters = st.characters(codec="utf-8")
text = st.text(_characters, max_size=12)
reasons = st.text(_characters, min_size=1, max_size=12)
counts = st.dictionaries(reasons, totals, max_size=4)
features = st.lists(st.sampled_from(["jpeg", "night", "4k", "audio"]), max_size=4).map(tuple)
identifiers = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=22, max_size=22
)
hub_ids = identifiers.map(lambda s: f"hcsp:{s}")
device_ids = identifiers.map(lambda s: f"ab:{s}")
endpoints = st.builds(
    lambda host, port: f"{host}:{port}",
    st.sampled_from(["127.0.0.1", "192.0.2.10", "[::1]"]),
    st.integers(1, 65535),
)

trust_summaries = st.builds(
    TrustSummary,
    current=st.integers(1, 1000),
    prepared=st.none() | st.integers(1, 1000),
    time_floor=st.just("2025-01-01T00:00:00+00:00") | text,
)

hub_entries = st.builds(
    HubEntry,
    identifier=hub_ids,
    endpoint=endpoints,
    features=features,
    connected=totals,
    max_clients=totals,
    rank=st.integers(1, 64),
    is_self=st.booleans(),
    last_seen_s_ago=seconds,
)

hub_counters = st.builds(
    HubCountersView,
    announcements_accepted=totals,
    announcements_rejected=counts,
    announcements_sent=totals,
    own_echoes=totals,
    redirects_sent=totals,
    frames_stored=totals,
    frames_duplicate=totals,
    connections_rejected=counts,
    channel_errors=counts,
    trust_rejected=counts,
)

remote_statuses = st.builds(
    RemoteStatus,
    active=totals,
    connections=totals,
    refused_busy=totals,
    refused_rate=totals,
    logins_ok=totals,
    logins_granted=totals,
    logins_failed=totals,
    calls=totals,
    sessions_expired=totals,
    stream_errors=totals,
    rejected=counts,
)

broker_agent_statuses = st.builds(
    BrokerAgentStatus,
    state=st.sampled_from(["enrolling", "registering", "held", "stopped"]),
    enrolled=st.booleans(),
    reflexive=st.none() | endpoints,
    registrations=totals,
    acks=totals,
    enrollments=totals,
    fallbacks=totals,
    wakes=totals,
    accepted=totals,
    rejected=counts,
    direct=totals,
    relayed=totals,
    switched=totals,
    learned=totals,
    sessions=totals,
    ignored=counts,
    holding=st.booleans(),
    held_requests=totals,
    keepalive_timeouts=totals,
    hold_refused=counts,
)


@st.composite
def hub_statuses(draw: st.DrawFn) -> HubStatus:
    """A hub status; the winner is sometimes this hub, sometimes another, sometimes none."""
    identifier = draw(hub_ids)
    winner = draw(st.none() | st.just(identifier) | hub_ids)
    connected = tuple(sorted(draw(st.sets(device_ids, max_size=4))))
    # Some connected devices gave a name in their hello, older ones none.
    named = draw(st.lists(st.sampled_from(connected), unique=True) if connected else st.just([]))
    return HubStatus(
        identifier=identifier,
        name=draw(text),
        endpoint=draw(endpoints),
        features=draw(features),
        max_devices=draw(totals),
        connected=connected,
        connected_names={device: draw(text) for device in sorted(named)},
        winner=winner,
        hubs=tuple(draw(st.lists(hub_entries, max_size=3))),
        trust=draw(trust_summaries),
        counters=draw(hub_counters),
        remote=draw(st.none() | remote_statuses),
        uptime_s=draw(seconds),
        broker=draw(st.none() | broker_agent_statuses),
        dns_sd=draw(
            st.none()
            | st.lists(
                st.fixed_dictionaries({"id": hub_ids, "name": text, "endpoint": endpoints}),
                max_size=3,
            ).map(tuple)
        ),
    )


device_counters = st.builds(
    DeviceCountersView,
    connects=totals,
    connect_failures=counts,
    redirects_followed=totals,
    redirects_refused=counts,
    failovers=totals,
    frames_sent=totals,
    frames_resent=totals,
    announcements_accepted=totals,
    announcements_rejected=counts,
)

camera_statuses = st.builds(
    CameraStatus,
    source=text,
    kind=st.sampled_from(["test-pattern", "file", "rtsp", "http", "v4l2"]),
    state=st.sampled_from(["starting", "ok", "failing", "stopped"]),
    reason=st.none() | reasons,
    detail=st.none() | text,
    since=st.none() | seconds,
    retries=totals,
    frames=totals,
    last_frame_at=st.none() | seconds,
    retry_at=st.none() | seconds,
    failures=counts,
)
dns_sd_hints = st.none() | st.lists(
    st.fixed_dictionaries({"id": hub_ids, "endpoint": endpoints}), max_size=3
).map(tuple)

device_statuses = st.builds(
    DeviceStatus,
    identifier=device_ids,
    name=text,
    state=st.sampled_from(["starting", "searching", "streaming", "failing-over"]),
    hub=st.none() | hub_ids,
    hub_endpoint=st.none() | endpoints,
    last_acked_seq=totals,
    buffered=totals,
    buffered_bytes=totals,
    dropped=totals,
    captured=totals,
    frames_total=totals,
    trust=trust_summaries,
    counters=device_counters,
    written_at=seconds,
    camera=st.none() | camera_statuses,
    dns_sd=dns_sd_hints,
)
