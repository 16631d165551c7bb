"""The asyncio adapter of the announce core: UDP sockets, one timer, event delivery.

Thin on purpose (STYLE.md): it reads the clock, moves datagrams between sockets and
`AnnounceCore`, re-arms a single `call_at` for the core's next deadline, and hands events
to its owner. Multicast follows section 3 (group 239.255.77.77, port 17320, TTL 1, joined
per interface); a unicast peer list serves networks that filter multicast and lets several
hubs share one loopback address in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from roost.clock import wall_ms_now
from roost.errors import listening
from roost.hcsp.core import AnnounceCore
from roost.hcsp.events import AnnouncementRefused, HcspEvent
from roost.reasons import REFUSAL_LINE
from roost.timer import CoreTimer

__all__ = ["DEFAULT_GROUP", "DEFAULT_PORT", "AnnounceTransport", "UdpConfig"]

log = logging.getLogger("roost.hcsp")

DEFAULT_GROUP = "239.255.77.77"
DEFAULT_PORT = 17320


@dataclass(frozen=True, slots=True)
class UdpConfig:
    """Where announcements are received and sent."""

    bind_host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    multicast: bool = True
    group: str = DEFAULT_GROUP
    # Local interface addresses to join the group on and send from; empty means the
    # kernel's default interface.
    interfaces: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    receive_buffer: int = 1 << 20


def _log_refusal(event: AnnouncementRefused) -> None:
    more = f" ({event.suppressed} more since the last line)" if event.suppressed else ""
    log.info(
        "announcement refused from %s:%s: %s%s",
        event.source_host,
        event.source_port,
        event.reason,
        more,
        extra={
            **REFUSAL_LINE,
            "event": "refused",
            "reason": str(event.reason),
            "source": event.source_host,
        },
    )


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: AnnounceTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.owner.datagram_received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self.owner.send_errors += 1


class AnnounceTransport:
    """Runs one `AnnounceCore` on real sockets; `on_event` receives the core's events.

    ``AnnouncementRefused`` is the one exception: it asks for a log line (PROTOCOL.md
    preamble), which this adapter writes itself, so the daemons never see it.
    """

    def __init__(
        self,
        core: AnnounceCore,
        config: UdpConfig,
        on_event: Callable[[HcspEvent], None],
    ) -> None:
        self.core = core
        self.config = config
        self.on_event = on_event
        self.send_errors = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._timer: CoreTimer | None = None  # built in start(), on the running loop
        self._loop: asyncio.AbstractEventLoop | None = None
        # Unicast peers learned at run time (DNS-SD), besides the configured ones.
        self.discovered_peers: tuple[tuple[str, int], ...] = ()

    @property
    def local_port(self) -> int:
        assert self._sock is not None
        port: int = self._sock.getsockname()[1]
        return port

    def _open_socket(self) -> socket.socket:
        cfg = self.config
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT") and cfg.multicast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.receive_buffer)
        try:
            with listening("announcements (udp)", cfg.bind_host, cfg.port):
                sock.bind((cfg.bind_host, cfg.port))
        except BaseException:
            sock.close()
            raise
        if cfg.multicast:
            # Section 3: TTL 1 keeps announcements on the link; loop lets hubs and devices
            # on one host hear each other (the core ignores its own echoes).
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            for interface in cfg.interfaces or ("0.0.0.0",):
                membership = struct.pack(
                    "4s4s", socket.inet_aton(cfg.group), socket.inet_aton(interface)
                )
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A floor of one millisecond keeps a stale deadline from spinning the loop.
        self._timer = CoreTimer(self._loop, self._on_timer, floor=0.001)
        self._sock = self._open_socket()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Protocol(self), sock=self._sock
        )
        self._transport = transport
        self._service()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def datagram_received(self, data: bytes, source: tuple[str, int]) -> None:
        assert self._loop is not None
        self.core.receive_datagram(data, source, self._loop.time(), wall_ms_now())
        self._service()

    def _destinations(self) -> Sequence[tuple[str, int]]:
        cfg = self.config
        group = [(cfg.group, cfg.port)] if cfg.multicast else []
        return [*group, *cfg.peers, *self.discovered_peers]

    def _send(self, datagram: bytes) -> None:
        assert self._sock is not None and self._transport is not None
        cfg = self.config
        for destination in self._destinations():
            interfaces = cfg.interfaces if destination[0] == cfg.group else ("",)
            for interface in interfaces or ("",):
                if interface:
                    self._sock.setsockopt(
                        socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
                    )
                try:
                    self._sock.sendto(datagram, destination)
                except OSError:
                    # An unreachable peer or a down interface must not stop the others.
                    self.send_errors += 1

    def _on_timer(self) -> None:
        assert self._loop is not None
        self.core.handle_timer(self._loop.time(), wall_ms_now())
        self._service()

    def _service(self) -> None:
        """Flush what the core wants sent, deliver its events, re-arm its one timer."""
        if self._loop is None or self._transport is None:
            return
        now = self._loop.time()
        for datagram in self.core.datagrams_to_send(now, wall_ms_now()):
            self._send(datagram)
        while (event := self.core.next_event()) is not None:
            if isinstance(event, AnnouncementRefused):
                _log_refusal(event)
            else:
                self.on_event(event)
        if self._timer is not None:
            self._timer.arm(self.core.get_timer())

    def set_discovered_peers(self, peers: Sequence[tuple[str, int]]) -> None:
        """Also send announcements to ``peers`` (hubs DNS-SD found); every datagram from
        them is still verified like any other (section 3)."""
        configured = set(self.config.peers)
        self.discovered_peers = tuple(p for p in dict.fromkeys(peers) if p not in configured)

    def refresh(self) -> None:
        """Call after changing the core from outside (load, trust) to flush and re-arm."""
        self._service()
