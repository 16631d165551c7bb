"""The broker daemon for real on loopback: UDP (STUN, RREG/RACK, refusals), TLS with and
without client certificates, the status API, coturn's STUN client, and `roost broker run`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from roost.cli.home import make_home
from roost.config import BrokerConfig, load_broker_config
from roost.framing import RECORD_HEADER_SIZE, encode_record
from roost.pki.certs import certs_from_pem
from roost.pki.tls import client_context
from roost.pki.updater import TrustUpdater
from roost.rendezvous import control, stun
from roost.rendezvous.broker_aio import BrokerDaemon, fetch_broker_status
from roost.rendezvous.messages import Candidate, Registration, decode_ack, encode_registration
from tests.helpers.tools import require_tool
from tests.helpers.waits import scaled

LOOPBACK = "127.0.0.1"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    make_home(tmp_path / "home", hubs=1, devices=0, loopback=True)
    return tmp_path / "home"


def _config(home: Path, **core: Any) -> BrokerConfig:
    config = load_broker_config(home / "broker.toml")
    return dataclasses.replace(
        config,
        udp=(LOOPBACK, 0),
        tls=(LOOPBACK, 0),
        api=(LOOPBACK, 0),
        core=dataclasses.replace(config.core, **core) if core else config.core,
    )


async def _daemon(home: Path, **core: Any) -> BrokerDaemon:
    config = _config(home, **core)
    trust = TrustUpdater(config.trust_dir)
    from roost.cli.broker import build_broker_daemon

    daemon = build_broker_daemon(config, trust)
    await daemon.start()
    return daemon


@pytest.fixture
async def broker(home: Path) -> AsyncIterator[BrokerDaemon]:
    daemon = await _daemon(home)
    try:
        yield daemon
    finally:
        await daemon.stop()


class _Udp:
    """A real client UDP socket on loopback, read with the event loop (bounded waits)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setblocking(False)

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def ask(self, data: bytes, port: int, wait: float = 1.0) -> bytes | None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, data, (LOOPBACK, port))
        # Only the broker's answer counts: on a machine where other homes run, a datagram
        # from another process (an announcement sent to a port this socket happens to
        # have) may arrive too.
        deadline = loop.time() + scaled(wait)
        while (left := deadline - loop.time()) > 0:
            try:
                answer, source = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 2048), left)
            except TimeoutError:
                return None
            if source == (LOOPBACK, port):
                return answer
        return None

    def close(self) -> None:
        self.sock.close()


async def _tls(
    home: Path, port: int, node: str | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    anchors = certs_from_pem((home / "ca" / "gen-1" / "ca-cert.pem").read_bytes())
    if node is None:
        context = client_context(anchors)
    else:
        context = client_context(anchors, home / node / "cert.pem", home / node / "key.pem")
    return await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port, ssl=context), scaled(5.0))


async def _call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, op: str, **fields: Any
) -> control.ControlMessage | control.RelayRecord:
    writer.write(encode_record(control.encode_control(op, **fields)))
    await writer.drain()
    header = await asyncio.wait_for(reader.readexactly(RECORD_HEADER_SIZE), scaled(5.0))
    body = await reader.readexactly(int.from_bytes(header, "big"))
    return control.decode_channel_body(body)


def _hub_id(home: Path) -> str:
    text = (home / "hub-1.toml").read_text()
    found = re.search(r"\((hcsp:[A-Za-z0-9_-]{22})\)", text)
    assert found is not None
    return found.group(1)


async def test_stun_from_a_real_socket_names_its_address_and_is_never_larger(
    broker: BrokerDaemon,
) -> None:
    client = _Udp()
    try:
        request = stun.build_binding_request(b"roost-test-1")
        answer = await client.ask(request, broker.udp_port)
        assert answer is not None and len(answer) <= len(request)
        mapped = stun.parse_binding_response(answer, b"roost-test-1")
        assert mapped == Candidate.of(LOOPBACK, client.port)
        # A bare 20-byte request would get a 40-byte answer: refused and counted.
        bare = stun.encode_stun(stun.StunMessage(stun.BINDING_REQUEST, b"roost-test-2"))
        assert await client.ask(bare, broker.udp_port, wait=0.3) is None
        assert broker.status().counters.refusals["reply-too-large"] == 1
    finally:
        client.close()


