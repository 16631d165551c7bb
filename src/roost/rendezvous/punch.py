"""Hole punching between the two ends of a brokered session (PROTOCOL.md section 5), pure.

When the broker sends ``start``, each side probes every candidate of the other side from
its one UDP socket, the socket the broker saw its NAT mapping on. A probe is::

    RPRB | u8 version = 1 | u8 kind (1 probe, 2 answer) | u32 session | 8-byte nonce

(18 bytes). A side answers every probe for its session with the same nonce, to the address
the probe came from, even when that address is none of the candidates: a NAT that gives
the outgoing probe a new source port shows the peer a *peer-reflexive* address (RFC 8445
section 7.2.5.3.1), which is learned, probed at once and may become the direct path. The
first address that answers one of our probes with our nonce wins; without one by the
deadline the puncher fails and the session uses the broker's relay.

A probe that arrives *from one of the candidates the broker listed* is the direct path at
once, half a round trip before our own probe's answer would be: a datagram from that
address reached us, so the peer's NAT has a mapping toward us, and our answer (sent at
once) goes back through the hole our own probe opened. Accepting it needs no nonce: the
candidates came through the broker, whose forwarding the hub verifies (section 5), and
QUIC then authenticates whoever holds the address. A probe from an address nobody listed
(peer-reflexive) only teaches the address; it becomes the path when it answers our nonce,
so a spoofed source cannot steer the session to an address of its choosing.

Attempts: ``attempts`` rounds (3 by default) spread evenly from ``start_at`` to the
deadline, each probing every remote candidate and every learned address. Answering goes
on in every state, so a side that already has its path still lets a late peer find it.

The nonce is our secret for this session: an answer is accepted only if it carries it, so
an off-path sender who cannot see our probes cannot pick the direct path for us. The
session number is not secret (it is a u32 in the clear) and only sorts probes of
concurrent sessions.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from roost.errors import LocalProtocolError, RemoteProtocolError
from roost.reasons import Reason
from roost.rendezvous.messages import MAX_CANDIDATES
from roost.wire import Reader, Writer, check_size

__all__ = [
    "NONCE_SIZE",
    "PROBE_MAGIC",
    "PROBE_SIZE",
    "PROBE_VERSION",
    "Address",
    "DirectPathFound",
    "PeerLearned",
    "Probe",
    "ProbeKind",
    "PunchConfig",
    "PunchEvent",
    "PunchFailed",
    "PunchState",
    "Puncher",
    "decode_probe",
    "encode_probe",
    "is_probe",
    "probe_session",
]

PROBE_MAGIC = b"RPRB"
PROBE_VERSION = 1
NONCE_SIZE = 8
PROBE_SIZE = len(PROBE_MAGIC) + 1 + 1 + 4 + NONCE_SIZE

Address = tuple[str, int]


class ProbeKind(enum.IntEnum):
    PROBE = 1
    ANSWER = 2


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe or answer datagram."""

    kind: ProbeKind
    session: int
    nonce: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.session <= 0xFFFFFFFF:
            raise LocalProtocolError("session is not a u32", reason=Reason.BAD_FIELD)
        if len(self.nonce) != NONCE_SIZE:
            raise LocalProtocolError("probe nonce is not 8 bytes", reason=Reason.BAD_FIELD)


def is_probe(data: bytes) -> bool:
    """The demultiplexing test of the shared socket: the magic alone."""
    return data[: len(PROBE_MAGIC)] == PROBE_MAGIC


_SESSION_OFFSET = len(PROBE_MAGIC) + 2


def probe_session(data: bytes) -> int | None:
    """The session field of a probe-sized datagram, without checking anything else (the
    shared socket sorts probes of concurrent sessions by it; the puncher decodes fully),
    or None for a datagram of another size."""
    if len(data) != PROBE_SIZE:
        return None
    return int.from_bytes(data[_SESSION_OFFSET : _SESSION_OFFSET + 4], "big")


def encode_probe(probe: Probe) -> bytes:
    """The 18-byte datagram of ``probe``."""
    return (
        Writer()
        .raw(PROBE_MAGIC)
        .u8(PROBE_VERSION)
        .u8(probe.kind)
        .u32(probe.session)
        .raw(probe.nonce)
        .bytes()
    )


