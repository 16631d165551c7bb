"""The hub daemon: device channel server, recorder, plug-and-play module, redirects.

Composition only: the protocol decisions live in the pure cores (`roost.hcsp.core`,
`roost.hcsp.redirect`, `roost.hcsp.channel`, `roost.pki.trust`); this module moves bytes
between them and the sockets (STYLE.md, "thin adapters"). Seed steps are named where they
happen: S40 (announce at start-up), S110–S180 (a subscribe is received, verified and
compared), S210–S260 (the losing hub redirects its clients).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from roost.config import HubConfig
from roost.errors import RoostError, VerificationError
from roost.guard.aio import GuardServer
from roost.hcsp.aio import AnnounceTransport
from roost.hcsp.channel import (
    AckMessage,
    ChannelDecoder,
    DocumentMessage,
    FrameMessage,
    encode_message,
)
from roost.hcsp.core import AnnounceConfig, AnnounceCore, OwnHub
from roost.hcsp.documents import (
    Endpoint,
    Hello,
    HubAddress,
    Redirect,
    Welcome,
    decode_document,
    encode_document,
)
from roost.hcsp.events import HcspEvent, HubDown, HubUpdated, LiveHub, WinnerChanged
from roost.hcsp.redirect import RedirectConfig, RedirectPlanner, fair_share
from roost.hub.recorder import IncomingFrame, Recorder
from roost.hub.status import HubCountersView, HubEntry, HubStatus, RemoteStatus
from roost.pki.certs import certs_from_pem, key_from_pem
from roost.pki.tls import ReloadableServerContext, peer_certificate
from roost.pki.updater import TrustUpdater
from roost.status import TrustSummary

__all__ = ["DeviceSession", "HubDaemon"]

log = logging.getLogger("roost.hub")
_READ_CHUNK = 256 * 1024
_HELLO_TIMEOUT = 10.0


@dataclass
class DeviceSession:
    """One authenticated device channel."""

    device_id: str
    writer: asyncio.StreamWriter
    connected_at: float
    frames_stored: int = 0
    last_seq: int = 0
    redirected_to: str | None = None

    def send(self, message: DocumentMessage | AckMessage) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode_message(message))


@dataclass
class HubCounters:
    connections_rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    redirects_sent: int = 0
    frames_stored: int = 0
    frames_duplicate: int = 0
    channel_errors: collections.Counter[str] = field(default_factory=collections.Counter)


class HubDaemon:
    """Runs one hub; `start()` binds everything, `stop()` releases it."""

    def __init__(
        self,
        config: HubConfig,
        trust: TrustUpdater,
        recorder: Recorder,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.trust = trust
        self.recorder = recorder
        self.rng = rng or random.Random()
        self.counters = HubCounters()
        self.sessions: dict[str, DeviceSession] = {}
        cert = certs_from_pem(config.cert.read_bytes())[0]
        self.certificate = cert
        node, _, _ = trust.state.verify_node(cert)
        self.identifier = node.identifier
        own = OwnHub(
            address=HubAddress(self.identifier, Endpoint(*config.advertise)),
            features=config.features,
            max_clients=config.max_devices,
            private_key=key_from_pem(config.key.read_bytes()),
            certificate_der=cert.public_bytes(Encoding.DER),
        )
        announce = config.announce
        self.core = AnnounceCore(
            AnnounceConfig(
                advert_interval=announce.interval,
                hold_down=announce.hold_down,
                freshness_window_ms=announce.freshness_ms,
            ),
            own,
            self._verify_hub_certificate,
        )
        self.planner = RedirectPlanner(
            RedirectConfig(
                batch_size=config.redirect_batch,
                batch_spacing=config.redirect_spacing,
                max_jitter=config.redirect_spacing,
            )
        )
        self.announcer = AnnounceTransport(self.core, announce.udp, self._on_event)
        self.tls = ReloadableServerContext(config.cert, config.key, trust.state.anchors)
        self._server: asyncio.Server | None = None
        self._redirect_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = time.monotonic()
        # The owner's remote entrance, when the config has one (roost.hub.remote).
        self.guard: GuardServer | None = None

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        host, port = self.config.listen
        self._server = await asyncio.start_server(
            self._serve_device,
            host,
            port,
            ssl=self.tls.outer,
            limit=_READ_CHUNK,
            # A redirect batch arrives as a burst of handshakes; the default backlog of
            # 100 drops some and TCP retries them only after a second or more.
            backlog=max(128, self.config.max_devices),
        )
        # Seed S40: announce at start-up, then every interval (the core schedules it).
        await self.announcer.start()
        log.info("hub %s listening on %s:%s", self.identifier, host, self.bound_port)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        self.announcer.close()
        if self._redirect_timer is not None:
            self._redirect_timer.cancel()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------------------- trust

    def _trust_changed(self) -> None:
        """New anchors reach the TLS listener and the announcement verdict cache."""
        self.tls.update(self.trust.state.anchors)
        self.core.clear_certificate_cache()

    def _verify_node(self, leaf: x509.Certificate, expected: str | None = None) -> str:
        before = self.trust.state
        node, _ = self.trust.authenticate(leaf, expected)
        if self.trust.state != before:
            self._trust_changed()
        return node.identifier

    def _verify_hub_certificate(self, leaf: x509.Certificate) -> str:
        identifier = self._verify_node(leaf)
        if not identifier.startswith("hcsp:"):
            raise VerificationError("announcement certificate is not a hub's", reason="not-hub")
        return identifier

    def _fetch_after_failure(self, leaf: x509.Certificate) -> None:
        """A peer failed verification: look for newer CA information in the background."""

        async def fetch() -> None:
            before = self.trust.state
            with contextlib.suppress(RoostError):
                await self.trust.on_verification_failure(_loop_now(), leaf)
            if self.trust.state != before:
                self._trust_changed()

        self._spawn(fetch())

    # ---------------------------------------------------------------- device channel (§4)

    async def _serve_device(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session: DeviceSession | None = None
        try:
            leaf = peer_certificate(writer.get_extra_info("ssl_object"))
            try:
                device_id = self._verify_node(leaf)
            except VerificationError as exc:
                self.counters.connections_rejected[exc.reason] += 1
                self._fetch_after_failure(leaf)
                return
            if not device_id.startswith("ab:"):
                self.counters.connections_rejected["not-device"] += 1
                return
            decoder = ChannelDecoder()
            hello = await asyncio.wait_for(self._read_hello(reader, decoder), _HELLO_TIMEOUT)
            if hello is None or hello.device != device_id or hello.hub != self.identifier:
                self.counters.connections_rejected["bad-hello"] += 1
                return
            if device_id not in self.sessions and len(self.sessions) >= self.config.max_devices:
                self.counters.connections_rejected["full"] += 1
                return
            previous = self.sessions.get(device_id)
            if previous is not None:
                previous.writer.close()
            session = DeviceSession(device_id, writer, _loop_now())
            self.sessions[device_id] = session
            self._load_changed()
            welcome = Welcome(
                self.identifier, device_id, self.config.features, self.config.max_devices
            )
            session.send(DocumentMessage(encode_document(welcome)))
            await self._pump(reader, decoder, session)
        except RoostError as exc:
            self.counters.channel_errors[exc.reason] += 1
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            self.counters.channel_errors["disconnected"] += 1
        finally:
            if session is not None and self.sessions.get(session.device_id) is session:
                del self.sessions[session.device_id]
                self._load_changed()
            writer.close()

    async def _read_hello(
        self, reader: asyncio.StreamReader, decoder: ChannelDecoder
    ) -> Hello | None:
        while True:
            data = await reader.read(_READ_CHUNK)
            if not data:
                return None
            messages = decoder.feed(data)
            if messages:
                first = messages[0]
                if len(messages) > 1 or not isinstance(first, DocumentMessage):
                    return None
                document = decode_document(first.xml)
                return document if isinstance(document, Hello) else None

    async def _pump(
        self, reader: asyncio.StreamReader, decoder: ChannelDecoder, session: DeviceSession
    ) -> None:
        """Store frames and acknowledge them once durable (section 4, ACK)."""
        while data := await reader.read(_READ_CHUNK):
            frames: list[IncomingFrame] = []
            received_ms = time.time_ns() // 1_000_000
            for message in decoder.feed(data):
                if isinstance(message, FrameMessage):
                    frames.append(
                        IncomingFrame(
                            session.device_id,
                            message.seq,
                            message.captured_at_ms,
                            message.mime,
                            message.payload,
                            received_ms,
                        )
                    )
                else:
                    self.counters.channel_errors["unexpected-message"] += 1
            if not frames:
                continue
            results = await asyncio.to_thread(self.recorder.store_many, frames)
            stored = sum(results)
            self.counters.frames_stored += stored
            self.counters.frames_duplicate += len(results) - stored
            session.frames_stored += stored
            session.last_seq = max(f.seq for f in frames)
            # Frames arrive in order on one stream, so the newest seq acknowledges them all.
            session.send(AckMessage(session.last_seq))

    # ------------------------------------------------------------ election and redirects

    def _load_changed(self) -> None:
        self.core.set_load(len(self.sessions), self.config.max_devices)
        self.announcer.refresh()

    def _on_event(self, event: HcspEvent) -> None:
        now = _loop_now()
        if isinstance(event, WinnerChanged):
            # S110–S180: the verified subscribe was compared; act on the outcome.
            self._replan(event.winner, now)
        elif isinstance(event, HubUpdated | HubDown):
            target = self.planner.target
            if target is not None and event.hub.identifier == target.identifier:
                self._replan(self.core.winner(now), now)

    def _replan(self, winner: LiveHub | None, now: float) -> None:
        if winner is None or winner.is_self:
            self.planner.cancel()
            return
        # S210–S260: this hub lost; hand over at most its share of the winner's room.
        share = fair_share(winner, self.core.live_hubs(now), self.identifier)
        devices = [d for d, s in self.sessions.items() if s.redirected_to != winner.identifier]
        self.planner.plan(devices, winner, now, self.rng, share=share)
        self._arm_redirects()

    def _arm_redirects(self) -> None:
        if self._redirect_timer is not None:
            self._redirect_timer.cancel()
            self._redirect_timer = None
        deadline = self.planner.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - loop.time())
            self._redirect_timer = loop.call_later(delay, self._send_due_redirects)

    def _send_due_redirects(self) -> None:
        self._redirect_timer = None
        target = self.planner.target
        for device_id in self.planner.due(_loop_now()):
            session = self.sessions.get(device_id)
            if session is None or target is None:
                continue
            redirect = Redirect(
                self.identifier,
                device_id,
                HubAddress(target.identifier, target.endpoint),
                target.features,
            )
            session.send(DocumentMessage(encode_document(redirect)))
            session.redirected_to = target.identifier
            self.counters.redirects_sent += 1
        self._arm_redirects()

    # ------------------------------------------------------------------------- reporting

    def status(self) -> HubStatus:
        """A snapshot for the API, the remote `status` call and the metrics (event loop only)."""
        now = _loop_now()
        winner = self.core.winner(now)
        counters = self.core.counters
        return HubStatus(
            identifier=self.identifier,
            name=self.config.name,
            endpoint=Endpoint(*self.config.advertise).format(),
            features=tuple(self.config.features),
            max_devices=self.config.max_devices,
            connected=tuple(sorted(self.sessions)),
            winner=winner.identifier if winner else None,
            hubs=tuple(
                HubEntry(
                    identifier=hub.identifier,
                    endpoint=hub.endpoint.format(),
                    features=tuple(hub.features),
                    connected=hub.connected,
                    max_clients=hub.max_clients,
                    rank=position,
                    is_self=hub.is_self,
                    last_seen_s_ago=round(max(0.0, now - hub.last_seen), 3),
                )
                for position, hub in enumerate(self.core.live_hubs(now), start=1)
            ),
            trust=TrustSummary.from_json(self.trust.state.summary()),
            counters=HubCountersView(
                announcements_accepted=counters.accepted,
                announcements_rejected=dict(counters.rejected),
                announcements_sent=counters.sent,
                own_echoes=counters.own_echoes,
                redirects_sent=self.counters.redirects_sent,
                frames_stored=self.counters.frames_stored,
                frames_duplicate=self.counters.frames_duplicate,
                connections_rejected=dict(self.counters.connections_rejected),
                channel_errors=dict(self.counters.channel_errors),
                trust_rejected=dict(self.trust.rejected),
            ),
            remote=self._remote_status(),
            uptime_s=round(time.monotonic() - self._started, 1),
        )

    def _remote_status(self) -> RemoteStatus | None:
        if self.guard is None:
            return None
        counters = self.guard.counters
        return RemoteStatus(
            active=self.guard.active,
            connections=counters.connections,
            refused_busy=counters.refused_busy,
            refused_rate=counters.refused_rate,
            logins_ok=counters.logins_ok,
            logins_failed=counters.logins_failed,
            calls=counters.calls,
            sessions_expired=counters.sessions_expired,
            stream_errors=counters.stream_errors,
            rejected=self.guard.rejections.as_dict(),
        )


def _loop_now() -> float:
    return asyncio.get_running_loop().time()
