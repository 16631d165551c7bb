"""The shared UDP socket on loopback: the mux's demultiplexing, QUIC through it, punching
between two real sockets, and the peer-reflexive case through a userspace forwarder that
rewrites the source port (a NAT stand-in on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives import serialization

from roost.errors import TransportError
from roost.pki.certs import Role
from roost.rendezvous.messages import Candidate
from roost.rendezvous.paths import PunchDriver, UdpMux, socket_address
from roost.rendezvous.punch import (
    Address,
    DirectPathFound,
    PeerLearned,
    Probe,
    ProbeKind,
    Puncher,
    PunchEvent,
    PunchState,
    encode_probe,
)
from roost.rendezvous.quic import QuicSession, quic_connect, quic_serve, verify_target
from roost.rendezvous.stun import build_binding_request
from tests.helpers.pki import EPOCH, Node, TestCA
from tests.helpers.waits import async_wait_until

pytestmark = pytest.mark.timeout(60)
TIMEOUT = 10.0
LOOPBACK = ("127.0.0.1", 0)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def hub(ca: TestCA) -> Node:
    return ca.issue(Role.HUB)


def dead_address() -> Address:
    """A loopback port nobody listens on (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(LOOPBACK)
        return socket_address(probe.getsockname())


async def quic_over(
    hub: Node,
    ca: TestCA,
    hub_mux: UdpMux,
    hub_peer: Address,
    issuer_mux: UdpMux,
    issuer_peer: Address,
) -> tuple[QuicSession, QuicSession]:
    serving = asyncio.create_task(
        quic_serve(
            hub_mux.path_to(hub_peer),
            certificate_der=hub.cert.public_bytes(serialization.Encoding.DER),
            private_key=hub.key,
            timeout_s=TIMEOUT,
        )
    )
    try:
        client = await quic_connect(
            issuer_mux.path_to(issuer_peer),
            verify_server=verify_target([ca.cert], EPOCH, hub.identifier),
            timeout_s=TIMEOUT,
        )
    except BaseException:
        serving.cancel()
        raise
    return await asyncio.wait_for(serving, TIMEOUT), client


async def echo_rtt_ms(server: QuicSession, client: QuicSession, rounds: int) -> float:
    reader, writer = client.stream()
    writer.write(b"x")
    server_reader, server_writer = await asyncio.wait_for(server.accept_stream(), TIMEOUT)
    assert await asyncio.wait_for(server_reader.read(1), TIMEOUT) == b"x"
    server_writer.write(b"x")
    assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b"x"
    started = time.perf_counter()
    for n in range(rounds):
        message = b"%04d" % n
        writer.write(message)
        got = await asyncio.wait_for(server_reader.read(4), TIMEOUT)
        assert got == message
        server_writer.write(got)
        assert await asyncio.wait_for(reader.read(4), TIMEOUT) == message
    writer.close()
    return (time.perf_counter() - started) * 1000 / rounds


async def test_the_mux_sorts_datagrams_by_their_first_bytes() -> None:
    seen: dict[str, list[tuple[bytes, Address]]] = {}

    def keep(kind: str):  # type: ignore[no-untyped-def]
        return lambda data, source: seen.setdefault(kind, []).append((data, source))

    mux = await UdpMux.open(
        LOOPBACK,
        on_registration=keep("registration"),
        on_probe=keep("probe"),
        on_stun=keep("stun"),
        on_unrouted=keep("unrouted"),
    )
    routed: list[bytes] = []
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.bind(LOOPBACK)
        source = socket_address(sender.getsockname())
        routed_sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        routed_sender.bind(LOOPBACK)
        path = mux.path_to(routed_sender.getsockname(), routed.append)
        stun = build_binding_request(b"t" * 12)
        probe = encode_probe(Probe(ProbeKind.PROBE, 1, b"n" * 8))
        for datagram in (b"RREG\x01rest", b"RACKrest", b"RWAK\x01rest", probe, stun, b"\xc0quic"):
            sender.sendto(datagram, mux.local_address)
        routed_sender.sendto(b"\x40short header", mux.local_address)
        await async_wait_until(lambda: len(routed) == 1 and len(seen.get("unrouted", [])) == 1, 5.0)
        assert [d[:4] for d, _ in seen["registration"]] == [b"RREG", b"RACK", b"RWAK"]
        assert seen["probe"] == [(probe, source)] and seen["stun"] == [(stun, source)]
        assert seen["unrouted"] == [(b"\xc0quic", source)] and routed == [b"\x40short header"]
        assert mux.received == {"registration": 3, "probe": 1, "stun": 1, "unrouted": 1, "quic": 1}
        path.close()
        with pytest.raises(TransportError):
            path.send(b"after close")
        routed_sender.close()
    finally:
        sender.close()
        mux.close()
    await asyncio.wait_for(mux.wait_closed(), TIMEOUT)


async def test_quic_session_over_the_shared_socket(ca: TestCA, hub: Node) -> None:
    hub_mux = await UdpMux.open(LOOPBACK)
    issuer_mux = await UdpMux.open(LOOPBACK)
    try:
        started = time.perf_counter()
        server, client = await quic_over(
            hub, ca, hub_mux, issuer_mux.local_address, issuer_mux, hub_mux.local_address
        )
        handshake_ms = (time.perf_counter() - started) * 1000
        try:
            rtt = await echo_rtt_ms(server, client, 50)
            print(
                f"UDP loopback handshake {handshake_ms:.1f} ms, echo rtt {rtt:.2f} ms, "
                f"QUIC rtt {client.rtt_ms:.2f} ms"
            )
            assert client.rtt_ms is not None and server.bytes_received > 0
        finally:
            client.close()
            server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    finally:
        hub_mux.close()
        issuer_mux.close()


def _start(
    mux: UdpMux, candidates: list[Address], seed: float, events: list[PunchEvent]
) -> PunchDriver:
    now = asyncio.get_running_loop().time()
    puncher = Puncher(4242, candidates, now + seed, now + 3.0)
    return PunchDriver(mux, puncher, on_event=events.append)


async def test_punching_between_two_sockets_on_loopback() -> None:
    a = await UdpMux.open(LOOPBACK)
    b = await UdpMux.open(LOOPBACK)
    events_a: list[PunchEvent] = []
    events_b: list[PunchEvent] = []
    # Each side also has a candidate nobody answers (a stale local address).
    driver_a = _start(a, [dead_address(), b.local_address], 0.0, events_a)
    driver_b = _start(b, [dead_address(), a.local_address], 0.2, events_b)
    try:
        found_a, found_b = await asyncio.wait_for(
            asyncio.gather(driver_a.result(), driver_b.result()), TIMEOUT
        )
        assert found_a == b.local_address and found_b == a.local_address
        assert DirectPathFound(b.local_address) in events_a
        assert driver_a.puncher.state is driver_b.puncher.state is PunchState.DIRECT
    finally:
        driver_a.close()
        driver_b.close()
        a.close()
        b.close()


async def test_one_socket_punches_for_several_sessions_at_once() -> None:
    # A hub's one socket, two owners punching toward it at the same time: every probe
    # goes to the driver of its own session, so both find their direct path.
    hub = await UdpMux.open(LOOPBACK)
    owners = [await UdpMux.open(LOOPBACK), await UdpMux.open(LOOPBACK)]
    now = asyncio.get_running_loop().time()
    drivers: list[PunchDriver] = []
    try:
        for session, owner in zip((7, 8), owners, strict=True):
            drivers.append(
                PunchDriver(hub, Puncher(session, [owner.local_address], now, now + 3.0))
            )
            drivers.append(
                PunchDriver(owner, Puncher(session, [hub.local_address], now + 0.1, now + 3.0))
            )
        found = await asyncio.wait_for(
            asyncio.gather(*(driver.result() for driver in drivers)), TIMEOUT
        )
        assert found == [
            owners[0].local_address,
            hub.local_address,
            owners[1].local_address,
            hub.local_address,
        ]
        assert all(driver.puncher.ignored == {} for driver in drivers)
        # A driver that closes leaves the other session's probes with their own driver.
        drivers[0].close()
        assert hub._probe_handlers.keys() == {8}
    finally:
        for driver in drivers:
            driver.close()
        hub.close()
        for owner in owners:
            owner.close()


async def test_punching_fails_at_the_deadline_without_an_answer() -> None:
    a = await UdpMux.open(LOOPBACK)
    try:
        now = asyncio.get_running_loop().time()
        driver = PunchDriver(a, Puncher(1, [dead_address()], now, now + 0.6))
        assert await asyncio.wait_for(driver.result(), TIMEOUT) is None
        assert driver.puncher.state is PunchState.FAILED and driver.puncher.probes_sent == 3
        driver.close()
    finally:
        a.close()


@dataclass
class _Leg(asyncio.DatagramProtocol):
    forward: object = None
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.forward(data, addr)  # type: ignore[operator]


@dataclass
class PortRewriter:
    """Datagrams to ``front`` go on to ``target`` from ``back``, a different port, and the
    target's replies to ``back`` come out of ``front`` to the last sender: the target sees
    a source address that is not its peer's own (peer-reflexive), as behind a NAT."""

    target: Address
    front: _Leg = field(default_factory=_Leg)
    back: _Leg = field(default_factory=_Leg)
    inner: tuple[str, int] | None = None
    forwarded: int = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.front.forward = self._outbound
        self.back.forward = self._inbound
        await loop.create_datagram_endpoint(lambda: self.front, local_addr=LOOPBACK)
        await loop.create_datagram_endpoint(lambda: self.back, local_addr=LOOPBACK)

    def address(self, leg: _Leg) -> Address:
        assert leg.transport is not None
        return socket_address(leg.transport.get_extra_info("sockname"))

    def _outbound(self, data: bytes, addr: tuple[str, int]) -> None:
        self.inner = addr
        self.forwarded += 1
        assert self.back.transport is not None
        self.back.transport.sendto(data, self.target)

    def _inbound(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[:2] == self.target and self.inner is not None and self.front.transport:
            self.forwarded += 1
            self.front.transport.sendto(data, self.inner)

    def close(self) -> None:
        for leg in (self.front, self.back):
            if leg.transport is not None:
                leg.transport.close()


async def test_peer_reflexive_punching_through_a_port_rewriter(ca: TestCA, hub: Node) -> None:
    issuer = await UdpMux.open(LOOPBACK)
    target = await UdpMux.open(LOOPBACK)
    nat = PortRewriter(target.local_address)
    await nat.open()
    events_issuer: list[PunchEvent] = []
    events_target: list[PunchEvent] = []
    # The issuer knows the target by the forwarder's front; the target knows only an
    # address of the issuer it cannot reach, and hears the issuer from the back port.
    issuer_driver = _start(issuer, [nat.address(nat.front)], 0.0, events_issuer)
    target_driver = _start(target, [dead_address()], 0.0, events_target)
    try:
        found_issuer, found_target = await asyncio.wait_for(
            asyncio.gather(issuer_driver.result(), target_driver.result()), TIMEOUT
        )
        back = nat.address(nat.back)
        assert found_issuer == nat.address(nat.front)
        assert found_target == back and PeerLearned(back) in events_target
        assert target_driver.puncher.learned == [back]
        # The session then runs on the punched addresses, through the forwarder.
        server, client = await quic_over(hub, ca, target, back, issuer, found_issuer)
        try:
            assert await echo_rtt_ms(server, client, 5) > 0
            assert nat.forwarded > 10
        finally:
            client.close()
            server.close()
    finally:
        issuer_driver.close()
        target_driver.close()
        nat.close()
        issuer.close()
        target.close()


def test_candidates_and_socket_addresses_agree() -> None:
    assert socket_address(("::1", 5, 0, 0)) == Candidate.parse("[::1]:5").as_tuple()
    with pytest.raises(TransportError):
        socket_address(("not an ip", 5))


async def test_a_second_path_to_the_same_peer_is_the_same_path() -> None:
    mux = await UdpMux.open(LOOPBACK)
    try:
        first = mux.path_to(("127.0.0.1", 9))
        assert mux.path_to(("127.0.0.1", 9)) is first
        first.close()
        assert mux.path_to(("127.0.0.1", 9)) is not first
    finally:
        mux.close()
