"""A userspace UDP forwarder that adds a fixed one-way delay (issue 9: delay emulation).

The lab's kernel has no netem qdisc, so a round trip is stretched here instead: datagrams
arriving on `listen` are sent on to `upstream` after `delay_s`, and the upstream's answers
come back to the client after `delay_s` again, so a round trip through the forwarder costs
at least ``2 * delay_s`` more than without it. Each client gets its own upstream socket, so
the upstream tells clients apart by source port (the forwarder is itself a NAT-like hop:
the upstream sees the forwarder's address, not the client's).

Everything is bounded: at most `max_clients` clients (a new one past that is dropped and
counted), at most `max_pending` datagrams held in flight, clients idle for `idle_s` are
forgotten. Run it in a namespace with ``NatLab.python(ns, "tests.helpers.udpdelay", ...)``;
it prints ``ready HOST:PORT`` once bound and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

__all__ = ["DelayForwarder", "ForwarderCounters", "main"]

_Address = tuple[str, int]


@dataclass(slots=True)
class ForwarderCounters:
    """What the forwarder did, for a test or a benchmark to read."""

    forwarded_up: int = 0
    forwarded_down: int = 0
    dropped_pending: int = 0
    dropped_clients: int = 0


class _Upstream(asyncio.DatagramProtocol):
    """The socket one client's traffic leaves from; answers go back to that client."""

    def __init__(self, owner: DelayForwarder, client: _Address) -> None:
        self.owner = owner
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.last_used = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: _Address) -> None:
        self.owner._answer(self, data)


class DelayForwarder(asyncio.DatagramProtocol):
    """Forward UDP from `listen` to `upstream`, delaying each direction by `delay_s`."""

    def __init__(
        self,
        listen: _Address,
        upstream: _Address,
        delay_s: float,
        *,
        max_clients: int = 64,
        max_pending: int = 4096,
        idle_s: float = 60.0,
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.delay_s = delay_s
        self.max_clients = max_clients
        self.max_pending = max_pending
        self.idle_s = idle_s
        self.counters = ForwarderCounters()
        self.bound: _Address | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._clients: dict[_Address, _Upstream] = {}
        self._pending = 0
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> _Address:
        """Bind `listen`; returns the bound address (useful with port 0)."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=self.listen)
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        self.bound = (host, port)
        self._sweeper = loop.call_later(self.idle_s, self._sweep)
        return self.bound

    def close(self) -> None:
        """Close the listening socket and every client's upstream socket."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for client in self._clients.values():
            if client.transport is not None:
                client.transport.close()
        self._clients.clear()
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: _Address) -> None:
        client = self._clients.get(addr)
        if client is None:
            if len(self._clients) >= self.max_clients:
                self.counters.dropped_clients += 1
                return
            client = _Upstream(self, addr)
            self._clients[addr] = client
            asyncio.get_running_loop().create_task(self._open(client))
        self._hold(lambda: self._send_up(client, data))

    async def _open(self, client: _Upstream) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: client, remote_addr=self.upstream)

    def _hold(self, send: Callable[[], None]) -> None:
        if self._pending >= self.max_pending:
            self.counters.dropped_pending += 1
            return
        self._pending += 1
        asyncio.get_running_loop().call_later(self.delay_s, self._release, send)

    def _release(self, send: Callable[[], None]) -> None:
        self._pending -= 1
        send()

    def _send_up(self, client: _Upstream, data: bytes) -> None:
        # The upstream socket is normally open long before the delay runs out; if it is not
        # (a very short delay), the datagram is lost, as on any path.
        if client.transport is None:
            self.counters.dropped_pending += 1
            return
        client.last_used = asyncio.get_running_loop().time()
        client.transport.sendto(data)
        self.counters.forwarded_up += 1

    def _answer(self, client: _Upstream, data: bytes) -> None:
        def send() -> None:
            if self._transport is not None:
                self._transport.sendto(data, client.client)
                self.counters.forwarded_down += 1

        client.last_used = asyncio.get_running_loop().time()
        self._hold(send)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for address, client in list(self._clients.items()):
            if now - client.last_used > self.idle_s and client.transport is not None:
                client.transport.close()
                del self._clients[address]
        self._sweeper = loop.call_later(self.idle_s, self._sweep)


def _address(text: str) -> _Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _serve(listen: _Address, upstream: _Address, delay_s: float) -> None:
    forwarder = DelayForwarder(listen, upstream, delay_s)
    host, port = await forwarder.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        forwarder.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.helpers.udpdelay --listen H:P --upstream H:P --delay-ms N``."""
    parser = argparse.ArgumentParser(description="UDP forwarder with a fixed one-way delay")
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--upstream", type=_address, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.listen, args.upstream, args.delay_ms / 1000.0))


if __name__ == "__main__":
    main()
