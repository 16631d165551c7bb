"""The hub daemon: device channel server, recorder, plug-and-play module, redirects.

Composition only: the protocol decisions live in the pure cores (`roost.hcsp.core`,
`roost.hcsp.redirect`, `roost.channel.HubChannelCore`, `roost.pki.trust`); this module
moves bytes between them and the sockets (STYLE.md, "thin adapters"). Seed steps are named
where they happen: S40 (announce at start-up), S110–S180 (a subscribe is received, verified
and compared), S210–S260 (the losing hub redirects its clients). The daemon reads no files:
its certificate, key and TLS context come from the composition root (``roost.cli.run``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from roost.admission import Admission, Ticket, TlsListener
from roost.channel import (
    ChannelClosed,
    ChannelCoreConfig,
    FramesReceived,
    HelloReceived,
    HubChannelCore,
)
from roost.channel.aio import flush_channel
from roost.clock import wall_ms_now
from roost.config import HubConfig
from roost.dnssd.aio import DnsSdNode, start_browsing
from roost.dnssd.records import HubRecord
from roost.errors import RefusedError, RoostError, StateError, VerificationError, listening
from roost.guard.aio import GuardServer
from roost.hcsp.aio import AnnounceTransport
from roost.hcsp.channel import FrameMessage
from roost.hcsp.core import AnnounceCore, OwnHub
from roost.hcsp.documents import Endpoint, HubAddress
from roost.hcsp.events import HcspEvent, HubDown, HubUp, HubUpdated, LiveHub, WinnerChanged
from roost.hcsp.redirect import RedirectConfig, RedirectPlanner, fair_share
from roost.hub.recorder import IncomingFrame, Recorder
from roost.hub.status import (
    BrokerAgentStatus,
    HubCountersView,
    HubEntry,
    HubStatus,
    RemoteStatus,
)
from roost.pki.tls import ReloadableServerContext, peer_certificate
from roost.pki.updater import TrustUpdater
from roost.ratelimit import SourceRateLimiter
from roost.reasons import Reason, RejectionCounter, log_rejection
from roost.status import TrustSummary
from roost.timer import CoreTimer

__all__ = ["AnnounceTransportFactory", "DeviceSession", "HubCounters", "HubDaemon"]

log = logging.getLogger("roost.hub")
# The ALPN protocol of peer dashboard requests (roost.hub.peers.PEER_ALPN, kept equal by a
# test; the daemon does not import the dashboard).
_PEER_ALPN = "roost-web/1"
_READ_CHUNK = 256 * 1024
# A hub DNS-SD found but whose announcements are not (or no longer) verified is sent ours
# for this many seconds out of every _DNS_SD_RETRIAL (docs/hub-and-device.md).
_DNS_SD_TRIAL = 10.0
_DNS_SD_RETRIAL = 60.0

# What builds the announcement transport around the daemon's announce core; the default
# runs it on the config's UDP sockets, a test may hand in its own.
AnnounceTransportFactory = Callable[[AnnounceCore, Callable[[HcspEvent], None]], AnnounceTransport]


@dataclass(eq=False)
class DeviceSession:
    """One device channel: its pure core (PROTOCOL.md section 4) and the stream it runs on.

    ``transmit`` is the adapter's one flush (STYLE.md): it writes what the core wants sent,
    re-arms the one timer for the core's deadline, and closes the stream once the core is
    closed.
    """

    device_id: str
    writer: asyncio.StreamWriter
    connected_at: float
    core: HubChannelCore
    frames_stored: int = 0
    last_seq: int = 0
    redirected_to: str | None = None
    # What the hello called the device (section 4): a label for people, never identity.
    name: str | None = None
    _timer: CoreTimer | None = field(default=None, init=False, repr=False)

    def transmit(self) -> None:
        """Flush the core's bytes and re-arm its deadline."""
        if self._timer is None:
            self._timer = CoreTimer(asyncio.get_running_loop(), self._on_timer)
        flush_channel(self.core, self.writer, self._timer)
        if self.core.is_closed:
            self.writer.close()

    def _on_timer(self) -> None:
        self.core.handle_timer(_loop_now())
        self.transmit()
        if self.core.is_closed:
            # A silent client never answers TLS close_notify, so a plain close would leave
            # the reader waiting; aborting wakes it to count the hello timeout and finish.
            self.writer.transport.abort()

    def send_redirect(self, target: HubAddress, features: Sequence[str]) -> None:
        """Send a redirect to ``target`` over this channel (seed S210–S260)."""
        self.core.send_redirect(target, features)
        self.transmit()

    def close(self) -> None:
        """Close the channel from the hub's side."""
        self.core.close()
        self.transmit()

    def release(self) -> None:
        """Drop the timer once the channel is over: the timer's callback is this session,
        so without this every closed session would wait in a reference cycle, with its TLS
        buffers, for the cyclic collector (docs/BENCHMARKS.md, "Soak and footprint")."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


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
        *,
        certificate: x509.Certificate,
        private_key: ec.EllipticCurvePrivateKey,
        tls: ReloadableServerContext,
        rng: random.Random | None = None,
        announce_transport: AnnounceTransportFactory | None = None,
        channel: ChannelCoreConfig | None = None,
    ) -> None:
        """Wire a hub from what the composition root loaded (``roost.cli.run``).

        ``certificate`` and ``private_key`` are the hub's own; ``tls`` is the listener's
        context over the same pair and the trust store's anchors.
        """
        self.config = config
        self.trust = trust
        self.recorder = recorder
        self.rng = rng or random.Random()
        self.channel_config = channel or ChannelCoreConfig()
        self.counters = HubCounters()
        # The logging rule for device-channel refusals (PROTOCOL.md preamble): one line
        # per peer host per interval; ``counters`` keeps the counts status reads.
        self.refusals = RejectionCounter(config.refusal_log_interval)
        # Every listener of the hub (device port, remote entrance, API) admits through one
        # cap on unauthenticated connections and counts its refusals in
        # ``connections_rejected`` (docs/limits.md).
        self.admission = Admission(config.admission, self.counters.connections_rejected, log)
        # A hello for a device that already has a channel replaces it; a client holding the
        # device's key could do that forever, so replacements spend a bucket per device.
        self._replacements = SourceRateLimiter(
            config.admission.replace_rate_per_device,
            config.admission.replace_burst_per_device,
            config.admission.max_sources,
        )
        # Storage failures are the operator's problem, not a peer's: one ERROR line per
        # interval, whichever device's frames hit it.
        self.storage_failures = RejectionCounter(config.refusal_log_interval)
        self.sessions: dict[str, DeviceSession] = {}
        self.certificate = certificate
        node, _, _ = trust.state.verify_node(certificate)
        self.identifier = node.identifier
        self._private_key = private_key
        self._announce_transport = announce_transport
        # Built in start(), once the listener is bound: the announcement names the bound
        # port when the config's advertise port is 0 (the `from` endpoint, PROTOCOL.md section 3).
        self._core: AnnounceCore | None = None
        self._announcer: AnnounceTransport | None = None
        self._advertised: Endpoint | None = None
        self.planner = RedirectPlanner(
            RedirectConfig(
                batch_size=config.redirect_batch,
                batch_spacing=config.redirect_spacing,
                max_jitter=config.redirect_spacing,
            )
        )
        self.tls = tls
        self._server: TlsListener | None = None
        self._redirect_timer: CoreTimer | None = None  # built on the running loop
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = time.monotonic()
        # The owner's remote entrance, when the config has one (roost.hub.remote).
        self.guard: GuardServer | None = None
        # The broker agent's status (roost.rendezvous.agent_aio), when the hub has one.
        self.broker_status: Callable[[], BrokerAgentStatus] | None = None
        # Where a verified peer hub's dashboard connection goes (ALPN ``roost-web/1`` on
        # this listener, roost.hub.peers); None: such connections are refused.
        self.peer_web: (
            Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] | None
        ) = None
        # DNS-SD publication and browsing (``[dns_sd]``), once start_dns_sd() ran.
        self.dns_sd: DnsSdNode | None = None
        # Found hubs sent unicast announcements: identifier -> (record, first seen).
        self._dns_sd_peers: dict[str, tuple[HubRecord, float]] = {}
        self._dns_sd_timer: CoreTimer | None = None

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the device listener (port 0 picks a free one), then start announcing."""
        host, port = self.config.listen
        with listening("device channel", host, port):
            self._server = await self.admission.start_tls_server(
                self._serve_device,
                host,
                port,
                self.tls.outer,
                what="device channel",
                limit=_READ_CHUNK,
                # A redirect batch arrives as a burst of handshakes; the default backlog of
                # 100 drops some and TCP retries them only after a second or more.
                backlog=max(128, self.config.max_devices),
            )
        try:
            self._wire_announce()
            # Seed S40: announce at start-up, then every interval (the core schedules it).
            await self.announcer.start()
        except BaseException:
            self._server.close()
            raise
        log.info(
            "hub %s listening on %s:%s",
            self.identifier,
            host,
            self.bound_port,
            extra={"event": "listening"},
        )

    def _wire_announce(self) -> None:
        """Build the announce core and its transport for the endpoint peers must dial.

        An advertise port of 0 follows the bound listener, so a hub configured with port 0
        announces where it really listens; any other advertise port is announced as
        configured (a forwarded port, say). A misconfigured own hub fails here, at start-up.
        """
        advertise_host, advertise_port = self.config.advertise
        self._advertised = Endpoint(advertise_host, advertise_port or self.bound_port)
        own = OwnHub(
            address=HubAddress(self.identifier, self._advertised),
            features=self.config.features,
            max_clients=self.config.max_devices,
            private_key=self._private_key,
            certificate_der=self.certificate.public_bytes(Encoding.DER),
        )
        announce = self.config.announce
        self._core = AnnounceCore(
            announce.core_config(self.config.refusal_log_interval),
            own,
            self._verify_hub_certificate,
        )
        if self._announce_transport is None:
            self._announcer = AnnounceTransport(self._core, announce.udp, self._on_event)
        else:
            self._announcer = self._announce_transport(self._core, self._on_event)

    @property
    def core(self) -> AnnounceCore:
        """The announce core (section 3); it exists once ``start()`` has bound the listener."""
        if self._core is None:
            raise StateError("the hub has not started", reason=Reason.NOT_RUNNING)
        return self._core

    @property
    def announcer(self) -> AnnounceTransport:
        """The announce core's UDP transport; it exists once ``start()`` ran."""
        if self._announcer is None:
            raise StateError("the hub has not started", reason=Reason.NOT_RUNNING)
        return self._announcer

    @property
    def advertised(self) -> Endpoint:
        """The device-channel endpoint this hub announces (the bound port for port 0)."""
        if self._advertised is None:
            raise StateError("the hub has not started", reason=Reason.NOT_RUNNING)
        return self._advertised

    @property
    def bound_address(self) -> tuple[str, int]:
        """The host and port the device listener is bound to."""
        if self._server is None or not self._server.sockets:
            raise StateError("the hub is not listening", reason=Reason.NOT_RUNNING)
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def bound_port(self) -> int:
        """The port the device listener is bound to (the real one when configured as 0)."""
        return self.bound_address[1]

    async def start_dns_sd(self, api_port: int | None = None) -> None:
        """Publish this hub as ``_roost._tcp`` and browse for the others, when the config
        enables DNS-SD (docs/hub-and-device.md, "Finding hubs with DNS-SD").

        Called once every listener is bound, so the record names the bound ports. A hub
        without multicast announcements also sends them unicast to the hubs it finds, so
        hubs on a network that drops the announce group still elect (section 3).
        """
        if not self.config.dns_sd.enabled or self.dns_sd is not None:
            return
        record = HubRecord(
            identifier=self.identifier,
            name=self.config.name,
            host=self.advertised.host,
            port=self.advertised.port,
            features=tuple(self.config.features),
            max_devices=self.config.max_devices,
            api_port=api_port,
            announce_port=self.announcer.local_port,
        )
        node = await start_browsing(self.config.dns_sd.interfaces, self._on_dns_sd)
        if node is None:
            return
        self.dns_sd = node
        try:
            await node.publish(record)
        except (OSError, RuntimeError, ValueError) as exc:
            # DNS-SD is a convenience beside announcements: the hub runs on without it.
            log.warning("DNS-SD: publishing failed (%s); announcements still run", exc)

    def _on_dns_sd(self, records: tuple[HubRecord, ...]) -> None:
        """Found hubs become unicast announce peers when multicast is off."""
        if self.config.announce.udp.multicast:
            return
        now = _loop_now()
        found = {}
        for record in records:
            if record.identifier == self.identifier or not record.announce_port:
                continue
            known = self._dns_sd_peers.get(record.identifier)
            # A changed record (a restarted hub) starts a fresh trial.
            found[record.identifier] = (
                known if known is not None and known[0] == record else (record, now)
            )
        self._dns_sd_peers = found
        self._refresh_dns_sd_peers()

    def _refresh_dns_sd_peers(self) -> None:
        """Send announcements to a found hub while it is verified live, and otherwise only
        during a trial window (``_DNS_SD_TRIAL`` s every ``_DNS_SD_RETRIAL`` s).

        A record is unverified: one naming a host that is not a hub must not buy a stream
        of datagrams to it, so an address that never answers with a verified announcement
        gets at most a sixth of the announcement rate.
        """
        if not self._dns_sd_peers:
            if self._announcer is not None:
                self._announcer.set_discovered_peers(())
            return
        now = _loop_now()
        live = {hub.identifier for hub in self.core.live_hubs(now)}
        peers, next_change = [], None
        for identifier, (record, first_seen) in self._dns_sd_peers.items():
            into_cycle = (now - first_seen) % _DNS_SD_RETRIAL
            trying = into_cycle < _DNS_SD_TRIAL
            if identifier in live or trying:
                peers.append((record.host, record.announce_port or 0))
            boundary = now + (
                _DNS_SD_TRIAL - into_cycle if trying else _DNS_SD_RETRIAL - into_cycle
            )
            next_change = boundary if next_change is None else min(next_change, boundary)
        self.announcer.set_discovered_peers(peers)
        if self._dns_sd_timer is None:
            self._dns_sd_timer = CoreTimer(asyncio.get_running_loop(), self._refresh_dns_sd_peers)
        self._dns_sd_timer.arm(next_change)

    async def stop(self) -> None:
        """Stop announcing, close every channel and the listener."""
        if self._dns_sd_timer is not None:
            self._dns_sd_timer.cancel()
        if self.dns_sd is not None:
            await self.dns_sd.close()
        if self._announcer is not None:
            self._announcer.close()
        if self._redirect_timer is not None:
            self._redirect_timer.cancel()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.close()
        for task in list(self._tasks):
            task.cancel()
        self.admission.close()
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
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ticket: Ticket
    ) -> None:
        """Read the socket into the channel core, act on its events, flush what it sends.

        ``ticket`` is the connection's unauthenticated slot: given back once the device's
        certificate is verified."""
        session: DeviceSession | None = None
        host = _peer_host(writer)
        rejected = self.counters.connections_rejected
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            leaf = peer_certificate(ssl_object)
            if ssl_object.selected_alpn_protocol() == _PEER_ALPN:
                await self._serve_peer_web(leaf, reader, writer, host)
                return
            try:
                device_id = self._verify_node(leaf)
            except VerificationError as exc:
                self._count_refusal(rejected, exc, host)
                self._fetch_after_failure(leaf)
                return
            ticket.release()
            try:
                core = HubChannelCore(
                    self.channel_config,
                    hub_id=self.identifier,
                    device_id=device_id,
                    now=_loop_now(),
                )
            except VerificationError as exc:
                self._count_refusal(rejected, exc, host)
                return
            session = DeviceSession(device_id, writer, _loop_now(), core)
            session.transmit()
            while True:
                data = await reader.read(_READ_CHUNK)
                core.receive_data(data, _loop_now())
                await self._handle_channel_events(session, host)
                session.transmit()
                if core.is_closed:
                    break
        except RoostError as exc:
            self._count_refusal(self.counters.channel_errors, exc, host)
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            self._count_refusal(self.counters.channel_errors, "disconnected", host)
        finally:
            if session is not None:
                session.close()
                session.release()
                if self.sessions.get(session.device_id) is session:
                    del self.sessions[session.device_id]
                    self._load_changed()
                    log.info(
                        "device %s left (%s frames stored on this channel)",
                        session.device_id,
                        session.frames_stored,
                        extra={"event": "device-left", "device": session.device_id},
                    )
            writer.close()

    async def _serve_peer_web(
        self,
        leaf: x509.Certificate,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
    ) -> None:
        """A hub's dashboard asks this hub for cameras (roost.hub.peers): hubs only."""
        try:
            self._verify_hub_certificate(leaf)
        except VerificationError as exc:
            self._count_refusal(self.counters.connections_rejected, exc, host)
            return
        if self.peer_web is None:
            self._count_refusal(self.counters.connections_rejected, Reason.NOT_RUNNING, host)
            return
        await self.peer_web(reader, writer)

    async def _handle_channel_events(self, session: DeviceSession, host: str) -> None:
        core = session.core
        while (event := core.next_event()) is not None:
            if isinstance(event, HelloReceived):
                session.name = event.name
                self._admit(session)
                if event.name is not None and self.sessions.get(session.device_id) is session:
                    # The welcome goes out first: a new name costs the device no wait.
                    session.transmit()
                    await self._remember_name(session.device_id, event.name)
            elif isinstance(event, FramesReceived):
                await self._store(session, event.frames)
            elif isinstance(event, ChannelClosed):
                self._count_close(event, host)

    def _admit(self, session: DeviceSession) -> None:
        """A verified hello arrived: welcome the device unless the hub is full.

        A second channel from the same device replaces the first (docs/hub-and-device.md).
        """
        device_id = session.device_id
        if device_id not in self.sessions and len(self.sessions) >= self.config.max_devices:
            session.core.refuse(Reason.FULL)
            return
        previous = self.sessions.get(device_id)
        if previous is not None:
            host = _peer_host(session.writer)
            try:
                self._replacements.take(device_id, _loop_now())
            except RefusedError:
                # The channel in place stays; the newcomer is refused (counted, logged).
                session.core.refuse(Reason.REPLACE_LIMITED)
                return
            self._count_refusal(self.counters.connections_rejected, Reason.SESSION_REPLACED, host)
            previous.close()
        session.connected_at = _loop_now()
        self.sessions[device_id] = session
        self._load_changed()
        log.info(
            "device %s%s connected%s (%s of %s)",
            device_id,
            f" ({session.name})" if session.name else "",
            " again, replacing its previous channel" if previous is not None else "",
            len(self.sessions),
            self.config.max_devices,
            extra={"event": "device-connected", "device": device_id, "device_name": session.name},
        )
        session.core.accept(self.config.features, self.config.max_devices)

    async def _remember_name(self, device_id: str, name: str) -> None:
        """Keep an admitted device's name with its recordings (after the welcome is sent)."""
        try:
            await asyncio.to_thread(self.recorder.remember_name, device_id, name)
        except (OSError, sqlite3.Error) as exc:
            # Only a label is lost: the channel and its frames go on.
            log.warning("cannot keep the name of device %s: %s", device_id, exc)

    async def _store(self, session: DeviceSession, frames: Sequence[FrameMessage]) -> None:
        """Store one read's frames and acknowledge them once durable (section 4, ACK)."""
        received_ms = wall_ms_now()
        incoming = [
            IncomingFrame(
                session.device_id, f.seq, f.captured_at_ms, f.mime, f.payload, received_ms
            )
            for f in frames
        ]
        try:
            results = await asyncio.to_thread(self.recorder.store_many, incoming)
        except (OSError, sqlite3.Error) as exc:
            # Disk full or an I/O error: nothing of this batch is acknowledged (section 4,
            # ACK means durable), and the channel closes so the device keeps every frame
            # and resends it, here once space returns or to another hub meanwhile
            # (docs/hub-and-device.md, "Faults").
            more = self.storage_failures.count(
                Reason.STORAGE_FAILED, source="recordings", now=_loop_now()
            )
            if more is not None:
                log.error(
                    "storage-failed: cannot store frames in %s (%s); none acknowledged, "
                    "devices keep them and resend%s",
                    self.config.state_dir / "recordings",
                    exc,
                    f" ({more} more failures since the last line)" if more else "",
                )
            raise StateError(
                f"cannot store {len(incoming)} frames from {session.device_id}: {exc}",
                reason=Reason.STORAGE_FAILED,
            ) from exc
        stored = sum(results)
        self.counters.frames_stored += stored
        self.counters.frames_duplicate += len(results) - stored
        session.frames_stored += stored
        session.last_seq = max(f.seq for f in frames)
        # Frames arrive in order on one stream, so the newest seq acknowledges them all.
        session.core.send_ack(session.last_seq)
        session.transmit()

    def _count_close(self, event: ChannelClosed, host: str) -> None:
        if event.error is None:
            return  # an orderly end: the device left, or the hub closed the channel
        if event.reason == Reason.BAD_HELLO or isinstance(event.error, RefusedError):
            self._count_refusal(self.counters.connections_rejected, event.reason, host)
        else:
            self._count_refusal(self.counters.channel_errors, event.reason, host)

    def _count_refusal(
        self, counts: collections.Counter[str], error: RoostError | str, host: str
    ) -> None:
        """Count a refused or failed channel for status, and log it when the rule allows
        (PROTOCOL.md preamble: once per source per interval); reason and host only."""
        counts[error if isinstance(error, str) else error.reason] += 1
        log_rejection(
            log, self.refusals, error, source=host, now=_loop_now(), what="device channel from"
        )

    # ------------------------------------------------------------ election and redirects

    def _load_changed(self) -> None:
        self.core.set_load(len(self.sessions), self.config.max_devices)
        self.announcer.refresh()

    def _on_event(self, event: HcspEvent) -> None:
        now = _loop_now()
        if isinstance(event, HubUp | HubDown) and event.hub.identifier in self._dns_sd_peers:
            # A found hub proved itself, or went silent: its trial window applies again.
            self._refresh_dns_sd_peers()
        if isinstance(event, WinnerChanged):
            # S110–S180: the verified subscribe was compared; act on the outcome.
            _log_election(event.winner)
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
        if self._redirect_timer is None:
            self._redirect_timer = CoreTimer(asyncio.get_running_loop(), self._send_due_redirects)
        self._redirect_timer.arm(self.planner.next_deadline())

    def _send_due_redirects(self) -> None:
        target = self.planner.target
        for device_id in self.planner.due(_loop_now()):
            session = self.sessions.get(device_id)
            if session is None or target is None:
                continue
            session.send_redirect(HubAddress(target.identifier, target.endpoint), target.features)
            session.redirected_to = target.identifier
            self.counters.redirects_sent += 1
            log.info(
                "redirect sent: device %s to hub %s at %s",
                device_id,
                target.identifier,
                target.endpoint.format(),
                extra={"event": "redirect-sent", "device": device_id, "hub": target.identifier},
            )
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
            endpoint=self.advertised.format(),
            features=tuple(self.config.features),
            max_devices=self.config.max_devices,
            connected=tuple(sorted(self.sessions)),
            connected_names={d: s.name for d, s in sorted(self.sessions.items()) if s.name},
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
            broker=self.broker_status() if self.broker_status is not None else None,
            dns_sd=None
            if self.dns_sd is None
            else tuple(
                r.to_json() for r in self.dns_sd.found.values() if r.identifier != self.identifier
            ),
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
            logins_granted=counters.logins_granted,
            logins_failed=counters.logins_failed,
            calls=counters.calls,
            sessions_expired=counters.sessions_expired,
            stream_errors=counters.stream_errors,
            rejected=self.guard.rejections.as_dict(),
        )


def _log_election(winner: LiveHub | None) -> None:
    """The election's outcome as the hub sees it (PROTOCOL.md section 3)."""
    if winner is None:
        log.info("election: no hub is eligible", extra={"event": "election"})
        return
    log.info(
        "election: hub %s wins%s",
        winner.identifier,
        " (this hub)" if winner.is_self else "",
        extra={"event": "election", "winner": winner.identifier, "is_self": winner.is_self},
    )


def _peer_host(writer: asyncio.StreamWriter) -> str:
    """The peer's host, the source the logging rule keys by (its port changes per try)."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


def _loop_now() -> float:
    return asyncio.get_running_loop().time()
