"""Guard sessions over real TLS on loopback: login, calls, receipts, refusals, limits."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from roost.errors import LocalProtocolError, TransportError, VerificationError
from roost.guard.aio import GuardClient, GuardServer, GuardServerConfig, LogReceipts
from roost.guard.card import Card, generate_card
from roost.guard.challenge import AuthConfig
from roost.guard.log import SqliteMerkleLog, verify_receipt
from roost.guard.session import SessionLimits
from roost.guard.suites import KdfParams
from roost.guard.userstore import LockoutPolicy, SqliteUserStore, make_user
from roost.pki.certs import Role, cert_to_pem, key_to_pem
from roost.pki.tls import client_context, server_context
from roost.pki.verify import verify_node
from tests.helpers.pki import EPOCH, Node, TestCA
from tests.helpers.waits import async_wait_until

pytestmark = pytest.mark.timeout(60)
FAST = KdfParams(log2_n=4, r=1, p=1)
PASSWORD = "remote password"


def echo(method: str, args: tuple[bytes, ...]) -> list[bytes]:
    if method == "echo":
        return list(args)
    raise LocalProtocolError("no such method", reason="unknown-method")


@dataclass
class Remote:
    ca: TestCA
    hub: Node
    card: Card
    server: GuardServer
    merkle_log: SqliteMerkleLog
    log_key: Ed25519PrivateKey

    @property
    def port(self) -> int:
        return self.server.bound_port

    def check_hub(self, leaf: x509.Certificate) -> None:
        node = verify_node(leaf, [self.ca.cert], EPOCH)
        if node.identifier != self.hub.identifier:
            raise VerificationError("not our hub", reason="not-hub")

    async def connect(
        self, codes: Callable[[tuple[str, ...]], list[str]] | None = None, **kwargs: object
    ) -> GuardClient:
        answer = codes or (lambda labels: [self.card.code_for(x) for x in labels])
        return await GuardClient.connect(
            "127.0.0.1",
            self.port,
            client_context([self.ca.cert]),
            user_id="owner",
            password=str(kwargs.pop("password", PASSWORD)),
            answer=answer,
            check_server=self.check_hub,
            **kwargs,  # type: ignore[arg-type]
        )


async def _served(server: GuardServer) -> None:
    """Until the server has finished every stream, counted it and committed its log."""
    await async_wait_until(lambda: server.active == 0, 5, what="the server to finish its streams")


def _write_node(directory: Path, node: Node) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(cert_to_pem(node.cert))
    key.write_bytes(key_to_pem(node.key))
    return cert, key


async def _start(
    tmp_path: Path, config: GuardServerConfig, presented: Node | None = None
) -> Remote:
    ca = TestCA()
    hub = ca.issue(Role.HUB)
    shown = presented or hub
    cert, key = _write_node(tmp_path / "tls", shown)
    card = generate_card(20)
    store = SqliteUserStore.in_state_dir(tmp_path)
    store.add(make_user("owner", PASSWORD, card, password_kdf=FAST, pair_kdf=FAST))
    store.close()
    merkle_log = SqliteMerkleLog.in_state_dir(tmp_path)
    log_key = Ed25519PrivateKey.generate()
    server = GuardServer(
        lambda: SqliteUserStore.in_state_dir(tmp_path),
        echo,
        server_certificate_der=shown.cert.public_bytes(Encoding.DER),
        config=config,
        receipts=LogReceipts(merkle_log, log_key),
    )
    await server.start("127.0.0.1", 0, server_context(cert, key))
    return Remote(ca, hub, card, server, merkle_log, log_key)


@pytest.fixture
async def remote(tmp_path: Path) -> AsyncIterator[Remote]:
    config = GuardServerConfig(
        auth=AuthConfig(lockout=LockoutPolicy(max_failures=3, base_lock_ms=60_000))
    )
    started = await _start(tmp_path, config)
    try:
        yield started
    finally:
        await started.server.stop()
        started.merkle_log.close()


async def test_login_calls_and_a_receipt_that_verifies(remote: Remote) -> None:
    client = await remote.connect()
    try:
        assert client.counter == 1
        response = await client.call("echo", b"hello", b"hub")
        assert response.ok and response.results == (b"hello", b"hub")
        big = bytes(range(256)) * 1024
        assert (await client.call("echo", big)).results == (big,)
        receipt = await client.receipt(
            response, log_key=remote.log_key.public_key().public_bytes_raw()
        )
        verify_receipt(receipt)
        assert receipt.leaf_index == response.leaf_index == 0
        refused = await client.call("reboot")
        assert not refused.ok and refused.reason == "unknown-method"
    finally:
        await client.close()
    await _served(remote.server)
    counters = remote.server.counters
    assert counters.logins_ok == 1 and counters.calls == 4
    # Every request and every response went to the log and was committed.
    assert remote.merkle_log.size == 8
    assert remote.server.rejections["unknown-method"] == 1
    second = await remote.connect()
    try:
        assert second.counter == 2  # the access counter moved on
        # At the next visit the kept receipt proves the log only grew since.
        newer = await second.log_extends(receipt)
        assert newer.size > receipt.checkpoint.size
    finally:
        await second.close()


async def test_wrong_codes_are_refused_then_the_user_is_locked_out(
    remote: Remote, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = lambda labels: ["ZZZZZZZZ"] * len(labels)  # noqa: E731
    with caplog.at_level(logging.INFO, logger="roost.guard"):
        for _ in range(3):
            with pytest.raises(VerificationError) as refused:
                await remote.connect(wrong)
            assert refused.value.reason == "refused"
        # Locked: even the right codes are refused now.
        with pytest.raises(VerificationError):
            await remote.connect()
        await _served(remote.server)
    assert remote.server.counters.logins_failed == 4
    assert remote.server.rejections["bad-proof"] == 3
    assert remote.server.rejections["locked-out"] == 1
    # Four failed logins from one source within the interval: one line, reason and source
    # only (PROTOCOL.md preamble), never the user id.
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "roost.guard" and getattr(r, "event", None) == "refused"
    ]
    assert len(lines) == 1, lines
    assert lines[0].startswith("remote login refused from 127.0.0.1: ")
    assert all("owner" not in r.getMessage() for r in caplog.records)


async def test_wrong_password_is_refused(remote: Remote) -> None:
    with pytest.raises(VerificationError):
        await remote.connect(password="guess")
    await _served(remote.server)
    assert remote.server.rejections["bad-password"] == 1


async def test_client_keeps_its_password_from_a_server_that_is_not_the_hub(
    tmp_path: Path,
) -> None:
    # A device certificate from the same CA passes TLS, but is not the hub.
    ca = TestCA()
    impostor = await _start(tmp_path, GuardServerConfig(login_timeout_s=1.0))
    device = impostor.ca.issue(Role.DEVICE)
    cert, key = _write_node(tmp_path / "impostor", device)
    listener = GuardServer(
        lambda: SqliteUserStore.in_state_dir(tmp_path),
        echo,
        server_certificate_der=device.cert.public_bytes(Encoding.DER),
        config=GuardServerConfig(login_timeout_s=1.0),
    )
    await listener.start("127.0.0.1", 0, server_context(cert, key))
    try:
        with pytest.raises(VerificationError):
            await GuardClient.connect(
                "127.0.0.1",
                listener.bound_port,
                client_context([impostor.ca.cert]),
                user_id="owner",
                password=PASSWORD,
                answer=lambda labels: [],
                check_server=impostor.check_hub,
            )
        # The listener accepted the stream and has finished with it.
        await async_wait_until(
            lambda: listener.counters.connections == 1 and listener.active == 0,
            5,
            what="the listener to finish the stream",
        )
        # Nothing reached the login core: no hello, no password check.
        assert listener.counters.logins_ok == listener.counters.logins_failed == 0
        assert listener.rejections.total() == 0
        # A CA the client does not trust fails in TLS itself.
        with pytest.raises(TransportError):
            await GuardClient.connect(
                "127.0.0.1",
                impostor.port,
                client_context([ca.cert]),
                user_id="owner",
                password=PASSWORD,
                answer=lambda labels: [],
            )
    finally:
        await listener.stop()
        await impostor.server.stop()
        impostor.merkle_log.close()


async def test_idle_session_is_closed_and_counted(tmp_path: Path) -> None:
    started = await _start(tmp_path, GuardServerConfig(limits=SessionLimits(idle_s=0.3)))
    try:
        client = await started.connect(limits=SessionLimits(idle_s=60.0))
        assert (await client.call("echo", b"a")).ok
        # Past the server's idle limit (0.3 s) the session is closed from the server side.
        await async_wait_until(
            lambda: started.server.counters.sessions_expired == 1, 5, what="the idle session closed"
        )
        with pytest.raises(TransportError):
            await client.call("echo", b"too late")
        await client.close()
        assert started.server.counters.sessions_expired == 1
    finally:
        await started.server.stop()
        started.merkle_log.close()


async def test_silent_or_oversized_peers_are_dropped(tmp_path: Path) -> None:
    started = await _start(tmp_path, GuardServerConfig(login_timeout_s=0.3, max_connections=2))
    context = client_context([started.ca.cert])
    try:
        # Silent: holds a slot only until the login timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", started.port, ssl=context)
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()
        # Announces a record far above the login bound: dropped before it is read.
        reader, writer = await asyncio.open_connection("127.0.0.1", started.port, ssl=context)
        writer.write((1 << 30).to_bytes(4, "big"))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()
        # More than max_connections at once: the extra one is closed at once.
        held = [
            await asyncio.open_connection("127.0.0.1", started.port, ssl=context) for _ in range(3)
        ]
        await async_wait_until(
            lambda: started.server.counters.refused_busy == 1, 5, what="the extra stream refused"
        )
        for _, held_writer in held:
            held_writer.close()
        await _served(started.server)
        counters = started.server.counters
        assert counters.stream_errors >= 1 and started.server.rejections["oversized"] == 1
        assert started.server.rejections["login-timeout"] >= 1
    finally:
        await started.server.stop()
        started.merkle_log.close()


def test_tls_context_refuses_below_tls13() -> None:
    assert client_context([]).minimum_version is ssl.TLSVersion.TLSv1_3


async def test_one_source_cannot_flood_the_login_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roost.guard")
    started = await _start(
        tmp_path,
        GuardServerConfig(
            connect_burst_per_source=3.0,
            connect_rate_per_source=0.01,
            max_connections_per_source=2,
        ),
    )
    context = client_context([started.ca.cert])
    try:
        held = [
            await asyncio.open_connection("127.0.0.1", started.port, ssl=context) for _ in range(2)
        ]
        # The hub has finished both handshakes and counted them against the source.
        await async_wait_until(lambda: started.server.active == 2, 5, what="both streams held")
        # A third stream at once exceeds the source's share; it is closed unread.
        reader, writer = await asyncio.open_connection("127.0.0.1", started.port, ssl=context)
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()
        for _, held_writer in held:
            held_writer.close()
        await _served(started.server)
        # Burst 3: the two held streams took two tokens; this one takes the last.
        _, writer = await asyncio.open_connection("127.0.0.1", started.port, ssl=context)
        await async_wait_until(lambda: started.server.active == 1, 5, what="the third stream held")
        writer.close()
        await _served(started.server)
        # Now the source must wait (0.01 token/s): refused before any login work.
        reader, writer = await asyncio.open_connection("127.0.0.1", started.port, ssl=context)
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()
        with pytest.raises((TransportError, VerificationError)):
            await started.connect()
        counters = started.server.counters
        assert counters.refused_busy == 1 and counters.refused_rate == 2
        assert started.server.rejections["source-busy"] == 1
        assert started.server.rejections["rate-limited"] == 2
        assert counters.logins_ok == 0
        # Three refused streams from one source within the interval: one line.
        lines = [r.getMessage() for r in caplog.records if r.name == "roost.guard"]
        assert [line for line in lines if line.startswith("remote stream from")] == [
            "remote stream from 127.0.0.1: source-busy"
        ]
    finally:
        await started.server.stop()
        started.merkle_log.close()