def decode_probe(data: bytes) -> Probe:
    """Parse a probe datagram; raises RemoteProtocolError with a Reason for anything else."""
    check_size(data, PROBE_SIZE, "probe")
    reader = Reader(data, "probe")
    if reader.take(len(PROBE_MAGIC)) != PROBE_MAGIC:
        raise RemoteProtocolError("not a probe", reason=Reason.BAD_MAGIC)
    version = reader.u8()
    if version != PROBE_VERSION:
        raise RemoteProtocolError(f"probe version {version}", reason=Reason.BAD_VERSION)
    kind = reader.u8()
    if kind not in (ProbeKind.PROBE, ProbeKind.ANSWER):
        raise RemoteProtocolError(f"probe kind {kind}", reason=Reason.UNKNOWN_TYPE)
    session = reader.u32()
    nonce = reader.take(NONCE_SIZE)
    reader.expect_end()
    return Probe(ProbeKind(kind), session, nonce)


@dataclass(frozen=True, slots=True)
class PunchConfig:
    """Limits of one puncher."""

    attempts: int = 3
    # Section 5 caps the candidates a side announces; learned addresses are capped apart
    # so a flood of probes from spoofed sources cannot grow the probe list without bound.
    max_candidates: int = MAX_CANDIDATES
    max_learned: int = 8
    # Answers to send per received probe burst are bounded by the outbox.
    max_outbox: int = 256


class PunchState(enum.Enum):
    WAITING = "waiting"
    PROBING = "probing"
    DIRECT = "direct"
    FAILED = "failed"


class _Trigger(enum.Enum):
    START = "start"
    ANSWERED = "answered"
    DEADLINE = "deadline"


# The one transition table of the puncher: (state, trigger) -> next state. A pair not in
# the table leaves the state unchanged (an answer after the deadline, a second answer).
_TRANSITIONS: dict[tuple[PunchState, _Trigger], PunchState] = {
    (PunchState.WAITING, _Trigger.START): PunchState.PROBING,
    (PunchState.WAITING, _Trigger.ANSWERED): PunchState.DIRECT,
    (PunchState.WAITING, _Trigger.DEADLINE): PunchState.FAILED,
    (PunchState.PROBING, _Trigger.ANSWERED): PunchState.DIRECT,
    (PunchState.PROBING, _Trigger.DEADLINE): PunchState.FAILED,
}


class PunchEvent:
    """Base of the puncher's events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class PeerLearned(PunchEvent):
    """A probe came from an address that is none of the candidates (peer-reflexive)."""

    address: Address


@dataclass(frozen=True, slots=True)
class DirectPathFound(PunchEvent):
    """``address`` answered our probe: it is the session's direct path."""

    address: Address


@dataclass(frozen=True, slots=True)
class PunchFailed(PunchEvent):
    """No address answered by the deadline: the session goes to the relay."""


def _normalize(address: Sequence[object]) -> Address:
    """``(host, port)`` with the host in its canonical text form (IPv6 socket addresses
    carry flow info and scope as third and fourth items, which do not name the peer)."""
    host, port = address[0], address[1]
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        raise LocalProtocolError("not a socket address", reason=Reason.BAD_CANDIDATE)
    try:
        canonical = str(ipaddress.ip_address(host))
    except ValueError as exc:
        raise LocalProtocolError("not an IP address", reason=Reason.BAD_CANDIDATE) from exc
    return (canonical, port)


