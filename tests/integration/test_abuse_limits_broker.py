"""Hostile input against the broker on loopback (its TLS control port, UDP port and API):
every refusal is counted under a reason and logged; unauthenticated connections are capped
per source; the UDP limit counts a host once whatever its ports (docs/limits.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost.admission import AdmissionConfig
from roost.cli.home import make_home
from roost.config import load_broker_config
from roost.pki.certs import certs_from_pem, key_from_pem
from roost.pki.updater import TrustUpdater
from roost.rendezvous.broker_aio import BrokerDaemon
from tests.helpers.waits import async_wait_until
from tests.integration.test_abuse_limits import _foreign_cert, _lines, _raw, _status

pytestmark = pytest.mark.timeout(60)
FAST = AdmissionConfig(
    max_unauthenticated=24,
    max_unauthenticated_per_source=8,
    handshake_timeout_s=0.6,
    http_header_timeout_s=0.6,
    http_idle_timeout_s=0.8,
    http_max_body_bytes=64 * 1024,
    refusal_log_interval=1e-6,
)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[BrokerDaemon]:
    make_home(tmp_path, hubs=1, devices=0, loopback=True)
    config = load_broker_config(tmp_path / "broker.toml")
    core = dataclasses.replace(config.core, log_interval_s=1e-6)
    config = dataclasses.replace(config, admission=FAST, core=core, api=("127.0.0.1", 0))
    daemon = BrokerDaemon(
        config,
        TrustUpdater(config.trust_dir),
        certs_from_pem(config.cert.read_bytes())[0],
        key_from_pem(config.key.read_bytes()),
    )
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def _rejected(daemon: BrokerDaemon, reason: str) -> int:
    return int(daemon.status().counters.connections_rejected.get(reason, 0))


async def _until(what: str, condition: object, seconds: float = 10.0) -> None:
    await async_wait_until(condition, seconds, what=what)  # type: ignore[arg-type]


async def test_tls_port_refusals_are_counted_logged_and_capped(
    broker: BrokerDaemon, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="roost")
    address = ("127.0.0.1", broker.tls_port)
    await _raw(address, b"\x00" + os.urandom(600))
    await _until("not-tls", lambda: _rejected(broker, "not-tls") == 1)
    # Client certificates are optional on the broker, but one that is presented must chain.
    import ssl

    foreign = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    foreign.check_hostname = False
    foreign.verify_mode = ssl.CERT_NONE
    foreign.load_cert_chain(*_foreign_cert(tmp_path))
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(*address, ssl=foreign)
            writer.close()
    except (OSError, ssl.SSLError):
        pass
    await _until("untrusted", lambda: _rejected(broker, "client-cert-untrusted") == 1)
    # One host's silent connections: 8 held until the handshake deadline, the rest refused.
    held = [await asyncio.open_connection(*address, local_addr=("127.0.0.2", 0)) for _ in range(12)]
    await _until("per source", lambda: _rejected(broker, "source-unauthenticated-full") == 4)
    await _until("timeouts", lambda: _rejected(broker, "tls-handshake-timeout") == 8)
    assert broker.admission.core.unauthenticated == 0
    for _, writer in held:
        writer.close()
    assert _lines(caplog, "broker channel from 127.0.0.1: not-tls")
    assert _lines(caplog, "broker channel from 127.0.0.1: client-cert-untrusted")
    assert _lines(caplog, "broker channel from 127.0.0.2: source-unauthenticated-full")
    assert _lines(caplog, "broker channel from 127.0.0.2: tls-handshake-timeout")


async def test_api_refusals_are_counted_with_one_line_each(
    broker: BrokerDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = broker.api_port
    assert port is not None
    api = ("127.0.0.1", port)
    header = b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert _status(await _raw(api, header)) == 400
    body = b"POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    assert _status(await _raw(api, body)) == 413
    assert _status(await _raw(api, b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")) == 404
    assert await _raw(api, b"") == b""
    counts = broker.status().counters.connections_rejected
    assert counts.get("header-too-large") == 1
    assert counts.get("body-too-large") == 1
    assert counts.get("not-found") == 1
    await _until("silent", lambda: _rejected(broker, "silent-connection") == 1)
    assert _lines(caplog, "broker api from 127.0.0.1: header-too-large")
    assert _lines(caplog, "broker api from 127.0.0.1: body-too-large")
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_udp_flood_from_64_ports_of_one_host_is_one_source(
    broker: BrokerDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roost")
    burst = int(broker.config.core.udp_source_burst)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.3", 0))
        # Each port stays under the per-source burst; together they are far above it.
        per_port = burst // 16
        for sock in sockets:
            for _ in range(per_port):
                sock.sendto(b"garbage", ("127.0.0.1", broker.udp_port))
        # Keyed by port, no port would ever be limited; keyed by host, the host spends one
        # bucket: what got past the limit (to be refused as bad-magic) is one burst.
        await _until("rate-limited", lambda: broker.core.rejections["rate-limited"] > 0)
        await asyncio.sleep(0.2)
        assert broker.core.rejections["bad-magic"] <= burst + 20
    finally:
        for sock in sockets:
            sock.close()
    assert _lines(caplog, "refused 127.0.0.3: rate-limited")
