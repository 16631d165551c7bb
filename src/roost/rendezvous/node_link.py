"""The node link between broker processes sharing a registry (adapter; docs/broker-scale.md,
"Node link").

A process that forwards a channel to its target's owner sends the channel's messages
(``presence.NodeMessage``, the same bodies Redis pub/sub carries) over one persistent
connection to that owner instead of through Redis: mutual TLS 1.3 with the broker's own
certificate and trust store at both ends, each end checking that the other's certificate is
a broker's (``pki.verify.verify_broker_peer``: ``not-broker`` otherwise), and the project's
one stream framer (``roost.framing``, ``u32 length | body``, PROTOCOL.md section 5).

- Listener: every process with a shared registry listens on ``node_link`` (port 0: any free
  port; each ``--workers`` worker its own) and advertises the bound address under
  ``PREFIX l:NODE`` (``presence.PeerRecord``, rewritten every third of its TTL and at a
  resync). The connection is admitted like every TLS listener (``roost.admission``: slots,
  handshake deadline, refusals counted by reason in the daemon's ``connections_rejected``).
- Hello: the first frame each way (``presence.hello``/``check_hello``) names the speaker
  and the instance (node, epoch) it means to reach; a hello for another instance (an
  address read before a restart) is refused ``wrong-node``.
- Dialler: ``link_to(node, epoch)`` answers the link when one is up to that instance, and
  otherwise asks for one (``presence.choose_via``) and answers None: the caller routes that
  channel over pub/sub (counted ``fallbacks``). One task per node opens the link, keeps it,
  and dials again after ``presence.link_backoff`` when it cannot be opened or goes down,
  while channels were routed to that node within ``link_idle_s``; each failure is counted
  by reason (``failures``) and logged once per episode.

- Local socket: a process also listens on an abstract Unix socket (``local_link``, on by
  default) and advertises its name with its ``machine`` (the boot id and network namespace,
  ``machine_identity``). A dialler with the same machine dials that socket instead of TLS
  over TCP: both ends check the other's user with the kernel's ``SO_PEERCRED`` (the same
  user as this process, or root; else ``foreign-user``), which is who can read the broker's
  key anyway; the hello follows as over TLS. When the socket cannot be reached the dialler
  goes on to TLS in the same attempt.

A link's messages go back the way they came: the owner answers a channel on the connection
its OPEN arrived on. When a link ends, the channels it carried end with it (the daemon's
``on_closed``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost.admission import Admission, Ticket, TlsListener
from roost.errors import RemoteProtocolError, RoostError, TransportError
from roost.framing import RecordFramer, encode_record
from roost.pki.tls import ReloadableServerContext, client_context, peer_certificate
from roost.pki.updater import TrustUpdater
from roost.pki.verify import verify_broker_peer
from roost.reasons import Reason
from roost.rendezvous.broker_cluster import SharedRegistry
from roost.rendezvous.control import MAX_CHANNEL_BODY
from roost.rendezvous.presence import (
    Hop,
    NodeMessage,
    PeerRecord,
    PresenceConfig,
    Via,
    check_hello,
    choose_via,
    decode_node_message,
    hello,
    link_backoff,
)

__all__ = ["LinkCounters", "NodeLink", "NodeLinks", "machine_identity"]

log = logging.getLogger("roost.broker.link")
_READ_CHUNK = 64 * 1024
# A node message is a channel record body plus its header (presence.NodeMessage).
MAX_LINK_BODY = MAX_CHANNEL_BODY + 256
_WILDCARDS = ("", "0.0.0.0", "::")
# struct ucred of SO_PEERCRED: pid, uid, gid.
_UCRED = struct.Struct("=iII")


def machine_identity() -> str:
    """Where an abstract Unix socket can be reached from: this boot of this host and this
    network namespace ("" when /proc does not say)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        namespace = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return ""
    return f"{boot_id}:net-{namespace}"


