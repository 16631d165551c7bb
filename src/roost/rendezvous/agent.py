"""The equipment side of a brokered connection (the hub), as a pure core (docs/broker.md).

The agent enrolls with the broker, registers from its one UDP socket every interval ± 20 %,
falls back to a held mutual-TLS connection when registrations get no RACK, acts on
wake-ups, has the sealed password checked, and follows the broker's ``start`` and relay
decisions (docs/broker.md, "The flow", steps 1 to 8). With ``hold_connection`` it keeps that
connection open at all times (enrolled on it, then ``hold``; keepalives, each answered
within ``keepalive_timeout``; reopened with jittered back-off when lost) next to its UDP
registrations, and the broker pushes each ``request`` straight over it: several sessions
share it, each told apart by its session number (docs/broker.md, "Held connections").

It reads no clock and owns no socket: every input carries ``now`` (monotonic seconds),
randomness comes from the injected ``random.Random``, and the adapter performs what the
core asks:

* ``datagrams_to_send()``: RREG datagrams, all for the broker's UDP address.
* ``records_to_send()``: ``(channel, body)`` control bodies; the adapter frames each with
  ``roost.framing.encode_record`` on that channel's TLS connection. A channel's ``Open…``
  event comes before its first record; the adapter keeps a channel's records until its
  connection is up, and acts on ``CloseConnection`` only after writing every record taken
  in the same turn, so a ``reject`` reaches the broker before the connection closes.
* ``next_event()``: :class:`OpenEnrollConnection`, :class:`OpenHeldConnection`,
  :class:`OpenPresentConnection` (open mutual TLS to the broker as channel ``channel``; the
  first record is already queued), :class:`CloseConnection`, the work item
  :class:`CheckPassword` (open the seal with the hub key, check that user's password on a
  worker thread, answer ``password_checked``), ``StartPunch`` (run the punching core, answer
  ``punch_succeeded`` or ``punch_failed``), :class:`RelayReady`, :class:`SessionEnded`,
  :class:`ReflexiveAddress`.

Peer input never raises: a forged or replayed wake-up, a RACK for a counter we did not send,
an op the state table does not allow, a message for another session are ignored at no
further cost and counted by reason in ``counters.ignored``. Our own misuse (a ``now`` that
is not finite, a second answer to one work item) raises ``LocalProtocolError``.
"""

from __future__ import annotations

import collections
import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from roost.errors import LocalProtocolError, RoostError
from roost.reasons import Reason
from roost.rendezvous.agent_events import (
    REJECT_REASONS,
    AgentConfig,
    AgentCounters,
    AgentEvent,
    CheckPassword,
    CloseConnection,
    OpenEnrollConnection,
    OpenHeldConnection,
    OpenPresentConnection,
    ReflexiveAddress,
    RelayReady,
    SessionEnded,
)
from roost.rendezvous.control import (
    Accept,
    ControlMessage,
    Enroll,
    Enrolled,
    Error,
    Hold,
    Holding,
    Keepalive,
    Present,
    Reject,
    RelayClose,
    RelayOpen,
    Request,
    Start,
    WakePush,
    encode_control_message,
)
from roost.rendezvous.messages import (
    ACK_MAGIC,
    REGISTRATION_KEY_SIZE,
    WAKE_MAGIC,
    Candidate,
    Registration,
    check_counter,
    check_identifier,
    decode_ack,
    decode_wake,
    encode_registration,
    verify_wake,
)
from roost.rendezvous.sessions import RendezvousEvent, merge_candidates, punch_plan
from roost.rendezvous.state import (
    AGENT_LINK_TRANSITIONS,
    AGENT_SESSION_TRANSITIONS,
    AgentSessionState,
    LinkInput,
    LinkState,
    SessionInput,
)

