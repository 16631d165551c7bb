"""The plug-and-play announce core shared by hubs and devices (PROTOCOL.md section 3).

A pure state machine in the shape of aioquic's connection (STYLE.md): the daemon feeds it
datagrams with ``receive_datagram(data, source, now, wall_ms)``, sends what
``datagrams_to_send(now, wall_ms)`` returns, calls ``handle_timer`` at ``get_timer()``, and
drains ``next_event()``. ``now`` is monotonic seconds, ``wall_ms`` is Unix milliseconds; the
core never reads a clock, a socket or a file.

A hub passes ``own`` and announces itself at start-up (seed step S40) and every
``advert_interval``; a device passes ``own=None`` and only keeps its verified table of live
hubs for failover. Both run the same receive order and the same election, so every node on
the LAN reaches the same winner (section 3, "Election").
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter, deque
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    RoostError,
    VerificationError,
    as_remote,
)
from roost.hcsp.announce import (
    MAX_DATAGRAM,
    check_preamble,
    decode_announcement,
    encode_announcement,
    verify_announcement_signature,
)
from roost.hcsp.certcache import CertificateCache, CertificateVerifier
from roost.hcsp.documents import (
    MAX_CLIENTS,
    HubAddress,
    Subscribe,
    decode_document,
    encode_document,
)
from roost.hcsp.election import Candidate, elect, rank_of
from roost.hcsp.events import AnnouncementRefused, HcspEvent, LiveHub, WinnerChanged
from roost.hcsp.hubtable import HubTable, serial_greater
from roost.pki.certs import identifier_of, load_certificate
from roost.ratelimit import SourceRateLimiter, source_key
from roost.reasons import Reason, RejectionCounter

__all__ = [
    "AnnounceConfig",
    "AnnounceCore",
    "AnnounceCounters",
    "CertificateVerifier",
    "OwnHub",
    "serial_greater",
]


@dataclass(frozen=True, slots=True)
class AnnounceConfig:
    """Every bound and timer of the announce core (STYLE.md: one frozen config)."""

    advert_interval: float = 1.0
    # A hub is gone after this many silent intervals plus the skew below (section 3).
    down_after_intervals: int = 3
    # Skew added to the down timer, in advert intervals as VRRP's Skew_Time is: this much
    # per live hub ranked above the observer, capped; devices (no own hub) use the cap.
    # Defaults give 3.0 s to 3.5 s at a 1 s interval. See docs/hcsp.md.
    skew_intervals_per_position: float = 0.1
    max_skew_intervals: float = 0.5
    freshness_window_ms: int = 10_000
    hold_down: float = 3.0
    rate_per_second: float = 20.0
    rate_burst: float = 40.0
    max_datagram: int = MAX_DATAGRAM
    max_hubs: int = 64
    max_sources: int = 1024
    certificate_cache_size: int = 256
    certificate_cache_ttl: float = 60.0
    # Refusals are logged at most once per source host per this many seconds (PROTOCOL.md
    # preamble); the core queues an AnnouncementRefused event when a line is due.
    refusal_log_interval: float = 60.0
    # (hub identifier, host) pairs: a hub that advertises ``host`` although its datagrams
    # come from elsewhere (NAT, several interfaces), which this receiver chooses to trust.
    trusted_advertised_addresses: frozenset[tuple[str, str]] = frozenset()

    def __post_init__(self) -> None:
        positive = {
            "advert_interval": self.advert_interval,
            "down_after_intervals": self.down_after_intervals,
            "freshness_window_ms": self.freshness_window_ms,
            "rate_per_second": self.rate_per_second,
            "max_hubs": self.max_hubs,
            "max_sources": self.max_sources,
            "certificate_cache_size": self.certificate_cache_size,
            "certificate_cache_ttl": self.certificate_cache_ttl,
            "refusal_log_interval": self.refusal_log_interval,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if self.rate_burst < 1 or self.hold_down < 0 or self.skew_intervals_per_position < 0:
            raise ValueError("rate_burst >= 1, hold_down >= 0 and skew >= 0 are required")
        if not 0 <= self.max_skew_intervals < 1:
            # Below one interval, so the skew orders reactions without hiding a lost hub.
            raise ValueError("max_skew_intervals must be in [0, 1)")
        if not 64 <= self.max_datagram <= 0xFFFF:
            raise ValueError("max_datagram must fit a UDP datagram")

    @property
    def departed_retention(self) -> float:
        """How long a gone hub's replay mark is kept: any datagram it sent before it went
        silent has left the freshness window by then, so it cannot be replayed."""
        return 2 * self.freshness_window_ms / 1000 + self.advert_interval


@dataclass(frozen=True, slots=True)
class OwnHub:
    """The local hub: what it announces and the key it signs with."""

    address: HubAddress
    features: tuple[str, ...]
    max_clients: int
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate_der: bytes = field(repr=False)

    @property
    def identifier(self) -> str:
        return self.address.identifier


@dataclass(slots=True)
class AnnounceCounters:
    """Metrics: accepted announcements, own echoes, and rejections by reason (preamble)."""

    accepted: int = 0
    own_echoes: int = 0
    sent: int = 0
    certificate_cache_hits: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class _Outcome(enum.Enum):
    ACCEPTED = "accepted"
    OWN_ECHO = "own-echo"


def _normalise_host(host: str) -> str:
    """A socket's source host in the canonical text ``Endpoint`` uses.

    Dual-stack sockets report IPv4 peers as ``::ffff:a.b.c.d``; those compare as IPv4.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class AnnounceCore:
    """Announce, verify, keep the live-hub table and elect (section 3); pure, no I/O."""

    def __init__(
        self,
        config: AnnounceConfig,
        own: OwnHub | None,
        verify_hub_certificate: CertificateVerifier,
    ) -> None:
        self._config = config
        self._own = own
        self._hubs = HubTable(config.max_hubs, config.departed_retention)
        self._limiter = SourceRateLimiter(
            config.rate_per_second, config.rate_burst, config.max_sources
        )
        self._certificates = CertificateCache(
            verify_hub_certificate, config.certificate_cache_size, config.certificate_cache_ttl
        )
        self._events: deque[HcspEvent] = deque()
        self._winner: LiveHub | None = None
        self._now: float | None = None
        self._own_first_heard: float | None = None
        self._own_connected = 0
        self._own_max = own.max_clients if own else 0
        self._last_seq = -1
        self._next_advert_at: float | None = None
        self.counters = AnnounceCounters()
        # The logging rule only; ``counters.rejected`` stays the count status reads.
        self._refusal_log = RejectionCounter(config.refusal_log_interval, config.max_sources)
        self._own_public_key: ec.EllipticCurvePublicKey | None = None
        if own is not None:
            self._check_own(own)
            self._own_public_key = own.private_key.public_key()

    # --- public API -------------------------------------------------------------------

    def receive_datagram(
        self, data: bytes, source: tuple[str, int], now: float, wall_ms: int
    ) -> None:
        """Process one received datagram; rejections are counted, never raised.

        Counted by reason: a peer's malformed or unverifiable datagram, and our own limits
        refusing it (``rate-limited``, ``source-table-full``: RefusedError).
        """
        self._advance(now)
        host = _normalise_host(source[0])
        try:
            outcome = self._accept(data, host, source[1], now, wall_ms)
        except RoostError as caught:
            # The receive boundary (STYLE.md, h11's rule; roost.errors.peer_input written
            # inline, since a flood runs this 50,000 times a second): a shared helper's
            # LocalProtocolError on these bytes is the sender's fault, not ours.
            exc = as_remote(caught) if isinstance(caught, LocalProtocolError) else caught
            self.counters.rejected[exc.reason] += 1
            self._note_refusal(exc, host, source[1], now)
            return
        if outcome is _Outcome.OWN_ECHO:
            self.counters.own_echoes += 1
            return
        self.counters.accepted += 1
        self._reelect(now)

    def next_event(self) -> HcspEvent | None:
        """The oldest undelivered event, or None."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self, now: float, wall_ms: int) -> list[bytes]:
        """Our signed announcement when one is due (start-up, then every interval)."""
        self._advance(now)
        own = self._own
        if own is None or (self._next_advert_at is not None and now < self._next_advert_at):
            return []
        # Section 3: seq is wall-clock milliseconds, yet strictly increasing even when the
        # clock repeats or steps back, so a restart never reuses a value and peers never
        # see our own sequence as a replay.
        seq = max(wall_ms, self._last_seq + 1)
        self._last_seq = seq
        datagram = self._encode_own(own, seq, wall_ms)
        # Schedule from ``now`` rather than the previous deadline so a stalled loop sends
        # one announcement, not a burst of catch-up ones.
        self._next_advert_at = now + self._config.advert_interval
        self.counters.sent += 1
        return [datagram]

    def get_timer(self) -> float | None:
        """The next moment ``handle_timer`` (or ``datagrams_to_send``) has work, or None."""
        deadlines: list[float] = []
        if self._own is not None:
            # Before the first announcement the start-up one is due at once (seed S40).
            due = self._next_advert_at if self._next_advert_at is not None else self._now
            deadlines.append(due if due is not None else 0.0)
        timeout = self._down_timeout()
        ripening: list[float] = []
        for state in self._hubs.live():
            deadlines.append(state.last_seen + timeout)
            ripening.append(state.first_heard + self._config.hold_down)
        if self._own_first_heard is not None:
            ripening.append(self._own_first_heard + self._config.hold_down)
        # A hold-down that has already ripened is no longer a deadline.
        deadlines.extend(r for r in ripening if self._now is None or r > self._now)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float, wall_ms: int) -> None:
        """Expire silent hubs, forget old replay marks and re-run the election."""
        del wall_ms  # Kept for symmetry with receive_datagram; expiry runs on ``now``.
        self._advance(now)
        # The same timeout get_timer computed the deadline with (see HubTable.expire).
        self._events.extend(self._hubs.expire(now, self._down_timeout()))
        self._reelect(now)

    def set_load(self, connected: int, max_clients: int) -> None:
        """Update what our next announcement says about connected and maximum clients."""
        if self._own is None:
            raise LocalProtocolError("a device core has no load to announce")
        if not (0 <= connected <= MAX_CLIENTS and 0 <= max_clients <= MAX_CLIENTS):
            raise LocalProtocolError("load is outside 0..65535")
        self._own_connected = connected
        self._own_max = max_clients
        if self._now is not None:
            self._reelect(self._now)

    def live_hubs(self, now: float) -> list[LiveHub]:
        """Verified live hubs, our own included, best rank first."""
        timeout = self._down_timeout()
        hubs = [state.snapshot() for state in self._hubs.live() if now < state.last_seen + timeout]
        own = self._own_snapshot(now)
        if own is not None:
            hubs.append(own)
        hubs.sort(key=lambda hub: hub.rank.sort_key())
        return hubs

    def winner(self, now: float) -> LiveHub | None:
        """The elected hub (section 3 "Election"), or None during the settle window."""
        candidates = [Candidate(hub.rank, hub.first_heard, hub) for hub in self.live_hubs(now)]
        chosen = elect(candidates, now, self._config.hold_down)
        return chosen.payload if chosen is not None else None

    def clear_certificate_cache(self) -> None:
        """Forget cached certificate verdicts; call after the trust store changes."""
        self._certificates.clear()

    # --- receive order (section 3) ----------------------------------------------------

    def _accept(
        self, data: bytes, source_host: str, source_port: int, now: float, wall_ms: int
    ) -> _Outcome:
        config = self._config
        # 1-2. Size cap, then magic and version: no state touched, no allocation.
        check_preamble(data, config.max_datagram)
        # 3. Per-source rate limit, before any parsing.
        # Keyed by host (IPv6 by /64), never by port: a host that sends from many sockets
        # is one source, so 64 ports do not buy 64 budgets.
        self._limiter.take(source_key(source_host), now)
        # 4. Lengths consistent, no trailing bytes; then the hardened XML parse.
        announcement = decode_announcement(data, config.max_datagram)
        document = decode_document(announcement.document, config.max_datagram)
        if not isinstance(document, Subscribe):
            raise RemoteProtocolError("datagram carries no subscribe", reason="not-subscribe")
        identifier = document.sender.identifier
        # Multicast loops our own datagrams back to us (handover §3 item 11). It is an echo
        # only when it carries our certificate and our signature: anything else claiming
        # our identifier is refused and counted like any other failed announcement.
        if self._own is not None and identifier == self._own.identifier:
            assert self._own_public_key is not None
            if announcement.certificate != self._own.certificate_der:
                raise VerificationError(
                    "an announcement claims our identifier", reason=Reason.FORGED_OWN_ID
                )
            verify_announcement_signature(announcement, self._own_public_key)
            return _Outcome.OWN_ECHO
        # 5. Freshness of ts against our wall clock.
        self._check_freshness(document.ts, wall_ms)
        # 6. Replay: seq must pass the high-water mark of that hub (serial order).
        state = self._hubs.check_sequence(identifier, document.seq)
        # The advertised address is signed, but a hub could still lie about where it is;
        # it must be where the datagram came from unless we trust an override (section 3).
        self._check_source(document.sender, source_host)
        # Refuse a new hub before the public-key work when the table is full of live hubs.
        self._hubs.check_room(state)
        # 7. Certificate chains to a trusted CA and names exactly the `from` identifier.
        verdict, cached = self._certificates.verdict(announcement.certificate, now)
        if cached:
            self.counters.certificate_cache_hits += 1
        public_key = verdict.public_key_for(identifier)
        # 8. Signature over every byte before sig_len, always checked.
        verify_announcement_signature(announcement, public_key)
        # 9. Only now does the high-water mark (and the rest of the entry) advance.
        event = self._hubs.record(state, document, now)
        if event is not None:
            self._events.append(event)
        return _Outcome.ACCEPTED

    def _note_refusal(self, error: RoostError, host: str, port: int, now: float) -> None:
        """Queue a log line for a refusal when the rule allows (PROTOCOL.md preamble).

        Keyed by host, not host and port: a flood from many sockets of one host is one
        source for logging, as it is for the rate limit above.
        """
        suppressed = self._refusal_log.count(error, source=host, now=now)
        if suppressed is not None:
            self._events.append(AnnouncementRefused(host, port, error.reason, suppressed))

    def _check_freshness(self, ts: int, wall_ms: int) -> None:
        window = self._config.freshness_window_ms
        if ts < wall_ms - window:
            raise VerificationError("announcement is older than the window", reason="stale")
        if ts > wall_ms + window:
            raise VerificationError("announcement is from the future", reason="future")

    def _check_source(self, sender: HubAddress, source_host: str) -> None:
        if sender.endpoint.host == source_host:
            return
        if (sender.identifier, sender.endpoint.host) in self._config.trusted_advertised_addresses:
            return
        raise VerificationError(
            f"{sender.identifier} advertises {sender.endpoint.host} but sent from {source_host}",
            reason="source-mismatch",
        )

    # --- liveness and election --------------------------------------------------------

    def _advance(self, now: float) -> None:
        if self._now is None or now > self._now:
            self._now = now
        if self._own is not None and self._own_first_heard is None:
            self._own_first_heard = now

    def _down_timeout(self) -> float:
        config = self._config
        return config.down_after_intervals * config.advert_interval + self._skew()

    def _skew(self) -> float:
        """Rank-dependent skew (section 3): the best-ranked observer reacts first.

        As in VRRP's Skew_Time, a better hub notices a silent hub slightly earlier than a
        worse one, so the hubs that will lose do not all re-plan redirects in the same
        instant. Devices only listen and use the largest skew.
        """
        config = self._config
        if self._own is None:
            return config.max_skew_intervals * config.advert_interval
        own_rank = rank_of(self._own.features, self._own_max, self._own.identifier)
        above = sum(1 for s in self._hubs.live() if s.rank.beats(own_rank))
        intervals = min(config.max_skew_intervals, config.skew_intervals_per_position * above)
        return intervals * config.advert_interval

    def _reelect(self, now: float) -> None:
        winner = self.winner(now)
        previous = self._winner
        changed = (winner is None) != (previous is None) or (
            winner is not None and previous is not None and winner.identifier != previous.identifier
        )
        self._winner = winner
        if changed:
            self._events.append(WinnerChanged(winner, previous))

    # --- our own hub ------------------------------------------------------------------

    def _own_snapshot(self, now: float) -> LiveHub | None:
        own = self._own
        if own is None or self._own_first_heard is None:
            return None
        return LiveHub(
            identifier=own.identifier,
            endpoint=own.address.endpoint,
            features=own.features,
            connected=self._own_connected,
            max_clients=self._own_max,
            rank=rank_of(own.features, self._own_max, own.identifier),
            first_heard=self._own_first_heard,
            last_seen=now,
            is_self=True,
        )

    def _encode_own(self, own: OwnHub, seq: int, wall_ms: int) -> bytes:
        document = Subscribe(
            sender=own.address,
            features=own.features,
            connected=self._own_connected,
            max_clients=self._own_max,
            seq=seq,
            ts=wall_ms,
        )
        return encode_announcement(
            encode_document(document),
            own.certificate_der,
            own.private_key,
            self._config.max_datagram,
        )

    def _check_own(self, own: OwnHub) -> None:
        """Fail at start-up, not at the first announcement, on a misconfigured hub."""
        try:
            certificate = load_certificate(own.certificate_der)
        except RemoteProtocolError as exc:
            raise LocalProtocolError("own certificate does not parse") from exc
        if identifier_of(certificate) != own.identifier:
            raise LocalProtocolError("own certificate does not name the own identifier")
        # The largest announcement we could send must fit the datagram cap.
        probe = Subscribe(own.address, own.features, MAX_CLIENTS, MAX_CLIENTS, 2**64 - 1, 2**64 - 1)
        encode_announcement(
            encode_document(probe), own.certificate_der, own.private_key, self._config.max_datagram
        )
