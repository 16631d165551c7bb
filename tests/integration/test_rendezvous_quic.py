"""QUIC sessions over datagram paths without sockets: two in-memory paths back to back, and
the broker's relay (records through an in-memory pair standing in for its TLS forwarding)
followed by a switch to direct UDP on loopback in the middle of a stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives import serialization

from roost.errors import RemoteProtocolError, TransportError, VerificationError
from roost.guard.aio import GuardClient, GuardServer
from roost.guard.calls import tls_server_end_point
from roost.guard.card import generate_card
from roost.guard.challenge import decode_challenge
from roost.guard.remote import CallResult
from roost.guard.suites import KdfParams
from roost.guard.userstore import MemoryUserStore, PasswordGrant, make_user
from roost.pki.certs import Role
from roost.rendezvous.control import MAX_RELAY_PAYLOAD, decode_relay
from roost.rendezvous.paths import DatagramHandler, RelayPath, UdpMux
from roost.rendezvous.quic import (
    ALPN,
    SERVER_FIRST_ALPN,
    QuicSession,
    QuicStream,
    quic_connect,
    quic_serve,
    verify_target,
)
from tests.helpers.pki import EPOCH, Node, TestCA
from tests.helpers.waits import async_wait_until

pytestmark = pytest.mark.timeout(60)
FAST = KdfParams(log2_n=4, r=1, p=1)
PASSWORD = "quic password"
TIMEOUT = 10.0


@dataclass
class MemoryPath:
    """One end of an in-memory datagram link; delivery goes through the event loop."""

    peer: MemoryPath | None = None
    receiver: DatagramHandler | None = None
    drop: Callable[[bytes], bool] = lambda data: False
    sent: int = 0
    closed: bool = False
    backlog: list[bytes] = field(default_factory=list)

    def send(self, datagram: bytes) -> None:
        self.sent += 1
        if self.closed or self.drop(datagram):
            return
        assert self.peer is not None
        asyncio.get_running_loop().call_soon(self.peer._arrive, datagram)

    def _arrive(self, datagram: bytes) -> None:
        if self.closed:
            return
        if self.receiver is None:
            self.backlog.append(datagram)
        else:
            self.receiver(datagram)

    def set_receiver(self, on_datagram: DatagramHandler) -> None:
        self.receiver = on_datagram
        for datagram in self.backlog:
            on_datagram(datagram)
        self.backlog.clear()

    def close(self) -> None:
        self.closed = True


def memory_pair() -> tuple[MemoryPath, MemoryPath]:
    left, right = MemoryPath(), MemoryPath()
    left.peer, right.peer = right, left
    return left, right


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def hub(ca: TestCA) -> Node:
    return ca.issue(Role.HUB)


def der(node: Node) -> bytes:
    return node.cert.public_bytes(serialization.Encoding.DER)


async def session_pair(
    hub: Node, server_path: object, client_path: object, verify: Callable[..., None]
) -> tuple[QuicSession, QuicSession]:
    serving = asyncio.create_task(
        quic_serve(
            server_path,  # type: ignore[arg-type]
            certificate_der=der(hub),
            private_key=hub.key,
            timeout_s=TIMEOUT,
        )
    )
    try:
        client = await quic_connect(client_path, verify_server=verify, timeout_s=TIMEOUT)  # type: ignore[arg-type]
    except BaseException:
        serving.cancel()
        raise
    server = await asyncio.wait_for(serving, TIMEOUT)
    return server, client


async def echo_once(server: QuicSession, client: QuicSession, payload: bytes) -> bytes:
    reader, writer = client.stream()
    writer.write(payload)
    await writer.drain()
    server_reader, server_writer = await asyncio.wait_for(server.accept_stream(), TIMEOUT)
    received = b""
    while len(received) < len(payload):
        chunk = await asyncio.wait_for(server_reader.read(65536), TIMEOUT)
        assert chunk
        received += chunk
    server_writer.write(received)
    server_writer.close()
    echoed = b""
    while chunk := await asyncio.wait_for(reader.read(65536), TIMEOUT):
        echoed += chunk
    writer.close()
    return echoed


async def test_handshake_verification_and_echo_in_memory(ca: TestCA, hub: Node) -> None:
    server_path, client_path = memory_pair()
    started = time.perf_counter()
    server, client = await session_pair(
        hub, server_path, client_path, verify_target([ca.cert], EPOCH, hub.identifier)
    )
    handshake_ms = (time.perf_counter() - started) * 1000
    try:
        assert client.server_certificate_der == der(hub) == server.server_certificate_der
        payload = bytes(range(256)) * 1000
        assert await echo_once(server, client, payload) == payload
        rtt = await client.ping()
        assert rtt >= 0 and client.rtt_ms is not None
        assert client.bytes_sent > 0 and server.bytes_received == client.bytes_sent
        print(f"in-memory handshake {handshake_ms:.1f} ms, ping {rtt:.2f} ms")
    finally:
        client.close()
        server.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert server.closed and client.closed


async def test_the_server_certificate_check_refuses_a_wrong_identifier(
    ca: TestCA, hub: Node
) -> None:
    other = ca.issue(Role.HUB)
    server_path, client_path = memory_pair()
    serving = asyncio.create_task(
        quic_serve(server_path, certificate_der=der(hub), private_key=hub.key, timeout_s=TIMEOUT)
    )
    with pytest.raises(VerificationError) as info:
        await quic_connect(
            client_path,
            verify_server=verify_target([ca.cert], EPOCH, other.identifier),
            timeout_s=TIMEOUT,
        )
    assert info.value.reason == "wrong-id"
    # The server completed its side, then sees the client's close.
    server = await asyncio.wait_for(serving, TIMEOUT)
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert server.closed
    with pytest.raises(TransportError):
        await server.accept_stream()


async def test_the_server_certificate_check_refuses_an_untrusted_ca(hub: Node) -> None:
    stranger = TestCA()
    server_path, client_path = memory_pair()
    serving = asyncio.create_task(
        quic_serve(server_path, certificate_der=der(hub), private_key=hub.key, timeout_s=TIMEOUT)
    )
    with pytest.raises(VerificationError) as info:
        await quic_connect(
            client_path,
            verify_server=verify_target([stranger.cert], EPOCH, hub.identifier),
            timeout_s=TIMEOUT,
        )
    assert info.value.reason == "chain"
    server = await asyncio.wait_for(serving, TIMEOUT)
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def test_no_time_check_an_expired_time_floor_is_the_only_clock(ca: TestCA) -> None:
    # PROTOCOL.md section 1: validity is judged at the trust store's time floor, not the
    # wall clock. A certificate whose window ended before today verifies at an old floor.
    expired = ca.issue(Role.HUB, days=30)
    server_path, client_path = memory_pair()
    floor = EPOCH + dt.timedelta(days=1)
    server, client = await session_pair(
        expired, server_path, client_path, verify_target([ca.cert], floor, expired.identifier)
    )
    client.close()
    server.close()
    server_path, client_path = memory_pair()
    late = EPOCH + dt.timedelta(days=60)
    with pytest.raises(VerificationError):
        await session_pair(
            expired, server_path, client_path, verify_target([ca.cert], late, expired.identifier)
        )


async def test_a_lossy_path_still_delivers_in_order(ca: TestCA, hub: Node) -> None:
    server_path, client_path = memory_pair()
    counter = {"n": 0}

    def every_fifth(data: bytes) -> bool:
        counter["n"] += 1
        return counter["n"] % 5 == 0

    server_path.drop = client_path.drop = every_fifth
    server, client = await session_pair(
        hub, server_path, client_path, verify_target([ca.cert], EPOCH, hub.identifier)
    )
    try:
        payload = b"".join(b"%08d" % i for i in range(20_000))
        assert await echo_once(server, client, payload) == payload
    finally:
        client.close()
        server.close()


def _handler(method: str, args: tuple[bytes, ...]) -> CallResult:
    if method == "echo":
        return list(args)
    if method == "count":

        async def count() -> AsyncIterator[list[bytes]]:
            for n in range(int(args[0])):
                yield [b"item %d" % n]

        return count()
    raise RemoteProtocolError("no such method", reason="unknown-method")


async def test_the_guard_runs_unchanged_on_a_quic_stream(ca: TestCA, hub: Node) -> None:
    store = MemoryUserStore()
    card = generate_card(20)
    store.add(make_user("owner", PASSWORD, card, password_kdf=FAST, pair_kdf=FAST))
    guard = GuardServer(lambda: store, _handler)
    await guard.open()
    server_path, client_path = memory_pair()
    server, client = await session_pair(
        hub, server_path, client_path, verify_target([ca.cert], EPOCH, hub.identifier)
    )

    async def serve() -> None:
        reader, writer = await server.accept_stream()
        await guard.serve_stream(
            reader,
            writer,
            peer="quic",
            channel_binding=tls_server_end_point(server.server_certificate_der),
        )

    serving = asyncio.create_task(serve())
    try:
        reader, writer = client.stream()
        # The client sends first (the login hello), which makes the stream known to the
        # server, which then accepts it.
        guard_client = await _owner_login(
            client, reader, writer, lambda labels: [card.code_for(x) for x in labels]
        )
        echoed = await guard_client.call("echo", b"over", b"quic")
        assert echoed.ok and echoed.results == (b"over", b"quic")
        items = [r.results async for r in guard_client.call_stream("count", b"3")]
        assert items == [(b"item 0",), (b"item 1",), (b"item 2",)]
        await guard_client.close()
        await asyncio.wait_for(serving, TIMEOUT)
        assert guard.counters.logins_ok == 1
    finally:
        serving.cancel()
        client.close()
        server.close()
        await guard.stop()


async def test_a_wrong_channel_binding_fails_the_guard_login(ca: TestCA, hub: Node) -> None:
    store = MemoryUserStore()
    card = generate_card(20)
    store.add(make_user("owner", PASSWORD, card, password_kdf=FAST, pair_kdf=FAST))
    guard = GuardServer(lambda: store, _handler)
    await guard.open()
    server_path, client_path = memory_pair()
    server, client = await session_pair(
        hub, server_path, client_path, verify_target([ca.cert], EPOCH, hub.identifier)
    )

    async def serve() -> None:
        reader, writer = await server.accept_stream()
        await guard.serve_stream(
            reader, writer, peer="quic", channel_binding=tls_server_end_point(b"another cert")
        )

    serving = asyncio.create_task(serve())
    try:
        reader, writer = client.stream()
        with pytest.raises((RemoteProtocolError, TransportError, VerificationError)):
            await _owner_login(
                client, reader, writer, lambda labels: [card.code_for(x) for x in labels]
            )
        assert guard.counters.logins_ok == 0
    finally:
        serving.cancel()
        client.close()
        server.close()
        await guard.stop()


async def _owner_login(
    client: QuicSession,
    reader: QuicStream,
    writer: QuicStream,
    answer: Callable[[tuple[str, ...]], list[str]],
    *,
    pipeline: bool = False,
    server_first: bool = False,
) -> GuardClient:
    """The owner's guard login on one of the client's streams, bound to the certificate
    the client saw (bounded by TIMEOUT)."""
    return await asyncio.wait_for(
        GuardClient.over_stream(
            reader,
            writer,
            channel_binding=tls_server_end_point(client.server_certificate_der),
            user_id="owner",
            password=PASSWORD,
            answer=answer,
            pipeline=pipeline,
            server_first=server_first,
        ),
        TIMEOUT,
    )


def _guard_with_owner() -> tuple[GuardServer, Callable[[tuple[str, ...]], list[str]]]:
    store = MemoryUserStore()
    card = generate_card(20)
    store.add(make_user("owner", PASSWORD, card, password_kdf=FAST, pair_kdf=FAST))
    return GuardServer(lambda: store, _handler), lambda labels: [card.code_for(x) for x in labels]


def _login_starter(
    guard: GuardServer,
    grant: PasswordGrant | None,
    binding: bytes,
    tasks: list[asyncio.Task[None]],
) -> Callable[[QuicStream], None]:
    """What the hub's agent passes as ``quic_serve(login=...)``: the guard on the login
    stream with the session's grant, Challenge first."""

    def start(stream: QuicStream) -> None:
        tasks.append(
            asyncio.create_task(
                guard.serve_stream(
                    stream,
                    stream,
                    peer="quic",
                    channel_binding=binding,
                    password_grant=grant,
                    server_first=True,
                )
            )
        )

    return start


