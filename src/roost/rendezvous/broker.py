"""The broker core of PROTOCOL.md section 5: registrations, wake-ups, sessions, relay (pure).

In the aioquic shape (STYLE.md): the adapter (``broker_aio``) hands in datagrams with their
source (``receive_datagram``) and, per TLS connection ("channel"), the verified peer
identifier (``open_channel``; None for an issuer without a certificate) and each record
body (``receive_record``); it sends what ``datagrams_to_send`` and ``records_to_send``
return, acts on ``next_event`` and calls ``handle_timer`` at ``get_timer``.

UDP port (section 5, "Registration" and "Wake-up"):

- Every datagram spends a token of the global and the per-source bucket first, so a flood
  is shed before any parse or HMAC.
- STUN Binding requests are answered with the datagram's source (XOR-MAPPED-ADDRESS), but
  never with more than ``stun_amplification`` times the request's size.
- RREG: structure, then the identifier's key (``not-enrolled``), the tag (``bad-tag``) and
  the counter (``counter-not-increasing``); the SOURCE becomes the reflexive address and
  RACK(counter, source) answers, never larger than the registration.
- RWAK(counter, token) goes to the target's reflexive address at once and every
  ``wake_resend_s`` with a new counter and the same token until ``present`` or
  ``wake_timeout_s``. The counter starts at ``wake_counter_start`` (the adapter passes wall
  microseconds, so it keeps rising across restarts) and never repeats.

TLS channels: ``enroll`` (a verified hub or device) → ``enrolled``; ``hold`` on that
connection → ``holding`` (up to ``max_held`` at once, else ``held-limit``); ``lookup`` →
``lookup-result`` for an enrolled, live target; ``connect`` → ``connecting`` plus, for a
target with a holding connection, ``request`` pushed straight over it (no wake-up, no new
connection, no ``present``; several sessions share it), otherwise the wake-up (RWAK when the
target registered within TTL, ``wake`` over its held connection when it has one);
``present(token)`` by the session's target → ``request``; ``accept`` →
``start`` to both, ``reject`` → ``reject`` to the issuer; ``relay-open`` → ``relay-open``
with the limits to both, then relay records forwarded; ``keepalive`` is echoed. Every
refusal is counted by reason (``rejections``) and answered with ``error(reason)``; a body
that does not parse also closes the channel.
"""

from __future__ import annotations

import heapq
import random
from collections import deque

from roost.errors import RefusedError, RoostError, VerificationError
from roost.ratelimit import SourceRateLimiter, TokenBucket, source_key
from roost.reasons import Reason, RejectionCounter
from roost.rendezvous import control, stun
from roost.rendezvous.broker_events import (
    SESSION_TRANSITIONS,
    BrokerCoreConfig,
    BrokerEvent,
    CloseChannel,
    Refused,
    SessionInput,
    SessionState,
)
from roost.rendezvous.broker_state import Address, BrokerCounters, ChannelRecord, SessionRecord
from roost.rendezvous.messages import (
    ACK_MAGIC,
    MAX_CANDIDATES,
    REGISTRATION_KEY_SIZE,
    REGISTRATION_MAGIC,
    TOKEN_SIZE,
    Candidate,
    Wake,
    candidate_wire,
    check_counter,
    check_reply_size,
    decode_registration,
    encode_candidates,
    encode_wake,
    registration_candidates,
    scan_registration,
    verify_tag,
)
from roost.rendezvous.presence import PresencePolicy
from roost.rendezvous.registry import Registry

__all__ = ["BrokerCore", "BrokerCounters"]
_MAX_DATAGRAM = stun.MAX_STUN_MESSAGE
_MAX_U32 = 0xFFFFFFFF
_EQUIPMENT_PREFIXES = ("hcsp:", "ab:")