class Puncher:
    """The probing of one session from one side (aioquic shape: ``receive``,
    ``datagrams_to_send``, ``next_event``, ``get_timer``, ``handle_timer``).

    ``start_at`` and ``deadline`` are monotonic seconds on the caller's clock; ``rng``
    draws the nonce and should be a ``random.SystemRandom`` outside tests.
    """

    def __init__(
        self,
        session: int,
        remote_candidates: Sequence[Sequence[object]],
        start_at: float,
        deadline: float,
        attempts: int = 3,
        rng: random.Random | None = None,
        config: PunchConfig | None = None,
    ) -> None:
        base = config or PunchConfig()
        self.config = PunchConfig(attempts, base.max_candidates, base.max_learned, base.max_outbox)
        if attempts < 1:
            raise LocalProtocolError("at least one attempt", reason=Reason.BAD_FIELD)
        if deadline <= start_at:
            raise LocalProtocolError("deadline before start", reason=Reason.BAD_FIELD)
        if len(remote_candidates) > self.config.max_candidates:
            raise LocalProtocolError(
                "too many remote candidates", reason=Reason.TOO_MANY_CANDIDATES
            )
        self.session = session
        self.nonce = (rng or random.SystemRandom()).randbytes(NONCE_SIZE)
        Probe(ProbeKind.PROBE, session, self.nonce)  # Checks the session range.
        self.state = PunchState.WAITING
        self._triggered: set[Address] = set()
        self.result: Address | None = None
        self.start_at = start_at
        self.deadline = deadline
        self._candidates: list[Address] = []
        for candidate in remote_candidates:
            address = _normalize(candidate)
            if address not in self._candidates:
                self._candidates.append(address)
        self.learned: list[Address] = []
        step = (deadline - start_at) / attempts
        self._attempt_times = deque(start_at + i * step for i in range(attempts))
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[PunchEvent] = deque()
        self.probes_sent = 0
        self.answers_sent = 0
        self.ignored: dict[str, int] = {}

    # ------------------------------------------------------------------ transitions

    def _fire(self, trigger: _Trigger) -> bool:
        following = _TRANSITIONS.get((self.state, trigger))
        if following is None:
            return False
        self.state = following
        return True

    # ------------------------------------------------------------------ inputs

    @property
    def targets(self) -> tuple[Address, ...]:
        """Every address a probe round goes to: the candidates, then learned addresses."""
        return (*self._candidates, *self.learned)

    def _queue(self, datagram: bytes, address: Address) -> None:
        if len(self._outbox) < self.config.max_outbox:
            self._outbox.append((datagram, address))

    def _probe(self, address: Address) -> None:
        self._queue(encode_probe(Probe(ProbeKind.PROBE, self.session, self.nonce)), address)
        self.probes_sent += 1

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def receive(self, data: bytes, address: Sequence[object], now: float) -> None:
        """One datagram that starts with ``RPRB`` from ``address``. A malformed one or one
        for another session is counted in ``ignored`` by reason and dropped: probes are
        unauthenticated, so they never raise out of the puncher."""
        self.handle_timer(now)
        try:
            probe = decode_probe(data)
            source = _normalize(address)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self._ignore(exc.reason)
            return
        if probe.session != self.session:
            self._ignore(Reason.WRONG_SESSION)
            return
        if probe.kind is ProbeKind.PROBE:
            self._answer(probe, source)
            if source in self._candidates:
                self._found(source)
        elif probe.nonce != self.nonce:
            self._ignore(Reason.UNKNOWN_NONCE)
        else:
            self._found(source)

    def _found(self, source: Address) -> None:
        if self._fire(_Trigger.ANSWERED):
            self.result = source
            self._attempt_times.clear()
            self._events.append(DirectPathFound(source))

    def _answer(self, probe: Probe, source: Address) -> None:
        self._queue(encode_probe(Probe(ProbeKind.ANSWER, self.session, probe.nonce)), source)
        self.answers_sent += 1
        if source not in self.targets:
            if len(self.learned) >= self.config.max_learned:
                return
            self.learned.append(source)
            self._events.append(PeerLearned(source))
        # A triggered check (RFC 8445 section 7.3.1.4): a probe that got here shows a path
        # that works toward us, so probe it back now, once per address, rather than at the
        # next round (rounds are a second or more apart; bench/remote_session.py measured
        # the two sides finding the path about a second apart without this). Its answer is
        # an ANSWER, never a probe, so the exchange ends there.
        if self.state in (PunchState.WAITING, PunchState.PROBING) and source not in self._triggered:
            self._triggered.add(source)
            self._probe(source)

    def handle_timer(self, now: float) -> None:
        """Start rounds whose time has come and fail at the deadline."""
        if now >= self.deadline:
            self._attempt_times.clear()
            if self._fire(_Trigger.DEADLINE):
                self._events.append(PunchFailed())
            return
        if now >= self.start_at:
            self._fire(_Trigger.START)
        while self._attempt_times and self._attempt_times[0] <= now:
            self._attempt_times.popleft()
            if self.state is PunchState.PROBING:
                for address in self.targets:
                    self._probe(address)

    # ------------------------------------------------------------------ outputs

    def get_timer(self) -> float | None:
        """When to call ``handle_timer``: the next round, else the deadline while unsettled."""
        if self._attempt_times:
            return self._attempt_times[0]
        if self.state in (PunchState.WAITING, PunchState.PROBING):
            return self.deadline
        return None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Probes and answers due by ``now``, each with its destination."""
        self.handle_timer(now)
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> PunchEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None
