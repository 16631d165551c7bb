"""The broker core's configuration, events, session states and transition table, pure.

PROTOCOL.md section 5. ``BrokerCoreConfig`` holds every default of the broker once (the
config loader and ``roost init`` read theirs from it). The core reports to its adapter
through ``BrokerEvent``s: a refusal whose log line is due (the logging rule of PROTOCOL.md's
preamble), and a channel to close once its records are written.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from roost.reasons import Reason

__all__ = [
    "HOLD_CONNECTION_DEFAULT",
    "SESSION_TRANSITIONS",
    "BrokerCoreConfig",
    "BrokerEvent",
    "CloseChannel",
    "PresenceConfig",
    "Refused",
    "SessionInput",
    "SessionState",
]


# A hub's ``[broker].hold_connection`` when left out: hold the mutual-TLS connection, so
# a connection request comes straight over it (docs/broker.md, "Held connections", says
# why for homes; the broker's ``max_held`` bounds what it costs there). Kept with the
# broker's defaults so reading a hub config loads nothing more.
HOLD_CONNECTION_DEFAULT = True


@dataclass(frozen=True, slots=True)
class BrokerCoreConfig:
    """Every tunable of the broker; times in seconds, rates per second."""

    # Section 5: equipment registers every 20 s; an entry lives three intervals.
    interval_s: float = 20.0
    ttl_intervals: int = 3
    max_entries: int = 1_000_000
    # Wake-ups: RWAK resent every 500 ms (new counter, same token) for at most 5 s.
    wake_resend_s: float = 0.5
    wake_timeout_s: float = 5.0
    # The target checks the password (a KDF) before it answers the request.
    answer_timeout_s: float = 10.0
    # start: both sides probe at one common moment, the farther side's one-way time plus
    # start_margin_ms after the broker sends (each side is told that minus half its own
    # round trip); start_delay_ms bounds it, and is used alone while a side's round trip
    # is unknown. Then probe for deadline_ms before asking for the relay.
    start_delay_ms: int = 200
    # 5 ms covers the scheduling jitter of the two ends: a side that probes a little early
    # loses only that probe to the other side's NAT, and the other side's probe, sent a
    # moment later from a listed candidate, is the path on arrival (punch.py).
    start_margin_ms: int = 5
    deadline_ms: int = 3000
    # Relay limits per session, and relayed sessions per hub.
    relay_max_bytes: int = 64 * 1024 * 1024
    relay_max_s: float = 600.0
    relay_sessions_per_hub: int = 4
    # Open connection requests: one per issuer connection, and this many overall.
    max_sessions: int = 4096
    # A connection with nothing to do is closed after this; a held one after TTL.
    channel_idle_s: float = 30.0
    # Holding connections (``hold``: requests pushed over them, docs/broker.md "Held
    # connections") at once. Each costs the broker a descriptor and its TLS connection's
    # memory, so the rest is refused ``held-limit`` and stays on UDP wake-ups; it must
    # leave room under the daemon's max_channels (4096) for issuers. 0: none.
    max_held: int = 1024
    # Rate limits (token buckets) before any HMAC, JSON parse or wake-up.
    udp_source_rate: float = 50.0
    udp_source_burst: float = 100.0
    tls_source_rate: float = 10.0
    tls_source_burst: float = 20.0
    target_rate: float = 1.0
    target_burst: float = 5.0
    global_udp_rate: float = 50_000.0
    global_udp_burst: float = 100_000.0
    global_wake_rate: float = 1000.0
    global_wake_burst: float = 2000.0
    max_sources: int = 65_536
    # A STUN answer may be at most this many times the request (1.0: never larger,
    # research/rendezvous.md section 3.3). Standard clients send bare 20-byte requests;
    # an operator serving them sets 2.0 (a 40-byte IPv4 answer).
    stun_amplification: float = 1.0
    # Refusals are logged once per source per this many seconds.
    log_interval_s: float = 60.0
    # expire() visits at most this many registry entries per timer.
    expire_budget: int = 1024

    def __post_init__(self) -> None:
        positive = (
            "interval_s",
            "wake_resend_s",
            "wake_timeout_s",
            "answer_timeout_s",
            "relay_max_s",
            "channel_idle_s",
            "udp_source_rate",
            "tls_source_rate",
            "target_rate",
            "global_udp_rate",
            "global_wake_rate",
            "stun_amplification",
            "log_interval_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        at_least_one = (
            "ttl_intervals",
            "max_entries",
            "relay_max_bytes",
            "relay_sessions_per_hub",
            "max_sessions",
            "udp_source_burst",
            "tls_source_burst",
            "target_burst",
            "global_udp_burst",
            "global_wake_burst",
            "max_sources",
            "expire_budget",
        )
        for name in at_least_one:
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_held < 0:
            raise ValueError("max_held must be >= 0")
        if self.start_delay_ms < 0 or self.start_margin_ms < 0 or self.deadline_ms < 1:
            raise ValueError("start_delay_ms and start_margin_ms must be >= 0 and deadline_ms >= 1")

    @property
    def ttl_s(self) -> float:
        return self.interval_s * self.ttl_intervals

    @property
    def interval_ms(self) -> int:
        return round(self.interval_s * 1000)


class BrokerEvent:
    """Base of what the broker core reports to its adapter."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Refused(BrokerEvent):
    """A refusal whose log line is due: ``suppressed`` more were counted silently since
    this source's last line (PROTOCOL.md preamble, "logged once per source per interval")."""

    source: str
    reason: str
    suppressed: int


