"""Hostile input against a hub on loopback: every refusal, at every layer, is counted under
a reason and logged; unauthenticated connections are capped in total and per source while a
real device still connects (docs/limits.md). The hub runs in this event loop; the memory
test runs it as a real process and reads its RSS from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from roost.admission import AdmissionConfig
from roost.channel import ChannelCoreConfig, DeviceChannelCore
from roost.cli.home import make_home
from roost.cli.run import build_hub_daemon
from roost.config import HubConfig, load_device_config, load_hub_config
from roost.device.daemon import DeviceDaemon, read_own_certificate
from roost.device.spool import FrameSpool
from roost.hcsp.announce import encode_announcement
from roost.hcsp.channel import ChannelConfig, FrameMessage, encode_message
from roost.hcsp.documents import Endpoint, HubAddress, Subscribe, encode_document
from roost.hub.api import start_api
from roost.hub.daemon import HubDaemon
from roost.hub.recorder import Recorder
from roost.hub.remote import start_remote
from roost.pki.certs import certs_from_pem, identifier_of, key_from_pem
from roost.pki.tls import client_context
from roost.pki.updater import TrustUpdater, UpdateConfig
from tests.helpers.waits import async_wait_until

pytestmark = pytest.mark.timeout(90)
NO_FETCH = UpdateConfig(fetch_timeout=0.5)
# Short deadlines keep the suite fast; every refusal gets its own line (interval 0).
FAST = AdmissionConfig(
    max_unauthenticated=24,
    max_unauthenticated_per_source=8,
    handshake_timeout_s=0.6,
    http_header_timeout_s=0.6,
    http_idle_timeout_s=0.8,
    http_max_body_bytes=64 * 1024,
    replace_rate_per_device=0.01,
    replace_burst_per_device=2,
    refusal_log_interval=1e-6,
)


@dataclasses.dataclass
class Scene:
    path: Path
    hub: HubDaemon
    api: tuple[str, int]
    remote: tuple[str, int]

    def rejected(self, reason: str) -> int:
        return int(self.hub.status().counters.connections_rejected.get(reason, 0))


def _config(path: Path, admission: AdmissionConfig = FAST) -> HubConfig:
    config = load_hub_config(path / "hub-1.toml")
    return dataclasses.replace(config, admission=admission, refusal_log_interval=1e-6)


@contextlib.asynccontextmanager
async def _running(path: Path, admission: AdmissionConfig = FAST) -> AsyncIterator[Scene]:
    config = _config(path, admission)
    trust = TrustUpdater(config.trust_dir, config=NO_FETCH)
    hub = build_hub_daemon(config, trust, Recorder(config.state_dir / "recordings", 1 << 30))
    await hub.start()
    api = await start_api(hub, "127.0.0.1", 0, admission=hub.admission)
    guard, merkle_log = await start_remote(hub)
    try:
        yield Scene(path, hub, ("127.0.0.1", api.bound_port), ("127.0.0.1", guard.bound_port))
    finally:
        await api.cleanup()
        await guard.stop()
        merkle_log.close()
        await hub.stop()


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    make_home(tmp_path, hubs=2, devices=1, loopback=True, fps=5.0)
    async with _running(tmp_path) as running:
        yield running


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def _until(what: str, condition: object, seconds: float = 10.0) -> None:
    await async_wait_until(condition, seconds, what=what)  # type: ignore[arg-type]


async def _raw(address: tuple[str, int], data: bytes, *, source: str = "127.0.0.1") -> bytes:
    """Connect from ``source``, send ``data``, read until the hub closes (bounded)."""
    reader, writer = await asyncio.open_connection(*address, local_addr=(source, 0))
    writer.write(data)
    try:
        async with asyncio.timeout(5):
            return await reader.read(1 << 20)
    finally:
        writer.close()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _foreign_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate from a CA the hub has never heard of."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "intruder.pem", directory / "intruder.key"
    cert_file.write_bytes(cert.public_bytes(Encoding.PEM))
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_file, key_file


async def _tls(
    address: tuple[str, int], context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        async with asyncio.timeout(5):
            return await asyncio.open_connection(*address, ssl=context)
    except (OSError, ssl.SSLError):
        return None


async def test_tls_refusals_on_the_device_and_remote_ports_are_counted_and_logged(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roost")
    device_port = scene.hub.bound_address
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.check_hostname = False
    no_cert.verify_mode = ssl.CERT_NONE
    foreign = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    foreign.check_hostname = False
    foreign.verify_mode = ssl.CERT_NONE
    foreign.load_cert_chain(*_foreign_cert(scene.path))

    # Random bytes: not a TLS handshake, refused at once on both ports.
    for address in (device_port, scene.remote):
        await _raw(address, b"\x00" + os.urandom(600))
    await _until("two not-tls", lambda: scene.rejected("not-tls") >= 2)
    # No client certificate, and one from a foreign CA, on the device port.
    for context in (no_cert, foreign):
        opened = await _tls(device_port, context)
        if opened is not None:
            reader = opened[0]
            with pytest.raises((ConnectionError, ssl.SSLError, TimeoutError)):
                async with asyncio.timeout(5):
                    if not await reader.read(1):
                        raise ConnectionResetError
            opened[1].close()
    await _until("client-cert-required", lambda: scene.rejected("client-cert-required") >= 1)
    await _until("client-cert-untrusted", lambda: scene.rejected("client-cert-untrusted") >= 1)
    # Idle, and garbage then hang (a TLS record header announcing bytes that never come):
    # both end at the handshake deadline, not asyncio's 60 s.
    started = time.monotonic()
    idle = [await asyncio.open_connection(*a) for a in (device_port, scene.remote)]
    hang = await asyncio.open_connection(*device_port)
    hang[1].write(b"\x16\x03\x01\x02\x00\x01")
    for reader, _ in [*idle, hang]:
        async with asyncio.timeout(5):
            assert await reader.read(1) == b""
    assert time.monotonic() - started < FAST.handshake_timeout_s + 2.0
    await _until("three timeouts", lambda: scene.rejected("tls-handshake-timeout") >= 3)
    for _, writer in [*idle, hang]:
        writer.close()

    assert _lines(caplog, "device channel from 127.0.0.1: not-tls")
    assert _lines(caplog, "remote entrance from 127.0.0.1: not-tls")
    assert _lines(caplog, "device channel from 127.0.0.1: client-cert-required")
    assert _lines(caplog, "device channel from 127.0.0.1: client-cert-untrusted")
    assert _lines(caplog, "remote entrance from 127.0.0.1: tls-handshake-timeout")
    assert _lines(caplog, "device channel from 127.0.0.1: tls-handshake-timeout")
    # Nothing was held: every slot came back.
    assert scene.hub.admission.core.unauthenticated == 0


async def test_http_refusals_are_counted_with_one_line_and_no_traceback(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = scene.api
    big_header = b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    answer = await _raw(api, big_header)
    assert _status(answer) == 400
    # A 10 MB body is refused from its Content-Length, before a byte of it is sent.
    answer = await _raw(
        api, b"POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    )
    assert _status(answer) == 413
    answer = await _raw(api, b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(answer) == 404
    answer = await _raw(api, b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(answer) == 404
    answer = await _raw(api, b"BREW /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(answer) == 400
    answer = await _raw(api, os.urandom(64) + b"\r\n\r\n")
    assert _status(answer) == 400
    # A silent connection and one that dribbles its headers end at their deadlines.
    silent = await _raw(api, b"")
    dribble = await _raw(api, b"GET /api/status HTTP/1.1\r\n")
    assert silent == dribble == b""

    counts = scene.hub.status().counters.connections_rejected
    assert counts.get("header-too-large", 0) >= 1
    assert counts.get("body-too-large", 0) == 1
    assert counts.get("not-found", 0) == 2
    # An unknown method, and random bytes (read as one, or as a request line that fails).
    assert counts.get("method-not-allowed", 0) >= 1
    assert counts.get("method-not-allowed", 0) + counts.get("bad-request", 0) == 2
    assert counts.get("silent-connection", 0) == 1
    assert counts.get("header-timeout", 0) == 1
    assert _lines(caplog, "api from 127.0.0.1: body-too-large")
    assert _lines(caplog, "api from 127.0.0.1: header-too-large")
    assert _lines(caplog, "api from 127.0.0.1: silent-connection")
    # aiohttp's traceback per malformed request is gone: no record carries one.
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("aiohttp")]
    assert not [r for r in caplog.records if r.exc_info]
    assert scene.hub.admission.core.unauthenticated == 0


async def test_refusals_are_logged_once_per_source_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_home(tmp_path, hubs=1, devices=0, loopback=True)
    config = _config(tmp_path, dataclasses.replace(FAST, refusal_log_interval=60.0))
    trust = TrustUpdater(config.trust_dir, config=NO_FETCH)
    hub = build_hub_daemon(config, trust, Recorder(config.state_dir / "recordings", 1 << 30))
    await hub.start()
    caplog.set_level(logging.INFO, logger="roost")
    try:
        for _ in range(20):
            await _raw(hub.bound_address, b"GET / HTTP/1.0\r\n\r\n")
        await _until("20 not-tls", lambda: hub.counters.connections_rejected["not-tls"] >= 20)
    finally:
        await hub.stop()
    assert len(_lines(caplog, "device channel from 127.0.0.1")) == 1


def _device_context(path: Path) -> tuple[ssl.SSLContext, str]:
    device = load_device_config(path / "device-1.toml")
    trust = TrustUpdater(device.trust_dir, config=NO_FETCH)
    context = client_context(trust.state.anchors, device.cert, device.key)
    return context, identifier_of(read_own_certificate(device))


async def _device_channel(
    scene: Scene, context: ssl.SSLContext, device_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A device channel opened by hand up to the welcome (the device's own key)."""
    reader, writer = await asyncio.open_connection(*scene.hub.bound_address, ssl=context)
    core = DeviceChannelCore(
        ChannelCoreConfig(),
        device_id=device_id,
        hub_id=scene.hub.identifier,
        last_acked=0,
        now=0.0,
    )
    writer.write(core.data_to_send())
    return reader, writer