async def test_enroll_register_forge_and_flood(home: Path, broker: BrokerDaemon) -> None:
    hub_id = _hub_id(home)
    reader, writer = await _tls(home, broker.tls_port, "hub-1")
    client = _Udp()
    try:
        enrolled = await _call(reader, writer, "enroll")
        assert isinstance(enrolled, control.Enrolled) and enrolled.identifier == hub_id
        datagram = encode_registration(Registration(hub_id, 1, ()), enrolled.key)
        ack = await client.ask(datagram, broker.udp_port)
        assert ack is not None and len(ack) <= len(datagram)
        assert decode_ack(ack).observed == Candidate.of(LOOPBACK, client.port)
        assert broker.status().registry_size == 1
        # A forged registration (wrong key) and a replay get nothing back.
        forged = encode_registration(Registration(hub_id, 2, ()), bytes(32))
        assert await client.ask(forged, broker.udp_port, wait=0.3) is None
        assert await client.ask(datagram, broker.udp_port, wait=0.3) is None
        # A flood from one source is shed by its bucket (burst 100), every answer small.
        request = stun.build_binding_request(b"flood-flood!")
        loop = asyncio.get_running_loop()
        for _ in range(300):
            await loop.sock_sendto(client.sock, request, (LOOPBACK, broker.udp_port))
        answers = 0
        while (extra := await client.ask(b"", broker.udp_port, wait=0.3)) is not None:
            assert len(extra) <= len(request)
            answers += 1
        refusals = broker.status().counters.refusals
        assert refusals["bad-tag"] == 1 and refusals["counter-not-increasing"] == 1
        assert 50 <= answers <= 110 and refusals["rate-limited"] >= 190
        assert broker.status().counters.stun_answers == answers
        # keepalive on the held connection is echoed.
        assert await _call(reader, writer, "keepalive") == control.Keepalive()
    finally:
        client.close()
        writer.close()


async def test_issuer_without_certificate_looks_up_the_enrolled_hub(
    home: Path, broker: BrokerDaemon
) -> None:
    hub_id = _hub_id(home)
    hub_reader, hub_writer = await _tls(home, broker.tls_port, "hub-1")
    reader, writer = await _tls(home, broker.tls_port, None)
    try:
        await _call(hub_reader, hub_writer, "enroll")
        result = await _call(reader, writer, "lookup", target=hub_id)
        hub_der = certs_from_pem((home / "hub-1" / "cert.pem").read_bytes())[0]
        from cryptography.hazmat.primitives.serialization import Encoding

        assert result == control.LookupResult(hub_id, hub_der.public_bytes(Encoding.DER))
        # An issuer cannot enroll.
        refused = await _call(reader, writer, "enroll")
        assert refused == control.Error(control.Reason.NOT_EQUIPMENT)
        status = await asyncio.to_thread(fetch_broker_status, LOOPBACK, broker.api_port or 0)
        assert status["counters"]["lookups"] == 1 and status["channels"] == 2
    finally:
        writer.close()
        hub_writer.close()


@pytest.mark.real
async def test_coturn_stun_client_gets_the_mapped_address(home: Path) -> None:
    tool = require_tool("turnutils_stunclient")
    # turnutils sends bare 20-byte requests: the strict broker refuses them (amplification).
    strict = await _daemon(home)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            await asyncio.to_thread(
                subprocess.run,
                [tool, "-p", str(strict.udp_port), LOOPBACK],
                capture_output=True,
                timeout=scaled(1.5),
            )
        assert strict.status().counters.refusals["reply-too-large"] >= 1
        assert strict.status().counters.stun_answers == 0
    finally:
        await strict.stop()
    # Allowing twice the request's size serves it.
    loose = await _daemon(home, stun_amplification=2.0)
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [tool, "-p", str(loose.udp_port), LOOPBACK],
            capture_output=True,
            text=True,
            timeout=scaled(10.0),
        )
        found = re.search(r"reflexive addr: ([0-9.]+):(\d+)", done.stdout)
        assert found is not None, done.stdout
        assert found.group(1) == LOOPBACK and 1 <= int(found.group(2)) <= 65535
        assert loose.status().counters.stun_answers >= 1
    finally:
        await loose.stop()


def test_roost_broker_run_answers_stun_and_status_reads_it(home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    config = load_broker_config(home / "broker.toml")
    process = subprocess.Popen(
        [sys.executable, "-m", "roost", "broker", "run", "--config", str(home / "broker.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        assert started["udp"] == list(config.udp) and started["tls"] == list(config.tls)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(scaled(2.0))
        try:
            request = stun.build_binding_request(b"cli-request!")
            sock.sendto(request, config.udp)
            answer, _ = sock.recvfrom(2048)
            mapped = stun.parse_binding_response(answer, b"cli-request!")
            assert mapped == Candidate.of(LOOPBACK, sock.getsockname()[1])
        finally:
            sock.close()
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "roost",
                "broker",
                "status",
                "--config",
                str(home / "broker.toml"),
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=scaled(20.0),
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["counters"]["stun_answers"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=scaled(10.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0


async def test_a_client_certificate_of_another_ca_is_refused(
    tmp_path: Path, home: Path, broker: BrokerDaemon
) -> None:
    from roost.pki.certs import Role, cert_to_pem, key_to_pem
    from tests.helpers.pki import TestCA

    stranger = TestCA().issue(Role.HUB)
    (tmp_path / "cert.pem").write_bytes(cert_to_pem(stranger.cert))
    (tmp_path / "key.pem").write_bytes(key_to_pem(stranger.key))
    anchors = certs_from_pem((home / "ca" / "gen-1" / "ca-cert.pem").read_bytes())
    context = client_context(anchors, tmp_path / "cert.pem", tmp_path / "key.pem")
    with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError)):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, broker.tls_port, ssl=context), scaled(5.0)
        )
        # TLS 1.3 reports the server's refusal of a client certificate on the first read.
        await _call(reader, writer, "enroll")
    assert broker.status().counters.enrollments == 0