def _peer_user_allowed(sock: socket.socket | None) -> bool:
    """The peer of a local socket runs as this process's user or as root."""
    if sock is None or sock.family != socket.AF_UNIX:
        return False
    try:
        _, uid, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError:
        return False
    return uid in (os.getuid(), 0)


@dataclass(slots=True)
class LinkCounters:
    """The node links' totals (the broker status's ``shared.link_*`` fields)."""

    opened: int = 0  # outbound links established
    opened_local: int = 0  # of them, over a local socket
    accepted: int = 0  # inbound links established
    sent: int = 0  # node messages sent over a link
    received: int = 0  # node messages received over a link
    fallbacks: int = 0  # channels routed over pub/sub because no link was up
    failures: collections.Counter[str] = field(default_factory=collections.Counter)


class NodeLink:
    """One established link, outbound (we dialled ``peer``) or inbound. Each message
    leaves at once, unless the caller says ``more`` follows at once (an OPEN and the
    record it carries: one write, one TLS record, one wake-up of the peer)."""

    __slots__ = (
        "_counters",
        "_limit",
        "_queued",
        "epoch",
        "local",
        "outbound",
        "peer",
        "writer",
    )

    def __init__(
        self,
        peer: str,
        epoch: int,
        writer: asyncio.StreamWriter,
        *,
        outbound: bool,
        limit: int,
        counters: LinkCounters,
        local: bool = False,
    ) -> None:
        self.peer = peer
        self.local = local  # over a local socket (no TLS: the kernel vouched for the peer)
        self.epoch = epoch
        self.writer = writer
        self.outbound = outbound
        self._limit = limit
        self._counters = counters
        self._queued: list[bytes] = []

    @property
    def up(self) -> bool:
        return not self.writer.is_closing()

    def send(self, message: NodeMessage, *, more: bool = False) -> bool:
        """Send one message (with ``more``: hold it for the next one, or at the latest
        until this loop turn ends); False when the link is closing (the channel ends with
        it). A peer that stopped reading is cut off once ``link_buffer`` bytes wait."""
        if self.writer.is_closing():
            return False
        if self.writer.transport.get_write_buffer_size() > self._limit:
            self._counters.failures[Reason.LINK_BACKLOG] += 1
            log.warning("node link to %s: peer stopped reading, closing it", self.peer)
            self.writer.close()
            return False
        self._counters.sent += 1
        frame = encode_record(message.encode())
        if more:
            if not self._queued:
                asyncio.get_running_loop().call_soon(self._flush)
            self._queued.append(frame)
        elif self._queued:
            self._queued.append(frame)
            self._flush()
        else:
            self.writer.write(frame)
        return True

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        if queued and not self.writer.is_closing():
            self.writer.write(b"".join(queued))

    def close(self) -> None:
        self.writer.close()