async def test_the_hubs_challenge_rides_its_first_flight(ca: TestCA, hub: Node) -> None:
    # Everything the client sends after its first Initial is dropped: the server never
    # completes its handshake, yet the client holds the hub's Challenge on the login
    # stream once its own handshake is done. The Challenge left as 0.5-RTT data in the
    # flight that answered the Initial, a round trip before a Hello could have got one.
    guard, _ = _guard_with_owner()
    await guard.open()
    grant = await guard.check_password("owner", PASSWORD)
    server_path, client_path = memory_pair()
    client_path.drop = lambda datagram: client_path.sent > 1
    tasks: list[asyncio.Task[None]] = []
    binding = tls_server_end_point(der(hub))

    start = _login_starter(guard, grant, binding, tasks)
    serving = asyncio.create_task(
        quic_serve(
            server_path,
            certificate_der=der(hub),
            private_key=hub.key,
            timeout_s=TIMEOUT,
            login=start,
        )
    )
    try:
        client = await quic_connect(
            client_path,
            verify_server=verify_target([ca.cert], EPOCH, hub.identifier),
            timeout_s=TIMEOUT,
        )
        assert client.server_first and client.alpn == SERVER_FIRST_ALPN
        reader, _ = client.login_stream()
        assert reader.stream_id == 1
        first = await asyncio.wait_for(reader.read(4096), TIMEOUT)
        (length,) = struct.unpack(">I", first[:4])
        challenge = decode_challenge(first[4 : 4 + length])
        assert 3 <= len(challenge.entries) <= 5
        assert client_path.sent > 1 and not serving.done()
        client.close()
    finally:
        serving.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(serving, *tasks, return_exceptions=True)
        await guard.stop()


