"""The guard on streams that are not TLS: a Unix socket pair and an in-memory stream, each
with a channel binding given by the caller; and `watch` streaming frames from a real hub
over the hub's remote entrance."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from roost.cli.home import make_home
from roost.cli.run import build_hub_daemon
from roost.config import load_device_config, load_hub_config
from roost.device.daemon import DeviceDaemon, read_own_certificate
from roost.device.spool import FrameSpool
from roost.errors import RemoteProtocolError, TransportError, VerificationError
from roost.guard.aio import GuardClient, GuardServer, GuardServerConfig
from roost.guard.aio_client import AnswerCodes
from roost.guard.card import Card, generate_card
from roost.guard.log import verify_receipt
from roost.guard.remote import CallHandler, CallResult
from roost.guard.session import SessionLimits
from roost.guard.streams import ByteStreamReader, ByteStreamWriter
from roost.guard.suites import KdfParams
from roost.guard.userstore import MemoryUserStore, PasswordGrant, SqliteUserStore, make_user
from roost.hub.recorder import Recorder
from roost.hub.remote import start_remote
from roost.pki.tls import client_context
from roost.pki.updater import TrustUpdater, UpdateConfig
from tests.helpers.net import time_unit
from tests.helpers.waits import async_wait_until

pytestmark = pytest.mark.timeout(60)
FAST = KdfParams(log2_n=4, r=1, p=1)
PASSWORD = "stream password"
BINDING = b"test-binding:" + bytes(range(32))


def handler(method: str, args: tuple[bytes, ...]) -> CallResult:
    if method == "echo":
        return list(args)
    if method == "count":

        async def count() -> AsyncIterator[Sequence[bytes]]:
            for n in range(int(args[0])):
                await asyncio.sleep(0)
                yield [b"item %d" % n]

        return count()
    raise RemoteProtocolError("no such method", reason="unknown-method")


class _MemoryEnd:
    """One end of an in-memory duplex stream: not asyncio's streams, only the guard's
    ByteStreamReader and ByteStreamWriter protocols."""

    def __init__(self) -> None:
        self.peer: _MemoryEnd | None = None
        self._inbox = bytearray()
        self._eof = False
        self._closing = False
        self._ready = asyncio.Event()

    async def read(self, n: int) -> bytes:
        while not self._inbox and not self._eof:
            self._ready.clear()
            await self._ready.wait()
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        return data

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what is still to be read."""
        self._inbox[:0] = data

    def write(self, data: bytes) -> None:
        if self._closing:
            raise ConnectionResetError("stream is closed")
        assert self.peer is not None
        if not self.peer._eof:
            self.peer._inbox += data
            self.peer._ready.set()

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        # Closing ends the stream both ways, as the protocol asks.
        self._closing = True
        for end in (self, self.peer):
            assert end is not None
            end._eof = True
            end._ready.set()

    async def wait_closed(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self._closing


def _memory_pair() -> tuple[_MemoryEnd, _MemoryEnd]:
    left, right = _MemoryEnd(), _MemoryEnd()
    left.peer, right.peer = right, left
    return left, right


def _guard(
    config: GuardServerConfig | None = None, handle: CallHandler = handler
) -> tuple[GuardServer, Card]:
    store = MemoryUserStore()
    card = generate_card(20)
    store.add(make_user("owner", PASSWORD, card, password_kdf=FAST, pair_kdf=FAST))
    return GuardServer(lambda: store, handle, config=config), card


def _serve_memory(
    server: GuardServer,
    binding: bytes = BINDING,
    grant: PasswordGrant | None = None,
    *,
    server_first: bool = False,
) -> tuple[_MemoryEnd, _MemoryEnd, asyncio.Task[None]]:
    """A fresh in-memory stream served by ``server``: its two ends and the serving task."""
    server_end, client_end = _memory_pair()
    serving = asyncio.create_task(
        server.serve_stream(
            server_end,
            server_end,
            peer="memory",
            channel_binding=binding,
            password_grant=grant,
            server_first=server_first,
        )
    )
    return server_end, client_end, serving


def _codes_of(card: Card) -> AnswerCodes:
    return lambda labels: [card.code_for(x) for x in labels]


async def _log_in(
    reader: ByteStreamReader,
    writer: ByteStreamWriter,
    answer: AnswerCodes,
    binding: bytes = BINDING,
    **options: Any,
) -> GuardClient:
    """The owner logged in over the stream (``options`` go to GuardClient.over_stream)."""
    return await GuardClient.over_stream(
        reader,
        writer,
        channel_binding=binding,
        user_id="owner",
        password=PASSWORD,
        answer=answer,
        **options,
    )


async def _exercise(client: GuardClient) -> None:
    echoed = await client.call("echo", b"over", b"any stream")
    assert echoed.ok and echoed.results == (b"over", b"any stream")
    items = [response.results async for response in client.call_stream("count", b"3")]
    assert items == [(b"item 0",), (b"item 1",), (b"item 2",)]
    # A method that does not stream gives its one answer through call_stream too.
    single = [response async for response in client.call_stream("echo", b"once")]
    assert [r.results for r in single] == [(b"once",)] and not single[0].more
    refused = await client.call("reboot")
    assert not refused.ok and refused.reason == "unknown-method"


async def test_guard_over_a_unix_socket_pair_with_a_given_binding() -> None:
    server, card = _guard()
    await server.open()
    server_sock, client_sock = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=server_sock)
    client_reader, client_writer = await asyncio.open_connection(sock=client_sock)
    serving = asyncio.create_task(
        server.serve_stream(server_reader, server_writer, peer="pair", channel_binding=BINDING)
    )
    try:
        client = await _log_in(client_reader, client_writer, _codes_of(card))
        await _exercise(client)
        await client.close()
        await asyncio.wait_for(serving, 5.0)
        assert server.counters.logins_ok == 1 and server.counters.calls == 4
        assert server.rejections["unknown-method"] == 1
    finally:
        await server.stop()


