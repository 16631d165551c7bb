"""The hub's broker agent on real sockets: ``AgentCore`` with its UDP socket, TLS channels,
password checks, punching and the QUIC sessions it serves (adapter, docs/broker.md).

Thin (STYLE.md): every decision is ``roost.rendezvous.agent.AgentCore``'s. This module owns
the ONE UDP socket (``UdpMux`` bound to the hub config's ``[broker].local``: RREG/RACK/RWAK,
punch probes and QUIC, so the NAT mapping the broker sees is the session's), one mutual-TLS
``BrokerChannel`` per channel the core asks for (the hub's own certificate; the broker's is
checked with ``verify_broker``), and one ``transmit()`` that flushes what the core wants
sent, acts on its events and re-arms ONE ``loop.call_at``.

Work items. ``CheckPassword``: ``open_request`` with the hub key and identifier, then the
guard server checks that user's password on its login worker (the KDF never runs on the
loop). ``StartPunch``: a ``Puncher`` on the mux; its result goes back to the core. A session
is served as QUIC (``quic_serve`` with the hub certificate) over a ``SwitchingPath`` that
starts on the direct ``UdpPath`` or on a ``RelayPath`` (relay records on the session's
present connection); a direct path found later takes over. Each stream of the session is a
guard session of the hub's ``GuardServer`` (the same users, calls and Merkle log as the
TCP remote entrance), bound to ``tls-server-end-point`` of the hub certificate; the first
is the login stream the hub opens itself with the password grant (server-first login,
docs/guard.md).

Several punches at a time: each ``StartPunch`` gets its own ``PunchDriver``, and the mux
hands every probe to the driver of the probe's session, so two owners connecting at once
both punch (the hub serves at most ``AgentConfig.max_sessions`` sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from roost.clock import wall_ms_now
from roost.config import BrokerLink
from roost.errors import RemoteProtocolError, RoostError, VerificationError
from roost.guard.aio import GuardServer
from roost.guard.calls import tls_server_end_point
from roost.guard.userstore import PasswordGrant
from roost.hub.status import BrokerAgentStatus
from roost.pki.tls import client_context
from roost.pki.updater import TrustUpdater
from roost.reasons import Reason, RejectionCounter, log_rejection
from roost.rendezvous.agent import (
    AgentConfig,
    AgentCore,
    CheckPassword,
    CloseConnection,
    OpenEnrollConnection,
    OpenHeldConnection,
    OpenPresentConnection,
    RelayReady,
    SessionEnded,
)
from roost.rendezvous.channel_aio import BrokerChannel, verify_broker
from roost.rendezvous.control import RelayRecord, decode_channel_body
from roost.rendezvous.messages import Candidate
from roost.rendezvous.paths import (
    DatagramPath,
    PunchDriver,
    RelayPath,
    SwitchingPath,
    UdpMux,
    UdpPath,
)
from roost.rendezvous.punch import (
    Address,
    DirectPathFound,
    PeerLearned,
    Puncher,
    PunchEvent,
    PunchFailed,
)
from roost.rendezvous.quic import QuicSession, QuicStream, quic_serve
from roost.rendezvous.seal import open_request
from roost.rendezvous.sessions import PathKind, StartPunch
from roost.rendezvous.state import LinkState
from roost.timer import CoreTimer

__all__ = ["BrokerAgent", "BrokerEndpoint", "broker_endpoints", "local_candidates"]

log = logging.getLogger("roost.hub.broker")


def local_candidates(bound: Address, toward: Address) -> tuple[Candidate, ...]:
    """The host candidates of a socket bound at ``bound``: its own address, or, bound to
    the unspecified address, the address the host would send from toward ``toward``
    (a connected UDP socket sends nothing, it only asks the routing table)."""
    host, port = bound
    if host not in ("0.0.0.0", "::"):
        return (Candidate.of(host, port),)
    family = socket.AF_INET6 if ":" in toward[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(toward)
            local = probe.getsockname()[0]
        except OSError:
            return ()
    return (Candidate.of(local, port),)


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    """One broker the agent may use: its TLS and UDP addresses, and the name its
    certificate must carry (the configured host, also when it resolved to several)."""

    tls: Address
    udp: Address
    name: str


def broker_endpoints(link: BrokerLink) -> list[BrokerEndpoint]:
    """Every broker of the link in order; a DNS name with several addresses gives one
    endpoint per address (docs/broker-scale.md, "Equipment and issuers")."""
    found: list[BrokerEndpoint] = []
    for tls, udp in link.endpoints:
        hosts = [tls[0]]
        try:
            ipaddress.ip_address(tls[0])
        except ValueError:
            with contextlib.suppress(OSError):
                infos = socket.getaddrinfo(tls[0], tls[1], type=socket.SOCK_STREAM)
                hosts = list(dict.fromkeys(str(info[4][0]) for info in infos)) or hosts
        same = udp[0] == tls[0]
        for host in hosts:
            found.append(BrokerEndpoint((host, tls[1]), (host if same else udp[0], udp[1]), tls[0]))
    return found


def _peer_addresses(candidates: tuple[Candidate, ...]) -> list[Address]:
    return [(str(candidate.address), candidate.port) for candidate in candidates]


@dataclass(slots=True)
class _Served:
    """One brokered session this hub serves."""

    session: int
    channel: int
    peer: str
    path: SwitchingPath | None = None
    relay: RelayPath | None = None
    quic: QuicSession | None = None
    kind: PathKind | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # The checked password, good once for the first stream's login (PasswordGrant).
    grant: PasswordGrant | None = field(default=None, repr=False)


class BrokerAgent:
    """Runs one hub's ``AgentCore``; ``start()`` binds the socket and enrolls, ``stop()``
    ends every channel and session."""

    def __init__(
        self,
        link: BrokerLink,
        *,
        identifier: str,
        certificate: x509.Certificate,
        certificate_der: bytes,
        private_key: ec.EllipticCurvePrivateKey,
        cert_file: Path,
        key_file: Path,
        trust: TrustUpdater,
        guard: GuardServer,
        config: AgentConfig | None = None,
        rng: random.Random | None = None,
        quic_idle_timeout_s: float = 60.0,
    ) -> None:
        self.link = link
        # The brokers in order; the agent uses one and moves on when it fails.
        self.endpoints = [BrokerEndpoint(link.address, link.udp, link.address[0])]
        self._current = 0
        self.rehomed = 0
        self.identifier = identifier
        self.certificate = certificate
        self.certificate_der = certificate_der
        self.private_key = private_key
        self.cert_file = cert_file
        self.key_file = key_file
        self.trust = trust
        self.guard = guard
        # The hub config's [broker].hold_connection decides the flow (docs/broker.md,
        # "Held connections").
        self.config = config or AgentConfig(hold_connection=link.hold_connection)
        self._rng = rng or random.SystemRandom()
        self._binding = tls_server_end_point(certificate_der)
        self._quic_idle_timeout_s = quic_idle_timeout_s
        self.core = AgentCore(self.config, identifier, self._rng, counter_start=wall_ms_now())
        self.mux: UdpMux | None = None
        self._channels: dict[int, BrokerChannel] = {}
        self._served: dict[int, _Served] = {}
        self._punches: dict[int, PunchDriver] = {}
        # Per punching session: the paths opened toward its candidates before it settles.
        self._waiting_paths: dict[int, list[UdpPath]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: CoreTimer | None = None  # built in start(), on the running loop
        self._transmitting = False
        self.switched = 0
        # Peer-reflexive addresses the punches learned (docs/broker.md, punch probes).
        self.learned = 0
        self.ignored: dict[str, int] = {}
        # A broker that stays unreachable is retried every few seconds: one line per
        # minute says so (the logging rule, PROTOCOL.md preamble), the rest are counted.
        self._failure_log = RejectionCounter(60.0)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the shared UDP socket and begin enrolling."""
        self._timer = CoreTimer(asyncio.get_running_loop(), self._on_timer)
        self.endpoints = await asyncio.get_running_loop().run_in_executor(
            None, broker_endpoints, self.link
        )
        self.mux = await UdpMux.open(self.link.local, on_registration=self._on_datagram)
        candidates = local_candidates(self.mux.local_address, self.broker.udp)
        now = self._now()
        self.core.set_candidates(candidates, now)
        self.core.start(now)
        self.transmit()
        log.info(
            "broker agent on udp %s:%s, broker %s:%s",
            *self.mux.local_address,
            *self.link.address,
            extra={"event": "listening"},
        )

    async def stop(self) -> None:
        """End every session and channel, close the socket."""
        self.core.stop(self._now())
        self.transmit()
        for entry in list(self._served.values()):
            self._end_session(entry)
        for driver in self._punches.values():
            driver.close()
        self._punches.clear()
        for channel in list(self._channels.values()):
            channel.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        if self.mux is not None:
            self.mux.close()

    @property
    def local_address(self) -> Address:
        assert self.mux is not None
        return self.mux.local_address

    @property
    def broker(self) -> BrokerEndpoint:
        """The broker in use."""
        return self.endpoints[self._current]

    def _next_broker(self, why: str) -> None:
        """Move to the next broker of the list (its registrations re-home there)."""
        if len(self.endpoints) < 2:
            return
        self._current = (self._current + 1) % len(self.endpoints)
        self.rehomed += 1
        log.warning(
            "broker %s:%s %s: moving to %s:%s",
            *self.endpoints[self._current - 1].tls,
            why,
            *self.broker.tls,
        )

    # ------------------------------------------------------------------ the one flush

    def transmit(self) -> None:
        """Send what the core wants sent, act on its events, re-arm its one timer."""
        if self._transmitting:
            # Called from an event handler: the running flush loop takes it.
            return
        self._transmitting = True
        try:
            # Handlers may feed the core again (a punch replaced, a verdict): flush until
            # it has nothing more to say.
            while self._flush():
                pass
        finally:
            self._transmitting = False
        self._arm()

    def _flush(self) -> bool:
        busy = False
        if self.mux is not None:
            for datagram in self.core.datagrams_to_send():
                busy = True
                try:
                    self.mux.sendto(datagram, self.broker.udp)
                except (RoostError, OSError) as exc:
                    log.debug("registration not sent: %s", exc)
        # A channel's Open event comes before its first record; a CloseConnection of this
        # turn closes only after the records taken with it are written (AgentCore's
        # docstring): open the channels, write the records, then act on the rest.
        records = self.core.records_to_send()
        events = []
        while (event := self.core.next_event()) is not None:
            busy = True
            if isinstance(event, OpenEnrollConnection | OpenHeldConnection | OpenPresentConnection):
                if isinstance(event, OpenHeldConnection) and event.fallback:
                    # Registrations went unanswered: this broker may be gone, and the
                    # held connection enrolls at the next one (docs/broker-scale.md).
                    self._next_broker("answers no registration")
                self._open_channel(event.channel, link=not isinstance(event, OpenPresentConnection))
            else:
                events.append(event)
        for channel_id, body in records:
            busy = True
            channel = self._channels.get(channel_id)
            if channel is not None:
                channel.write(body)
        for event in events:
            if isinstance(event, CloseConnection):
                channel = self._channels.pop(event.channel, None)
                if channel is not None:
                    channel.close_when_flushed()
            elif isinstance(event, CheckPassword):
                self._spawn(self._check_password(event))
            elif isinstance(event, StartPunch):
                self._start_punch(event)
            elif isinstance(event, RelayReady):
                log.info(
                    "remote session %s relayed by the broker",
                    event.session,
                    extra={"event": "session-relayed", "session": event.session},
                )
                self._relay_ready(event)
            elif isinstance(event, SessionEnded):
                log.info(
                    "remote session %s ended: %s",
                    event.session,
                    event.reason,
                    extra={"event": "session-ended", "reason": str(event.reason)},
                )
                entry = self._served.get(event.session) if event.session is not None else None
                if entry is not None:
                    self._end_session(entry)
        return busy

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.arm(self.core.get_timer())

    def _on_timer(self) -> None:
        self.core.handle_timer(self._now())
        self.transmit()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _count(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    # ------------------------------------------------------------------ UDP

    def _on_datagram(self, data: bytes, source: Address) -> None:
        self.core.datagram_received(data, source, self._now())
        self.transmit()

    # ------------------------------------------------------------------ TLS channels

    def _open_channel(self, channel_id: int, *, link: bool = False) -> None:
        channel = BrokerChannel(
            lambda body: self._on_body(channel_id, body),
            lambda: self._on_channel_closed(channel_id),
        )
        self._channels[channel_id] = channel
        self._spawn(self._connect(channel_id, channel, link))

    async def _connect(self, channel_id: int, channel: BrokerChannel, link: bool) -> None:
        endpoint = self.broker
        (host, port), name = endpoint.tls, endpoint.name
        state = self.trust.state
        context = client_context(state.anchors, self.cert_file, self.key_file)
        try:
            await channel.open(
                host,
                port,
                context,
                lambda leaf: verify_broker(leaf, state.anchors, state.time_floor, name),
            )
        except RoostError as exc:
            if link and endpoint == self.broker:
                # Enrollment or held connection failed: the retry goes to the next broker.
                self._next_broker(f"refused the connection ({exc.reason})")
            # The core retries enrollment after its delay; a present channel that cannot
            # open ends its session (channel_closed, already reported by the channel).
            self._count(exc.reason)
            log_rejection(
                log,
                self._failure_log,
                exc,
                source=f"{host}:{port}",
                now=self._now(),
                what="broker channel failed to",
            )

    def _on_body(self, channel_id: int, body: bytes) -> None:
        try:
            message = decode_channel_body(body)
        except RoostError as exc:
            self._count(exc.reason)
            return
        if isinstance(message, RelayRecord):
            entry = self._served.get(message.session)
            if entry is not None and entry.channel == channel_id and entry.relay is not None:
                entry.relay.feed(message.payload)
            else:
                self._count(Reason.UNKNOWN_SESSION)
            return
        self.core.control_received(channel_id, message, self._now())
        self.transmit()

    def _on_channel_closed(self, channel_id: int) -> None:
        self._channels.pop(channel_id, None)
        with contextlib.suppress(RuntimeError):
            self.core.channel_closed(channel_id, self._now())
            self.transmit()

    # ------------------------------------------------------------------ password check

    async def _check_password(self, item: CheckPassword) -> None:
        ok, reason = False, Reason.BAD_PASSWORD
        grant: PasswordGrant | None = None
        try:
            credentials = open_request(
                self.private_key, self.identifier, item.sealed, item.issuer_candidates
            )
            grant = await self.guard.check_password(credentials.user, credentials.password)
            ok = True
        except VerificationError as exc:
            with contextlib.suppress(ValueError):
                reason = Reason(exc.reason)
        except RemoteProtocolError:
            reason = Reason.BAD_SEAL
        except RoostError as exc:
            log.info("password check failed: %s", exc.reason)
        if ok:
            log.info("remote login accepted via the broker", extra={"event": "login-accepted"})
        else:
            log_rejection(
                log,
                self._failure_log,
                str(reason),
                source="broker session",
                now=self._now(),
                what="remote login refused via",
            )
        if ok:
            peer = str(item.issuer_candidates[0].address) if item.issuer_candidates else "?"
            channel = self.core.channel_of(item.session)
            if channel is not None:
                self._served[item.session] = _Served(item.session, channel, peer, grant=grant)
        self.core.password_checked(item.session, ok, self._now(), reason=None if ok else reason)
        self.transmit()

    # ------------------------------------------------------------------ punching

    def _start_punch(self, plan: StartPunch) -> None:
        assert self.mux is not None
        previous = self._punches.pop(plan.session, None)
        if previous is not None:
            # A second start for one session (a misbehaving broker): the new plan wins.
            previous.close()
        try:
            puncher = Puncher(
                plan.session,
                _peer_addresses(plan.remote_candidates),
                plan.start_at,
                plan.deadline,
                plan.attempts,
                self._rng,
            )
        except RoostError as exc:
            self._count(exc.reason)
            self.core.punch_failed(plan.session, self._now())
            return
        session = plan.session
        # Open a path toward every candidate before the first probe: the issuer's QUIC
        # Initial may arrive before our own punch settles, and a datagram from an address
        # with no path is dropped (bench/remote_session.py measured about 1.5 s of QUIC
        # retransmission from that). A path keeps what arrives until QUIC takes it.
        self._waiting_paths[session] = [self.mux.path_to(address) for address in puncher.targets]
        driver = PunchDriver(self.mux, puncher, lambda event: self._on_punch(session, event))
        self._punches[session] = driver

    def _on_punch(self, session: int, event: PunchEvent) -> None:
        # Deferred to the loop: the driver reports from inside its own transmit.
        asyncio.get_running_loop().call_soon(self._punch_result, session, event)

    def _punch_result(self, session: int, event: PunchEvent) -> None:
        if isinstance(event, PeerLearned):
            # A peer-reflexive address: the issuer may send QUIC from it too.
            assert self.mux is not None
            self.learned += 1
            waiting = self._waiting_paths.get(session)
            if waiting is not None:
                waiting.append(self.mux.path_to(event.address))
        elif isinstance(event, DirectPathFound):
            assert self.mux is not None
            log.info(
                "remote session %s direct to %s",
                session,
                event.address,
                extra={"event": "session-direct", "session": session},
            )
            self.core.punch_succeeded(session, event.address, self._now())
            chosen = self.mux.path_to(event.address)
            self._close_waiting_paths(session, keep=chosen)
            entry = self._served.get(session)
            if entry is not None:
                self._take_path(entry, chosen, PathKind.DIRECT)
            self.transmit()
        elif isinstance(event, PunchFailed):
            self._close_waiting_paths(session, keep=None)
            self.core.punch_failed(session, self._now())
            self.transmit()

    def _close_waiting_paths(self, session: int, keep: UdpPath | None) -> None:
        """The paths opened for a session's candidates that did not win are closed (their
        datagrams would otherwise wait for a QUIC session that never comes); a path some
        session already uses, or another punch still waits on, is left alone."""
        others = {
            id(path)
            for other, paths in self._waiting_paths.items()
            if other != session
            for path in paths
        }
        for path in self._waiting_paths.pop(session, []):
            if path is not keep and not path.has_receiver and id(path) not in others:
                path.close()

    def _relay_ready(self, event: RelayReady) -> None:
        entry = self._served.get(event.session)
        channel = self._channels.get(event.channel)
        if entry is None or channel is None:
            self._count(Reason.UNKNOWN_SESSION)
            return
        entry.relay = RelayPath(event.session, channel.write)
        self._take_path(entry, entry.relay, PathKind.RELAY)

    # ------------------------------------------------------------------ QUIC sessions

    def _take_path(self, entry: _Served, path: DatagramPath, kind: PathKind) -> None:
        if entry.path is None:
            entry.path = SwitchingPath(path)
            entry.kind = kind
            entry.tasks.add(self._spawn(self._serve(entry, entry.path)))
            return
        if kind is PathKind.DIRECT and entry.kind is PathKind.RELAY:
            # A direct path after the relay: it takes over without dropping the session.
            if entry.quic is not None:
                entry.quic.switch_path(path)
            else:
                entry.path.switch_to(path)
            entry.kind = PathKind.DIRECT
            self.switched += 1
        else:
            entry.path.add(path)

    async def _serve(self, entry: _Served, path: SwitchingPath) -> None:
        # The grant goes to the login stream the hub opens itself on this session's QUIC
        # connection (docs/guard.md, "Server-first login"), once; other streams get none.
        grant, entry.grant = entry.grant, None

        def open_login(stream: QuicStream) -> None:
            entry.tasks.add(
                self._spawn(
                    self.guard.serve_stream(
                        stream,
                        stream,
                        peer=entry.peer,
                        channel_binding=self._binding,
                        password_grant=grant,
                        server_first=True,
                    )
                )
            )

        try:
            session = await quic_serve(
                path,
                certificate_der=self.certificate_der,
                private_key=self.private_key,
                idle_timeout_s=self._quic_idle_timeout_s,
                login=open_login if grant is not None else None,
            )
        except (RoostError, OSError) as exc:
            log.info("session %s: QUIC did not start: %s", entry.session, exc)
            self._session_over(entry)
            return
        entry.quic = session
        try:
            while not session.closed:
                reader, writer = await session.accept_stream()
                entry.tasks.add(
                    self._spawn(
                        self.guard.serve_stream(
                            reader, writer, peer=entry.peer, channel_binding=self._binding
                        )
                    )
                )
        except RoostError:
            pass
        finally:
            self._session_over(entry)

    def _session_over(self, entry: _Served) -> None:
        if self._served.pop(entry.session, None) is not None:
            with contextlib.suppress(RuntimeError):
                self.core.session_closed(entry.session, self._now())
                self.transmit()
        self._end_session(entry)

    def _end_session(self, entry: _Served) -> None:
        self._served.pop(entry.session, None)
        if entry.quic is not None and not entry.quic.closed:
            entry.quic.close("closed")
        elif entry.path is not None:
            entry.path.close()
        driver = self._punches.pop(entry.session, None)
        if driver is not None:
            driver.close()
        self._close_waiting_paths(entry.session, keep=None)

    # ------------------------------------------------------------------ status

    def status(self) -> BrokerAgentStatus:
        """The ``broker`` object of the hub's status document."""
        counters = self.core.counters
        reflexive = self.core.reflexive
        ignored = dict(counters.ignored)
        for reason, count in self.ignored.items():
            ignored[reason] = ignored.get(reason, 0) + count
        return BrokerAgentStatus(
            state=self.core.state.value,
            enrolled=self.core.enrolled_key is not None
            and self.core.state is not LinkState.STOPPED,
            reflexive=None if reflexive is None else _candidate_text(reflexive),
            registrations=counters.registrations,
            acks=counters.acks,
            enrollments=counters.enrollments,
            fallbacks=counters.fallbacks,
            wakes=counters.wakes,
            accepted=counters.accepted,
            rejected=dict(counters.rejected),
            direct=counters.direct,
            relayed=counters.relayed,
            switched=self.switched,
            learned=self.learned,
            sessions=self.core.live_sessions,
            ignored=ignored,
            broker=f"{self.broker.tls[0]}:{self.broker.tls[1]}",
            rehomed=self.rehomed,
            holding=self.core.holding,
            held_requests=counters.held_requests,
            keepalive_timeouts=counters.keepalive_timeouts,
            hold_refused=dict(counters.hold_refused),
        )


def _candidate_text(candidate: Candidate) -> str:
    address = str(candidate.address)
    return f"[{address}]:{candidate.port}" if ":" in address else f"{address}:{candidate.port}"