@pytest.mark.parametrize("initial_waiting", [False, True], ids=["hub-first", "initial-waiting"])
async def test_a_server_first_login_over_quic(ca: TestCA, hub: Node, initial_waiting: bool) -> None:
    guard, answer = _guard_with_owner()
    await guard.open()
    grant = await guard.check_password("owner", PASSWORD)
    server_path, client_path = memory_pair()
    tasks: list[asyncio.Task[None]] = []
    binding = tls_server_end_point(der(hub))

    start = _login_starter(guard, grant, binding, tasks)
    connecting = asyncio.create_task(
        quic_connect(
            client_path,
            verify_server=verify_target([ca.cert], EPOCH, hub.identifier),
            timeout_s=TIMEOUT,
        )
    )
    if initial_waiting:
        # The client's Initial is already on the path when the hub starts serving (a relay
        # path with a record queued): the session takes it as it is made.
        await async_wait_until(lambda: server_path.backlog, TIMEOUT, what="the Initial")
    serving = asyncio.create_task(
        quic_serve(
            server_path,
            certificate_der=der(hub),
            private_key=hub.key,
            timeout_s=TIMEOUT,
            login=start,
        )
    )
    client = await asyncio.wait_for(connecting, TIMEOUT)
    server = await asyncio.wait_for(serving, TIMEOUT)
    try:
        assert client.server_first and server.server_first
        reader, writer = client.login_stream()
        guard_client = await _owner_login(
            client, reader, writer, answer, pipeline=True, server_first=client.server_first
        )
        echoed = await guard_client.call("echo", b"server", b"first")
        assert echoed.ok and echoed.results == (b"server", b"first")
        # A second stream of the session is the client's own, Hello first and no grant.
        second_reader, second_writer = client.login_stream()
        assert second_reader.stream_id == 0

        async def serve_next() -> None:
            r, w = await server.accept_stream()
            await guard.serve_stream(r, w, peer="quic", channel_binding=binding)

        tasks.append(asyncio.create_task(serve_next()))
        second = await _owner_login(client, second_reader, second_writer, answer)
        assert (await second.call("echo", b"again")).ok
        await guard_client.close()
        await second.close()
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
        assert guard.counters.logins_ok == 2 and guard.counters.logins_granted == 1
    finally:
        for task in tasks:
            task.cancel()
        client.close()
        server.close()
        await guard.stop()


