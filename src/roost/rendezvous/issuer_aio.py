"""The issuing end on real sockets: ``IssuerCore`` with one UDP socket, one TLS connection
to the broker, punching and the QUIC session (adapter for ``roost connect``, docs/broker.md).

Thin (STYLE.md): every decision is ``roost.rendezvous.issuer.IssuerCore``'s. One UDP socket
(``UdpMux``) carries the STUN Binding to the broker's UDP port, the punch probes and QUIC,
so the reflexive address the broker reports is the one the hub probes. One TLS connection
to the broker's control port, server authentication only: the broker certificate chains to
the issuer's trust store and names the dialled host (``verify_broker``). The looked-up hub
certificate is verified with the same store (chain and SAN URI = the target) before the
password is sealed to its key; the QUIC server must then present a certificate of that
same identifier (``verify_target``).

``connect_via_broker`` returns a :class:`BrokeredConnection` once QUIC is up, or raises
the typed error of the core's ``Failed`` outcome (:func:`failure_error`), whose reason the
CLI turns into a distinct exit code (docs/exit-codes.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import RefusedError, RoostError, TransportError, VerificationError
from roost.pki.certs import load_certificate
from roost.pki.tls import client_context
from roost.pki.trust import TrustState
from roost.reasons import Reason
from roost.rendezvous.agent_aio import local_candidates
from roost.rendezvous.channel_aio import BrokerChannel, verify_broker
from roost.rendezvous.control import RelayRecord, decode_channel_body
from roost.rendezvous.issuer import (
    Connected,
    Failed,
    IssuerConfig,
    IssuerCore,
    Outcome,
    PathSwitched,
    RelayReady,
    RequestStun,
    SessionClosed,
    VerifyCertificate,
)
from roost.rendezvous.paths import PunchDriver, RelayPath, SwitchingPath, UdpMux
from roost.rendezvous.punch import Address, DirectPathFound, Puncher, PunchEvent, PunchFailed
from roost.rendezvous.quic import QuicSession, quic_connect, verify_target
from roost.rendezvous.sessions import PathKind, StartPunch
from roost.rendezvous.state import IssuerState
from roost.rendezvous.stun import build_binding_request, parse_binding_response
from roost.timer import CoreTimer

__all__ = ["BrokeredConnection", "connect_via_broker", "failure_error"]

_TRANSACTION_ID_SIZE = 12
# Reasons that mean "nothing answered in time" (exit code 8) rather than a refusal.
_UNREACHABLE = frozenset(
    {Reason.LOOKUP_TIMEOUT, Reason.RELAY_TIMEOUT, Reason.DISCONNECTED, Reason.CONNECT}
)
_UNTRUSTED = frozenset(
    {
        Reason.CHAIN,
        Reason.BAD_CERT,
        Reason.NO_ANCHOR,
        Reason.NO_ID,
        Reason.ID_MISMATCH,
        Reason.WRONG_ID,
        Reason.BAD_KEY,
    }
)


def failure_error(failed: Failed) -> RoostError:
    """The typed error of a failed attempt: VerificationError for trust, TransportError
    for silence, RefusedError for every answer that said no (wrong password, unknown hub,
    hub offline, relay limit...). The reason is kept, so the exit code can tell them apart."""
    if failed.reason in _UNTRUSTED:
        return VerificationError(failed.message, reason=failed.reason)
    if failed.reason in _UNREACHABLE:
        return TransportError(failed.message, reason=failed.reason)
    return RefusedError(failed.message, reason=failed.reason)


@dataclass(slots=True)
class BrokeredConnection:
    """A QUIC session to the target hub through the broker; ``close()`` ends everything."""

    outcome: Connected
    quic: QuicSession
    mux: UdpMux
    channel: BrokerChannel
    path: PathKind
    _run: _IssuerRun = field(repr=False)

    @property
    def closed_reason(self) -> Reason | None:
        """Why the broker ended the relayed session (``relay-limit``...), or None."""
        return self._run.closed_reason

    @property
    def current_path(self) -> PathKind:
        """The path the session sends on now (a relayed one may have switched to direct)."""
        return self._run.kind or self.path

    async def close(self) -> None:
        self._run.close()


class _IssuerRun:
    def __init__(
        self,
        core: IssuerCore,
        trust: TrustState,
        broker_udp: Address,
        punch: bool,
        rng: random.Random,
        relay_first: bool = False,
    ) -> None:
        self.core = core
        self.relay_first = relay_first
        # A direct path that came up before the session's path existed (relay first).
        self.pending_direct: Address | None = None
        self.deferred_direct: Address | None = None
        self.closed_reason: Reason | None = None
        self.trust = trust
        self.broker_udp = broker_udp
        self.punch = punch
        self.rng = rng
        self.loop = asyncio.get_running_loop()
        self.mux: UdpMux | None = None
        self.channel = BrokerChannel(self._on_body, self._on_closed)
        self.transaction_id = os.urandom(_TRANSACTION_ID_SIZE)
        self.outcome: asyncio.Future[Outcome] = self.loop.create_future()
        self.driver: PunchDriver | None = None
        self.relay: RelayPath | None = None
        self.path: SwitchingPath | None = None
        self.quic: QuicSession | None = None
        self.kind: PathKind | None = None
        self._timer = CoreTimer(self.loop, self._on_timer)
        self._transmitting = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def now(self) -> float:
        return self.loop.time()

    # ------------------------------------------------------------------ the one flush

    def transmit(self) -> None:
        if self._transmitting:
            # Called from an event handler: the running loop below takes it.
            return
        self._transmitting = True
        try:
            # A handler may feed the core (the certificate verdict queues ``connect``):
            # flush until it has nothing more to say.
            busy = True
            while busy:
                busy = False
                for body in self.core.records_to_send():
                    busy = True
                    self.channel.write(body)
                while (event := self.core.next_event()) is not None:
                    busy = True
                    self._on_event(event)
        finally:
            self._transmitting = False
        self._timer.arm(self.core.get_timer())

    def _on_timer(self) -> None:
        self.core.handle_timer(self.now())
        self.transmit()

    def _on_event(self, event: object) -> None:
        if isinstance(event, RequestStun):
            assert self.mux is not None
            with contextlib.suppress(RoostError, OSError):
                self.mux.sendto(build_binding_request(self.transaction_id), self.broker_udp)
        elif isinstance(event, VerifyCertificate):
            self._verify(event)
        elif isinstance(event, StartPunch):
            self._start_punch(event)
        elif isinstance(event, RelayReady):
            self.relay = RelayPath(event.session, self.channel.write)
        elif isinstance(event, PathSwitched):
            assert self.mux is not None
            direct = self.mux.path_to(event.addr)
            if self.quic is not None:
                self.quic.switch_path(direct)
            elif self.path is not None:
                self.path.switch_to(direct)
            else:
                self.pending_direct = event.addr
            self.kind = PathKind.DIRECT
        elif isinstance(event, SessionClosed):
            self.closed_reason = event.reason
            if self.quic is not None:
                self.quic.close(event.reason)
        elif isinstance(event, Outcome) and not self.outcome.done():
            self.outcome.set_result(event)
            if isinstance(event, Connected) and self.deferred_direct is not None:
                self.loop.call_soon(self._punch_result, DirectPathFound(self.deferred_direct))
                self.deferred_direct = None

    # ------------------------------------------------------------------ inputs

    def _on_stun(self, data: bytes, source: Address) -> None:
        try:
            candidate = parse_binding_response(data, self.transaction_id)
        except RoostError:
            return
        self.core.stun_result(candidate, self.now())
        self.transmit()

    def _on_body(self, body: bytes) -> None:
        try:
            message = decode_channel_body(body)
        except RoostError:
            return
        if isinstance(message, RelayRecord):
            if self.relay is not None and message.session == self.relay.session:
                self.relay.feed(message.payload)
            return
        self.core.control_received(message, self.now())
        self.transmit()

    def _on_closed(self) -> None:
        self.core.connection_lost(self.now())
        self.transmit()

    def _verify(self, item: VerifyCertificate) -> None:
        try:
            leaf = load_certificate(item.certificate)
            self.trust.verify_node(leaf, item.target)
            key = leaf.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise VerificationError("the hub key is not ECDSA", reason=Reason.BAD_KEY)
        except RoostError as exc:
            try:
                reason = Reason(exc.reason)
            except ValueError:
                reason = Reason.CHAIN
            self.core.certificate_refused(reason, self.now())
            return
        self.core.certificate_verified(item.certificate, key, self.now())

    def _start_punch(self, plan: StartPunch) -> None:
        assert self.mux is not None
        if not self.punch:
            # --no-punch: no probe is sent or answered, so no direct path can form; the
            # relay is asked at once (docs/broker.md, "Running it").
            self.loop.call_soon(self._punch_result, PunchFailed())
            return
        try:
            puncher = Puncher(
                plan.session,
                [(str(c.address), c.port) for c in plan.remote_candidates],
                plan.start_at,
                plan.deadline,
                plan.attempts,
                self.rng,
            )
        except RoostError:
            self.loop.call_soon(self._punch_result, PunchFailed())
            return
        if self.relay_first:
            # Ask for the relay at once and keep punching: the session starts on the relay
            # and moves to the direct path when it answers (as DERP then direct).
            self.loop.call_soon(self._punch_result, PunchFailed())
        self.driver = PunchDriver(self.mux, puncher, self._on_punch)

    def _on_punch(self, event: PunchEvent) -> None:
        # Deferred to the loop: the driver reports from inside its own transmit.
        self.loop.call_soon(self._punch_result, event)

    def _punch_result(self, event: PunchEvent) -> None:
        if isinstance(event, DirectPathFound):
            if self.core.state is IssuerState.AWAIT_RELAY:
                # Relay first: the relay was asked and is not open yet, and the core takes
                # a direct path only once it is; hand it over when the relay is up.
                self.deferred_direct = event.address
                return
            self.core.punch_succeeded(event.address, self.now())
        elif isinstance(event, PunchFailed):
            self.core.punch_failed(self.now())
        self.transmit()

    def close(self) -> None:
        self._timer.cancel()
        if self.quic is not None and not self.quic.closed:
            self.quic.close("closed")
        if self.driver is not None:
            self.driver.close()
        self.channel.abort()
        if self.mux is not None:
            self.mux.close()


async def connect_via_broker(
    target: str,
    *,
    broker: Address,
    broker_udp: Address,
    trust: TrustState,
    user: str,
    password: str,
    punch: bool = True,
    relay_first: bool = False,
    config: IssuerConfig | None = None,
    quic_timeout_s: float = 10.0,
    idle_timeout_s: float = 60.0,
    rng: random.Random | None = None,
) -> BrokeredConnection:
    """One brokered connection to hub ``target`` (steps 3 to 9 of docs/broker.md "The
    flow"); raises TransportError ``connect`` when the broker does not answer,
    VerificationError when it or the hub is not trusted, and :func:`failure_error` of the
    core's outcome otherwise. ``punch=False`` sends and answers no probe (the relay);
    ``relay_first`` asks for the relay at once and punches meanwhile."""
    family_host = "::" if ":" in broker_udp[0] else "0.0.0.0"
    mux = await UdpMux.open((family_host, 0))
    try:
        core = IssuerCore(
            config or IssuerConfig(),
            target,
            user,
            password,
            local_candidates=local_candidates(mux.local_address, broker_udp),
        )
    except BaseException:
        mux.close()
        raise
    run = _IssuerRun(core, trust, broker_udp, punch, rng or random.SystemRandom(), relay_first)
    run.mux = mux
    mux.on_stun = run._on_stun
    try:
        host, port = broker
        await run.channel.open(
            host,
            port,
            client_context(trust.anchors),
            lambda leaf: verify_broker(leaf, trust.anchors, trust.time_floor, host),
        )
        core.start(run.now())
        run.transmit()
        outcome = await run.outcome
        if isinstance(outcome, Failed):
            raise failure_error(outcome)
        assert isinstance(outcome, Connected)
        if outcome.path is PathKind.DIRECT:
            assert outcome.addr is not None
            first = mux.path_to(outcome.addr)
            run.path = SwitchingPath(first)
        else:
            assert run.relay is not None
            run.path = SwitchingPath(run.relay)
            if run.pending_direct is not None:
                run.path.switch_to(mux.path_to(run.pending_direct))
        run.kind = run.kind or outcome.path
        run.quic = await quic_connect(
            run.path,
            verify_server=verify_target(trust.anchors, trust.time_floor, target),
            timeout_s=quic_timeout_s,
            idle_timeout_s=idle_timeout_s,
        )
    except BaseException:
        run.close()
        raise
    return BrokeredConnection(outcome, run.quic, mux, run.channel, outcome.path, run)
