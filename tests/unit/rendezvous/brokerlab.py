"""A scripted broker between one IssuerCore and one AgentCore, in memory, under a fake clock.

The broker here follows docs/broker.md's flow in the simplest way that exercises both
cores: enrollment, registrations answered with RACK, lookup, connect → wake (RWAK, or
``wake`` over a held connection) → present → request → accept/reject → start, and the
relay; keepalives echoed, ``hold`` answered ``holding`` (or refused), and a request pushed
straight over a holding connection. Every control body crosses the real codec (encode,
then decode) so what the cores exchange is wire-valid. The adapters' work (opening the
seal and checking the password, verifying the certificate, STUN, punching) is done by the
lab with real primitives where they exist (seal.open_request) and by scenario switches
where the part belongs to another component (punching, STUN, trust store).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import RoostError
from roost.pki.certs import Role, identifier_for_key
from roost.reasons import Reason
from roost.rendezvous.agent import (
    AgentConfig,
    AgentCore,
    CheckPassword,
    CloseConnection,
    OpenEnrollConnection,
    OpenHeldConnection,
    OpenPresentConnection,
)
from roost.rendezvous.control import (
    Accept,
    Connect,
    Connecting,
    ControlMessage,
    Enroll,
    Enrolled,
    Error,
    Hold,
    Holding,
    Keepalive,
    Lookup,
    LookupResult,
    Present,
    Reject,
    RelayClose,
    RelayOpen,
    Request,
    Start,
    WakePush,
    decode_control,
    encode_control_message,
)
from roost.rendezvous.issuer import IssuerConfig, IssuerCore, RequestStun, VerifyCertificate
from roost.rendezvous.messages import (
    Ack,
    Candidate,
    Wake,
    decode_registration,
    encode_ack,
    encode_wake,
    verify_registration,
)
from roost.rendezvous.seal import open_request
from roost.rendezvous.sessions import RendezvousEvent, StartPunch

__all__ = ["HUB_ID", "HUB_KEY", "Lab", "Scenario"]


def _fixed_key(label: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") >> 8
    return ec.derive_private_key(scalar, ec.SECP256R1())


HUB_KEY = _fixed_key("brokerlab hub")
HUB_ID = identifier_for_key(Role.HUB, HUB_KEY.public_key())
# The control codec carries the certificate without parsing it; the lab's "trust store"
# accepts exactly these bytes for HUB_ID.
CERTIFICATE = b"\x30\x82" + hashlib.sha256(b"brokerlab certificate").digest()
REGISTRATION_KEY = hashlib.sha256(b"brokerlab registration key").digest()
HUB_LOCAL = (Candidate.parse("192.168.1.9:41000"),)
HUB_REFLEXIVE = Candidate.parse("203.0.113.20:62000")
ISSUER_LOCAL = (Candidate.parse("10.0.0.5:50123"),)
ISSUER_REFLEXIVE = Candidate.parse("198.51.100.7:50123")
SESSION = 42
TOKEN = bytes(range(16))


@dataclass
class Scenario:
    """Switches for the parts the lab plays, and for the broker's choices."""

    users: dict[str, str] = field(default_factory=lambda: {"owner": "pw"})
    udp_ok: bool = True
    stun_ok: bool = True
    punch_ok: bool = True
    known: bool = True
    online: bool = True
    answer_lookup: bool = True
    deliver_wake: bool = True
    answer_relay: bool = True
    refuse_relay: bool = False
    close_relay_after: float | None = None
    connect_error: Reason | None = None
    certificate_ok: bool = True
    kdf_seconds: float = 0.05
    rtt: float = 0.01
    start_in_ms: int = 100
    deadline_ms: int = 3000
    max_bytes: int = 1 << 20
    max_ms: int = 120_000
    interval_ms: int = 20_000
    # The broker echoes keepalives (the real one always does), holds connections.
    echo_keepalive: bool = True
    hold_ok: bool = True


_ISSUER = -1


