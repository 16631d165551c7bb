"""The issuing side of a brokered connection (``roost connect``), as a pure core.

One :class:`IssuerCore` makes one connection attempt to one target hub through the broker
(docs/broker.md, "The flow", steps 3 to 8): it asks its adapter for the reflexive address
(STUN from the punch socket), looks the target up, has the looked-up certificate verified
against the issuer's trust store (a work item: the adapter owns the trust store), seals the
user and password to the verified key with the issuer's candidates, sends ``connect`` and
follows the broker's ``start`` and relay decisions. It ends with exactly one
:class:`Outcome`: :class:`Connected` (``path`` direct or relay, with timings) or
:class:`Failed` (a reason and a one-line message for the person at the keyboard).

The core reads no clock: every timing is the difference of two ``now`` arguments. Outputs:
``records_to_send()`` (control bodies for the one TLS connection to the broker; the adapter
frames each with ``roost.framing.encode_record``) and ``next_event()``:
:class:`RequestStun`, :class:`VerifyCertificate`, ``StartPunch`` (answer
``punch_succeeded`` / ``punch_failed``), :class:`RelayReady`, :class:`PathSwitched`,
:class:`SessionClosed` and the :class:`Outcome`. Peer input never raises; it is ignored and
counted by reason in ``counters.ignored`` when the state table does not allow it.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import ConfigError, LocalProtocolError, RoostError
from roost.reasons import Reason
from roost.rendezvous.control import (
    Connect,
    Connecting,
    ControlMessage,
    Error,
    Lookup,
    LookupResult,
    Reject,
    RelayClose,
    RelayOpen,
    Start,
    encode_control_message,
)
from roost.rendezvous.messages import Candidate, check_identifier
from roost.rendezvous.seal import seal_request
from roost.rendezvous.sessions import (
    PUNCH_ATTEMPTS,
    PathKind,
    RendezvousEvent,
    StartPunch,
    merge_candidates,
    punch_plan,
)
from roost.rendezvous.state import ISSUER_TRANSITIONS, IssuerInput, IssuerState

__all__ = [
    "FAILURE_MESSAGES",
    "Connected",
    "Failed",
    "IssuerConfig",
    "IssuerCore",
    "IssuerCounters",
    "IssuerEvent",
    "Outcome",
    "PathSwitched",
    "RelayReady",
    "RequestStun",
    "SessionClosed",
    "VerifyCertificate",
    "failure_message",
]

_UNTRUSTED = "the hub's certificate is not trusted (trust store or identifier mismatch)"
_REFUSED = "the broker refused the request"
_TIMED_OUT = "timed out"

# One line per failure the person at the keyboard may see (issue 9, "Clear failures").
FAILURE_MESSAGES: Mapping[Reason, str] = {
    Reason.BAD_PASSWORD: "wrong password (or unknown user)",
    Reason.LOCKED_OUT: "the user is locked out after failed logins; try again later",
    Reason.BAD_SEAL: "the hub could not open the request (it was altered on the way)",
    Reason.UNKNOWN_TARGET: "unknown hub: the broker has no hub of that identifier",
    Reason.TARGET_OFFLINE: "hub offline: it is not registered with the broker",
    Reason.RATE_LIMITED: "the broker refused: rate limited, try again later",
    Reason.REFUSED: _REFUSED,
    Reason.BUSY: "the hub or the broker is busy; try again later",
    Reason.SOURCE_BUSY: _REFUSED,
    Reason.FULL: _REFUSED,
    Reason.TABLE_FULL: _REFUSED,
    Reason.SOURCE_TABLE_FULL: _REFUSED,
    Reason.RELAY_LIMIT: "relay limit reached",
    Reason.LOOKUP_TIMEOUT: f"{_TIMED_OUT}: the broker did not answer the lookup",
    Reason.ACCEPT_TIMEOUT: f"{_TIMED_OUT}: the hub did not answer the request",
    Reason.RELAY_TIMEOUT: f"{_TIMED_OUT}: the broker did not open the relay",
    Reason.CHAIN: _UNTRUSTED,
    Reason.BAD_CERT: _UNTRUSTED,
    Reason.NO_ANCHOR: _UNTRUSTED,
    Reason.NO_ID: _UNTRUSTED,
    Reason.ID_MISMATCH: _UNTRUSTED,
    Reason.WRONG_ID: _UNTRUSTED,
    Reason.BAD_KEY: _UNTRUSTED,
    Reason.DISCONNECTED: "the broker closed the connection",
    Reason.WAKE_TIMEOUT: "hub offline: it did not answer the broker's wake-up",
    Reason.ANSWER_TIMEOUT: "hub offline: it did not answer the request in time",
    Reason.RELAY_EXPIRED: "relay limit reached (the relayed session's time)",
    Reason.SESSION_LIMIT: "the broker refused: too many sessions",
}


def failure_message(reason: str) -> str:
    """The one-line message for a failure ``reason``."""
    try:
        return FAILURE_MESSAGES[Reason(reason)]
    except (ValueError, KeyError):
        return f"the connection failed ({reason})"


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """The issuer's waits (seconds) and punch attempts (docs/broker.md, steps 3 to 8)."""

    # Without a STUN answer by then, only the local candidates are offered (UDP may be
    # blocked; the relay still works).
    stun_timeout: float = 2.0
    lookup_timeout: float = 5.0
    # From ``connect`` to ``start``: the wake-up, the hub's TLS connection and its KDF.
    accept_timeout: float = 15.0
    # The broker's punch window is capped at this, and a punch the adapter never reports
    # counts as failed ``punch_grace`` after it.
    punch_deadline: float = 10.0
    punch_grace: float = 1.0
    relay_timeout: float = 5.0
    attempts: int = PUNCH_ATTEMPTS

    def __post_init__(self) -> None:
        for name in (
            "stun_timeout",
            "lookup_timeout",
            "accept_timeout",
            "punch_deadline",
            "punch_grace",
            "relay_timeout",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.attempts < 1:
            raise ConfigError("attempts must be at least 1")


@dataclass(slots=True)
class IssuerCounters:
    stun_timeouts: int = 0
    ignored: collections.Counter[str] = field(default_factory=collections.Counter)


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class IssuerEvent(RendezvousEvent):
    """Base of every command and event of the issuer (``StartPunch`` is shared)."""


@dataclass(frozen=True, slots=True)
class RequestStun(IssuerEvent):
    """Send STUN Binding to the broker's UDP port from the punch socket; answer
    ``stun_result(candidate or None, now)``."""


@dataclass(frozen=True, slots=True)
class VerifyCertificate(IssuerEvent):
    """Work item: check ``certificate`` chains to the trust store and names ``target``;
    answer ``certificate_verified`` or ``certificate_refused``."""

    certificate: bytes
    target: str


@dataclass(frozen=True, slots=True)
class RelayReady(IssuerEvent):
    """The broker relays ``session`` over the control connection within these limits."""

    session: int
    max_bytes: int | None
    max_ms: int | None


@dataclass(frozen=True, slots=True)
class PathSwitched(IssuerEvent):
    """A direct path to ``addr`` came up after the session started on the relay."""

    session: int
    addr: tuple[str, int]


@dataclass(frozen=True, slots=True)
class SessionClosed(IssuerEvent):
    """The relayed session ended after it was connected (relay-close, error, lost)."""

    session: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class Outcome(IssuerEvent):
    """The one final result. ``timings`` are milliseconds of the steps that ran (stun_ms,
    lookup_ms, connect_ms, punch_ms, relay_ms); ``setup_ms`` is start to outcome."""

    setup_ms: int
    timings: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Connected(Outcome):
    session: int
    path: PathKind
    # The peer's address on a direct path; None on the relay.
    addr: tuple[str, int] | None
    relay_max_bytes: int | None = None
    relay_max_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Failed(Outcome):
    reason: Reason
    message: str


# ------------------------------------------------------------------------------- the core


class IssuerCore:
    """One connection attempt from an issuer to ``target`` (module docstring)."""

    def __init__(
        self,
        config: IssuerConfig,
        target: str,
        user: str,
        password: str,
        *,
        local_candidates: tuple[Candidate, ...] = (),
    ) -> None:
        check_identifier(target)
        self.config = config
        self.target = target
        self.counters = IssuerCounters()
        self._user = user
        self._password = password
        self._local = merge_candidates(local_candidates)
        self._state = IssuerState.IDLE
        self._reflexive: Candidate | None = None
        self._stun_done = False
        self._certificate: bytes | None = None
        self._public_key: ec.EllipticCurvePublicKey | None = None
        self._session: int | None = None
        self._relay: RelayOpen | None = None
        self._marks: dict[str, float] = {}
        self._timings: dict[str, int] = {}
        self._stun_at: float | None = None
        self._deadline: float | None = None
        self._deadline_reason: Reason = Reason.LOOKUP_TIMEOUT
        self._events: collections.deque[RendezvousEvent] = collections.deque()
        self._records: list[bytes] = []
        self.outcome: Outcome | None = None

    # ------------------------------------------------------------------ the aioquic shape

    @property
    def state(self) -> IssuerState:
        return self._state

    @property
    def session(self) -> int | None:
        return self._session

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """What ``connect`` offers: the reflexive address (if STUN answered), then local."""
        reflexive = (self._reflexive,) if self._reflexive is not None else ()
        return merge_candidates(reflexive, self._local)

    def next_event(self) -> RendezvousEvent | None:
        return self._events.popleft() if self._events else None

    def records_to_send(self) -> list[bytes]:
        """Control bodies for the broker connection; taking them clears them."""
        out, self._records = self._records, []
        return out

    def get_timer(self) -> float | None:
        deadlines = [t for t in (self._stun_at, self._deadline) if t is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        """Run every deadline due at ``now``; calling early or late is harmless."""
        self._check_now(now)
        if self._stun_at is not None and now >= self._stun_at:
            self._stun_at = None
            self.counters.stun_timeouts += 1
            self.stun_result(None, now)
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            if self._state in (IssuerState.PUNCHING, IssuerState.RELAY_READY):
                # The adapter never reported the punch: its deadline passed, so it failed.
                self.punch_failed(now)
            else:
                self._fail(IssuerInput.TIMEOUT, self._deadline_reason, now)

    # ------------------------------------------------------------------ adapter inputs

    def start(self, now: float) -> None:
        """Begin (the TLS connection to the broker and the punch socket are open)."""
        self._check_now(now)
        if not self._move(IssuerInput.START):
            return
        self._marks["start"] = self._marks["stun"] = self._marks["lookup"] = now
        self._events.append(RequestStun())
        self._stun_at = now + self.config.stun_timeout
        self._send(Lookup(self.target))
        self._arm(now + self.config.lookup_timeout, Reason.LOOKUP_TIMEOUT)

    def stun_result(self, candidate: Candidate | None, now: float) -> None:
        """The reflexive address from STUN, or None when STUN got no answer."""
        self._check_now(now)
        if self._stun_done or self._state is IssuerState.IDLE:
            # Late (the timeout passed) or never asked: nothing waits for it.
            self._ignore(Reason.UNEXPECTED_MESSAGE)
            return
        self._stun_done = True
        self._stun_at = None
        if candidate is not None:
            self._reflexive = candidate
            self._took("stun", now)
        if self._state is IssuerState.VERIFIED:
            self._connect(now)

    def control_received(self, message: ControlMessage, now: float) -> None:
        """A control message (already decoded) from the broker connection."""
        self._check_now(now)
        session = getattr(message, "session", None)
        if (
            session is not None
            and self._session is not None
            and session != self._session
            and not isinstance(message, Connecting)
        ):
            self._ignore(Reason.UNKNOWN_SESSION)
            return
        if isinstance(message, LookupResult):
            self._on_lookup(message, now)
        elif isinstance(message, Connecting):
            if self._move(IssuerInput.CONNECTING):
                self._session = message.session
        elif isinstance(message, Reject):
            self._fail(IssuerInput.REJECT, message.reason, now)
        elif isinstance(message, Start):
            self._on_start(message, now)
        elif isinstance(message, RelayOpen):
            self._on_relay_open(message, now)
        elif isinstance(message, RelayClose):
            reason = message.reason
            self._fail(IssuerInput.RELAY_CLOSE, reason, now) or self._closed(
                IssuerInput.RELAY_CLOSE, reason
            )
        elif isinstance(message, Error):
            self._fail(IssuerInput.ERROR, message.reason, now) or self._closed(
                IssuerInput.ERROR, message.reason
            )
        else:
            self._ignore(Reason.UNEXPECTED_MESSAGE)

    def certificate_verified(
        self, certificate: bytes, public_key: ec.EllipticCurvePublicKey, now: float
    ) -> None:
        """The looked-up certificate chains to the trust store and names the target."""
        self._check_now(now)
        if self._certificate is None or certificate != self._certificate:
            raise LocalProtocolError("no verification of this certificate was asked")
        if self._state is not IssuerState.VERIFYING:
            # The attempt ended (a broker error, a lost connection) while the check ran.
            self._ignore(Reason.UNEXPECTED_MESSAGE)
            return
        self._public_key = public_key
        self._move(IssuerInput.VERIFIED)
        if self._stun_done:
            self._connect(now)

    def certificate_refused(self, reason: Reason, now: float) -> None:
        """The looked-up certificate failed verification with ``reason``."""
        self._check_now(now)
        if self._certificate is None:
            raise LocalProtocolError("no certificate verification was asked")
        self._fail(IssuerInput.REFUSED, reason, now)

    def punch_succeeded(self, addr: tuple[str, int], now: float) -> None:
        """A direct path to ``addr`` answered our probes."""
        self._check_now(now)
        was = self._state
        if not self._move(IssuerInput.PUNCH_OK):
            return
        self._deadline = None
        assert self._session is not None
        if was is IssuerState.RELAY:
            self._events.append(PathSwitched(self._session, addr))
        else:
            self._took("punch", now)
            self._finish(PathKind.DIRECT, addr, now)

    def punch_failed(self, now: float) -> None:
        """No direct path by the deadline: ask for the relay, unless it is open already."""
        self._check_now(now)
        was = self._state
        if not self._move(IssuerInput.PUNCH_FAILED):
            return
        assert self._session is not None
        if was is IssuerState.PUNCHING:
            self._took("punch", now)
            self._marks["relay"] = now
            self._send(RelayOpen(self._session))
            self._arm(now + self.config.relay_timeout, Reason.RELAY_TIMEOUT)
        elif was is IssuerState.RELAY_READY:
            self._took("punch", now)
            self._deadline = None
            self._connected_relay(now)

    def connection_lost(self, now: float) -> None:
        """The TLS connection to the broker ended."""
        self._check_now(now)
        self._fail(IssuerInput.LOST, Reason.DISCONNECTED, now) or self._closed(
            IssuerInput.LOST, Reason.DISCONNECTED
        )

    # ------------------------------------------------------------------ internals

    def _on_lookup(self, message: LookupResult, now: float) -> None:
        if self._state is not IssuerState.LOOKING_UP:
            self._ignore(Reason.UNEXPECTED_MESSAGE)
            return
        if message.target != self.target:
            # A broker that answers for another hub gets no password sealed to that hub.
            self._fail(IssuerInput.ERROR, Reason.WRONG_ID, now)
            return
        self._move(IssuerInput.LOOKUP_RESULT)
        self._took("lookup", now)
        self._deadline = None
        self._certificate = message.certificate
        self._events.append(VerifyCertificate(message.certificate, self.target))

    def _connect(self, now: float) -> None:
        assert self._public_key is not None
        candidates = self.candidates
        try:
            sealed = seal_request(
                self._public_key, self.target, candidates, self._user, self._password
            )
        except RoostError as error:
            # A key of another curve, a user name too long: nothing can be sent.
            self._fail(IssuerInput.ERROR, Reason(error.reason), now)
            return
        self._move(IssuerInput.CONNECT)
        self._marks["connect"] = now
        self._send(Connect(self.target, candidates, sealed))
        self._arm(now + self.config.accept_timeout, Reason.ACCEPT_TIMEOUT)

    def _on_start(self, message: Start, now: float) -> None:
        if self._session is None or message.session != self._session:
            self._ignore(Reason.UNKNOWN_SESSION)
            return
        if not self._move(IssuerInput.START_PUNCH):
            return
        self._took("connect", now)
        self._marks["punch"] = now
        plan = punch_plan(message, now, self.config.attempts)
        deadline = min(plan.deadline, plan.start_at + self.config.punch_deadline)
        plan = StartPunch(
            plan.session, plan.remote_candidates, plan.start_at, deadline, plan.attempts
        )
        self._events.append(plan)
        self._arm(deadline + self.config.punch_grace, Reason.PUNCH_FAILED)

    def _on_relay_open(self, message: RelayOpen, now: float) -> None:
        was = self._state
        if not self._move(IssuerInput.RELAY_OPEN):
            return
        if was in (IssuerState.PUNCHING, IssuerState.AWAIT_RELAY):
            self._relay = message
        if was is IssuerState.AWAIT_RELAY:
            self._deadline = None
            self._took("relay", now)
            self._connected_relay(now)

    def _connected_relay(self, now: float) -> None:
        assert self._relay is not None
        relay = self._relay
        self._events.append(RelayReady(relay.session, relay.max_bytes, relay.max_ms))
        self._finish(PathKind.RELAY, None, now, relay.max_bytes, relay.max_ms)

    def _finish(
        self,
        path: PathKind,
        addr: tuple[str, int] | None,
        now: float,
        max_bytes: int | None = None,
        max_ms: int | None = None,
    ) -> None:
        assert self._session is not None
        setup_ms = self._ms(self._marks["start"], now)
        connected = Connected(
            setup_ms, dict(self._timings), self._session, path, addr, max_bytes, max_ms
        )
        self.outcome = connected
        self._events.append(connected)

    def _fail(self, kind: IssuerInput, reason: Reason, now: float) -> bool:
        """Move to FAILED with ``reason`` if the table allows ``kind`` to fail here."""
        if ISSUER_TRANSITIONS.get((self._state, kind)) is not IssuerState.FAILED:
            if kind in (IssuerInput.REJECT, IssuerInput.REFUSED, IssuerInput.TIMEOUT):
                self._ignore(Reason.UNEXPECTED_MESSAGE)
            return False
        self._move(kind)
        self._deadline = self._stun_at = None
        start = self._marks.get("start", now)
        failed = Failed(self._ms(start, now), dict(self._timings), reason, failure_message(reason))
        self.outcome = failed
        self._events.append(failed)
        return True

    def _closed(self, kind: IssuerInput, reason: Reason) -> bool:
        was = self._state
        if not self._move(kind):
            return False
        if self._state is IssuerState.CLOSED and was is not IssuerState.CLOSED:
            assert self._session is not None
            self._events.append(SessionClosed(self._session, reason))
        return True

    def _move(self, kind: IssuerInput) -> bool:
        target = ISSUER_TRANSITIONS.get((self._state, kind))
        if target is None:
            self._ignore(Reason.UNEXPECTED_MESSAGE)
            return False
        self._state = target
        return True

    def _arm(self, deadline: float, reason: Reason) -> None:
        self._deadline = deadline
        self._deadline_reason = reason

    def _took(self, step: str, now: float) -> None:
        since = self._marks.get(step)
        if since is not None:
            self._timings[f"{step}_ms"] = self._ms(since, now)

    @staticmethod
    def _ms(since: float, now: float) -> int:
        return max(0, round((now - since) * 1000))

    def _send(self, message: ControlMessage) -> None:
        self._records.append(encode_control_message(message))

    def _ignore(self, reason: str) -> None:
        self.counters.ignored[reason] += 1

    @staticmethod
    def _check_now(now: float) -> None:
        if not math.isfinite(now):
            raise LocalProtocolError("now must be a finite monotonic time")