async def test_a_channel_cut_mid_frame_and_repeated_replacement_are_counted(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roost")
    context, device_id = _device_context(scene.path)
    _reader, writer = await _device_channel(scene, context, device_id)
    await _until("device admitted", lambda: device_id in scene.hub.sessions)
    frame = encode_message(FrameMessage(1, 1, "image/jpeg", b"x" * 1000), ChannelConfig())
    writer.write(frame[:500])
    await writer.drain()
    writer.close()
    await _until(
        "truncated",
        lambda: scene.hub.status().counters.channel_errors.get("truncated", 0) == 1,
    )
    assert _lines(caplog, "device channel from 127.0.0.1: truncated")

    # The key's holder opens channel after channel for the same device: each replacement is
    # counted, and beyond the burst the newcomer is refused and the channel in place stays.
    channels = [await _device_channel(scene, context, device_id) for _ in range(4)]
    await _until("replacements", lambda: scene.rejected("session-replaced") == 2)
    await _until("limited", lambda: scene.rejected("replace-limited") == 1)
    assert _lines(caplog, "device channel from 127.0.0.1: session-replaced")
    assert _lines(caplog, "device channel from 127.0.0.1: replace-limited")
    # The refused newcomer gets no welcome; the channel in place is still the hub's.
    async with asyncio.timeout(5):
        assert await channels[3][0].read(65536) == b""
    assert device_id in scene.hub.sessions
    for _, w in channels:
        w.close()


async def test_more_than_the_unauthenticated_cap_is_refused_while_a_device_connects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_home(tmp_path, hubs=1, devices=1, loopback=True, fps=5.0)
    # A deadline long enough for the whole attack to be held at once, even on a busy host.
    async with _running(tmp_path, dataclasses.replace(FAST, handshake_timeout_s=4.0)) as scene:
        await _cap_attack(scene, caplog)


async def _cap_attack(scene: Scene, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="roost")
    address = scene.hub.bound_address
    # One attacking host (127.0.0.2) opens 20 silent connections over two ports: it gets
    # its 8 slots (every port counts together), the rest is refused at once.
    held = []
    for index in range(20):
        target = address if index % 2 else scene.remote
        held.append(await asyncio.open_connection(*target, local_addr=("127.0.0.2", 0)))
    await _until("per-source refusals", lambda: scene.rejected("source-unauthenticated-full") == 12)
    assert scene.hub.admission.core.held_by("127.0.0.2") == 8
    assert _lines(caplog, "from 127.0.0.2: source-unauthenticated-full")
    # Two more hosts fill the daemon's 24 slots; the last one's excess is refused.
    for source in ("127.0.0.3", "127.0.0.4"):
        for _ in range(8):
            held.append(await asyncio.open_connection(*address, local_addr=(source, 0)))
    await _until("total", lambda: scene.hub.admission.core.unauthenticated == 24)
    extra = await asyncio.open_connection(*address, local_addr=("127.0.0.5", 0))
    await _until("unauthenticated-full", lambda: scene.rejected("unauthenticated-full") == 1)
    assert _lines(caplog, "from 127.0.0.5: unauthenticated-full")
    extra[1].close()
    # The attack's slots end at the handshake deadline; a real device then connects even
    # while the first attacker keeps opening connections.
    await _until("slots freed", lambda: scene.hub.admission.core.unauthenticated == 0)
    for _ in range(8):
        held.append(await asyncio.open_connection(*address, local_addr=("127.0.0.2", 0)))
    device_config = load_device_config(scene.path / "device-1.toml")
    device = DeviceDaemon(
        device_config,
        TrustUpdater(device_config.trust_dir, config=NO_FETCH),
        FrameSpool(None, 1000, 1 << 26),
        read_own_certificate(device_config),
    )
    await device.start()
    try:
        await _until("device admitted", lambda: len(scene.hub.sessions) == 1, 20)
    finally:
        await device.stop()
        for _, writer in held:
            writer.close()


async def test_an_announcement_claiming_the_hubs_identifier_is_verified_and_refused(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roost")
    hub = scene.hub
    other = load_hub_config(scene.path / "hub-2.toml")
    other_key = key_from_pem(other.key.read_bytes())
    other_der = certs_from_pem(other.cert.read_bytes())[0].public_bytes(Encoding.DER)
    own_der = hub.certificate.public_bytes(Encoding.DER)
    wall_ms = int(time.time() * 1000)
    claim = Subscribe(
        HubAddress(hub.identifier, Endpoint("127.0.0.1", hub.bound_port)),
        ("hcsp",),
        0,
        16,
        wall_ms,
        wall_ms,
    )
    document = encode_document(claim)
    forged = [
        encode_announcement(document, other_der, other_key, 4096),  # another hub's certificate
        encode_announcement(document, own_der, other_key, 4096),  # ours, but not our key
    ]
    echoes = hub.core.counters.own_echoes
    port = hub.config.announce.udp.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in forged:
            sender.sendto(datagram, ("127.0.0.1", port))
    rejected = hub.core.counters.rejected
    await _until("forged", lambda: rejected["forged-own-id"] == 1 and rejected["bad-signature"])
    assert hub.core.counters.own_echoes == echoes
    assert _lines(caplog, "forged-own-id")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _client_hello_prefix() -> bytes:
    """The first bytes of a real ClientHello: the hub starts parsing and then waits."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


def _half_open_round(address: tuple[str, int], count: int, prefix: bytes) -> None:
    sockets = []
    try:
        for index in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((f"127.0.1.{1 + index % 12}", 0))
            sock.settimeout(5)
            sock.connect(address)
            sock.sendall(prefix)
            sockets.append(sock)
        deadline = time.monotonic() + 10
        for sock in sockets:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(OSError):
                sock.recv(1)
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_hub_memory_comes_back_after_rounds_of_half_open_tls(tmp_path: Path) -> None:
    make_home(tmp_path, hubs=1, devices=0, loopback=True)
    config_file = tmp_path / "hub-1.toml"
    with config_file.open("a") as config:
        config.write("\n[admission]\nhandshake_timeout_s = 1.0\n")
    log = (tmp_path / "hub-1.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "roost", "hub", "run", "--config", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert '"listen"' in line, line
        host, _, port = str(json.loads(line)["listen"]).rpartition(":")
        address = (host, int(port))
        prefix = _client_hello_prefix()
        baseline = _rss_kib(process.pid)
        rss = []
        for _ in range(6):
            _half_open_round(address, 300, prefix)
            # The hub trims its heap a second after the last handshake slot is free.
            time.sleep(2.0)
            rss.append(_rss_kib(process.pid))
        print("hub RSS before and after each round (KiB):", baseline, rss)
        assert max(rss[1:]) - rss[0] < 10 * 1024, rss
        assert rss[-1] - baseline < 10 * 1024, (baseline, rss)
        # The refusals reached the hub's log without --verbose, one line per source per
        # interval (12 sources here), not one per connection.
        lines = (tmp_path / "hub-1.log").read_text().splitlines()
        refusals = [line for line in lines if "device channel from 127.0.1." in line]
        assert refusals and len(refusals) <= 2 * 12, refusals[:30]
        assert not [line for line in lines if "Traceback" in line]
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