class Lab:
    """The broker, the two cores, their adapters' stand-ins, and one fake clock."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        user: str = "owner",
        password: str = "pw",
        agent_config: AgentConfig | None = None,
        issuer_config: IssuerConfig | None = None,
        seed: int = 7,
    ) -> None:
        self.s = scenario or Scenario()
        self.now = 100.0
        self.agent = AgentCore(
            agent_config or AgentConfig(),
            HUB_ID,
            random.Random(seed),
            candidates=HUB_LOCAL,
            counter_start=1_000,
        )
        self.issuer = IssuerCore(
            issuer_config or IssuerConfig(), HUB_ID, user, password, local_candidates=ISSUER_LOCAL
        )
        self.agent_events: list[RendezvousEvent] = []
        self.issuer_events: list[RendezvousEvent] = []
        self.opened: list[str] = []
        self.checked: list[tuple[str, str]] = []
        self.registrations: list[float] = []
        self.keepalives: list[float] = []
        self.wakes_sent = 0
        self.broker_sent: list[ControlMessage] = []
        self._schedule: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._channels: dict[int, str] = {}
        self._present_channel: int | None = None
        self._wake_counter = 0
        self._relay_opened = False
        self._issuer_candidates: tuple[Candidate, ...] = ()
        self._sealed = b""

    # ------------------------------------------------------------------ running

    def at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._schedule, (self.now + delay, next(self._order), action))

    def run(self, seconds: float, max_steps: int = 20_000) -> None:
        """Move the clock ``seconds`` forward, running every deadline on the way."""
        until = self.now + seconds
        for _ in range(max_steps):
            self._drain()
            times = [t for t in (self.agent.get_timer(), self.issuer.get_timer()) if t is not None]
            if self._schedule:
                times.append(self._schedule[0][0])
            due = min(times, default=None)
            if due is None or due > until:
                self.now = until
                return
            self.now = max(self.now, due)
            while self._schedule and self._schedule[0][0] <= self.now:
                heapq.heappop(self._schedule)[2]()
            self.agent.handle_timer(self.now)
            self.issuer.handle_timer(self.now)
        raise AssertionError("the lab did not settle")

    def connect(self, seconds: float = 30.0) -> None:
        self.issuer.start(self.now)
        self.run(seconds)

    def _drain(self) -> None:
        for _ in range(1_000):
            moved = False
            for datagram in self.agent.datagrams_to_send():
                moved = True
                self._broker_datagram(datagram)
            # Like a real adapter: a channel exists from its Open event on, its records are
            # written in order, and a close waits until the records queued before it went.
            closes: list[CloseConnection] = []
            while (event := self.agent.next_event()) is not None:
                moved = True
                self.agent_events.append(event)
                if isinstance(event, CloseConnection):
                    closes.append(event)
                else:
                    self._agent_adapter(event)
            for channel, body in self.agent.records_to_send():
                moved = True
                self._broker_record(channel, decode_control(body))
            for close in closes:
                self._channels.pop(close.channel, None)
            for body in self.issuer.records_to_send():
                moved = True
                self._broker_record(_ISSUER, decode_control(body))
            while (event := self.issuer.next_event()) is not None:
                moved = True
                self.issuer_events.append(event)
                self._issuer_adapter(event)
            if not moved:
                return
        raise AssertionError("the lab's cores kept producing output")

    # ------------------------------------------------------------------ adapters

    def _agent_adapter(self, event: RendezvousEvent) -> None:
        if isinstance(event, OpenEnrollConnection | OpenHeldConnection | OpenPresentConnection):
            kind = type(event).__name__.removeprefix("Open").removesuffix("Connection").lower()
            self._channels[event.channel] = kind
            self.opened.append(kind)
        elif isinstance(event, CheckPassword):
            self.at(self.s.kdf_seconds, lambda: self._check(event))
        elif isinstance(event, StartPunch):
            self._punch(event, agent=True)

    def _check(self, event: CheckPassword) -> None:
        try:
            credentials = open_request(HUB_KEY, HUB_ID, event.sealed, event.issuer_candidates)
        except RoostError as error:
            self.agent.password_checked(event.session, False, self.now, Reason(error.reason))
            return
        self.checked.append((credentials.user, credentials.password))
        ok = self.s.users.get(credentials.user) == credentials.password
        self.agent.password_checked(event.session, ok, self.now)

    def _issuer_adapter(self, event: RendezvousEvent) -> None:
        if isinstance(event, RequestStun):
            if self.s.stun_ok:
                self.at(self.s.rtt, lambda: self.issuer.stun_result(ISSUER_REFLEXIVE, self.now))
        elif isinstance(event, VerifyCertificate):
            if self.s.certificate_ok and event.certificate == CERTIFICATE:
                self.issuer.certificate_verified(event.certificate, HUB_KEY.public_key(), self.now)
            else:
                self.issuer.certificate_refused(Reason.CHAIN, self.now)
        elif isinstance(event, StartPunch):
            self._punch(event, agent=False)

    def _punch(self, event: StartPunch, *, agent: bool) -> None:
        # Both sides probe from start_at; a working path answers one round trip later.
        if self.s.punch_ok:
            when = event.start_at + self.s.rtt - self.now
            addr = (ISSUER_REFLEXIVE if agent else HUB_REFLEXIVE).as_tuple()
            if agent:
                self.at(when, lambda: self.agent.punch_succeeded(event.session, addr, self.now))
            else:
                self.at(when, lambda: self.issuer.punch_succeeded(addr, self.now))
        elif agent:
            self.at(
                event.deadline - self.now, lambda: self.agent.punch_failed(event.session, self.now)
            )
        else:
            self.at(event.deadline - self.now, lambda: self.issuer.punch_failed(self.now))

    # ------------------------------------------------------------------ the broker

    def _to_agent(self, channel: int, message: ControlMessage) -> None:
        body = encode_control_message(message)
        self.broker_sent.append(message)
        self.at(self.s.rtt / 2, lambda: self._deliver_agent(channel, body))

    def _deliver_agent(self, channel: int, body: bytes) -> None:
        if channel in self._channels:
            self.agent.control_received(channel, decode_control(body), self.now)

    def _to_issuer(self, message: ControlMessage) -> None:
        body = encode_control_message(message)
        self.broker_sent.append(message)
        self.at(
            self.s.rtt / 2, lambda: self.issuer.control_received(decode_control(body), self.now)
        )

    def _broker_datagram(self, datagram: bytes) -> None:
        self.registrations.append(self.now)
        if not self.s.udp_ok:
            return
        registration = verify_registration(decode_registration(datagram), REGISTRATION_KEY)
        rack = encode_ack(Ack(registration.counter, HUB_REFLEXIVE), datagram)
        self.at(
            self.s.rtt, lambda: self.agent.datagram_received(rack, ("192.0.2.1", 3478), self.now)
        )

    def wake_datagram(
        self, counter: int, token: bytes = TOKEN, key: bytes = REGISTRATION_KEY
    ) -> bytes:
        return encode_wake(Wake(counter, token), key)

    def _broker_record(self, channel: int, message: ControlMessage) -> None:
        if channel == _ISSUER:
            self._from_issuer(message)
            return
        kind = self._channels.get(channel)
        if isinstance(message, Enroll):
            self._to_agent(channel, Enrolled(HUB_ID, REGISTRATION_KEY, self.s.interval_ms))
        elif isinstance(message, Keepalive):
            self.keepalives.append(self.now)
            if self.s.echo_keepalive:
                self._to_agent(channel, Keepalive())
        elif isinstance(message, Hold):
            if self.s.hold_ok:
                self._channels[channel] = "holding"
                self._to_agent(channel, Holding())
            else:
                self._to_agent(channel, Error(Reason.HELD_LIMIT))
        elif isinstance(message, Present) and kind == "present" and message.token == TOKEN:
            self._present_channel = channel
            self._to_agent(channel, Request(SESSION, self._issuer_candidates, self._sealed))
        elif isinstance(message, Accept):
            assert self._present_channel is not None
            hub = (HUB_REFLEXIVE, *message.candidates)
            self._to_agent(
                self._present_channel,
                Start(SESSION, self._issuer_candidates, self.s.start_in_ms, self.s.deadline_ms),
            )
            self._to_issuer(Start(SESSION, hub, self.s.start_in_ms, self.s.deadline_ms))
        elif isinstance(message, Reject):
            self._to_issuer(message)
        elif isinstance(message, RelayOpen):
            self._relay(message)

    def _from_issuer(self, message: ControlMessage) -> None:
        if isinstance(message, Lookup):
            if not self.s.answer_lookup:
                return
            if self.s.known:
                self._to_issuer(LookupResult(message.target, CERTIFICATE))
            else:
                self._to_issuer(Error(Reason.UNKNOWN_TARGET))
        elif isinstance(message, Connect):
            if self.s.connect_error is not None:
                self._to_issuer(Error(self.s.connect_error))
                return
            if not self.s.online:
                self._to_issuer(Error(Reason.TARGET_OFFLINE))
                return
            self._issuer_candidates, self._sealed = message.candidates, message.sealed
            self._to_issuer(Connecting(SESSION))
            if self.s.deliver_wake:
                self._wake()
        elif isinstance(message, RelayOpen):
            self._relay(message)

    def _wake(self) -> None:
        holding = [c for c, kind in self._channels.items() if kind == "holding"]
        if holding:
            # Pushed over the holding connection: no wake-up, no present connection.
            self._present_channel = holding[0]
            self._to_agent(holding[0], Request(SESSION, self._issuer_candidates, self._sealed))
            return
        held = [c for c, kind in self._channels.items() if kind == "held"]
        if held:
            self._to_agent(held[0], WakePush(TOKEN))
            return
        self._wake_counter += 1
        self.wakes_sent += 1
        datagram = self.wake_datagram(self._wake_counter)
        self.at(
            self.s.rtt / 2,
            lambda: self.agent.datagram_received(datagram, ("192.0.2.1", 3478), self.now),
        )

    def _relay(self, message: RelayOpen) -> None:
        if self._relay_opened or not self.s.answer_relay:
            return
        self._relay_opened = True
        assert self._present_channel is not None
        if self.s.refuse_relay:
            self._to_agent(self._present_channel, RelayClose(SESSION, Reason.RELAY_LIMIT))
            self._to_issuer(RelayClose(SESSION, Reason.RELAY_LIMIT))
            return
        opened = RelayOpen(SESSION, self.s.max_bytes, self.s.max_ms)
        self._to_agent(self._present_channel, opened)
        self._to_issuer(opened)
        if self.s.close_relay_after is not None:
            channel = self._present_channel
            closed = RelayClose(SESSION, Reason.RELAY_LIMIT)
            self.at(self.s.close_relay_after, lambda: self._to_agent(channel, closed))
            self.at(self.s.close_relay_after, lambda: self._to_issuer(closed))
