"""`SharedRegistry` against a real redis-server (and valkey-server where installed): the
pipelined writes with their TTL, the node-link address, ordered node-to-node messages, one
counted outage and the resync when Redis returns, and the URL forms (unix socket,
Sentinel)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from roost.errors import ConfigError
from roost.rendezvous.broker_cluster import SharedRegistry, connect_redis
from roost.rendezvous.presence import PeerRecord, PresenceConfig, PresenceRecord
from tests.helpers.brokers import free_port
from tests.helpers.redisserver import RedisServer, server_binaries
from tests.helpers.waits import async_wait_until

pytestmark = [pytest.mark.real, pytest.mark.timeout(60)]
KEY = bytes(range(32))
CONFIG = PresenceConfig(retry_s=0.05)


@pytest.fixture(params=server_binaries())
def server(request: pytest.FixtureRequest, tmp_path: Path) -> RedisServer:
    built = RedisServer(str(request.param), tmp_path / "redis")
    built.start()
    yield built
    built.stop()


def _registry(url: str, node: str, inbox: list[bytes], resyncs: list[int]) -> SharedRegistry:
    return SharedRegistry(
        connect_redis(url),
        CONFIG,
        node,
        1,
        on_message=inbox.append,
        on_resync=lambda: resyncs.append(1),
    )


async def _registry_once_up(url: str) -> SharedRegistry:
    """A registry (node b1) started again until it reaches the server, at most 100 times
    50 ms apart: a server or sentinel just started needs a moment to answer."""
    shared = _registry(url, "b1", [], [])
    try:
        for _ in range(100):
            await shared.stop()
            shared = _registry(url, "b1", [], [])
            await shared.start()
            if shared.up:
                break
            await asyncio.sleep(0.05)
    except BaseException:
        await shared.stop()
        raise
    return shared


async def test_writes_are_pipelined_with_their_ttl_and_read_back(server: RedisServer) -> None:
    inbox: list[bytes] = []
    shared = _registry(server.url, "b1", inbox, [])
    await shared.start()
    try:
        for n in range(50):
            record = PresenceRecord("b1", 1, n, KEY, b"\x30\x82cert")
            shared.write(f"hcsp:{n:022d}", record, 60_000)
        await async_wait_until(lambda: shared.counters.writes == 50, 5, what="writes")
        # Fifty writes queued in one turn went out in one pipeline.
        assert shared.counters.pipelines == 1
        found = await shared.read(f"hcsp:{7:022d}")
        assert found == PresenceRecord("b1", 1, 7, KEY, b"\x30\x82cert")
        ttl = int(server.command("PTTL", f"roost:p:hcsp:{7:022d}")[1:])
        assert 50_000 < ttl <= 60_000
        assert await shared.read("hcsp:absent") is None
    finally:
        await shared.stop()


async def test_the_node_link_address_is_written_with_its_ttl_and_read_by_node(
    server: RedisServer,
) -> None:
    shared = _registry(server.url, "b1", [], [])
    other = _registry(server.url, "b2", [], [])
    await shared.start()
    await other.start()
    try:
        shared.write_peer(PeerRecord(41, "127.0.0.1", 7444), 30_000)
        await async_wait_until(lambda: shared.counters.writes == 1, 5, what="write")
        assert await other.read_peer("b1") == PeerRecord(41, "127.0.0.1", 7444)
        assert await other.read_peer("b9") is None
        ttl = int(server.command("PTTL", "roost:l:b1")[1:])
        assert 25_000 < ttl <= 30_000
        # A foreign value under the key is no address.
        server.command("SET", "roost:l:b2", "junk")
        assert await shared.read_peer("b2") is None
    finally:
        await shared.stop()
        await other.stop()


async def test_messages_reach_the_node_in_order_and_say_who_heard(server: RedisServer) -> None:
    inbox: list[bytes] = []
    sender = _registry(server.url, "b1", [], [])
    receiver = _registry(server.url, "b2", inbox, [])
    await sender.start()
    await receiver.start()
    try:
        heard = sender.publish("b2", b"first", wait=True)
        for n in range(200):
            sender.publish("b2", n.to_bytes(2, "big"))
        assert heard is not None and await asyncio.wait_for(heard, 5) == 1
        await async_wait_until(lambda: len(inbox) == 201, 5, what="messages")
        assert inbox == [b"first"] + [n.to_bytes(2, "big") for n in range(200)]
        nobody = sender.publish("b9", b"x", wait=True)
        assert nobody is not None and await asyncio.wait_for(nobody, 5) == 0
    finally:
        await sender.stop()
        await receiver.stop()


async def test_an_outage_is_counted_once_and_redis_back_means_a_resync(
    server: RedisServer,
) -> None:
    resyncs: list[int] = []
    inbox: list[bytes] = []
    shared = _registry(server.url, "b1", inbox, resyncs)
    await shared.start()
    try:
        server.stop()
        for n in range(20):
            shared.write("hcsp:x", PresenceRecord("b1", 1, n, KEY, None), 1000)
            await asyncio.sleep(0.01)
        await async_wait_until(lambda: not shared.up, 5, what="outage seen")
        assert await shared.read("hcsp:x") is None
        assert shared.counters.outages == 1 and shared.counters.dropped_writes >= 1
        await asyncio.sleep(0.3)
        server.start()
        await async_wait_until(lambda: shared.up and resyncs == [1], 5, what="resync")
        assert shared.counters.outages == 1 and shared.outage_seconds() >= 0.3
        # Subscribed again: messages reach it after the outage.
        other = _registry(server.url, "b2", [], [])
        await other.start()
        try:
            other.publish("b1", b"again")
            await async_wait_until(lambda: inbox == [b"again"], 5, what="message")
        finally:
            await other.stop()
    finally:
        await shared.stop()


async def test_starting_without_redis_is_an_outage_not_a_failure(tmp_path: Path) -> None:
    port = free_port()
    shared = _registry(f"redis://127.0.0.1:{port}/0", "b1", [], [])
    await shared.start()
    try:
        assert not shared.up and shared.counters.outages == 1
        assert await shared.read("hcsp:x") is None
    finally:
        await shared.stop()


async def test_unix_socket_and_sentinel_urls(tmp_path: Path) -> None:
    server = RedisServer(server_binaries()[0], tmp_path / "r")
    sock = tmp_path / "r" / "redis.sock"
    master_port = free_port()
    sentinel_port = free_port()
    processes = [
        subprocess.Popen(
            [
                *(server.binary, "--port", str(master_port), "--bind", "127.0.0.1"),
                *("--save", "", "--unixsocket", str(sock), "--dir", str(tmp_path / "r")),
            ],
            stdout=subprocess.DEVNULL,
        )
    ]
    conf = tmp_path / "r" / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path / 'r'}\n"
        f"sentinel monitor roost 127.0.0.1 {master_port} 1\n"
    )
    processes.append(
        subprocess.Popen([server.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for url in (f"unix://{sock}", f"redis+sentinel://127.0.0.1:{sentinel_port}/roost"):
            # The sentinel needs a moment to learn its master.
            shared = await _registry_once_up(url)
            try:
                assert shared.up, url
                shared.write("hcsp:y", PresenceRecord("b1", 1, 3, KEY, None), 5000)
                await async_wait_until(lambda s=shared: s.counters.writes == 1, 5, what=url)
                found = await shared.read("hcsp:y")
                assert found is not None and found.counter == 3
            finally:
                await shared.stop()
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def test_urls_that_name_no_redis_are_config_errors() -> None:
    for url in ("http://x", "redis+sentinel:///roost", "redis+sentinel://h:1/"):
        with pytest.raises(ConfigError):
            connect_redis(url)


async def test_rediss_url_with_the_deployments_ca(tmp_path: Path) -> None:
    # TLS to Redis (rediss://), the server certificate issued by a test CA and checked
    # by the client against it (ssl_ca_certs) with its host name.
    from roost.pki.certs import Role, cert_to_pem, key_to_pem
    from tests.helpers.pki import TestCA

    ca = TestCA()
    node = ca.issue(Role.BROKER, ips=("127.0.0.1",))
    (tmp_path / "ca.pem").write_bytes(cert_to_pem(ca.cert))
    (tmp_path / "cert.pem").write_bytes(cert_to_pem(node.cert))
    (tmp_path / "key.pem").write_bytes(key_to_pem(node.key))
    server = RedisServer(server_binaries()[0], tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [
            *(server.binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(tmp_path / "cert.pem")),
            *("--tls-key-file", str(tmp_path / "key.pem")),
            *("--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "no"),
            *("--save", "", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
    try:
        shared = await _registry_once_up(url)
        try:
            assert shared.up
            shared.write("hcsp:z", PresenceRecord("b1", 1, 9, KEY, None), 5000)
            await async_wait_until(lambda: shared.counters.writes == 1, 5, what="write")
            found = await shared.read("hcsp:z")
            assert found is not None and found.counter == 9
        finally:
            await shared.stop()
        # Another CA's client refuses the server: an outage, not a connection.
        other = TestCA()
        (tmp_path / "other.pem").write_bytes(cert_to_pem(other.cert))
        wrong = _registry(url.replace("ca.pem", "other.pem"), "b1", [], [])
        await wrong.start()
        try:
            assert not wrong.up
        finally:
            await wrong.stop()
    finally:
        process.terminate()
        process.wait(10)