class NodeLinks:
    """The node links of one broker process (see the module docstring)."""

    def __init__(
        self,
        config: PresenceConfig,
        node: str,
        epoch: int,
        *,
        cert_file: Path,
        key_file: Path,
        trust: TrustUpdater,
        shared: SharedRegistry,
        admission: Admission,
        on_message: Callable[[NodeMessage, NodeLink], None],
        on_closed: Callable[[NodeLink], None],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.node = node
        self.epoch = epoch
        self.counters = LinkCounters()
        self._cert_file = cert_file
        self._key_file = key_file
        self._trust = trust
        self._shared = shared
        self._admission = admission
        self._on_message = on_message
        self._on_closed = on_closed
        self._rng = rng or random.Random()
        self._tls = ReloadableServerContext(cert_file, key_file, trust.state.anchors)
        self._server: TlsListener | None = None
        self._local_server: asyncio.AbstractServer | None = None
        self._local_name = ""
        self._machine = machine_identity() if config.local_link else ""
        self._host = ""
        self._links: dict[str, NodeLink] = {}
        self._inbound: set[NodeLink] = set()
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._demand: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (port 0: any free one) and advertise the bound address."""
        if host in _WILDCARDS:
            raise ValueError("the node link is advertised: it needs a concrete address")
        self._host = host
        self._server = await self._admission.start_tls_server(
            self._serve, host, port, self._tls.outer, what="node link", limit=_READ_CHUNK
        )
        if self._machine:
            await self._start_local()
        self.advertise()
        self._spawn(self._advertising())

    async def _start_local(self) -> None:
        # An abstract name (leading NUL): no file to clean up, reachable only from this
        # network namespace; unique per instance (the process and its epoch, even when
        # long node names of several workers share their first 48 characters).
        name = f"roost-node-link/{self.node[:48]}/{os.getpid()}/{self.epoch}"
        try:
            self._local_server = await asyncio.start_unix_server(
                self._serve_local, "\0" + name, limit=_READ_CHUNK
            )
        except OSError as exc:
            log.warning("node link: no local socket (%s); processes here link over TLS", exc)
            return
        self._local_name = name

    async def stop(self) -> None:
        self._closing = True
        if self._local_server is not None:
            self._local_server.close()
        if self._server is not None:
            self._server.close()
        for link in [*self._links.values(), *self._inbound]:
            link.close()
        tasks = [*self._dialing.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        """The advertised ``host:port``."""
        return f"{self._host}:{self.port}" if self._server is not None else ""

    @property
    def up(self) -> int:
        """Links established now, both ways."""
        return sum(1 for link in [*self._links.values(), *self._inbound] if link.up)

    def trust_changed(self) -> None:
        """New anchors reach the listener (a promotion or a fetched generation)."""
        self._tls.update(self._trust.state.anchors)

    def advertise(self) -> None:
        """Queue this process's node-link address in Redis (also after a resync)."""
        if self._server is not None:
            machine = self._machine if self._local_name else ""
            record = PeerRecord(self.epoch, self._host, self.port, self._local_name, machine)
            self._shared.write_peer(record, round(self.config.peer_ttl_s * 1000))

    async def _advertising(self) -> None:
        while True:
            await asyncio.sleep(self.config.peer_ttl_s / 3)
            self.advertise()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ routing

    def link_to(self, node: str, epoch: int) -> NodeLink | None:
        """The link to the instance ``node``/``epoch`` when one is up; otherwise one is
        asked for and None answered (the caller uses pub/sub for this channel)."""
        link = self._links.get(node)
        live = link if link is not None and link.up else None
        via, reopen = choose_via(None if live is None else live.epoch, epoch)
        if via is Via.LINK:
            return live
        self._demand[node] = time.monotonic()
        if reopen and not self._closing:
            if live is not None:
                # It leads to an older instance: the owner restarted. Its dialler reads
                # the new address and dials again.
                live.close()
            elif node not in self._dialing and len(self._dialing) < self.config.max_links:
                self._dialing[node] = asyncio.ensure_future(self._keep(node))
        return None

    async def _keep(self, node: str) -> None:
        """Open the link to ``node`` and keep it: dial again after the back-off when it
        cannot be opened or goes down, while channels asked for it within link_idle_s."""
        attempt = 0
        reported = False
        try:
            while not self._closing:
                record = await self._shared.read_peer(node)
                try:
                    if record is None:
                        raise TransportError(
                            f"{node} advertises no node link", reason=Reason.NO_LINK
                        )
                    reader, link, framer, early = await self._dial(node, record)
                except RoostError as exc:
                    self.counters.failures[exc.reason] += 1
                    if not reported:
                        reported = True
                        log.warning(
                            "node link to %s unavailable (%s: %s): routing over Redis pub/sub",
                            node,
                            exc.reason,
                            exc,
                            extra={"event": "node-link-down", "reason": str(exc.reason)},
                        )
                    if time.monotonic() - self._demand.get(node, 0.0) > self.config.link_idle_s:
                        return
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                attempt, reported = 0, False
                self.counters.opened += 1
                local = link.local
                self.counters.opened_local += local
                self._links[node] = link
                log.info(
                    "node link to %s at %s up",
                    node,
                    "its local socket" if local else f"{record.host}:{record.port}",
                    extra={"event": "node-link-up", "local": local},
                )
                await self._pump(reader, link, framer, early, f"{record.host}")
                if self._links.get(node) is link:
                    del self._links[node]
                # A link that went down is wanted again (its owner may be restarting).
                self._demand[node] = time.monotonic()
                await asyncio.sleep(self._backoff(0))
        finally:
            self._dialing.pop(node, None)
            if node not in self._links:
                self._demand.pop(node, None)

    def _backoff(self, attempt: int) -> float:
        return link_backoff(
            attempt,
            self._rng.uniform(0.8, 1.2),
            first_s=self.config.link_first_s,
            cap_s=self.config.link_cap_s,
        )

    # ------------------------------------------------------------------ both ends

    def _verify(self, ssl_object: Any) -> None:
        state = self._trust.state
        verify_broker_peer(peer_certificate(ssl_object), state.anchors, state.time_floor)

    async def _bodies(self, reader: asyncio.StreamReader, framer: RecordFramer) -> list[bytes]:
        """Read until at least one frame is complete (the hello, and what followed it)."""
        while True:
            data = await reader.read(_READ_CHUNK)
            if not data:
                framer.end_of_stream()
                raise RemoteProtocolError("node link closed before its hello", reason=Reason.CLOSED)
            bodies = framer.feed(data)
            if bodies:
                return bodies

    async def _dial(
        self, node: str, record: PeerRecord
    ) -> tuple[asyncio.StreamReader, NodeLink, RecordFramer, list[bytes]]:
        timeout = self._admission.config.handshake_timeout_s
        local = record.local_for(self._machine)
        if local:
            try:
                return await self._link_up(node, record, await self._open_local(local), True)
            except RoostError as exc:
                # Counted, and TLS tried at once: the peer may have lost its socket.
                self.counters.failures[exc.reason] += 1
        where = f"{node} at {record.host}:{record.port}"
        state = self._trust.state
        context = client_context(state.anchors, self._cert_file, self._key_file)
        try:
            async with asyncio.timeout(timeout):
                opened = await asyncio.open_connection(
                    record.host, record.port, ssl=context, limit=_READ_CHUNK
                )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise TransportError(
                f"node link to {where}: {exc}", reason=Reason.LINK_UNREACHABLE
            ) from exc
        return await self._link_up(node, record, opened, False)

    async def _open_local(self, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # Connected here, not by the loop: uvloop cannot connect to an abstract name. A
        # non-blocking connect to a Unix socket completes at once, or fails at once (no
        # listener; EAGAIN: its backlog is full).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect("\0" + name)
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_CHUNK)
        except OSError as exc:
            sock.close()
            raise TransportError(
                f"node link socket {name}: {exc}", reason=Reason.LINK_UNREACHABLE
            ) from exc
        if not _peer_user_allowed(writer.get_extra_info("socket")):
            writer.close()
            raise TransportError(
                f"node link socket {name} is served by another user", reason=Reason.FOREIGN_USER
            )
        return reader, writer

    async def _link_up(
        self,
        node: str,
        record: PeerRecord,
        opened: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        local: bool,
    ) -> tuple[asyncio.StreamReader, NodeLink, RecordFramer, list[bytes]]:
        """The hello both ways on a connection just opened (TLS: the peer's certificate
        checked first)."""
        reader, writer = opened
        timeout = self._admission.config.handshake_timeout_s
        where = f"{node} at " + ("its local socket" if local else f"{record.host}:{record.port}")
        framer = RecordFramer(MAX_LINK_BODY, what="node link frame")
        try:
            if not local:
                self._verify(writer.get_extra_info("ssl_object"))
            writer.write(encode_record(hello(self.node, self.epoch, node, record.epoch).encode()))
            async with asyncio.timeout(timeout):
                bodies = await self._bodies(reader, framer)
            check_hello(decode_node_message(bodies[0]), self.node, self.epoch, (node, record.epoch))
        except TimeoutError as exc:
            writer.close()
            raise TransportError(
                f"no node-link hello from {where}", reason=Reason.HELLO_TIMEOUT
            ) from exc
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise TransportError(
                f"node link to {where}: {exc}", reason=Reason.LINK_UNREACHABLE
            ) from exc
        except RoostError:
            writer.close()
            raise
        if not local:
            _keepalive(writer)
        link = NodeLink(
            node,
            record.epoch,
            writer,
            outbound=True,
            limit=self.config.link_buffer,
            counters=self.counters,
            local=local,
        )
        return reader, link, framer, bodies[1:]

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ticket: Ticket
    ) -> None:
        await self._accept(reader, writer, ticket.source, ticket.release, local=False)

    async def _serve_local(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A link dialled to the local socket: the kernel names the peer's user."""
        try:
            if self._closing:
                return
            if not _peer_user_allowed(writer.get_extra_info("socket")):
                self._admission.refuse(Reason.FOREIGN_USER, "local", "node link")
                return
            await self._accept(reader, writer, "local", lambda: None, local=True)
        finally:
            writer.close()

    async def _accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: str,
        release: Callable[[], None],
        *,
        local: bool,
    ) -> None:
        """The listening end of a link: the peer checked (TLS: its certificate), its hello
        read and answered, then its messages until it ends."""
        framer = RecordFramer(MAX_LINK_BODY, what="node link frame")
        try:
            if not local:
                self._verify(writer.get_extra_info("ssl_object"))
            async with asyncio.timeout(self._admission.config.handshake_timeout_s):
                bodies = await self._bodies(reader, framer)
            first = decode_node_message(bodies[0])
            check_hello(first, self.node, self.epoch)
        except RoostError as exc:
            self._admission.refuse(exc, source, "node link")
            return
        except TimeoutError:
            self._admission.refuse(Reason.HELLO_TIMEOUT, source, "node link")
            return
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            self._admission.refuse(Reason.CLOSED, source, "node link")
            return
        writer.write(
            encode_record(hello(self.node, self.epoch, first.sender, first.epoch).encode())
        )
        release()
        if not local:
            _keepalive(writer)
        link = NodeLink(
            first.sender,
            first.epoch,
            writer,
            outbound=False,
            limit=self.config.link_buffer,
            counters=self.counters,
            local=local,
        )
        self.counters.accepted += 1
        self._inbound.add(link)
        try:
            await self._pump(reader, link, framer, bodies[1:], source)
        finally:
            self._inbound.discard(link)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        link: NodeLink,
        framer: RecordFramer,
        early: list[bytes],
        source: str,
    ) -> None:
        """Hand every message of ``link`` to the daemon until it ends, then say so."""
        try:
            bodies = early
            while True:
                for body in bodies:
                    message = decode_node_message(body)
                    if message.kind is Hop.HELLO:
                        raise RemoteProtocolError("a second hello", reason=Reason.BAD_HELLO)
                    if (message.sender, message.epoch) != (link.peer, link.epoch):
                        # A link speaks for the instance its hello named, and no other.
                        raise RemoteProtocolError(
                            "node message from another instance", reason=Reason.WRONG_NODE
                        )
                    self.counters.received += 1
                    self._on_message(message, link)
                data = await reader.read(_READ_CHUNK)
                if not data:
                    break
                bodies = framer.feed(data)
        except RoostError as exc:
            # The peer broke the framing or the message layout: counted, the link ends.
            self._admission.refuse(exc, source, "node link")
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            link.close()
            self._on_closed(link)


def _keepalive(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive: a link to a host that vanished ends instead of hanging."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