async def test_a_client_that_does_not_offer_it_logs_in_hello_first(ca: TestCA, hub: Node) -> None:
    # The hub offers the server-first login, the client only plain roost/1: the login
    # stream ends unsent, and the client's own stream logs in with the password's KDF.
    guard, answer = _guard_with_owner()
    await guard.open()
    grant = await guard.check_password("owner", PASSWORD)
    server_path, client_path = memory_pair()
    tasks: list[asyncio.Task[None]] = []
    binding = tls_server_end_point(der(hub))

    start = _login_starter(guard, grant, binding, tasks)
    serving = asyncio.create_task(
        quic_serve(
            server_path,
            certificate_der=der(hub),
            private_key=hub.key,
            timeout_s=TIMEOUT,
            login=start,
        )
    )
    client = await quic_connect(
        client_path,
        verify_server=verify_target([ca.cert], EPOCH, hub.identifier),
        timeout_s=TIMEOUT,
        server_first=False,
    )
    server = await asyncio.wait_for(serving, TIMEOUT)
    try:
        assert client.alpn == server.alpn == ALPN and not client.server_first
        # The hub's login task ends on its own: its stream was never sent.
        await asyncio.wait_for(tasks[0], TIMEOUT)

        async def serve_next() -> None:
            r, w = await server.accept_stream()
            await guard.serve_stream(r, w, peer="quic", channel_binding=binding)

        tasks.append(asyncio.create_task(serve_next()))
        reader, writer = client.login_stream()
        guard_client = await _owner_login(client, reader, writer, answer)
        assert (await guard_client.call("echo", b"plain")).ok
        await guard_client.close()
        assert guard.counters.logins_ok == 1 and guard.counters.logins_granted == 0
    finally:
        for task in tasks:
            task.cancel()
        client.close()
        server.close()
        await guard.stop()


