"""The agent's constants, counters and commands (the core is ``roost.rendezvous.agent``).

Split from the core so each module stays readable; ``roost.rendezvous.agent`` re-exports
every name, and that is where callers import them from.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from roost.errors import ConfigError
from roost.reasons import Reason
from roost.rendezvous.messages import Candidate
from roost.rendezvous.sessions import PUNCH_ATTEMPTS, RendezvousEvent

__all__ = [
    "REJECT_REASONS",
    "AgentConfig",
    "AgentCounters",
    "AgentEvent",
    "CheckPassword",
    "CloseConnection",
    "OpenEnrollConnection",
    "OpenHeldConnection",
    "OpenPresentConnection",
    "ReflexiveAddress",
    "RelayReady",
    "SessionEnded",
]

# The reasons a hub tells the issuer; anything else (an unknown user among them, so that a
# reject does not reveal which users exist) goes out as bad-password.
REJECT_REASONS = frozenset({Reason.BAD_PASSWORD, Reason.BAD_SEAL, Reason.LOCKED_OUT, Reason.BUSY})


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The agent's constants (docs/broker.md, steps 1, 2 and 4)."""

    # Registration interval until the broker's ``enrolled`` names its own, and the uniform
    # jitter around it (step 2: every 20 s ± 20 %, so NAT mappings of about 30 s live on).
    interval: float = 20.0
    jitter: float = 0.2
    # A broker's interval below this is raised to it: a bad answer cannot make us flood.
    min_interval: float = 1.0
    # A RACK later than this counts as missing; after ``missed_racks`` in a row the agent
    # holds a TLS connection instead (step 2).
    rack_timeout: float = 3.0
    missed_racks: int = 3
    # A RACK that names another port of the same public address than the last one means
    # the NAT forgot our mapping between two registrations and made a new one (its UDP
    # timeout is shorter than the interval, so wake-ups sent meanwhile were lost): the
    # interval is halved, down to this (docs/broker.md, "The two ends").
    shortest_adapted_interval: float = 5.0
    keepalive_interval: float = 20.0
    # Keep the mutual-TLS connection open at all times and ask the broker to ``hold`` it,
    # so requests come straight over it (docs/broker.md, "Held connections"). The hub
    # config's ``[broker].hold_connection`` sets it (default there: true); the core's
    # default is the base flow of UDP registrations and wake-ups.
    hold_connection: bool = False
    # No record from the broker this long after a keepalive: the held connection is dead
    # (a NAT or broker that dropped it silently) and is opened again.
    keepalive_timeout: float = 10.0
    # A broker that refused ``hold`` (``held-limit``) is asked again after this (± jitter);
    # meanwhile UDP registrations and wake-ups reach the hub as without the option.
    hold_retry: float = 300.0
    # A failed enrollment or held connection is opened again after this.
    enroll_retry: float = 5.0
    # Consecutive failures double that delay (± jitter), up to this many times it.
    enroll_backoff_max: int = 8
    # A session that has no direct or relayed path this long after its wake-up ends.
    setup_timeout: float = 30.0
    max_sessions: int = 4
    # The broker resends RWAK with the same token for 5 s (step 4): a token seen is
    # remembered this long, at most ``max_tokens`` of them, so a resend opens nothing.
    token_memory: float = 10.0
    max_tokens: int = 64
    punch_attempts: int = PUNCH_ATTEMPTS

    def __post_init__(self) -> None:
        for name in (
            "interval",
            "min_interval",
            "rack_timeout",
            "keepalive_interval",
            "keepalive_timeout",
            "hold_retry",
            "shortest_adapted_interval",
            "enroll_retry",
            "setup_timeout",
            "token_memory",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"jitter must be in [0, 1), not {self.jitter!r}")
        for name in ("missed_racks", "max_sessions", "max_tokens", "punch_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")


@dataclass(slots=True)
class AgentCounters:
    """What the agent did, for status and metrics; ``ignored`` counts by Reason."""

    registrations: int = 0
    acks: int = 0
    enrollments: int = 0
    fallbacks: int = 0
    # RACKs showing a new NAT mapping (another port), and the interval shortenings.
    remapped: int = 0
    adapted: int = 0
    keepalives: int = 0
    # ``hold`` accepted by the broker, refused (by reason), keepalives left unanswered, and
    # connection requests that came over the holding connection.
    holds: int = 0
    hold_refused: collections.Counter[str] = field(default_factory=collections.Counter)
    keepalive_timeouts: int = 0
    held_requests: int = 0
    wakes: int = 0
    wake_resends: int = 0
    accepted: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    direct: int = 0
    relayed: int = 0
    ended: collections.Counter[str] = field(default_factory=collections.Counter)
    ignored: collections.Counter[str] = field(default_factory=collections.Counter)


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class AgentEvent(RendezvousEvent):
    """Base of every command the agent gives its adapter (``StartPunch`` is shared)."""


@dataclass(frozen=True, slots=True)
class OpenEnrollConnection(AgentEvent):
    """Open mutual TLS to the broker as ``channel``; ``enroll`` is queued on it."""

    channel: int


@dataclass(frozen=True, slots=True)
class OpenHeldConnection(AgentEvent):
    """Open and keep mutual TLS as ``channel`` (``enroll`` queued). ``fallback``: because
    UDP gets no RACK (the broker may be gone: the adapter moves to the next of its list);
    otherwise the connection the agent holds by configuration (``hold_connection``)."""

    channel: int
    fallback: bool = True


@dataclass(frozen=True, slots=True)
class OpenPresentConnection(AgentEvent):
    """A valid wake-up: open a new mutual-TLS ``channel``; ``present(token)`` is queued."""

    channel: int
    token: bytes


@dataclass(frozen=True, slots=True)
class CloseConnection(AgentEvent):
    """Close ``channel`` once its queued records are written."""

    channel: int


@dataclass(frozen=True, slots=True)
class CheckPassword(AgentEvent):
    """Work item: ``open_request`` with the hub key, identifier and ``issuer_candidates``,
    then check that user's password; answer ``password_checked(session, ok, now, reason)``."""

    session: int
    sealed: bytes
    issuer_candidates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class RelayReady(AgentEvent):
    """The broker relays ``session`` over ``channel`` within these limits (None: unsaid)."""

    session: int
    channel: int
    max_bytes: int | None
    max_ms: int | None


@dataclass(frozen=True, slots=True)
class SessionEnded(AgentEvent):
    """A session ended (``session`` is None when it ended before its request)."""

    session: int | None
    channel: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class ReflexiveAddress(AgentEvent):
    """The broker saw our registrations come from ``candidate`` (first time or changed)."""

    candidate: Candidate
