"""The broker daemon: BrokerCore on a real UDP port, a TLS listener and an HTTP API (adapter).

Thin (STYLE.md): every decision is `roost.rendezvous.broker.BrokerCore`'s. This module moves
datagrams and record bodies between it and the sockets, verifies client certificates with
the trust store like the hub does (``TrustUpdater.authenticate``: chain and SAN URI, the TLS
context reloaded when the store changes), and runs one ``transmit()`` that flushes what the
core wants sent and re-arms ONE ``loop.call_at`` for its next deadline.

TLS (PROTOCOL.md section 5): TLS 1.3 with the broker's certificate (role broker, SAN IP/DNS);
client certificates are OPTIONAL, so an issuer without one can connect, while a hub or device
presents its own and must chain to a trusted CA generation. Records are ``u32 length | body``
(`roost.framing`, at most ``control.MAX_CHANNEL_BODY``).

HTTP (aiohttp, its own address): ``GET /api/status`` is `BrokerStatus.to_json()`, ``GET
/metrics`` the `roost.metrics.BROKER_METRICS` table over the same snapshot.

With a shared registry (docs/broker-scale.md) a ``lookup``/``connect`` for a target owned by
another process is forwarded there (``presence.route_target``), over the node link to that
owner when one is up (`roost.rendezvous.node_link`, ``presence.choose_via``), else over
Redis pub/sub (`roost.rendezvous.broker_cluster`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import socket
import ssl
import struct
import time
import urllib.request
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from roost.admission import Admission, Ticket, TlsListener
from roost.clock import wall_ms_now
from roost.config import BrokerConfig
from roost.errors import RoostError, VerificationError, listening
from roost.framing import RecordFramer, encode_record
from roost.httpapi import NO_STORE, ApiRunner, add_metrics, serve_app
from roost.metrics import BROKER_METRICS
from roost.pki.certs import load_certificate
from roost.pki.tls import ReloadableServerContext
from roost.pki.updater import TrustUpdater
from roost.reasons import REFUSAL_LINE, Reason
from roost.rendezvous import control
from roost.rendezvous.broker import BrokerCore
from roost.rendezvous.broker_cluster import SharedRegistry, connect_redis
from roost.rendezvous.broker_events import CloseChannel, Refused
from roost.rendezvous.broker_status import BrokerCountersView, BrokerStatus, SharedStatus
from roost.rendezvous.control import MAX_CHANNEL_BODY
from roost.rendezvous.node_link import NodeLink, NodeLinks
from roost.rendezvous.presence import (
    Hop,
    NodeMessage,
    PresencePolicy,
    PresenceRecord,
    Route,
    decode_node_message,
    route_target,
)
from roost.status import TrustSummary
from roost.timer import CoreTimer

__all__ = ["BrokerDaemon", "fetch_broker_status"]

log = logging.getLogger("roost.broker")
_READ_CHUNK = 64 * 1024
# The ops whose target may be owned by another process (docs/broker-scale.md, "Routing");
# our encoder writes "op" first and compact, so a prefix test spares a JSON parse.
_ROUTED_OPS = (b'{"op":"lookup"', b'{"op":"connect"')
# A channel forwarded to its owner: the owner's node and epoch, and the node link its
# messages take (None: Redis pub/sub). One path per channel, so its messages keep their order.
_Forward = tuple[str, int, NodeLink | None]
# _route's answer for a lookup served here from the shared presence.
_ANSWERED: _Forward = ("", -1, None)


# Datagrams read per readiness callback: one core flush and one timer check serve the whole
# batch (docs/BENCHMARKS.md, "Broker"), and a burst cannot starve the TLS side for long.
_UDP_BATCH = 64
# Replies waiting for the socket to take them again; past this they are dropped (a RACK or
# a STUN answer is repeated by its sender, a wake-up by the core's resend timer).
_UDP_PENDING = 4096
_UDP_RECEIVE_SIZE = 2048


class _UdpSocket:
    """The broker's one UDP socket, read in batches straight off a non-blocking socket.

    asyncio's datagram transport costs one protocol callback and one core flush per
    datagram; the broker's port takes every registration of every equipment, so this reads
    up to ``_UDP_BATCH`` datagrams per readiness callback, hands each to the core, and
    flushes once. Sends go straight to the socket; when it is full they wait in a bounded
    queue for writability, like the transport's buffer."""

    def __init__(self, daemon: BrokerDaemon, sock: socket.socket) -> None:
        self._daemon = daemon
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._pending: collections.deque[tuple[bytes, tuple[Any, ...]]] = collections.deque()
        self._writing = False
        self.dropped = 0
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    def bind(
        cls, daemon: BrokerDaemon, host: str, port: int, *, reuse_port: bool = False
    ) -> _UdpSocket:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if reuse_port:
                # `roost broker run --workers N` (docs/broker-scale.md): every worker binds
                # the one port and the kernel spreads the equipment's flows over them.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            return cls(daemon, sock)
        except BaseException:
            sock.close()
            raise

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    def _readable(self) -> None:
        receive = self._sock.recvfrom
        deliver = self._daemon.core.receive_datagram
        now = self._loop.time()
        for _ in range(_UDP_BATCH):
            try:
                data, addr = receive(_UDP_RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # An ICMP error for an earlier send (a wake-up to a closed port): the
                # resends or the wake-up timeout deal with it; the socket stays open.
                log.debug("udp error: %s", exc)
                continue
            deliver(data, addr if len(addr) == 2 else addr[:2], now)
        self._daemon.transmit()

    def sendto(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._pending:
            self._queue(data, addr)
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._queue(data, addr)
        except OSError as exc:
            log.debug("udp send to %s: %s", addr, exc)

    def _queue(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(self._pending) >= _UDP_PENDING:
            self.dropped += 1
            return
        self._pending.append((data, addr))
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock.fileno(), self._writable)

    def _writable(self) -> None:
        while self._pending:
            data, addr = self._pending[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp send to %s: %s", addr, exc)
            self._pending.popleft()
        self._writing = False
        self._loop.remove_writer(self._sock.fileno())

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        self._loop.remove_reader(self._sock.fileno())
        if self._writing:
            self._loop.remove_writer(self._sock.fileno())
        self._sock.close()


class BrokerDaemon:
    """Runs one broker; ``start()`` binds UDP, TLS and the API, ``stop()`` releases them."""

    def __init__(
        self,
        config: BrokerConfig,
        trust: TrustUpdater,
        certificate: x509.Certificate,
        private_key: ec.EllipticCurvePrivateKey,
        *,
        tls: ReloadableServerContext | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``certificate``/``private_key`` are the broker's own (role broker); ``tls`` is
        the listener's context over the same pair (built from the config's files if None)."""
        self.config = config
        self.trust = trust
        self.certificate = certificate
        self.private_key = private_key
        self.tls = tls or ReloadableServerContext(
            config.cert, config.key, trust.state.anchors, optional_client_cert=True
        )
        # The shared registry (docs/broker-scale.md): this process's node name and epoch.
        self.node = (config.node or f"{config.name}-{socket.gethostname()}-{os.getpid()}")[:64]
        self.epoch = wall_ms_now()
        presence = (
            PresencePolicy(config.presence, config.core.interval_s, config.core.ttl_s)
            if config.shared
            else None
        )
        # Wall microseconds: RWAK counters keep rising across restarts and are comparable
        # between the processes of one registry (section 5).
        wall_s = wall_ms_now() / 1000
        self.core = BrokerCore(
            config.core,
            rng=rng,
            wake_counter_start=int(wall_s * 1_000_000),
            wall_offset_s=wall_s - time.monotonic(),
            presence=presence,
        )
        self.shared: SharedRegistry | None = None
        # The direct links to the other processes (docs/broker-scale.md, "Node link").
        self.links: NodeLinks | None = None
        # Channels of this process forwarded to a target's owner: id → (node, epoch, link).
        self._forwarded: dict[int, _Forward] = {}
        # Channels other processes forwarded here: (origin, epoch, its id) ↔ our id, and
        # the node link each came over (none: pub/sub), which its answers take back.
        self._hosted: dict[tuple[str, int, int], int] = {}
        self._hosted_ids: dict[int, tuple[str, int, int]] = {}
        self._hosted_via: dict[int, NodeLink] = {}
        self._resolving: set[str] = set()
        # The presence a lookup on this channel read, for its connect (no second GET).
        self._looked_up: dict[int, PresenceRecord] = {}
        # Presence records read lately, by target, with when they were read: a lookup for
        # one of them is answered at once (docs/broker-scale.md, "Routing").
        self._presence_cache: collections.OrderedDict[str, tuple[float, PresenceRecord]] = (
            collections.OrderedDict()
        )
        self.lookups_cached = 0
        # Node messages for no channel forwarded or hosted here (closed meanwhile, or from
        # another path or instance), and forwarded channels answered by the owner's
        # restarted successor (``_on_hop``).
        self.hops_dropped = self.forwarded_to_successor = 0
        self.adopted = self.forwarded_total = self.hosted_total = 0
        self.connections_rejected: collections.Counter[str] = collections.Counter()
        # The TLS port and the API admit through one cap on unauthenticated connections
        # and count every refusal in ``connections_rejected`` (docs/limits.md).
        self.admission = Admission(config.admission, self.connections_rejected, log)
        self._udp: _UdpSocket | None = None
        self._server: TlsListener | None = None
        self._api: ApiRunner | None = None
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._next_channel = 1
        # Built in start(), on the running loop (roost.timer).
        self._timer: CoreTimer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = time.monotonic()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Every registration moves the registry's front entry, so the core's deadline only
        # moves later: keep an earlier handle instead of a cancel and a new call_at per
        # datagram (docs/BENCHMARKS.md, "Broker").
        self._timer = CoreTimer(loop, self._on_timer, keep_earlier=True)
        if self.config.shared:
            self.shared = SharedRegistry(
                connect_redis(self.config.registry),
                self.config.presence,
                self.node,
                self.epoch,
                on_message=self._on_node_message,
                on_resync=self._resync,
            )
            await self.shared.start()
            await self._start_links()
        host, port = self.config.udp
        reuse = self.config.reuse_port or None
        with listening("broker (udp)", host, port):
            self._udp = _UdpSocket.bind(self, host, port, reuse_port=bool(reuse))
        tls_host, tls_port = self.config.tls
        try:
            with listening("broker (tls)", tls_host, tls_port):
                self._server = await self.admission.start_tls_server(
                    self._serve,
                    tls_host,
                    tls_port,
                    self.tls.outer,
                    what="broker channel",
                    limit=_READ_CHUNK,
                    reuse_port=reuse,
                )
        except BaseException:
            self._udp.close()
            raise
        if self.config.api is not None:
            self._api = await _start_api(self, *self.config.api)
        log.info(
            "broker listening: udp %s:%s, tls %s:%s",
            host,
            self.udp_port,
            tls_host,
            self.tls_port,
            extra={"event": "listening"},
        )

    async def _start_links(self) -> None:
        """The node link's listener, unless it is off or this broker's certificate predates
        the broker profile's clientAuth (then every route goes over pub/sub)."""
        if self.config.node_link is None or self.shared is None:
            return
        usages = _extended_key_usages(self.certificate)
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            log.warning(
                "node link off: the broker certificate %s carries no clientAuth (issued before"
                " brokers authenticated each other); issue a new one with --role broker."
                " Requests are routed over Redis pub/sub meanwhile",
                self.config.cert,
            )
            return
        links = NodeLinks(
            self.config.presence,
            self.node,
            self.epoch,
            cert_file=self.config.cert,
            key_file=self.config.key,
            trust=self.trust,
            shared=self.shared,
            admission=self.admission,
            on_message=self._on_hop,
            on_closed=self._link_closed,
        )
        host, port = self.config.node_link
        with listening("broker (node link)", host, port):
            await links.start(host, port)
        self.links = links

    async def stop(self) -> None:
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        if self._api is not None:
            await self._api.cleanup()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers.values()):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        self.admission.close()
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self.links is not None:
            await self.links.stop()
        if self.shared is not None:
            await self.shared.stop()

    @property
    def udp_port(self) -> int:
        assert self._udp is not None
        return self._udp.port

    @property
    def tls_port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def api_port(self) -> int | None:
        return None if self._api is None else self._api.bound_port

    # ------------------------------------------------------------------ the one flush

    def transmit(self) -> None:
        """Send what the core wants sent, act on its events, re-arm its one timer."""
        if self._udp is not None:
            for data, addr in self.core.datagrams_to_send():
                self._udp.sendto(data, addr)
        for channel, body in self.core.records_to_send():
            writer = self._writers.get(channel)
            if writer is not None and not writer.is_closing():
                writer.write(encode_record(body))
            elif channel in self._hosted_ids:
                self._hop_back(channel, Hop.BACK, body)
        while (event := self.core.next_event()) is not None:
            if isinstance(event, Refused):
                more = f" ({event.suppressed} more since the last line)" if event.suppressed else ""
                log.info(
                    "refused %s: %s%s",
                    event.source,
                    event.reason,
                    more,
                    extra={
                        **REFUSAL_LINE,
                        "event": "refused",
                        "reason": str(event.reason),
                        "source": event.source,
                    },
                )
            elif isinstance(event, CloseChannel):
                writer = self._writers.get(event.channel)
                if writer is not None:
                    writer.close()
                elif event.channel in self._hosted_ids:
                    self._hop_back(event.channel, Hop.SHUT, b"")
                    self._unhost(event.channel)
        if self.shared is not None:
            self._shared_outputs()
        if self._timer is not None:
            self._timer.arm(self.core.get_timer())

    def _on_timer(self) -> None:
        self.core.handle_timer(_loop_now())
        self.transmit()

    # ------------------------------------------------------------------ trust

    def trust_changed(self) -> None:
        """New anchors reach the TLS listener (a promotion or a fetched generation)."""
        self.tls.update(self.trust.state.anchors)
        if self.links is not None:
            self.links.trust_changed()

    def _verify(self, leaf: x509.Certificate) -> str:
        before = self.trust.state
        node, _ = self.trust.authenticate(leaf)
        if self.trust.state != before:
            self.trust_changed()
        return node.identifier

    def _fetch_after_failure(self, leaf: x509.Certificate) -> None:
        async def fetch() -> None:
            before = self.trust.state
            with contextlib.suppress(RoostError):
                await self.trust.on_verification_failure(_loop_now(), leaf)
            if self.trust.state != before:
                self.trust_changed()

        task = asyncio.ensure_future(fetch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ TLS channels

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ticket: Ticket
    ) -> None:
        source = self.admission.source_of(writer.get_extra_info("peername"))
        if len(self._writers) >= self.config.max_channels:
            self.admission.refuse(Reason.BUSY, source, "broker channel")
            writer.close()
            return
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        peer: str | None = None
        if der:
            try:
                leaf = load_certificate(der)
                try:
                    peer = self._verify(leaf)
                except VerificationError:
                    self._fetch_after_failure(leaf)
                    raise
            except RoostError as exc:
                self.admission.refuse(exc, source, "broker channel")
                writer.close()
                return
        # TLS is done and a certificate, if any, verified: the slot is free again (an
        # issuer without one is held by the broker's per-source buckets from here).
        ticket.release()
        peername = writer.get_extra_info("peername")
        channel = self._next_channel
        self._next_channel += 1
        self._writers[channel] = writer
        self.core.open_channel(
            channel, peer, str(peername[0]), _loop_now(), certificate=der if peer else None
        )
        self.transmit()
        framer = RecordFramer(MAX_CHANNEL_BODY, what="broker channel")
        try:
            while not writer.is_closing():
                data = await reader.read(_READ_CHUNK)
                if not data:
                    break
                rtt = _rtt_ms(writer)
                self.core.channel_rtt(channel, rtt)
                for body in framer.feed(data):
                    forward = self._forwarded.get(channel)
                    if forward is None and self.shared is not None and body.startswith(_ROUTED_OPS):
                        forward = await self._route(channel, body, str(peername[0]), rtt)
                    if forward is _ANSWERED:
                        continue
                    if forward is not None:
                        self._hop(forward, Hop.RECORD, channel, rtt, body)
                    else:
                        self.core.receive_record(channel, body, _loop_now())
                self.transmit()
        except RoostError as exc:
            # A record above the cap: the peer broke the framing (counted, connection ends).
            self.core.rejections.count(exc, source=str(peername[0]), now=_loop_now())
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.pop(channel, None)
            self._looked_up.pop(channel, None)
            forwarded = self._forwarded.pop(channel, None)
            if forwarded is not None:
                self._hop(forwarded, Hop.CLOSE, channel, 0, b"")
            self.core.close_channel(channel, _loop_now())
            self.transmit()
            writer.close()

    # ------------------------------------------------------------------ status

    def status(self) -> BrokerStatus:
        """A snapshot for the API, /metrics and ``roost broker status``."""
        counters = self.core.counters
        view = BrokerCountersView(
            stun_answers=counters.stun_answers,
            registrations=counters.registrations,
            enrollments=counters.enrollments,
            lookups=counters.lookups,
            connects=counters.connects,
            wakes_sent=counters.wakes_sent,
            wake_pushes=counters.wake_pushes,
            presents=counters.presents,
            accepts=counters.accepts,
            rejects=counters.rejects,
            relayed_sessions=counters.relayed_sessions,
            relayed_bytes=counters.relayed_bytes,
            relay_closes=counters.relay_closes,
            keepalives=counters.keepalives,
            expired=counters.expired,
            channels_opened=counters.channels_opened,
            equipment_channels=counters.equipment_channels,
            holds=counters.holds,
            requests_pushed=counters.requests_pushed,
            refusals=self.core.rejections.as_dict(),
            connections_rejected={k: v for k, v in self.connections_rejected.items() if v},
        )
        udp_host = self.config.udp[0]
        tls_host = self.config.tls[0]
        return BrokerStatus(
            name=self.config.name,
            udp=f"{udp_host}:{self.udp_port if self._udp else self.config.udp[1]}",
            tls=f"{tls_host}:{self.tls_port if self._server else self.config.tls[1]}",
            registry_size=len(self.core.registry),
            channels=self.core.channels,
            sessions=self.core.sessions,
            relaying=self.core.relaying,
            trust=TrustSummary.from_json(self.trust.state.summary()),
            counters=view,
            uptime_s=round(time.monotonic() - self._started, 3),
            shared=self._shared_status(),
            holding=self.core.holding,
        )

    def _shared_status(self) -> SharedStatus | None:
        if self.shared is None:
            return None
        counters = self.shared.counters
        return SharedStatus(
            node=self.node,
            epoch=self.epoch,
            up=self.shared.up,
            writes=counters.writes,
            reads=counters.reads,
            published=counters.published,
            received=counters.received,
            pipelines=counters.pipelines,
            outages=counters.outages,
            outage_s=round(self.shared.outage_seconds(), 3),
            resyncs=counters.resyncs,
            dropped_writes=counters.dropped_writes,
            adopted=self.adopted,
            forwarded=self.forwarded_total,
            hosted=self.hosted_total,
            lookups_cached=self.lookups_cached,
            hops_dropped=self.hops_dropped,
            forwarded_to_successor=self.forwarded_to_successor,
            **self._link_status(),
        )

    def _link_status(self) -> dict[str, Any]:
        if self.links is None:
            return {}
        counters = self.links.counters
        return {
            "node_link": self.links.address,
            "links_up": self.links.up,
            "link_opened": counters.opened,
            "link_opened_local": counters.opened_local,
            "link_accepted": counters.accepted,
            "link_sent": counters.sent,
            "link_received": counters.received,
            "link_fallbacks": counters.fallbacks,
            "link_failures": {k: v for k, v in counters.failures.items() if v},
        }

    # ------------------------------------------------------------------ shared registry

    def _shared_outputs(self) -> None:
        """Presence writes the core says are due; registrations to look up in Redis."""
        for identifier in self.core.presence_to_write():
            self._write_presence(identifier, _loop_now())
        for identifier, data, addr in self.core.registrations_to_resolve():
            limit = self.config.presence.max_resolving
            if identifier not in self._resolving and len(self._resolving) < limit:
                self._resolving.add(identifier)
                self._spawn(self._resolve(identifier, data, addr))

    def _write_presence(self, identifier: str, now: float) -> None:
        entry = self.core.registry.get(identifier)
        if entry is None or self.shared is None or self.core.presence is None:
            return
        reachable = entry.held is not None or self.core.registry.udp_fresh(identifier, now)
        record = PresenceRecord(
            self.node, self.epoch, entry.counter or 0, entry.key, entry.certificate, reachable
        )
        self.shared.write(identifier, record, self.core.presence.ttl_ms)

    def _resync(self) -> None:
        """Redis answers again (maybe restarted empty): rewrite every entry this process
        can wake, i.e. held here or registered here within the last interval (an entry
        that moved to another process stops registering here)."""
        now = _loop_now()
        if self.links is not None:
            self.links.advertise()
        registry = self.core.registry
        recent = self.config.core.interval_s * 1.5
        for identifier in list(registry):
            entry = registry.get(identifier)
            if entry is None:
                continue
            fresh = registry.udp_fresh(identifier, now) and now - entry.last_seen < recent
            if entry.held is not None or fresh:
                self._write_presence(identifier, now)

    async def _resolve(self, identifier: str, data: bytes, addr: tuple[str, int]) -> None:
        """A registration this process could not verify: another process may have the
        entry (its enrollment may still be in that process's pipeline: one retry)."""
        try:
            assert self.shared is not None
            record = await self.shared.read(identifier)
            if record is None:
                await asyncio.sleep(self.config.presence.miss_retry_s)
                record = await self.shared.read(identifier)
            if record is None or record.key == self.core.registry.key_of(identifier):
                return
            now = _loop_now()
            self.core.adopt(identifier, record.key, record.counter, record.certificate, now)
            self.adopted += 1
            self.core.receive_datagram(data, addr, now)
            self.transmit()
        finally:
            self._resolving.discard(identifier)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route(
        self,
        channel: int,
        body: bytes,
        source: str,
        rtt: int,
    ) -> _Forward | None:
        """Where a ``lookup``/``connect`` is served: None here, or the owner's (node,
        epoch) and the node link to it (None: pub/sub), the channel then opened there
        (over pub/sub, ``_owner_heard`` answers target-offline if nobody received the
        OPEN)."""
        try:
            message = control.decode_control(body)
        except RoostError:
            return None  # the core answers the parse error
        target = getattr(message, "target", None)
        if not isinstance(target, str) or self.shared is None:
            return None
        now = _loop_now()
        entry = self.core.registry.get(target)
        reachable = entry is not None and (
            entry.held is not None or self.core.registry.udp_fresh(target, now)
        )
        if route_target(reachable, None, self.node, self.epoch) is Route.LOCAL:
            return None
        if isinstance(message, control.Lookup):
            cached = self._cached_presence(target, now)
            if (
                cached is not None
                and cached.certificate is not None
                and route_target(False, cached, self.node, self.epoch) is Route.FORWARD
            ):
                # Answered from a record read within lookup_cache_s. The record this
                # channel's connect goes by is read again meanwhile (the issuer verifies
                # the certificate and seals the password before it sends the connect),
                # so a target that moved to another process is still routed right.
                self._looked_up[channel] = cached
                self.core.answer_lookup(channel, target, cached.certificate, now)
                self.lookups_cached += 1
                self._spawn(self._read_for_connect(channel, target))
                return _ANSWERED
        record = self._looked_up.pop(channel, None)
        if record is None or not isinstance(message, control.Connect):
            record = await self.shared.read(target)
            self._remember_presence(target, record)
        if (
            record is None
            or route_target(False, record, self.node, self.epoch) is not Route.FORWARD
        ):
            return None
        # The node link to the owner when one is up (else one is asked for, and this
        # channel goes over pub/sub): presence.choose_via decides.
        link = None if self.links is None else self.links.link_to(record.owner, record.epoch)
        if isinstance(message, control.Lookup) and record.certificate is not None:
            # Answered here from the presence (one round trip less through the owner);
            # the connect that follows on this channel goes to the owner.
            self._looked_up[channel] = record
            self.core.answer_lookup(channel, target, record.certificate, now)
            return _ANSWERED
        opened = NodeMessage(Hop.OPEN, self.node, self.epoch, channel, rtt, source.encode())
        forward: _Forward = (record.owner, record.epoch, link)
        self.forwarded_total += 1
        # The owner's core runs this channel from now on (its limits, idle timer and
        # sessions); ours forgets it, so its idle timer cannot cut a long relayed session.
        self.core.close_channel(channel, now)
        # The connect follows the OPEN at once (the caller's _hop): one write for both.
        if link is not None and link.send(opened, more=True):
            self._forwarded[channel] = forward
            return forward
        forward = (record.owner, record.epoch, None)
        if self.links is not None:
            self.links.counters.fallbacks += 1
        heard = self.shared.publish(record.owner, opened.encode(), wait=True)
        assert heard is not None
        self._forwarded[channel] = forward
        # The records follow the OPEN in the same pipeline without waiting for it: a
        # forwarded request costs no extra round trip to Redis (docs/broker-scale.md).
        heard.add_done_callback(lambda done: self._owner_heard(done, channel, forward, source))
        return forward

    def _cached_presence(self, target: str, now: float) -> PresenceRecord | None:
        found = self._presence_cache.get(target)
        if found is None:
            return None
        if now - found[0] >= self.config.presence.lookup_cache_s:
            del self._presence_cache[target]
            return None
        return found[1]

    def _remember_presence(self, target: str, record: PresenceRecord | None) -> None:
        presence = self.config.presence
        if presence.lookup_cache_s <= 0:
            return
        if record is None or record.certificate is None:
            self._presence_cache.pop(target, None)
            return
        self._presence_cache[target] = (_loop_now(), record)
        self._presence_cache.move_to_end(target)
        while len(self._presence_cache) > presence.lookup_cache_entries:
            self._presence_cache.popitem(last=False)

    async def _read_for_connect(self, channel: int, target: str) -> None:
        """The fresh presence for the connect of a lookup answered from the cache (the
        connect takes the cached one if it comes before this read returns)."""
        assert self.shared is not None
        record = await self.shared.read(target)
        self._remember_presence(target, record)
        if channel in self._looked_up:
            if record is None:
                del self._looked_up[channel]
            else:
                self._looked_up[channel] = record

    def _owner_heard(
        self, done: asyncio.Future[int], channel: int, forward: _Forward, source: str
    ) -> None:
        if done.result() > 0 or self._forwarded.get(channel) != forward:
            return
        # Nobody listens for the owner (killed, or Redis went down): the equipment
        # re-homes within one interval; until then it cannot be woken from here.
        del self._forwarded[channel]
        now = _loop_now()
        self.core.rejections.count(Reason.TARGET_OFFLINE, source=source, now=now)
        writer = self._writers.get(channel)
        if writer is not None and not writer.is_closing():
            # Served here again (an issuer's channel: no peer identity).
            self.core.open_channel(channel, None, source, now)
            error = control.Error(Reason.TARGET_OFFLINE, None)
            writer.write(encode_record(control.encode_control_message(error)))

    def _hop(self, forward: _Forward, kind: Hop, channel: int, rtt: int, payload: bytes) -> None:
        """Send one message of a channel this process forwards, the way its OPEN went (a
        link that went down meanwhile ends the channel: ``_link_closed``)."""
        message = NodeMessage(kind, self.node, self.epoch, channel, rtt, payload)
        node, _, link = forward
        if link is not None:
            link.send(message)
        elif self.shared is not None:
            self.shared.publish(node, message.encode())

    def _hop_back(self, local: int, kind: Hop, payload: bytes) -> None:
        """Send one message back to the origin of a channel hosted here."""
        origin, epoch, channel = self._hosted_ids[local]
        self._hop((origin, epoch, self._hosted_via.get(local)), kind, channel, 0, payload)

    def _unhost(self, local: int) -> None:
        key = self._hosted_ids.pop(local, None)
        self._hosted_via.pop(local, None)
        if key is not None:
            self._hosted.pop(key, None)

    def _link_closed(self, link: NodeLink) -> None:
        """A node link ended: so do the channels it carried (the issuer's own timeouts or
        the target's report it, as when the owner of a hosted channel dies)."""
        if self._stopping:
            return
        now = _loop_now()
        for channel, forward in list(self._forwarded.items()):
            if forward[2] is link:
                del self._forwarded[channel]
                writer = self._writers.get(channel)
                if writer is not None:
                    writer.close()
        for local, via in list(self._hosted_via.items()):
            if via is link:
                self._unhost(local)
                self.core.close_channel(local, now)
        self.transmit()

    def _on_node_message(self, data: bytes) -> None:
        """A message of a forwarded channel over Redis pub/sub."""
        try:
            message = decode_node_message(data)
        except RoostError:
            return
        self._on_hop(message, None)

    def _on_hop(self, message: NodeMessage, via: NodeLink | None) -> None:
        """A message of a forwarded channel, from its origin or from its owner, over the
        node link ``via`` or over pub/sub (None)."""
        now = _loop_now()
        key = (message.sender, message.epoch, message.channel)
        if message.kind is Hop.HELLO:
            return
        if message.kind is Hop.OPEN:
            local = self._next_channel
            self._next_channel += 1
            self._hosted[key] = local
            self._hosted_ids[local] = key
            if via is not None:
                self._hosted_via[local] = via
            self.hosted_total += 1
            source = message.payload.decode(errors="replace")[:64]
            self.core.open_channel(local, None, source, now)
            self.core.channel_rtt(local, message.rtt_ms)
        elif message.kind in (Hop.RECORD, Hop.CLOSE):
            hosted = self._hosted.get(key)
            if hosted is None or self._hosted_via.get(hosted) is not via:
                self.hops_dropped += 1
                return
            if message.kind is Hop.CLOSE:
                self._unhost(hosted)
                self.core.close_channel(hosted, now)
            else:
                self.core.channel_rtt(hosted, message.rtt_ms)
                self.core.receive_record(hosted, message.payload, now)
        else:
            forwarded = self._forwarded.get(message.channel)
            writer = self._writers.get(message.channel)
            if forwarded is None or writer is None:
                self.hops_dropped += 1
                return
            node, epoch, link = forwarded
            if message.sender != node or via is not link or message.epoch < epoch:
                self.hops_dropped += 1
                return
            if message.epoch > epoch:
                # Pub/sub reaches a node, not an instance: an OPEN addressed by a presence
                # record read before the owner restarted is hosted by its successor, and
                # the answer carries the successor's epoch. The channel keeps to it.
                self._forwarded[message.channel] = (node, message.epoch, None)
                self.forwarded_to_successor += 1
            if message.kind is Hop.BACK:
                writer.write(encode_record(message.payload))
            else:
                writer.close()
            return  # the core has no part in these: nothing for transmit() to flush
        self.transmit()


def _loop_now() -> float:
    return asyncio.get_running_loop().time()


def _extended_key_usages(certificate: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


# Linux's struct tcp_info: tcpi_rtt (microseconds) is the u32 at byte 68.
_TCPI_RTT = struct.Struct("=I")
_TCPI_RTT_OFFSET = 68


def _rtt_ms(writer: asyncio.StreamWriter) -> int:
    """The kernel's smoothed round-trip estimate for the connection, 0 when unknown."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    except OSError:
        return 0
    if len(info) < _TCPI_RTT_OFFSET + 4:
        return 0
    (rtt_us,) = _TCPI_RTT.unpack_from(info, _TCPI_RTT_OFFSET)
    # Rounded up, so a sub-millisecond loopback round trip is 1 ms, not "unknown" (0).
    return int(-(-rtt_us // 1000))


# ---------------------------------------------------------------------- HTTP API

_DAEMON_KEY = web.AppKey("roost_broker", BrokerDaemon)


async def _start_api(daemon: BrokerDaemon, host: str, port: int) -> ApiRunner:
    app = web.Application()
    app[_DAEMON_KEY] = daemon
    app.router.add_get("/api/status", _status)
    add_metrics(app, daemon.status, BROKER_METRICS)
    return await serve_app(app, host, port, admission=daemon.admission, what="broker api")


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[_DAEMON_KEY].status().to_json(), headers=NO_STORE)


def fetch_broker_status(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """``GET /api/status`` of a running broker (blocking; for the CLI and tests).

    Raises OSError when the broker does not answer.
    """
    with urllib.request.urlopen(f"http://{host}:{port}/api/status", timeout=timeout) as response:
        doc: dict[str, Any] = json.loads(response.read())
    return doc