__all__ = [
    "REJECT_REASONS",
    "AgentConfig",
    "AgentCore",
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

# ------------------------------------------------------------------------------- the core


@dataclass(slots=True)
class _Session:
    channel: int
    token: bytes
    deadline: float
    state: AgentSessionState = AgentSessionState.PRESENTING
    session: int | None = None
    # Pushed over the holding connection, which it shares: its end closes no connection.
    held: bool = False


class AgentCore:
    """One agent: its link to the broker and its brokered sessions (module docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        identifier: str,
        rng: random.Random,
        *,
        candidates: tuple[Candidate, ...] = (),
        counter_start: int = 0,
    ) -> None:
        # ``counter_start``: the adapter passes wall milliseconds, so the counters of a
        # restarted agent stay above those the broker accepted before (step 2).
        check_identifier(identifier)
        self.config = config
        self.identifier = identifier
        self.counters = AgentCounters()
        self._rng = rng
        self._candidates = merge_candidates(candidates)
        self._counter = counter_start
        self._state = LinkState.IDLE
        # Link channels that failed in a row since the last enrollment (the back-off).
        self._failures = 0
        self._key: bytes | None = None
        self._interval = config.interval
        # The interval our NAT's mappings have shown they need (None: the broker's is fine).
        self._adapted: float | None = None
        self._channels = itertools.count(1)
        self._enroll_channel: int | None = None
        self._held_channel: int | None = None
        # The held connection whose ``enroll`` is unanswered: its answer replaces the key
        # the broker checks (step 1), so that connection is not closed before it arrives.
        self._held_enroll_channel: int | None = None
        self._enroll_at: float | None = None
        self._register_at: float | None = None
        self._ack_deadline: float | None = None
        self._keepalive_at: float | None = None
        # A record from the broker is due on the held connection (a keepalive went out).
        self._keepalive_deadline: float | None = None
        # hold_connection: ``hold`` sent and unanswered; accepted on the held connection;
        # when to ask again after a refusal.
        self._hold_pending = False
        self._holding = False
        self._hold_at: float | None = None
        self._awaited: collections.deque[int] = collections.deque(maxlen=config.missed_racks + 1)
        self._missed = 0
        self._last_wake: int | None = None
        self._tokens: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._by_channel: dict[int, _Session] = {}
        self._by_session: dict[int, _Session] = {}
        self.reflexive: Candidate | None = None
        self._events: collections.deque[RendezvousEvent] = collections.deque()
        self._datagrams: list[bytes] = []
        self._records: list[tuple[int, bytes]] = []

    # ------------------------------------------------------------------ the aioquic shape

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def enrolled_key(self) -> bytes | None:
        """The registration key the broker gave, or None before enrollment."""
        return self._key

    @property
    def held_channel(self) -> int | None:
        return self._held_channel

    @property
    def holding(self) -> bool:
        """The broker accepted ``hold`` on the held connection: requests come over it."""
        return self._holding and self._held_channel is not None

    @property
    def sessions(self) -> Mapping[int, AgentSessionState]:
        """The state of every live session by its broker-assigned number."""
        return {number: s.state for number, s in self._by_session.items()}

    def channel_of(self, session: int) -> int | None:
        """The present channel ``session`` runs on (its relay records go there), or None."""
        entry = self._by_session.get(session)
        return entry.channel if entry is not None else None

    @property
    def live_sessions(self) -> int:
        return len(self._entries())

    def _entries(self) -> list[_Session]:
        """Every live session: those on their own present connection, then the pushed ones."""
        return [*self._by_channel.values(), *(e for e in self._by_session.values() if e.held)]

    def next_event(self) -> RendezvousEvent | None:
        """The oldest command not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams for the broker's UDP address; taking them clears them."""
        out, self._datagrams = self._datagrams, []
        return out

    def records_to_send(self) -> list[tuple[int, bytes]]:
        """``(channel, control body)`` pairs to write; taking them clears them."""
        out, self._records = self._records, []
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (monotonic seconds), or None."""
        if self._state is LinkState.STOPPED:
            return None
        timers = (
            self._enroll_at,
            self._register_at,
            self._ack_deadline,
            self._keepalive_at,
            self._keepalive_deadline,
            self._hold_at,
        )
        deadlines = [t for t in timers if t is not None]
        deadlines += [s.deadline for s in self._entries() if self._setting_up(s)]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        """Run every deadline due at ``now``; calling early or late is harmless."""
        self._check_now(now)
        if self._state is LinkState.STOPPED:
            return
        if self._keepalive_deadline is not None and now >= self._keepalive_deadline:
            self._keepalive_deadline = None
            self._keepalive_unanswered(now)
        if self._enroll_at is not None and now >= self._enroll_at:
            self._enroll_at = None
            self._open_link_channel(now)
        if self._hold_at is not None and now >= self._hold_at:
            self._hold_at = None
            if self._held_channel is None and self._enroll_at is None:
                self._open_link_channel(now)
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_deadline = None
            self._count_missed(now)
        if self._register_at is not None and now >= self._register_at:
            self._register(now)
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._keepalive(now)
        for entry in self._entries():
            if self._setting_up(entry) and now >= entry.deadline:
                self._session_input(entry, SessionInput.TIMEOUT, now, Reason.SETUP_TIMEOUT)

    # ------------------------------------------------------------------ adapter inputs

    def start(self, now: float) -> None:
        """Begin: open the enrollment connection (step 1)."""
        self._check_now(now)
        if self._link(LinkInput.START):
            self._open_link_channel(now)

    def stop(self, now: float) -> None:
        """End everything: every channel is closed and every session ended."""
        self._check_now(now)
        for entry in self._entries():
            self._end(entry, Reason.CLOSED)
        for channel in (self._enroll_channel, self._held_channel):
            if channel is not None:
                self._events.append(CloseConnection(channel))
        self._enroll_channel = self._held_channel = None
        self._enroll_at = self._register_at = self._ack_deadline = self._keepalive_at = None
        self._keepalive_deadline = self._hold_at = None
        self._holding = self._hold_pending = False
        self._link(LinkInput.STOP)

    def set_candidates(self, candidates: tuple[Candidate, ...], now: float) -> None:
        """The local host candidates (addresses of this host, the UDP socket's port)."""
        self._check_now(now)
        self._candidates = merge_candidates(candidates)

    def enrolled(self, identifier: str, key: bytes, interval_ms: int, now: float) -> None:
        """The broker's ``enrolled`` answer (also reached through ``control_received``)."""
        self._check_now(now)
        if identifier != self.identifier:
            self._ignore(Reason.WRONG_ID)
            return
        if not isinstance(key, bytes) or len(key) != REGISTRATION_KEY_SIZE:
            self._ignore(Reason.BAD_REGISTRATION_KEY)
            return
        was = self._state
        if not self._link(LinkInput.ENROLLED):
            return
        if was is LinkState.ENROLLING:
            self._enroll_at = None
        self._failures = 0
        if key != self._key:
            # A wake-up counter only has to grow under the key that tags it (section 5):
            # another broker process counts from its own start, maybe below the last one.
            self._last_wake = None
        self._key = key
        self.counters.enrollments += 1
        if interval_ms > 0:
            self._interval = max(interval_ms / 1000.0, self.config.min_interval)
        if self._adapted is not None:
            self._interval = min(self._interval, self._adapted)
        if self._enroll_channel is not None:
            self._events.append(CloseConnection(self._enroll_channel))
            self._enroll_channel = None
        # Register at once: the broker knows nothing of our address until the first RREG.
        self._register(now)

    def datagram_received(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """A datagram the UDP mux routed here (RACK or RWAK)."""
        self._check_now(now)
        if self._state is LinkState.STOPPED:
            return
        try:
            if data[:4] == ACK_MAGIC:
                self._on_ack(data, now)
            elif data[:4] == WAKE_MAGIC:
                self._on_wake_datagram(data, now)
            else:
                self._ignore(Reason.BAD_MAGIC)
        except RoostError as error:
            # Decoders and verifiers raise typed errors only: a bad datagram costs a count.
            self._ignore(error.reason)

    def control_received(self, channel: int, message: ControlMessage, now: float) -> None:
        """A control message (already decoded) read from ``channel``."""
        self._check_now(now)
        if self._state is LinkState.STOPPED:
            return
        entry = self._by_channel.get(channel)
        if entry is not None:
            self._on_session_message(entry, message, now)
            return
        if channel == self._held_channel:
            # Any record shows the connection alive: the keepalive's answer is no longer due.
            self._keepalive_deadline = None
            if isinstance(message, Request) or getattr(message, "session", None) is not None:
                self._on_held_session_message(channel, message, now)
                return
        if channel in (self._enroll_channel, self._held_channel):
            self._on_link_message(channel, message, now)
        else:
            self._ignore(Reason.UNKNOWN_SESSION)

    def channel_closed(self, channel: int, now: float) -> None:
        """The TLS connection ``channel`` ended (or never opened)."""
        self._check_now(now)
        if self._state is LinkState.STOPPED:
            return
        entry = self._by_channel.get(channel)
        if entry is not None:
            self._session_input(entry, SessionInput.CHANNEL_LOST, now, Reason.DISCONNECTED)
        elif channel == self._enroll_channel:
            self._enroll_channel = None
            if self._link(LinkInput.ENROLL_LOST):
                self._ignore(Reason.ENROLL_FAILED)
                self._enroll_at = now + self._retry_delay()
        elif channel == self._held_channel:
            self._held_lost(now)

    def _held_lost(self, now: float) -> None:
        """The held connection ended (closed, or its keepalive unanswered): the sessions
        pushed over it lose it (a direct one goes on) and it is opened again after the
        jittered back-off (the adapter may try the next broker)."""
        channel = self._held_channel
        self._held_channel = None
        self._holding = self._hold_pending = False
        self._keepalive_at = self._keepalive_deadline = None
        for entry in [e for e in self._entries() if e.held and e.channel == channel]:
            self._session_input(entry, SessionInput.CHANNEL_LOST, now, Reason.DISCONNECTED)
        if self._state is LinkState.ENROLLING:
            # hold_connection: the held connection was also the enrollment's.
            if self._link(LinkInput.ENROLL_LOST):
                self._ignore(Reason.ENROLL_FAILED)
                self._enroll_at = now + self._retry_delay()
        elif (self._state is LinkState.HELD or self.config.hold_connection) and self._link(
            LinkInput.HELD_LOST
        ):
            self._enroll_at = now + self._retry_delay()

    def _close_held(self) -> None:
        """Close a held connection no request is pushed over (no session runs on it)."""
        if self._held_channel is not None:
            self._events.append(CloseConnection(self._held_channel))
        self._held_channel = None
        self._holding = self._hold_pending = False
        self._keepalive_at = self._keepalive_deadline = None

    def _keepalive_unanswered(self, now: float) -> None:
        if self._held_channel is None:
            return
        # The broker echoes every keepalive: silence means a connection that died without a
        # close (a NAT that forgot it, a broker gone); waiting for TCP to notice takes long.
        self.counters.keepalive_timeouts += 1
        self._ignore(Reason.KEEPALIVE_TIMEOUT)
        self._events.append(CloseConnection(self._held_channel))
        self._held_lost(now)

    def _hold_retry_delay(self) -> float:
        spread = float(self._rng.uniform(1.0 - self.config.jitter, 1.0 + self.config.jitter))
        return self.config.hold_retry * spread

    def _retry_delay(self) -> float:
        # Jittered exponential back-off (docs/broker-scale.md): brokers that come back
        # after an outage are not met by every agent in the same second; the adapter moves
        # to the next broker of its list on each failure.
        self._failures += 1
        factor = float(min(1 << min(self._failures - 1, 16), self.config.enroll_backoff_max))
        spread = float(self._rng.uniform(1.0 - self.config.jitter, 1.0 + self.config.jitter))
        return self.config.enroll_retry * factor * spread

    def password_checked(
        self, session: int, ok: bool, now: float, reason: Reason | None = None
    ) -> None:
        """The result of :class:`CheckPassword`: accept (step 5) or reject with ``reason``."""
        self._check_now(now)
        entry = self._by_session.get(session)
        if entry is None:
            # The session ended (timeout, lost channel) while the KDF ran.
            self._ignore(Reason.UNKNOWN_SESSION)
            return
        if entry.state is not AgentSessionState.CHECKING:
            raise LocalProtocolError("no password check is pending for this session")
        if ok:
            self._send(entry.channel, Accept(session, self._candidates))
            self._session_input(entry, SessionInput.ACCEPTED, now)
            self.counters.accepted += 1
            return
        sent = reason if reason in REJECT_REASONS else Reason.BAD_PASSWORD
        self.counters.rejected[sent] += 1
        self._send(entry.channel, Reject(session, sent))
        self._session_input(entry, SessionInput.REJECTED, now, sent)

    def punch_succeeded(self, session: int, addr: tuple[str, int], now: float) -> None:
        """The punching core found a direct path to ``addr`` for ``session``."""
        self._check_now(now)
        entry = self._by_session.get(session)
        if entry is None:
            self._ignore(Reason.UNKNOWN_SESSION)
            return
        if self._session_input(entry, SessionInput.PUNCH_OK, now):
            self.counters.direct += 1

    def punch_failed(self, session: int, now: float) -> None:
        """No direct path by the deadline: ask the broker for the relay (step 8)."""
        self._check_now(now)
        entry = self._by_session.get(session)
        if entry is None:
            self._ignore(Reason.UNKNOWN_SESSION)
            return
        was = entry.state
        moved = self._session_input(entry, SessionInput.PUNCH_FAILED, now)
        if moved and was is AgentSessionState.PUNCHING:
            self._send(entry.channel, RelayOpen(session))

    def session_closed(self, session: int, now: float) -> None:
        """The QUIC session over this brokered path ended."""
        self._check_now(now)
        entry = self._by_session.get(session)
        if entry is None:
            self._ignore(Reason.UNKNOWN_SESSION)
            return
        self._session_input(entry, SessionInput.CLOSE, now, Reason.CLOSED)

    # ------------------------------------------------------------------ link internals

    def _link(self, kind: LinkInput) -> bool:
        target = AGENT_LINK_TRANSITIONS.get((self._state, kind))
        if target is None:
            self._ignore(Reason.UNEXPECTED_MESSAGE)
            return False
        self._state = target
        return True

    def _open_link_channel(self, now: float) -> None:
        hold = self.config.hold_connection
        channel = next(self._channels)
        if self._state is LinkState.ENROLLING and not hold:
            self._enroll_channel = channel
            self._events.append(OpenEnrollConnection(channel))
        elif self._state is LinkState.HELD or (
            hold and self._state in (LinkState.ENROLLING, LinkState.REGISTERING)
        ):
            # hold_connection: the one connection enrolls, then asks to be held.
            self._held_channel = self._held_enroll_channel = channel
            self._events.append(OpenHeldConnection(channel, self._state is LinkState.HELD))
            self._keepalive_at = now + self._keepalive_period
            self._hold_at = None
        else:
            return
        # Step 2: the held connection enrolls again, which also renews the key.
        self._send(channel, Enroll())

    def _register(self, now: float) -> None:
        if self._key is None:
            return
        if self._ack_deadline is not None:
            # The previous registration is still unanswered when the next one is due.
            self._ack_deadline = None
            self._count_missed(now)
        self._counter += 1
        registration = Registration(self.identifier, self._counter, self._candidates)
        self._datagrams.append(encode_registration(registration, self._key))
        self._awaited.append(self._counter)
        self.counters.registrations += 1
        self._ack_deadline = now + self.config.rack_timeout
        spread = self._rng.uniform(1.0 - self.config.jitter, 1.0 + self.config.jitter)
        self._register_at = now + self._interval * spread

    def _count_missed(self, now: float) -> None:
        self._missed += 1
        if self._missed < self.config.missed_racks or self._state is not LinkState.REGISTERING:
            return
        self._link(LinkInput.ACKS_MISSING)
        self._ignore(Reason.RACK_MISSING)
        self.counters.fallbacks += 1
        if self._held_channel is None and self._enroll_at is None:
            self._open_link_channel(now)

    def _on_ack(self, data: bytes, now: float) -> None:
        if self._key is None:
            self._ignore(Reason.NOT_ENROLLED)
            return
        ack = decode_ack(data)
        # A RACK has no tag (section 5): only one for a counter we sent recently counts.
        if ack.counter not in self._awaited:
            self._ignore(Reason.UNKNOWN_COUNTER)
            return
        self._awaited.clear()
        self._ack_deadline = None
        self._missed = 0
        self.counters.acks += 1
        if ack.observed != self.reflexive:
            previous = self.reflexive
            if previous is not None and previous.address == ack.observed.address:
                self._mapping_renewed()
            self.reflexive = ack.observed
            self._events.append(ReflexiveAddress(ack.observed))
        if self._state is LinkState.HELD:
            self._link(LinkInput.ACK)
            if self._enrolling_on_held:
                # UDP answered while the held connection's enrollment runs (a RACK from
                # the broker this agent just left, or one that was only slow): the broker
                # has replaced or is replacing the key there, so closing now would leave
                # it checking a key this agent never learns, and every registration would
                # be refused bad-tag. The answer closes the connection (_on_link_message).
                return
            if self.config.hold_connection:
                if self._held_channel is not None and not (self._holding or self._hold_pending):
                    # A fallback the broker would not hold: UDP does the work again.
                    self._close_held()
                    self._hold_at = now + self._hold_retry_delay()
                return
            self._close_held()
            self._enroll_at = None

    @property
    def _enrolling_on_held(self) -> bool:
        return self._held_channel is not None and self._held_enroll_channel == self._held_channel

    def _mapping_renewed(self) -> None:
        # Same public address, another port, same socket here: the NAT dropped the mapping
        # between two registrations (a NAT that keeps the port on a new mapping hides this;
        # then only a shorter configured interval helps, docs/broker.md).
        self.counters.remapped += 1
        shorter = max(self.config.shortest_adapted_interval, self._interval / 2)
        if shorter < self._interval:
            self._interval = self._adapted = shorter
            self.counters.adapted += 1

    def _keepalive(self, now: float) -> None:
        if self._held_channel is None:
            self._keepalive_at = None
            return
        self._send(self._held_channel, Keepalive())
        self.counters.keepalives += 1
        self._keepalive_at = now + self._keepalive_period
        if self._keepalive_deadline is None:
            self._keepalive_deadline = now + self.config.keepalive_timeout

    @property
    def _keepalive_period(self) -> float:
        # Step 2: keepalive every interval. The broker closes a held connection that is
        # quiet for its TTL (three of its intervals), so a broker interval shorter than
        # the configured keepalive one sets the pace; the config stays the upper bound.
        return min(self.config.keepalive_interval, self._interval)

    def _on_link_message(self, channel: int, message: ControlMessage, now: float) -> None:
        if isinstance(message, Enrolled):
            before = self.counters.enrollments
            answered_held = channel == self._held_enroll_channel
            if answered_held:
                self._held_enroll_channel = None
            self.enrolled(message.identifier, message.key, message.interval_ms, now)
            if (
                answered_held
                and not self.config.hold_connection
                and self._state is LinkState.REGISTERING
                and channel == self._held_channel
            ):
                # A RACK came while this enrollment ran (_on_ack): UDP works, the
                # fallback is done now that the new key is known.
                self._close_held()
                self._enroll_at = None
                return
            if (
                self.config.hold_connection
                and channel == self._held_channel
                and self.counters.enrollments > before
                and not (self._holding or self._hold_pending)
            ):
                # Enrolled on the held connection: ask the broker to push requests over it.
                self._hold_pending = True
                self._send(channel, Hold())
        elif isinstance(message, Holding):
            if channel != self._held_channel or not self._hold_pending:
                self._ignore(Reason.UNEXPECTED_MESSAGE)
                return
            self._hold_pending = False
            self._holding = True
            self.counters.holds += 1
        elif isinstance(message, WakePush):
            # Over our own mutual-TLS connection: the broker is authenticated, no tag.
            self._wake(message.token, now)
        elif isinstance(message, Keepalive):
            return
        elif isinstance(message, Error):
            if channel == self._held_channel and self._hold_pending:
                self._hold_refused(message.reason, now)
            else:
                self._ignore(message.reason)
        else:
            self._ignore(Reason.UNEXPECTED_MESSAGE)

    def _hold_refused(self, reason: Reason, now: float) -> None:
        # The broker holds no more connections (held-limit) or will not hold ours: the
        # hub stays reachable the base way, and asks again after hold_retry.
        self._hold_pending = False
        self.counters.hold_refused[reason] += 1
        if self._state is LinkState.HELD:
            # UDP gets no RACK: the connection stays as the fallback (wake pushes over it).
            return
        self._close_held()
        self._hold_at = now + self._hold_retry_delay()

    # ------------------------------------------------------------------ wake-ups

    def _on_wake_datagram(self, data: bytes, now: float) -> None:
        if self._key is None:
            self._ignore(Reason.NOT_ENROLLED)
            return
        # Structure, then tag, then counter (step 4): a forgery costs one HMAC.
        wake = verify_wake(decode_wake(data), self._key)
        check_counter(self._last_wake, wake.counter)
        self._last_wake = wake.counter
        self._wake(wake.token, now)

    def _wake(self, token: bytes, now: float) -> None:
        while self._tokens and next(iter(self._tokens.values())) + self.config.token_memory <= now:
            self._tokens.popitem(last=False)
        if token in self._tokens:
            self.counters.wake_resends += 1
            return
        self._tokens[token] = now
        while len(self._tokens) > self.config.max_tokens:
            self._tokens.popitem(last=False)
        if self.live_sessions >= self.config.max_sessions:
            self._ignore(Reason.BUSY)
            return
        channel = next(self._channels)
        entry = _Session(channel, token, now + self.config.setup_timeout)
        self._by_channel[channel] = entry
        self.counters.wakes += 1
        self._events.append(OpenPresentConnection(channel, token))
        self._send(channel, Present(token))

    # ------------------------------------------------------------------ sessions

    def _on_held_session_message(self, channel: int, message: ControlMessage, now: float) -> None:
        """A message for a session on the holding connection: a pushed request opens one,
        anything else goes to the session its number names."""
        if isinstance(message, Request):
            self._held_request(channel, message, now)
            return
        entry = self._by_session.get(getattr(message, "session", None) or 0)
        if entry is None or not entry.held or entry.channel != channel:
            self._ignore(Reason.UNKNOWN_SESSION)
            return
        self._on_session_message(entry, message, now)

    def _held_request(self, channel: int, message: Request, now: float) -> None:
        # Pushed by the broker over our holding connection (docs/broker.md, "Held
        # connections"): the request a wake-up and a present connection would have brought.
        if not self._holding or message.session in self._by_session:
            self._ignore(Reason.UNEXPECTED_MESSAGE)
            return
        if self.live_sessions >= self.config.max_sessions:
            # Said at once: the issuer is told busy instead of waiting for a timeout.
            self.counters.rejected[Reason.BUSY] += 1
            self._send(channel, Reject(message.session, Reason.BUSY))
            return
        entry = _Session(channel, b"", now + self.config.setup_timeout, held=True)
        self.counters.held_requests += 1
        if self._session_input(entry, SessionInput.REQUEST, now):
            entry.session = message.session
            self._by_session[message.session] = entry
            self._events.append(CheckPassword(message.session, message.sealed, message.candidates))

    @staticmethod
    def _setting_up(entry: _Session) -> bool:
        return entry.state not in (AgentSessionState.DIRECT, AgentSessionState.RELAY)

    def _on_session_message(self, entry: _Session, message: ControlMessage, now: float) -> None:
        if isinstance(message, Request):
            if entry.session is not None or message.session in self._by_session:
                self._ignore(Reason.UNEXPECTED_MESSAGE)
                return
            if self._session_input(entry, SessionInput.REQUEST, now):
                entry.session = message.session
                self._by_session[message.session] = entry
                self._events.append(
                    CheckPassword(message.session, message.sealed, message.candidates)
                )
            return
        number = getattr(message, "session", None)
        if isinstance(message, Error) and number is None:
            self._session_input(entry, SessionInput.ERROR, now, message.reason)
            return
        if number is None or number != entry.session:
            self._ignore(Reason.UNKNOWN_SESSION)
            return
        if isinstance(message, Start):
            if self._session_input(entry, SessionInput.START, now):
                self._events.append(punch_plan(message, now, self.config.punch_attempts))
        elif isinstance(message, RelayOpen):
            was = entry.state
            if self._session_input(entry, SessionInput.RELAY_OPEN, now) and (
                entry.state is AgentSessionState.RELAY and was is not AgentSessionState.RELAY
            ):
                self.counters.relayed += 1
                self._events.append(
                    RelayReady(number, entry.channel, message.max_bytes, message.max_ms)
                )
        elif isinstance(message, RelayClose):
            self._session_input(entry, SessionInput.RELAY_CLOSE, now, message.reason)
        elif isinstance(message, Error):
            self._session_input(entry, SessionInput.ERROR, now, message.reason)
        else:
            self._ignore(Reason.UNEXPECTED_MESSAGE)

    def _session_input(
        self,
        entry: _Session,
        kind: SessionInput,
        now: float,
        reason: Reason | None = None,
    ) -> bool:
        target = AGENT_SESSION_TRANSITIONS.get((entry.state, kind))
        if target is None:
            self._ignore(Reason.UNEXPECTED_MESSAGE)
            return False
        entry.state = target
        if target is AgentSessionState.CLOSED:
            self._end(entry, reason or Reason.CLOSED)
        return True

    def _end(self, entry: _Session, reason: Reason) -> None:
        entry.state = AgentSessionState.CLOSED
        if not entry.held:
            self._by_channel.pop(entry.channel, None)
        if entry.session is not None:
            self._by_session.pop(entry.session, None)
        self.counters.ended[reason] += 1
        self._events.append(SessionEnded(entry.session, entry.channel, reason))
        if not entry.held:
            # A present connection serves one session; the holding one stays.
            self._events.append(CloseConnection(entry.channel))

    # ------------------------------------------------------------------ helpers

    def _send(self, channel: int, message: ControlMessage) -> None:
        self._records.append((channel, encode_control_message(message)))

    def _ignore(self, reason: str) -> None:
        self.counters.ignored[reason] += 1

    @staticmethod
    def _check_now(now: float) -> None:
        if not math.isfinite(now):
            raise LocalProtocolError("now must be a finite monotonic time")