@dataclass(frozen=True, slots=True)
class CloseChannel(BrokerEvent):
    """Close TLS connection ``channel`` after writing its pending records."""

    channel: int
    reason: Reason


class SessionState(enum.Enum):
    """A connection request's life at the broker (section 5, steps 3 to 8)."""

    WAKING = "waking"  # connecting sent; RWAK or wake out; waiting for present
    # request sent to the target (after present, or pushed over its holding connection);
    # waiting for accept or reject
    REQUESTED = "requested"
    STARTED = "started"  # start sent to both; they punch
    RELAYING = "relaying"  # relay-open sent to both; records forwarded


class SessionInput(enum.Enum):
    PRESENT = "present"
    # The target holds a connection: the request goes straight over it, no wake-up.
    PUSH = "push"
    ACCEPT = "accept"
    RELAY_OPEN = "relay-open"


# The one table of the session's transitions; anything else is "unexpected-message".
# reject, relay-close, timeouts and closed connections end a session from any state.
SESSION_TRANSITIONS: dict[tuple[SessionState, SessionInput], SessionState] = {
    (SessionState.WAKING, SessionInput.PRESENT): SessionState.REQUESTED,
    (SessionState.WAKING, SessionInput.PUSH): SessionState.REQUESTED,
    (SessionState.REQUESTED, SessionInput.ACCEPT): SessionState.STARTED,
    (SessionState.STARTED, SessionInput.RELAY_OPEN): SessionState.RELAYING,
}


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    """The shared registry's constants (``broker.toml``: ``registry``, ``presence_every``;
    roost.rendezvous.presence). Kept here, with the other broker defaults, so reading a
    config file does not load the registry's codecs."""

    # Write an entry on every k-th registration (and held keepalive) besides its changes:
    # at one command per write, k = 16 keeps Redis at 0.0625 commands per registration.
    every: int = 16
    # The Redis TTL covers k registrations at +25 % jitter plus the registry's own TTL.
    jitter_allowance: float = 1.25
    # Key prefix of every Redis key and pub/sub channel of one broker deployment.
    prefix: str = "roost:"
    # A process that misses Redis retries its connection this often.
    retry_s: float = 0.5
    # A registration from an identifier not in memory is looked up in Redis again after
    # this, once: its enrollment may still be in another process's pipeline.
    miss_retry_s: float = 0.1
    # Lookups of unknown identifiers in flight at once (what a flood of them can cost).
    max_resolving: int = 256
    # A forwarded channel whose owner does not answer within this is answered here.
    route_timeout_s: float = 2.0
    # The node link (docs/broker-scale.md, "Node link"): the advertised address lives this
    # long in Redis and is rewritten every third of it; a link that cannot be opened or
    # went down is dialled again after link_first_s doubling up to link_cap_s (± 20 %),
    # while routed channels asked for it within link_idle_s; at most max_links outbound
    # links; one whose unsent bytes pass link_buffer (a peer that stopped reading) ends.
    peer_ttl_s: float = 30.0
    link_first_s: float = 0.1
    link_cap_s: float = 5.0
    link_idle_s: float = 60.0
    max_links: int = 256
    link_buffer: int = 8 * 1024 * 1024
    # A presence record this process read stays this long, so a lookup for the same
    # target is answered without a Redis read (the read for its connect runs alongside);
    # 0 reads every time. At most lookup_cache_entries records are kept.
    lookup_cache_s: float = 5.0
    lookup_cache_entries: int = 4096
    # Processes on one host and in one network namespace link over a local socket (an
    # abstract Unix socket, the peer's user checked by the kernel's SO_PEERCRED) instead
    # of TLS over TCP: each hop of a routed setup costs less (docs/broker-scale.md, "Node
    # link"). False: TLS between every pair.
    local_link: bool = True

    def __post_init__(self) -> None:
        if self.lookup_cache_s < 0 or self.lookup_cache_entries < 1:
            raise ValueError("presence_cache_s must be >= 0 and lookup_cache_entries >= 1")
        if self.every < 1:
            raise ValueError("presence_every must be >= 1")
        if not self.prefix or len(self.prefix) > 64:
            raise ValueError("the key prefix must be 1-64 characters")
        for name in (
            "jitter_allowance",
            "retry_s",
            "miss_retry_s",
            "route_timeout_s",
            "peer_ttl_s",
            "link_first_s",
            "link_cap_s",
            "link_idle_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_resolving < 1 or self.max_links < 1 or self.link_buffer < 1:
            raise ValueError("max_resolving, max_links and link_buffer must be >= 1")

    def presence_key(self, identifier: str) -> str:
        return f"{self.prefix}p:{identifier}"

    def node_channel(self, node: str) -> str:
        return f"{self.prefix}n:{node}"

    def peer_key(self, node: str) -> str:
        return f"{self.prefix}l:{node}"