class BrokerCore:
    """The broker's decisions; see the module docstring for the rules."""

    def __init__(
        self,
        config: BrokerCoreConfig,
        registry: Registry | None = None,
        rng: random.Random | None = None,
        *,
        wake_counter_start: int = 0,
        wall_offset_s: float | None = None,
        presence: PresencePolicy | None = None,
    ) -> None:
        self.config = config
        # With a shared registry (docs/broker-scale.md) the policy says which entries are
        # due to be written; None: the in-memory registry alone.
        self.presence = presence
        self._presence_due: list[str] = []
        self._unresolved: list[tuple[str, bytes, Address]] = []
        self.registry = registry or Registry(config.ttl_s, config.max_entries)
        # Keys, tokens and session numbers must be unpredictable: SystemRandom by default.
        self._rng = rng or random.SystemRandom()
        self.counters = BrokerCounters()
        self.rejections = RejectionCounter(config.log_interval_s, config.max_sources)
        self._wake_counter = wake_counter_start
        # ``now`` plus this is wall time. When given, every RWAK counter is at least the wall
        # clock in microseconds, so the counters of all broker processes sharing one registry
        # rise together: an equipment that re-homes from a process started later to one
        # started earlier (its key kept, docs/broker-scale.md) still takes the new owner's
        # wake-ups, whose counters would otherwise be below its floor (section 5).
        self._wall_offset_s = wall_offset_s
        self._udp_global = TokenBucket(config.global_udp_rate, config.global_udp_burst)
        self._udp_sources = SourceRateLimiter(
            config.udp_source_rate, config.udp_source_burst, config.max_sources
        )
        self._tls_sources = SourceRateLimiter(
            config.tls_source_rate, config.tls_source_burst, config.max_sources
        )
        self._targets = SourceRateLimiter(
            config.target_rate, config.target_burst, config.max_sources
        )
        self._wake_global = TokenBucket(config.global_wake_rate, config.global_wake_burst)
        self._channels: dict[int, ChannelRecord] = {}
        self._sessions: dict[int, SessionRecord] = {}
        self._tokens: dict[bytes, int] = {}
        # Identifier → its holding connection (``hold`` accepted; at most max_held).
        self._holders: dict[str, int] = {}
        self._relaying: dict[str, int] = {}
        self._datagrams: list[tuple[bytes, Address]] = []
        self._records: list[tuple[int, bytes]] = []
        self._events: deque[BrokerEvent] = deque()
        # (when, sequence, kind, id): a session or channel deadline, checked when popped.
        self._timers: list[tuple[float, int, str, int]] = []
        self._timer_seq = 0

    # ------------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """UDP datagrams and their destinations, in order."""
        out, self._datagrams = self._datagrams, []
        return out

    def records_to_send(self) -> list[tuple[int, bytes]]:
        """Record bodies per channel, in order (the adapter frames them)."""
        out, self._records = self._records, []
        return out

    def next_event(self) -> BrokerEvent | None:
        return self._events.popleft() if self._events else None

    def presence_to_write(self) -> list[str]:
        """Identifiers whose shared presence is due (enrolled, changed, every k-th
        registration or keepalive); empty without a presence policy."""
        out, self._presence_due = self._presence_due, []
        return out

    def registrations_to_resolve(self) -> list[tuple[str, bytes, Address]]:
        """Registrations refused ``not-enrolled`` or ``bad-tag`` here that another process
        may have enrolled: ``(identifier, datagram, source)`` for the adapter to look up
        in the shared registry, ``adopt`` and hand in again."""
        out, self._unresolved = self._unresolved, []
        return out

    def adopt(
        self, identifier: str, key: bytes, counter: int, certificate: bytes | None, now: float
    ) -> None:
        """Take over an entry from the shared registry (its key, counter, certificate)."""
        self.registry.adopt(identifier, key, counter, certificate, now)

    def answer_lookup(self, channel_id: int, target: str, certificate: bytes, now: float) -> None:
        """A ``lookup`` for a target another broker process owns, answered with the
        certificate its shared presence holds (docs/broker-scale.md, "Routing"); the same
        buckets as a local lookup are spent, and the owner checks liveness at ``connect``."""
        channel = self._channels.get(channel_id)
        if channel is None:
            return
        self._arm_channel(channel, now)
        try:
            self._tls_sources.take(channel.source, now)
            self._targets.take(target, now)
        except RefusedError as exc:
            self._error(channel, exc, now, None)
            return
        self._send(channel.id, control.LookupResult(target, certificate))
        self.counters.lookups += 1

    def get_timer(self) -> float | None:
        """The next deadline: a wake-up resend, a session or channel limit, or expiry."""
        while self._timers and not self._timer_valid(self._timers[0]):
            heapq.heappop(self._timers)
        candidates = [self._timers[0][0]] if self._timers else []
        expiry = self.registry.next_expiry()
        if expiry is not None:
            candidates.append(expiry)
        return min(candidates) if candidates else None

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            if not self._timer_valid(entry):
                continue
            _, _, kind, key = entry
            if kind == "s":
                self._session_timer(self._sessions[key], now)
            else:
                self._close(self._channels[key], Reason.IDLE_TIMEOUT, now)
        self.counters.expired += self.registry.expire(now, self.config.expire_budget)

    @property
    def channels(self) -> int:
        return len(self._channels)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    @property
    def holding(self) -> int:
        """Connections that hold for their equipment (``hold`` accepted) right now."""
        return len(self._holders)

    def holder_of(self, identifier: str) -> int | None:
        """The channel holding for ``identifier``, or None."""
        return self._holders.get(identifier)

    @property
    def relaying(self) -> int:
        return sum(self._relaying.values())

    def session_state(self, session: int) -> SessionState | None:
        found = self._sessions.get(session)
        return None if found is None else found.state

    # ------------------------------------------------------------------ refusals

    def _refuse(self, error: RoostError | str, source: str, now: float) -> None:
        suppressed = self.rejections.count(error, source=source, now=now)
        if suppressed is not None:
            reason = error if isinstance(error, str) else error.reason
            self._events.append(Refused(source, reason, suppressed))

    # ------------------------------------------------------------------ UDP side

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """One datagram on the broker's UDP port from ``addr`` (host, port)."""
        host = addr[0]
        try:
            self._udp_global.take(now)
            # By host (IPv6 by /64): one machine's many ports are one source.
            self._udp_sources.take(source_key(host), now)
        except RefusedError as exc:
            self._refuse(exc, host, now)
            return
        try:
            if len(data) > _MAX_DATAGRAM:
                raise RefusedError("datagram too large", reason=Reason.OVERSIZED)
            if data[:4] == REGISTRATION_MAGIC:
                self._registration(data, candidate_wire(host, addr[1]), addr, now)
            elif stun.looks_like_stun(data):
                self._answer_stun(data, candidate_wire(host, addr[1]), addr)
            else:
                raise RefusedError("not a broker datagram", reason=Reason.BAD_MAGIC)
        except RoostError as exc:
            self._refuse(exc, host, now)

    def _answer_stun(self, data: bytes, observed: bytes, addr: Address) -> None:
        response = stun.answer_binding_request(data, observed)
        # Amplification (research/rendezvous.md section 3.3): the source is unproven.
        if len(response) > len(data) * self.config.stun_amplification:
            raise RefusedError(
                "STUN request smaller than its answer", reason=Reason.REPLY_TOO_LARGE
            )
        self._datagrams.append((response, addr))
        self.counters.stun_answers += 1

    def _registration(self, data: bytes, observed: bytes, addr: Address, now: float) -> None:
        # Section 5, "Registration", in the order of its checks: structure, enrolled key,
        # tag, counter. The datagram is checked in place and its candidates are stored in
        # their wire form, so a registration builds no objects (docs/BENCHMARKS.md, "Broker").
        identifier, counter, count, tag_start = scan_registration(data)
        known = self.registry.key_and_counter(identifier)
        if known is None:
            decode_registration(data)  # a malformed identifier has its own reason
            if self.presence is not None:
                self._unresolved.append((identifier, data, addr))
            raise VerificationError(
                "registration from an unknown identifier", reason=Reason.NOT_ENROLLED
            )
        key, last = known
        try:
            verify_tag(key, data[:tag_start], data[tag_start:])
        except VerificationError:
            # Shared registry: the equipment may have enrolled again at another process.
            if self.presence is not None:
                self._unresolved.append((identifier, data, addr))
            raise
        # A counter is above the last accepted one, and above 0 (0 stands for "none yet").
        check_counter(last, counter)
        ack = ACK_MAGIC + counter.to_bytes(8, "big") + observed
        check_reply_size(ack, data)
        if count < MAX_CANDIDATES:
            # ``magic | version | length | identifier | counter | count``, then candidates.
            candidates_start = 6 + data[5] + 9
            addresses = bytes((count + 1,)) + observed + data[candidates_start:tag_start]
        else:
            # Sixteen local candidates plus the reflexive one exceed what the list holds.
            local_candidates = registration_candidates(data, count, tag_start)
            addresses = encode_candidates(
                (Candidate.of(*addr[:2]), *local_candidates[: MAX_CANDIDATES - 1])
            )
        changed = self.registry.register_packed(identifier, counter, addresses, now)
        self._datagrams.append((ack, addr))
        self.counters.registrations += 1
        if self.presence is not None and self.presence.registration_due(counter, changed):
            self._presence_due.append(identifier)

    def _send_wake(self, session: SessionRecord, now: float) -> None:
        key = self.registry.key_of(session.target)
        if key is None or session.udp_address is None:
            return
        self._wake_counter += 1
        if self._wall_offset_s is not None:
            self._wake_counter = max(
                self._wake_counter, int((now + self._wall_offset_s) * 1_000_000)
            )
        datagram = encode_wake(Wake(self._wake_counter, session.token), key)
        self._datagrams.append((datagram, session.udp_address))
        self.counters.wakes_sent += 1

    # ------------------------------------------------------------------ channels

    def open_channel(
        self,
        channel_id: int,
        peer_identifier: str | None,
        source_host: str,
        now: float,
        *,
        certificate: bytes | None = None,
    ) -> None:
        """A TLS connection opened; ``peer_identifier`` is the verified client identity
        (None for an issuer without a certificate), ``certificate`` its DER."""
        channel = ChannelRecord(channel_id, peer_identifier, certificate, source_host)
        self._channels[channel_id] = channel
        self.counters.channels_opened += 1
        if peer_identifier is not None and peer_identifier.startswith(_EQUIPMENT_PREFIXES):
            self.counters.equipment_channels += 1
        self._arm_channel(channel, now)

    def channel_rtt(self, channel_id: int, rtt_ms: int) -> None:
        """The connection's measured round trip (the adapter reads the kernel's estimate):
        ``start`` tells that side to wait half of it less (section 5, step 6)."""
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel.rtt_ms = max(0, int(rtt_ms))

    def _rtt_of(self, channel_id: int | None) -> int:
        channel = self._channels.get(channel_id) if channel_id is not None else None
        return channel.rtt_ms if channel is not None else 0

    def _start_delays(self, issuer_rtt: int, target_rtt: int) -> tuple[int, int]:
        # Section 5, step 6: one common start time, reached by each side at once. The
        # start message needs half a round trip to reach each side, so the common moment
        # is the farther side's half round trip plus a margin for the estimate's error,
        # never later than start_delay_ms; with a round trip unknown (0: no kernel
        # estimate) the fixed start_delay_ms is all the broker can go by.
        config = self.config
        if issuer_rtt > 0 and target_rtt > 0:
            common = max(issuer_rtt, target_rtt) // 2 + config.start_margin_ms
            common = min(config.start_delay_ms, common)
        else:
            common = config.start_delay_ms
        return (max(0, common - issuer_rtt // 2), max(0, common - target_rtt // 2))

    def close_channel(self, channel_id: int, now: float) -> None:
        """The connection closed (either side); its sessions end."""
        channel = self._channels.pop(channel_id, None)
        if channel is None:
            return
        peer = channel.peer
        if peer is not None and self._holders.get(peer) == channel_id:
            del self._holders[peer]
        if channel.held and peer is not None:
            self.registry.release(peer, channel_id)
            holder = self._holders.get(peer)
            entry = self.registry.get(peer)
            if holder is not None and entry is not None and entry.held is None:
                # A newer connection that enrolled closed while an older one still holds.
                self.registry.hold(peer, holder)
            if self.presence is not None:
                self.presence.forget(peer)
        ended = [channel.session] if channel.session is not None else []
        for session_id in [*ended, *sorted(channel.pushed)]:
            if session_id in self._sessions:
                self._end(self._sessions[session_id], Reason.DISCONNECTED, skip=channel_id)

    def _close(self, channel: ChannelRecord, reason: Reason, now: float) -> None:
        self._events.append(CloseChannel(channel.id, reason))
        self.close_channel(channel.id, now)

    def _arm_channel(self, channel: ChannelRecord, now: float) -> None:
        limit = self.config.ttl_s if channel.held else self.config.channel_idle_s
        channel.deadline = now + limit
        self._push_timer(channel.deadline, "c", channel.id)

    def _send(self, channel_id: int | None, message: control.ControlMessage) -> None:
        if channel_id is not None and channel_id in self._channels:
            self._records.append((channel_id, control.encode_control_message(message)))

    def _error(
        self, channel: ChannelRecord, error: RoostError, now: float, session: int | None
    ) -> None:
        self._refuse(error, channel.source, now)
        with_session = session if session is not None and 0 <= session <= _MAX_U32 else None
        self._send(channel.id, control.Error(Reason(error.reason), with_session))

    def receive_record(self, channel_id: int, body: bytes, now: float) -> None:
        """One record body from channel ``channel_id``."""
        channel = self._channels.get(channel_id)
        if channel is None:
            return
        self._arm_channel(channel, now)
        if body[:1] != b"{":
            self._relay_record(channel, body, now)
            return
        try:
            # The per-source bucket before the JSON parse (the body is size-capped already).
            self._tls_sources.take(channel.source, now)
        except RefusedError as exc:
            self._error(channel, exc, now, None)
            return
        try:
            message = control.decode_control(body)
        except RoostError as exc:
            self._error(channel, exc, now, None)
            self._close(channel, Reason(exc.reason), now)
            return
        try:
            self._dispatch(channel, message, now)
        except RoostError as exc:
            self._error(channel, exc, now, getattr(message, "session", None))

    def _dispatch(
        self, channel: ChannelRecord, message: control.ControlMessage, now: float
    ) -> None:
        if isinstance(message, control.Enroll):
            self._enroll(channel, now)
        elif isinstance(message, control.Keepalive):
            self._keepalive(channel)
        elif isinstance(message, control.Hold):
            self._hold(channel)
        elif isinstance(message, control.Lookup):
            self._lookup(channel, message, now)
        elif isinstance(message, control.Connect):
            self._connect(channel, message, now)
        elif isinstance(message, control.Present):
            self._present(channel, message, now)
        elif isinstance(message, control.Accept):
            self._accept(channel, message, now)
        elif isinstance(message, control.Reject):
            self._reject(channel, message)
        elif isinstance(message, control.RelayOpen):
            self._relay_open(channel, message, now)
        elif isinstance(message, control.RelayClose):
            self._relay_close(channel, message)
        else:
            raise RefusedError(f"{message.op} is the broker's op", reason=Reason.UNEXPECTED_MESSAGE)

    # ------------------------------------------------------------------ equipment ops

    def _equipment(self, channel: ChannelRecord) -> str:
        if channel.peer is None or not channel.peer.startswith(_EQUIPMENT_PREFIXES):
            raise RefusedError("no verified equipment identity", reason=Reason.NOT_EQUIPMENT)
        return channel.peer

    def _enroll(self, channel: ChannelRecord, now: float) -> None:
        identifier = self._equipment(channel)
        self._targets.take(identifier, now)
        key = self._rng.randbytes(REGISTRATION_KEY_SIZE)
        self.registry.enroll(identifier, key, channel.certificate, now)
        previous = self._holders.get(identifier)
        if previous is not None and previous != channel.id:
            # Enrolling again on another connection: the equipment gave the holding one up
            # (it reconnects only when that one failed), so no request is pushed there.
            del self._holders[identifier]
            if previous in self._channels:
                self._channels[previous].holding = False
        # Section 5: the enrolling connection is the one a wake is pushed over while it
        # stays open (the agent keeps it when registrations get no RACK, or holds it).
        self.registry.hold(identifier, channel.id)
        channel.held = True
        self._arm_channel(channel, now)
        self._send(channel.id, control.Enrolled(identifier, key, self.config.interval_ms))
        self.counters.enrollments += 1
        if self.presence is not None:
            self._presence_due.append(identifier)

    def _keepalive(self, channel: ChannelRecord) -> None:
        identifier = self._equipment(channel)
        if not channel.held or identifier not in self.registry:
            raise RefusedError("keepalive before enroll", reason=Reason.NOT_ENROLLED)
        self._send(channel.id, control.Keepalive())
        self.counters.keepalives += 1
        if self.presence is not None and self.presence.keepalive_due(identifier):
            self._presence_due.append(identifier)

    def _hold(self, channel: ChannelRecord) -> None:
        # docs/broker.md, "Held connections": the equipment asks to be reached over this,
        # its enrolled connection; requests are then pushed over it instead of a wake-up.
        identifier = self._equipment(channel)
        if not channel.held or identifier not in self.registry:
            raise RefusedError("hold before enroll", reason=Reason.NOT_ENROLLED)
        if not channel.holding:
            previous = self._holders.get(identifier)
            if previous is None and len(self._holders) >= self.config.max_held:
                raise RefusedError(
                    "the broker holds as many connections as it allows", reason=Reason.HELD_LIMIT
                )
            if previous is not None and previous in self._channels:
                # Another connection of the same equipment held: this one takes its place
                # (within the same count); the sessions already pushed there go on.
                self._channels[previous].holding = False
            self._holders[identifier] = channel.id
            channel.holding = True
            self.counters.holds += 1
        self._send(channel.id, control.Holding())

    # ------------------------------------------------------------------ issuer ops

    def _check_target(self, channel: ChannelRecord, target: str, now: float) -> bytes:
        self._targets.take(target, now)
        entry = self.registry.get(target)
        if entry is None or entry.certificate is None:
            raise RefusedError("target is not enrolled", reason=Reason.UNKNOWN_TARGET)
        if not self.registry.live(target, now):
            raise RefusedError("target is not live", reason=Reason.TARGET_OFFLINE)
        return entry.certificate

    def _lookup(self, channel: ChannelRecord, message: control.Lookup, now: float) -> None:
        certificate = self._check_target(channel, message.target, now)
        self._send(channel.id, control.LookupResult(message.target, certificate))
        self.counters.lookups += 1

    def _connect(self, channel: ChannelRecord, message: control.Connect, now: float) -> None:
        if channel.session is not None or channel.issued:
            raise RefusedError("one connection request per connection", reason=Reason.SESSION_LIMIT)
        if len(self._sessions) >= self.config.max_sessions:
            raise RefusedError("too many open connection requests", reason=Reason.SESSION_LIMIT)
        self._check_target(channel, message.target, now)
        entry = self.registry.get(message.target)
        assert entry is not None
        holder = self._holders.get(message.target)
        if holder is not None:
            self._push_request(channel, message, holder, now)
            return
        udp = entry.reflexive if self.registry.udp_fresh(message.target, now) else None
        if udp is None and entry.held is None:
            # Live by a recent enrollment, but neither RWAK nor a connection reaches it.
            raise RefusedError("no way to wake the target", reason=Reason.TARGET_OFFLINE)
        # The wake-up is the work a flood would buy: the global bucket goes last.
        self._wake_global.take(now)
        session = self._open_session(channel, message)
        self._tokens[session.token] = session.id
        if entry.held is not None:
            self._send(entry.held, control.WakePush(session.token))
            self.counters.wake_pushes += 1
        if udp is not None:
            session.udp_address = udp.as_tuple()
            self._send_wake(session, now)
        session.wake_until = now + self.config.wake_timeout_s
        self._arm_session(session, self._next_wake_deadline(session, now))

    def _push_request(
        self, channel: ChannelRecord, message: control.Connect, holder: int, now: float
    ) -> None:
        """The target holds a connection: the sealed request goes straight over it, with no
        RWAK, no wake push, no new connection and no ``present`` (docs/broker.md, "Held
        connections"); the session is REQUESTED at once."""
        # The same global bucket as a wake-up: what a flood would buy is the hub's work.
        self._wake_global.take(now)
        # No token is registered: nothing is presented for a pushed request.
        session = self._open_session(channel, message)
        self._advance(session, SessionInput.PUSH)
        session.target_channel = holder
        self._channels[holder].pushed.add(session.id)
        self.counters.requests_pushed += 1
        self._send(holder, control.Request(session.id, session.candidates, session.sealed))
        self._arm_session(session, now + self.config.answer_timeout_s)

    def _open_session(self, channel: ChannelRecord, message: control.Connect) -> SessionRecord:
        """A new session for the issuer's ``connect``, answered ``connecting``."""
        session = SessionRecord(
            self._new_session_id(),
            self._new_token(),
            message.target,
            channel.id,
            message.candidates,
            message.sealed,
        )
        self._sessions[session.id] = session
        channel.session = session.id
        channel.issued = True
        self.counters.connects += 1
        self._send(channel.id, control.Connecting(session.id))
        return session

    def _new_session_id(self) -> int:
        while True:
            candidate = self._rng.randint(1, _MAX_U32)
            if candidate not in self._sessions:
                return candidate

    def _new_token(self) -> bytes:
        while True:
            token = self._rng.randbytes(TOKEN_SIZE)
            if token not in self._tokens:
                return token

    def _next_wake_deadline(self, session: SessionRecord, now: float) -> float:
        if session.udp_address is None:
            return session.wake_until
        return min(now + self.config.wake_resend_s, session.wake_until)

    # ------------------------------------------------------------------ target ops

    def _advance(self, session: SessionRecord, event: SessionInput) -> None:
        following = SESSION_TRANSITIONS.get((session.state, event))
        if following is None:
            raise RefusedError(
                f"{event.value} while {session.state.value}", reason=Reason.UNEXPECTED_MESSAGE
            )
        session.state = following

    def _present(self, channel: ChannelRecord, message: control.Present, now: float) -> None:
        identifier = self._equipment(channel)
        session_id = self._tokens.get(message.token)
        if session_id is None:
            raise VerificationError("unknown wake-up token", reason=Reason.BAD_TOKEN)
        session = self._sessions[session_id]
        if session.target != identifier:
            raise VerificationError("token of another target", reason=Reason.WRONG_ID)
        if session.target_channel is not None or session.state is not SessionState.WAKING:
            raise VerificationError("token already presented", reason=Reason.TOKEN_REUSED)
        if channel.session is not None:
            raise RefusedError("one session per presence", reason=Reason.SESSION_LIMIT)
        self._advance(session, SessionInput.PRESENT)
        session.target_channel = channel.id
        channel.session = session.id
        self.counters.presents += 1
        self._send(channel.id, control.Request(session.id, session.candidates, session.sealed))
        self._arm_session(session, now + self.config.answer_timeout_s)

    def _own_session(
        self, channel: ChannelRecord, session_id: int, target_side: bool
    ) -> SessionRecord:
        session = self._sessions.get(session_id)
        if session is None or (channel.session != session_id and session_id not in channel.pushed):
            raise RefusedError("no such session here", reason=Reason.UNKNOWN_SESSION)
        if target_side and session.target_channel != channel.id:
            raise RefusedError("only the target answers", reason=Reason.UNKNOWN_SESSION)
        return session

    def _accept(self, channel: ChannelRecord, message: control.Accept, now: float) -> None:
        session = self._own_session(channel, message.session, target_side=True)
        self._advance(session, SessionInput.ACCEPT)
        self.counters.accepts += 1
        entry = self.registry.get(session.target)
        reflexive = (entry.reflexive,) if entry is not None and entry.reflexive else ()
        target_candidates = _unique(reflexive + message.candidates)
        # Both sides should probe at the same moment: each is told to wait the common
        # delay less half its own round trip (DCUtR's synchronisation, _start_delays).
        deadline = self.config.deadline_ms
        issuer_in, target_in = self._start_delays(
            self._rtt_of(session.issuer), self._rtt_of(session.target_channel)
        )
        self._send(
            session.issuer, control.Start(session.id, target_candidates, issuer_in, deadline)
        )
        self._send(
            session.target_channel,
            control.Start(session.id, _unique(session.candidates), target_in, deadline),
        )
        session.deadline = 0.0

    def _reject(self, channel: ChannelRecord, message: control.Reject) -> None:
        session = self._own_session(channel, message.session, target_side=True)
        if session.state is not SessionState.REQUESTED:
            raise RefusedError("reject outside a request", reason=Reason.UNEXPECTED_MESSAGE)
        self.counters.rejects += 1
        self._send(session.issuer, control.Reject(session.id, message.reason))
        self._end(session, None)

    # ------------------------------------------------------------------ relay

    def _relay_open(self, channel: ChannelRecord, message: control.RelayOpen, now: float) -> None:
        session = self._own_session(channel, message.session, target_side=False)
        if session.state is SessionState.RELAYING:
            return  # The other side asked first; both already have the limits.
        if self._relaying.get(session.target, 0) >= self.config.relay_sessions_per_hub:
            raise RefusedError(
                "the hub's relayed sessions are all in use", reason=Reason.RELAY_LIMIT
            )
        self._advance(session, SessionInput.RELAY_OPEN)
        self._relaying[session.target] = self._relaying.get(session.target, 0) + 1
        self.counters.relayed_sessions += 1
        max_ms = round(self.config.relay_max_s * 1000)
        opened = control.RelayOpen(session.id, self.config.relay_max_bytes, max_ms)
        self._send(session.issuer, opened)
        self._send(session.target_channel, opened)
        self._arm_session(session, now + self.config.relay_max_s)

    def _relay_record(self, channel: ChannelRecord, body: bytes, now: float) -> None:
        try:
            record = control.decode_relay(body)
            session = self._own_session(channel, record.session, target_side=False)
            if session.state is not SessionState.RELAYING:
                raise RefusedError("relay record before relay-open", reason=Reason.UNKNOWN_SESSION)
        except RoostError as exc:
            self._refuse(exc, channel.source, now)
            return
        session.relay_bytes += len(record.payload)
        if session.relay_bytes > self.config.relay_max_bytes:
            self._refuse(Reason.RELAY_LIMIT, channel.source, now)
            self._end(session, Reason.RELAY_LIMIT, relay=True)
            return
        other = session.target_channel if channel.id == session.issuer else session.issuer
        if other is not None and other in self._channels:
            self._records.append((other, body))
            self.counters.relayed_bytes += len(record.payload)

    def _relay_close(self, channel: ChannelRecord, message: control.RelayClose) -> None:
        session = self._own_session(channel, message.session, target_side=False)
        self.counters.relay_closes += 1
        other = session.target_channel if channel.id == session.issuer else session.issuer
        self._send(other, control.RelayClose(session.id, message.reason))
        self._end(session, None)

    # ------------------------------------------------------------------ sessions

    def _arm_session(self, session: SessionRecord, when: float) -> None:
        session.deadline = when
        self._push_timer(when, "s", session.id)

    def _session_timer(self, session: SessionRecord, now: float) -> None:
        if session.state is SessionState.WAKING:
            if now < session.wake_until:
                self._send_wake(session, now)
                self._arm_session(session, self._next_wake_deadline(session, now))
                return
            self._refuse(Reason.WAKE_TIMEOUT, session.target, now)
            self._end(session, Reason.WAKE_TIMEOUT)
        elif session.state is SessionState.REQUESTED:
            self._refuse(Reason.ANSWER_TIMEOUT, session.target, now)
            self._end(session, Reason.ANSWER_TIMEOUT)
        elif session.state is SessionState.RELAYING:
            self._end(session, Reason.RELAY_EXPIRED, relay=True)

    def _end(
        self,
        session: SessionRecord,
        reason: Reason | None,
        *,
        relay: bool = False,
        skip: int | None = None,
    ) -> None:
        """Forget a session; with a reason, tell the sides still connected why."""
        self._sessions.pop(session.id, None)
        self._tokens.pop(session.token, None)
        if session.state is SessionState.RELAYING:
            left = self._relaying.get(session.target, 1) - 1
            if left > 0:
                self._relaying[session.target] = left
            else:
                self._relaying.pop(session.target, None)
        for channel_id in (session.issuer, session.target_channel):
            channel = self._channels.get(channel_id) if channel_id is not None else None
            if channel is None:
                continue
            if channel.session == session.id:
                channel.session = None
            channel.pushed.discard(session.id)
            if reason is None or channel_id == skip:
                continue
            if relay:
                self._send(channel_id, control.RelayClose(session.id, reason))
            else:
                self._send(channel_id, control.Error(reason, session.id))

    # ------------------------------------------------------------------ timers

    def _push_timer(self, when: float, kind: str, key: int) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, key))

    def _timer_valid(self, entry: tuple[float, int, str, int]) -> bool:
        when, _, kind, key = entry
        if kind == "s":
            session = self._sessions.get(key)
            return session is not None and session.deadline == when
        channel = self._channels.get(key)
        return channel is not None and channel.deadline == when


def _unique(candidates: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
    """The candidates in order without repeats, at most MAX_CANDIDATES."""
    seen: list[Candidate] = []
    for candidate in candidates:
        if candidate not in seen:
            seen.append(candidate)
    return tuple(seen[:MAX_CANDIDATES])