@dataclass
class FakeBroker:
    """Stands in for the broker's TLS forwarding of relay records (section 5, step 8):
    each side's records are decoded and the payload fed to the other side's RelayPath."""

    sides: dict[str, RelayPath] = field(default_factory=dict)
    records: int = 0
    largest: int = 0

    def sender(self, to: str) -> Callable[[bytes], None]:
        def send_record(body: bytes) -> None:
            record = decode_relay(body)
            self.records += 1
            self.largest = max(self.largest, len(record.payload))
            asyncio.get_running_loop().call_soon(self.sides[to].feed, record.payload)

        return send_record


async def read_exactly(reader: object, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await asyncio.wait_for(reader.read(size - len(data)), TIMEOUT)  # type: ignore[attr-defined]
        assert chunk, f"stream ended after {len(data)} of {size} bytes"
        data += chunk
    return data


async def test_relay_then_direct_takeover_keeps_the_stream(ca: TestCA, hub: Node) -> None:
    broker = FakeBroker()
    hub_relay = RelayPath(77, broker.sender("issuer"))
    issuer_relay = RelayPath(77, broker.sender("hub"))
    broker.sides = {"hub": hub_relay, "issuer": issuer_relay}
    hub_mux = await UdpMux.open(("127.0.0.1", 0))
    issuer_mux = await UdpMux.open(("127.0.0.1", 0))
    server, client = await session_pair(
        hub, hub_relay, issuer_relay, verify_target([ca.cert], EPOCH, hub.identifier)
    )
    try:
        reader, writer = client.stream()
        chunks = [b"%06d:" % i + bytes([i % 251]) * 1000 for i in range(200)]
        for chunk in chunks[:100]:
            writer.write(chunk)
        await writer.drain()
        server_reader, server_writer = await asyncio.wait_for(server.accept_stream(), TIMEOUT)
        first = await read_exactly(server_reader, 10_000)
        relayed = broker.records
        assert relayed > 0
        # Inside relay records no path MTU applies: full-size records, never above the cap.
        assert 1200 < broker.largest <= MAX_RELAY_PAYLOAD
        sizes: list[int] = []
        send_direct = hub_mux.sendto

        def counted(data: bytes, address: Sequence[object]) -> None:
            sizes.append(len(data))
            send_direct(data, address)

        hub_mux.sendto = counted  # type: ignore[method-assign]
        # A direct path comes up: each side switches at its own moment; the hub first,
        # while the issuer is still sending on the relay but already accepts the hub's
        # packets on the direct path.
        direct_to_hub = issuer_mux.path_to(hub_mux.local_address)
        client.add_path(direct_to_hub)
        server.switch_path(hub_mux.path_to(issuer_mux.local_address))
        for chunk in chunks[100:150]:
            writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.05)
        relayed_by_issuer = issuer_relay.datagrams_sent
        client.switch_path(direct_to_hub)
        for chunk in chunks[150:]:
            writer.write(chunk)
        writer.close()
        rest = b""
        while data := await asyncio.wait_for(server_reader.read(65536), TIMEOUT):
            rest += data
        assert first + rest == b"".join(chunks)
        # Closing ended that stream both ways; a new stream and its answer travel only on
        # the direct path now.
        records_before = broker.records
        reader, writer = client.stream()
        writer.write(b"after the switch")
        server_reader, server_writer = await asyncio.wait_for(server.accept_stream(), TIMEOUT)
        assert await read_exactly(server_reader, 16) == b"after the switch"
        server_writer.write(b"reply on the direct path")
        assert await read_exactly(reader, 24) == b"reply on the direct path"
        assert hub_mux.received.get("quic", 0) > 0 and issuer_mux.received.get("quic", 0) > 0
        assert broker.records == records_before
        # The direct path is back at the size every path carries.
        assert sizes and max(sizes) <= 1200
        assert server.path.switches == client.path.switches == 1
        assert issuer_mux.received.get("unrouted", 0) == 0
        # The issuer kept the relay until its own switch, and the hub's packets reached it
        # directly meanwhile.
        assert issuer_relay.datagrams_sent == relayed_by_issuer > 0
    finally:
        client.close()
        server.close()
        hub_mux.close()
        issuer_mux.close()


