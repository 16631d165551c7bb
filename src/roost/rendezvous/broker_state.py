"""The broker core's records: counters, TLS connections and connection requests (pure).

Plain slotted objects the core (`roost.rendezvous.broker`) mutates; nothing here decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from roost.rendezvous.broker_events import SessionState
from roost.rendezvous.messages import Candidate

__all__ = ["Address", "BrokerCounters", "ChannelRecord", "SessionRecord"]

Address = tuple[str, int]


@dataclass(slots=True)
class BrokerCounters:
    """Totals since start (the status document and /metrics read them)."""

    stun_answers: int = 0
    registrations: int = 0
    enrollments: int = 0
    lookups: int = 0
    connects: int = 0
    wakes_sent: int = 0
    wake_pushes: int = 0
    presents: int = 0
    accepts: int = 0
    rejects: int = 0
    relayed_sessions: int = 0
    relayed_bytes: int = 0
    relay_closes: int = 0
    keepalives: int = 0
    expired: int = 0
    # TLS connections accepted, and those of them with a verified hub or device identity.
    channels_opened: int = 0
    equipment_channels: int = 0
    # ``hold`` accepted, and connection requests pushed over a holding connection.
    holds: int = 0
    requests_pushed: int = 0


class ChannelRecord:
    """One TLS connection as the core sees it."""

    __slots__ = (
        "certificate",
        "deadline",
        "held",
        "holding",
        "id",
        "issued",
        "peer",
        "pushed",
        "rtt_ms",
        "session",
        "source",
    )

    def __init__(
        self, channel_id: int, peer: str | None, certificate: bytes | None, source: str
    ) -> None:
        self.id = channel_id
        self.peer = peer
        self.certificate = certificate
        self.source = source
        # The session this channel takes part in (issuer: the one it asked for; target:
        # the one it presented for).
        self.session: int | None = None
        self.issued = False
        # Enrolled on this connection (wake pushes go over it while it stays open), and
        # ``hold`` accepted on it: connection requests are pushed over it, several at once
        # (``pushed``: their session numbers).
        self.held = False
        self.holding = False
        self.pushed: set[int] = set()
        self.deadline = 0.0
        self.rtt_ms = 0


class SessionRecord:
    """One connection request (section 5, steps 3 to 8)."""

    __slots__ = (
        "candidates",
        "deadline",
        "id",
        "issuer",
        "relay_bytes",
        "sealed",
        "state",
        "target",
        "target_channel",
        "token",
        "udp_address",
        "wake_until",
    )

    def __init__(
        self,
        session_id: int,
        token: bytes,
        target: str,
        issuer: int,
        candidates: tuple[Candidate, ...],
        sealed: bytes,
    ) -> None:
        self.id = session_id
        self.token = token
        self.target = target
        self.issuer = issuer
        self.candidates = candidates
        self.sealed = sealed
        self.state = SessionState.WAKING
        self.target_channel: int | None = None
        self.udp_address: Address | None = None
        self.wake_until = 0.0
        self.deadline = 0.0
        self.relay_bytes = 0