async def test_guard_over_an_in_memory_stream_and_a_binding_mismatch() -> None:
    server, card = _guard()
    await server.open()
    try:
        _, client_end, serving = _serve_memory(server)
        client = await _log_in(client_end, client_end, _codes_of(card))
        await _exercise(client)
        await client.close()
        await asyncio.wait_for(serving, 5.0)
        # The client saw another binding than the server holds (a relay in between).
        _, client_end, serving = _serve_memory(server)
        with pytest.raises(VerificationError) as refused:
            await _log_in(client_end, client_end, _codes_of(card), b"another binding")
        assert refused.value.reason == "refused"
        await asyncio.wait_for(serving, 5.0)
        assert server.rejections["bad-proof"] == 1
        assert server.counters.logins_ok == 1 and server.counters.logins_failed == 1
    finally:
        await server.stop()


async def test_a_brokered_check_spares_one_login_its_kdf() -> None:
    # The hub's agent checks the sealed password (check_password) and hands the grant to
    # the first stream of that session only: that login skips the KDF, the next does not.
    server, card = _guard()
    await server.open()
    try:
        grant = await server.check_password("owner", PASSWORD)
        for password_grant in (grant, None):
            _, client_end, serving = _serve_memory(server, grant=password_grant)
            # The first login pipelines its first call with the proof, as `roost connect`.
            client = await _log_in(
                client_end, client_end, _codes_of(card), pipeline=password_grant is not None
            )
            await _exercise(client)
            assert client.counter >= 1
            await client.close()
            await asyncio.wait_for(serving, 5.0)
        assert server.counters.logins_ok == 2 and server.counters.logins_granted == 1
    finally:
        await server.stop()


async def test_a_server_first_login_sends_the_challenge_before_any_hello() -> None:
    # The hub's login stream of a brokered session (docs/guard.md, "Server-first login"):
    # the Challenge is on the stream before the client writes anything.
    server, card = _guard()
    await server.open()
    try:
        grant = await server.check_password("owner", PASSWORD)
        _, client_end, serving = _serve_memory(server, grant=grant, server_first=True)
        first = await asyncio.wait_for(client_end.read(4096), 5.0)
        assert first[4:5] == b"\x02"  # u32 length, then a Challenge (type 2)
        client_end.unread(first)  # for the login below
        client = await _log_in(
            client_end, client_end, _codes_of(card), pipeline=True, server_first=True
        )
        await _exercise(client)
        assert client.counter >= 1
        await client.close()
        await asyncio.wait_for(serving, 5.0)
        assert server.counters.logins_ok == 1 and server.counters.logins_granted == 1
    finally:
        await server.stop()