async def test_drain_waits_for_acknowledgements_on_a_slow_path(ca: TestCA, hub: Node) -> None:
    server_path, client_path = memory_pair()
    server, client = await session_pair(
        hub, server_path, client_path, verify_target([ca.cert], EPOCH, hub.identifier)
    )
    try:
        reader, writer = client.stream()
        size = 2 * 1024 * 1024
        writer.write(b"0" * size)
        # Nothing reads on the server yet, but QUIC acknowledges what arrives, so drain
        # returns once at most the high water (1 MiB, the stream window) is still
        # unacknowledged; its wait is on acknowledgements.
        waited = asyncio.create_task(writer.drain())
        await asyncio.sleep(0)
        assert not waited.done()
        await asyncio.wait_for(waited, TIMEOUT)
        assert client._unacknowledged(reader.stream_id) <= 1024 * 1024
        server_reader, _ = await asyncio.wait_for(server.accept_stream(), TIMEOUT)
        assert len(await read_exactly(server_reader, size)) == size
    finally:
        client.close()
        server.close()


async def test_keepalive_holds_an_idle_session_open(ca: TestCA, hub: Node) -> None:
    sessions = []
    for keepalive in (0.1, None):
        server_path, client_path = memory_pair()
        serving = asyncio.create_task(
            quic_serve(
                server_path, certificate_der=der(hub), private_key=hub.key, idle_timeout_s=0.6
            )
        )
        client = await quic_connect(
            client_path,
            verify_server=verify_target([ca.cert], EPOCH, hub.identifier),
            idle_timeout_s=0.6,
            keepalive_s=keepalive,
        )
        sessions.append((await serving, client))
    try:
        await asyncio.sleep(1.5)
        (kept_server, kept_client), (idle_server, idle_client) = sessions
        assert not kept_client.closed and not kept_server.closed
        assert idle_client.closed and idle_server.closed
    finally:
        for pair in sessions:
            for session in pair:
                session.close()
