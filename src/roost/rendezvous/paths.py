"""Datagram paths of a brokered session and the shared UDP socket (PROTOCOL.md section 5).

A party owns ONE UDP socket for everything: registrations and wake-ups, STUN, punch
probes and QUIC, so the NAT mapping the broker observes is the one the session uses.
``UdpMux`` is the asyncio protocol on that socket; it sorts each datagram by its first
bytes (section 5, "one socket"):

* ``RREG``/``RACK``/``RWAK`` -> the registration handler (agent or broker),
* ``RPRB`` -> the punch handler of the probe's session (``add_probe_handler``: several
  sessions punch at once from one socket), else the general ``on_probe`` handler,
* STUN (``stun.looks_like_stun``: two zero bits and the magic cookie) -> the STUN handler,
* anything else is QUIC, handed to the ``UdpPath`` opened toward its source address, or to
  the unrouted handler when there is none.

STUN never collides with QUIC: every QUIC packet sets the fixed bit 0x40 (RFC 9000
section 17) and a STUN message starts with two zero bits. A QUIC short header whose first
five bytes happen to read ``RREG`` or ``RPRB`` (a protected first byte and the start of a
random connection id: about one packet in 2**29) is misrouted and dropped, and QUIC sends
its content again, so the magics are checked first without harm.

A ``DatagramPath`` is what a QUIC session sends on: ``UdpPath`` (the shared socket toward
one peer address), ``RelayPath`` (relay records over the broker's TLS connection) and
``SwitchingPath`` (the current one of several, for the relay-to-direct takeover). Each
path delivers what it receives to one receiver callable, set at creation or later with
``set_receiver``; until then it keeps a few datagrams (a peer's first QUIC packet may
arrive before the local session exists) and drops the rest.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from roost.errors import RoostError, TransportError, listening
from roost.reasons import Reason
from roost.rendezvous.control import RelayRecord, encode_relay
from roost.rendezvous.messages import ACK_MAGIC, REGISTRATION_MAGIC, WAKE_MAGIC
from roost.rendezvous.punch import (
    Address,
    Puncher,
    PunchEvent,
    PunchState,
    is_probe,
    probe_session,
)
from roost.rendezvous.stun import looks_like_stun
from roost.timer import CoreTimer

__all__ = [
    "DEFAULT_BACKLOG",
    "DatagramHandler",
    "DatagramPath",
    "PunchDriver",
    "RelayPath",
    "SourcedHandler",
    "SwitchingPath",
    "UdpMux",
    "UdpPath",
    "socket_address",
]

_log = logging.getLogger(__name__)

DatagramHandler = Callable[[bytes], None]
SourcedHandler = Callable[[bytes, Address], None]
# Datagrams a path keeps while it has no receiver: a QUIC Initial flight is at most a few.
DEFAULT_BACKLOG = 32
_REGISTRATION_MAGICS = (REGISTRATION_MAGIC, ACK_MAGIC, WAKE_MAGIC)


@functools.lru_cache(maxsize=4096)
def _canonical_host(host: str) -> str:
    # Every datagram in and out names its peer: parsing the text each time cost about a
    # tenth of a bulk transfer's CPU (docs/BENCHMARKS.md, "Remote session"). Bounded, and
    # a host that does not parse raises every time (lru_cache keeps no exceptions).
    return str(ipaddress.ip_address(host))


def socket_address(address: Sequence[object]) -> Address:
    """``(host, port)`` in canonical text form from a socket address (IPv6 ones carry flow
    info and scope id as items three and four, which do not name the peer)."""
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int):
        raise TransportError("not a socket address", reason=Reason.BAD_CANDIDATE)
    try:
        return (_canonical_host(host), port)
    except ValueError as exc:
        raise TransportError("not an IP socket address", reason=Reason.BAD_CANDIDATE) from exc


class DatagramPath(Protocol):
    """Where a QUIC session's datagrams go and come from."""

    def send(self, datagram: bytes) -> None: ...

    def close(self) -> None: ...

    def set_receiver(self, on_datagram: DatagramHandler) -> None: ...


class _Receiving:
    """A receiver callable with a bounded backlog until it is set, and counters."""

    def __init__(self, on_datagram: DatagramHandler | None, backlog: int) -> None:
        self._receiver = on_datagram
        self._backlog: deque[bytes] = deque()
        self._backlog_limit = backlog
        self.closed = False
        self.datagrams_sent = 0
        self.datagrams_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.dropped = 0

    @property
    def has_receiver(self) -> bool:
        """True once something (a QUIC session) takes this path's datagrams."""
        return self._receiver is not None

    def set_receiver(self, on_datagram: DatagramHandler) -> None:
        """Deliver to ``on_datagram`` from now on, starting with what was kept."""
        self._receiver = on_datagram
        while self._backlog and not self.closed:
            on_datagram(self._backlog.popleft())

    def _deliver(self, datagram: bytes) -> None:
        if self.closed:
            self.dropped += 1
            return
        self.datagrams_received += 1
        self.bytes_received += len(datagram)
        if self._receiver is not None:
            self._receiver(datagram)
        elif len(self._backlog) < self._backlog_limit:
            self._backlog.append(datagram)
        else:
            self.dropped += 1

    def _count_sent(self, datagram: bytes) -> None:
        if self.closed:
            raise TransportError("datagram path is closed", reason=Reason.PATH_CLOSED)
        self.datagrams_sent += 1
        self.bytes_sent += len(datagram)