async def test_a_server_first_login_without_a_grant_is_refused() -> None:
    server, card = _guard()
    await server.open()
    try:
        _, client_end, serving = _serve_memory(server, server_first=True)
        with pytest.raises(VerificationError) as refused:
            await _log_in(client_end, client_end, _codes_of(card), server_first=True)
        assert refused.value.reason == "refused"
        await asyncio.wait_for(serving, 5.0)
        assert server.rejections["no-grant"] == 1 and server.counters.logins_failed == 1
    finally:
        await server.stop()


async def test_a_server_first_login_for_another_user_is_refused() -> None:
    # The grant is the owner's; a client logging in as someone else on that stream gets
    # the owner's Challenge, and its Hello is refused without any password check.
    server, card = _guard()
    await server.open()
    try:
        grant = await server.check_password("owner", PASSWORD)
        _, client_end, serving = _serve_memory(server, grant=grant, server_first=True)
        client = await GuardClient.over_stream(
            client_end,
            client_end,
            channel_binding=BINDING,
            user_id="somebody-else",
            password=PASSWORD,
            answer=_codes_of(card),
            pipeline=True,
            server_first=True,
        )
        with pytest.raises(VerificationError) as refused:
            await client.call("echo", b"never run")
        assert refused.value.reason == "refused"
        await asyncio.wait_for(serving, 5.0)
        assert server.rejections["user-mismatch"] == 1 and server.counters.calls == 0
    finally:
        await server.stop()


async def test_a_pipelined_login_with_wrong_codes_fails_on_its_first_call() -> None:
    server, _card = _guard()
    await server.open()
    try:
        _, client_end, serving = _serve_memory(server)
        client = await _log_in(
            client_end, client_end, lambda labels: ["0000"] * len(labels), pipeline=True
        )
        with pytest.raises(VerificationError) as refused:
            await client.call("echo", b"never run")
        assert refused.value.reason == "refused"
        await asyncio.wait_for(serving, 5.0)
        assert server.counters.calls == 0 and server.counters.logins_failed == 1
    finally:
        await server.stop()


async def test_the_login_deadline_ends_a_silent_stream_through_the_cores_timer() -> None:
    server, _ = _guard(GuardServerConfig(login_timeout_s=0.2))
    await server.open()
    try:
        _, client_end, serving = _serve_memory(server, b"")
        # The server closes the silent stream: the client's read sees the end.
        assert await asyncio.wait_for(client_end.read(100), 5.0 * time_unit()) == b""
        await asyncio.wait_for(serving, 5.0)
        assert server.counters.logins_failed == 1
        assert server.rejections["login-timeout"] == 1
        # Per-source limits apply to whatever the caller names as the peer.
        assert server.active == 0
    finally:
        await server.stop()


async def test_a_closed_stream_is_a_transport_error_for_the_client() -> None:
    server, card = _guard()
    await server.open()
    try:
        server_end, client_end, serving = _serve_memory(server, b"")
        client = await _log_in(client_end, client_end, _codes_of(card), b"")
        server_end.close()
        with pytest.raises(TransportError):
            await client.call("echo", b"gone")
        await asyncio.wait_for(serving, 5.0)
    finally:
        await server.stop()


def _waiting_handler(method: str, args: tuple[bytes, ...]) -> CallResult:
    """Streams one item, then waits for a next one that never comes (a silent camera)."""

    async def first_then_nothing() -> AsyncIterator[Sequence[bytes]]:
        yield [b"first"]
        await asyncio.Event().wait()
        yield [b"never"]

    return first_then_nothing()


async def _log_in_waiting(
    config: GuardServerConfig,
) -> tuple[GuardServer, GuardClient, asyncio.Task[None]]:
    server, card = _guard(config, _waiting_handler)
    await server.open()
    _, client_end, serving = _serve_memory(server, b"")
    client = await _log_in(
        client_end, client_end, _codes_of(card), b"", limits=SessionLimits(idle_s=60.0)
    )
    return server, client, serving


async def test_the_idle_limit_interrupts_a_handler_waiting_for_its_next_item() -> None:
    server, client, serving = await _log_in_waiting(
        GuardServerConfig(limits=SessionLimits(idle_s=0.3))
    )
    try:
        stream = client.call_stream("wait")
        first = await anext(stream)
        assert first.more and first.results == (b"first",)
        # Nothing more comes: the session passes its idle limit with the handler waiting.
        with pytest.raises(TransportError):
            await anext(stream)
        await asyncio.wait_for(serving, 5.0 * time_unit())
        assert server.counters.sessions_expired == 1
    finally:
        await server.stop()


async def test_stop_ends_a_streamed_answer_at_once() -> None:
    server, client, serving = await _log_in_waiting(GuardServerConfig())
    stream = client.call_stream("wait")
    assert (await anext(stream)).results == (b"first",)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.stop()
    assert serving.done() and loop.time() - started < 2.0
    with pytest.raises(TransportError):
        await anext(stream)


# --- watch from a real hub ---------------------------------------------------------------


async def _until(what: str, condition: Callable[[], object], seconds: float = 15.0) -> None:
    await async_wait_until(condition, seconds, what=what)


async def test_watch_streams_the_next_frames_from_a_real_hub(tmp_path: Path) -> None:
    make_home(tmp_path, hubs=1, devices=1, loopback=True, fps=10.0)
    no_fetch = UpdateConfig(fetch_timeout=0.5)
    config = load_hub_config(tmp_path / "hub-1.toml")
    recorder = Recorder(config.state_dir / "recordings", 1 << 30)
    hub = build_hub_daemon(config, TrustUpdater(config.trust_dir, config=no_fetch), recorder)
    device_config = load_device_config(tmp_path / "device-1.toml")
    device = DeviceDaemon(
        device_config,
        TrustUpdater(device_config.trust_dir, config=no_fetch),
        FrameSpool(None, 1000, 1 << 26),
        read_own_certificate(device_config),
    )
    card = generate_card(20)
    store = SqliteUserStore.in_state_dir(config.state_dir)
    store.add(make_user("owner", PASSWORD, card, password_kdf=FAST, pair_kdf=FAST))
    store.close()
    await hub.start()
    await device.start()
    server, merkle_log = await start_remote(hub)
    hub.guard = server

    def is_our_hub(leaf: x509.Certificate) -> None:
        hub.trust.state.verify_node(leaf, hub.identifier)

    try:
        await _until("camera recording", lambda: recorder.count() > 0)
        client = await GuardClient.connect(
            "127.0.0.1",
            server.bound_port,
            client_context(hub.trust.state.anchors),
            user_id="owner",
            password=PASSWORD,
            answer=lambda labels: [card.code_for(x) for x in labels],
            check_server=is_our_hub,
        )
        try:
            before = recorder.highest_seq(device.identifier)
            assert before is not None
            frames = []
            async for response in client.call_stream("watch", device.identifier.encode(), b"3"):
                assert response.ok and response.more, response.reason
                frames.append(response)
            seqs = [struct.unpack(">QQ", r.results[0])[0] for r in frames]
            # The watch begins with the latest stored frame (recent: the camera is live),
            # then the next ones, each once.
            assert len(seqs) == 3 and seqs == sorted(set(seqs)) and seqs[0] >= before
            assert all(r.results[1] == b"image/jpeg" for r in frames)
            assert all(r.results[2][:2] == b"\xff\xd8" for r in frames)
            # Every record of the stream names the watch request, whose receipt verifies.
            receipt = await client.receipt(frames[-1])
            verify_receipt(receipt)
            # latest-frame now reads the recorder off the loop; still one answer.
            latest = await client.call("latest-frame", device.identifier.encode())
            assert latest.ok and struct.unpack(">QQ", latest.results[0])[0] >= seqs[-1]
            # A stream above the hub's bound is refused before it starts.
            too_many = [r async for r in client.call_stream("watch", b"x", b"1000")]
            assert [r.reason for r in too_many] == ["bad-args"]
        finally:
            await client.close()
    finally:
        await server.stop()
        merkle_log.close()
        await device.stop()
        await hub.stop()
        recorder.close()