class UdpPath(_Receiving):
    """The shared socket toward one peer address (a direct path found by punching)."""

    def __init__(
        self,
        mux: UdpMux,
        peer: Address,
        on_datagram: DatagramHandler | None = None,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        super().__init__(on_datagram, backlog)
        self._mux = mux
        self.peer = peer

    def send(self, datagram: bytes) -> None:
        """Send one datagram to the peer; TransportError("path-closed") once closed."""
        self._count_sent(datagram)
        self._mux.sendto(datagram, self.peer)

    def close(self) -> None:
        """Stop routing the peer's datagrams here; the shared socket stays open."""
        if not self.closed:
            self.closed = True
            self._mux._forget(self)


class RelayPath(_Receiving):
    """Datagrams as relay records of ``session`` through the broker (section 5, step 8).

    ``send_record`` writes one record body to the TLS control connection (the caller frames
    it); the connection's reader calls ``feed(payload)`` for each incoming relay record of
    this session.
    """

    def __init__(
        self,
        session: int,
        send_record: Callable[[bytes], None],
        on_datagram: DatagramHandler | None = None,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        super().__init__(on_datagram, backlog)
        self.session = session
        self._send_record = send_record

    def send(self, datagram: bytes) -> None:
        """Wrap the datagram in a relay record; LocalProtocolError above 1500 bytes."""
        self._count_sent(datagram)
        self._send_record(encode_relay(RelayRecord(self.session, datagram)))

    def feed(self, payload: bytes) -> None:
        """One relay record's payload for this session arrived from the broker."""
        self._deliver(payload)

    def close(self) -> None:
        self.closed = True


class SwitchingPath:
    """Sends on the current path and receives from every path it has held, so a session
    begun on the relay keeps going when a direct path takes over (section 5, step 9):
    datagrams still in flight on the old path are taken as they arrive, and QUIC puts the
    stream bytes back in order."""

    def __init__(self, initial: DatagramPath, on_datagram: DatagramHandler | None = None) -> None:
        self.current = initial
        self.paths: list[DatagramPath] = [initial]
        self.switches = 0
        self._backlog: deque[bytes] = deque()
        self._receiver = on_datagram
        initial.set_receiver(self._deliver)

    def _deliver(self, datagram: bytes) -> None:
        if self._receiver is not None:
            self._receiver(datagram)
        elif len(self._backlog) < DEFAULT_BACKLOG:
            self._backlog.append(datagram)

    def set_receiver(self, on_datagram: DatagramHandler) -> None:
        self._receiver = on_datagram
        while self._backlog:
            on_datagram(self._backlog.popleft())

    def send(self, datagram: bytes) -> None:
        self.current.send(datagram)

    def add(self, path: DatagramPath) -> None:
        """Receive from ``path`` too, without sending on it yet: a side whose peer found
        the direct path first gets the peer's packets there before it switches itself."""
        if not any(held is path for held in self.paths):
            self.paths.append(path)
            path.set_receiver(self._deliver)

    def switch_to(self, path: DatagramPath) -> None:
        """Send on ``path`` from now on; keep receiving from the earlier ones."""
        if path is self.current:
            return
        self.add(path)
        self.current = path
        self.switches += 1

    def close(self) -> None:
        for path in self.paths:
            path.close()


class UdpMux(asyncio.DatagramProtocol):
    """The one protocol on the shared UDP socket; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        on_registration: SourcedHandler | None = None,
        on_probe: SourcedHandler | None = None,
        on_stun: SourcedHandler | None = None,
        on_unrouted: SourcedHandler | None = None,
    ) -> None:
        self.on_registration = on_registration
        self.on_probe = on_probe
        self.on_stun = on_stun
        self.on_unrouted = on_unrouted
        self._transport: asyncio.DatagramTransport | None = None
        self._paths: dict[Address, UdpPath] = {}
        self._probe_handlers: dict[int, SourcedHandler] = {}
        self.received: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self._closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls, local: Address = ("0.0.0.0", 0), **handlers: SourcedHandler | None
    ) -> UdpMux:
        """Bind the shared socket at ``local`` and return its mux."""
        loop = asyncio.get_running_loop()
        with listening("broker agent (udp)", local[0], local[1]):
            _, protocol = await loop.create_datagram_endpoint(
                lambda: cls(**handlers), local_addr=local
            )
        return protocol

    # ------------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport is not registered as a DatagramTransport
        # subclass, so no isinstance check: create_datagram_endpoint only ever passes one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        for path in list(self._paths.values()):
            path.close()
        if not self._closed.done():
            self._closed.set_result(None)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: a probe to a dead candidate, counted only.
        self._count(self.errors, type(exc).__name__)

    @staticmethod
    def _count(table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def _kind(self, data: bytes) -> str:
        if data[:4] in _REGISTRATION_MAGICS:
            return "registration"
        if is_probe(data):
            return "probe"
        if looks_like_stun(data):
            return "stun"
        return "quic"

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            source = socket_address(addr)
        except TransportError:
            return
        kind = self._kind(data)
        handler: SourcedHandler | None = {
            "registration": self.on_registration,
            "probe": self.on_probe,
            "stun": self.on_stun,
        }.get(kind)
        if kind == "probe":
            session = probe_session(data)
            handler = self._probe_handlers.get(session, handler) if session is not None else handler
        elif kind == "quic":
            path = self._paths.get(source)
            if path is not None:
                self._count(self.received, kind)
                path._deliver(data)
                return
            kind, handler = "unrouted", self.on_unrouted
        self._count(self.received, kind)
        if handler is None:
            return
        try:
            handler(data, source)
        except RoostError as exc:
            # A peer's bad datagram must not stop the socket; the handler's own counters
            # and logs say more.
            self._count(self.errors, exc.reason)

    # ------------------------------------------------------------------ our side

    @property
    def local_address(self) -> Address:
        """The bound ``(host, port)``."""
        if self._transport is None:
            raise TransportError("socket is not open", reason=Reason.CLOSED)
        return socket_address(self._transport.get_extra_info("sockname"))

    def sendto(self, data: bytes, address: Sequence[object]) -> None:
        """Send one datagram from the shared socket."""
        if self._transport is None or self._transport.is_closing():
            raise TransportError("socket is closed", reason=Reason.CLOSED)
        self._transport.sendto(data, socket_address(address))

    def add_probe_handler(self, session: int, handler: SourcedHandler) -> None:
        """Hand the probes of ``session`` to ``handler`` (one punch of several)."""
        self._probe_handlers[session] = handler

    def remove_probe_handler(self, session: int, handler: SourcedHandler) -> None:
        """Stop handing ``session``'s probes to ``handler`` (if it is still the one)."""
        if self._probe_handlers.get(session) == handler:
            del self._probe_handlers[session]

    def path_to(
        self, peer: Sequence[object], on_datagram: DatagramHandler | None = None
    ) -> UdpPath:
        """The path toward ``peer``: QUIC datagrams from it are routed to the path. While
        one is open it is returned again (with ``on_datagram``, when given, as its new
        receiver), so a session is never cut off by a second caller."""
        address = socket_address(peer)
        path = self._paths.get(address)
        if path is None:
            path = UdpPath(self, address, on_datagram)
            self._paths[address] = path
        elif on_datagram is not None:
            path.set_receiver(on_datagram)
        return path

    def _forget(self, path: UdpPath) -> None:
        if self._paths.get(path.peer) is path:
            del self._paths[path.peer]

    def close(self) -> None:
        """Close the socket (and with it every path)."""
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        await self._closed


class PunchDriver:
    """Runs a ``Puncher`` on a mux: probes go out of the shared socket, ``RPRB`` datagrams
    of its session come in through the mux (``UdpMux.add_probe_handler``, so several
    drivers run on one mux at once); one ``loop.call_at`` for the core's next deadline.

    The driver keeps answering the peer's probes after the result is known (the peer may
    still be probing) until ``close``. ``on_event`` sees each ``PunchEvent`` (a learned
    peer-reflexive address, the direct path, the failure) as it happens.
    """

    def __init__(
        self,
        mux: UdpMux,
        puncher: Puncher,
        on_event: Callable[[PunchEvent], None] | None = None,
    ) -> None:
        self._mux = mux
        self._on_event = on_event
        self.puncher = puncher
        self._loop = asyncio.get_running_loop()
        self._timer = CoreTimer(self._loop, self._on_timer)
        self._settled = self._loop.create_future()
        mux.add_probe_handler(puncher.session, self._on_probe)
        self.transmit()

    def _on_probe(self, data: bytes, source: Address) -> None:
        self.puncher.receive(data, source, self._loop.time())
        self.transmit()

    def _on_timer(self) -> None:
        self.puncher.handle_timer(self._loop.time())
        self.transmit()

    def transmit(self) -> None:
        """Send what the core wants sent and re-arm the one timer."""
        now = self._loop.time()
        for datagram, address in self.puncher.datagrams_to_send(now):
            try:
                self._mux.sendto(datagram, address)
            except (TransportError, OSError) as exc:
                _log.debug("probe to %s not sent: %s", address, exc)
        while (event := self.puncher.next_event()) is not None:
            if self._on_event is not None:
                self._on_event(event)
        settled = self.puncher.state in (PunchState.DIRECT, PunchState.FAILED)
        if settled and not self._settled.done():
            self._settled.set_result(self.puncher.result)
        self._timer.arm(self.puncher.get_timer())

    async def result(self) -> Address | None:
        """The direct path's peer address, or None when punching failed at the deadline."""
        return await asyncio.shield(self._settled)

    def close(self) -> None:
        """Stop probing and answering."""
        self._timer.cancel()
        self._mux.remove_probe_handler(self.puncher.session, self._on_probe)
        if not self._settled.done():
            self._settled.set_result(None)
