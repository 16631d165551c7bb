"""The NAT lab pieces of bench/remote_session.py: the home with its broker on the lab's
bridge, the inbound delay, router A's port forward, the TLS relay process, hub-2 served in
process with the benchmark's `bulk` call, and small helpers on the event loop.

The lab itself is `tests/helpers/natlab.py`, imported by path (remote_session.py puts the
checkout root on `sys.path` before importing this module).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from roost.cli.common import now_utc
from roost.cli.home import make_home
from roost.config import load_hub_config
from roost.files import atomic_write
from roost.guard.aio import GuardServer, GuardServerConfig
from roost.guard.remote import CallResult
from roost.guard.userstore import SqliteUserStore
from roost.pki.authority import Authority
from roost.pki.certs import Role, cert_to_pem, certs_from_pem, key_from_pem, key_to_pem
from roost.pki.tls import client_context, server_context
from roost.pki.updater import TrustUpdater
from roost.rendezvous.agent_aio import BrokerAgent
from roost.rendezvous.paths import UdpMux
from roost.rendezvous.quic import quic_connect, quic_serve
from roost.rendezvous.stun import build_binding_request, parse_binding_response
from tests.helpers.natlab import BROKER_IP, REFLECTOR_IP, NatLab, Side

__all__ = [
    "BROKER_LIMITS",
    "PASSWORD",
    "RELAY_ROLE",
    "TLS_PORT_FORWARD",
    "Echo",
    "bulk_handler",
    "delay_inbound",
    "hold_connection",
    "hostport",
    "loopback_ceiling",
    "mux_on",
    "port_forward",
    "prepare_home",
    "read_all",
    "reflexive_address",
    "relay_serve",
    "roost_cli",
    "serve_hub2",
    "udp_echo_rtts",
    "wait_for",
]

PASSWORD = "bench owner password"
BROKER_LIMITS = {
    "tls_source_rate": 1000.0,
    "tls_source_burst": 1000.0,
    "relay_max_bytes": 1 << 34,
    "relay_max_s": 3600.0,
    "target_rate": 1000.0,
    "target_burst": 1000.0,
}
TLS_PORT_FORWARD = 17400
RELAY_ROLE = struct.Struct(">B")


# ------------------------------------------------------------------ the home


def roost_cli(*args: str, stdin: str = "") -> None:
    done = subprocess.run(
        [sys.executable, "-m", "roost", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"roost {' '.join(args[:2])} failed: {done.stderr[-1500:]}")


def prepare_home(base: Path, fps: float) -> dict[str, Any]:
    """A loopback home whose broker lives on the lab's bridge: the broker's certificate
    names 198.18.0.1 (the issuer checks the dialled host), it binds there, and each hub's
    `[broker]` table dials it from a socket on every address of its namespace, with
    ``hold_connection = false`` (the wake-up flow; `hold_connection` switches hub-1 to the
    held one)."""
    home = base / "home"
    summary = make_home(home, hubs=2, devices=1, loopback=True, fps=fps)
    issued = Authority.load(home / "ca").issue(Role.BROKER, now_utc(), dns=[], ips=[BROKER_IP])
    atomic_write(home / "broker" / "key.pem", key_to_pem(issued.key), mode=0o600)
    atomic_write(home / "broker" / "cert.pem", cert_to_pem(issued.cert))
    config = home / "broker.toml"
    text = re.sub(
        r'^(udp|tls) = "127\.0\.0\.1:', rf'\1 = "{BROKER_IP}:', config.read_text(), flags=re.M
    )
    for key, value in BROKER_LIMITS.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value!r}", text, flags=re.M)
    config.write_text(text)
    for index in (1, 2):
        hub = home / f"hub-{index}.toml"
        head, _, table = hub.read_text().partition("\n[broker]\n")
        table = re.sub(
            r'^(address|udp) = "127\.0\.0\.1:', rf'\1 = "{BROKER_IP}:', table, flags=re.M
        )
        table = re.sub(r'^local = ".*"$', 'local = "0.0.0.0:0"', table, flags=re.M)
        hub.write_text(head + "\n[broker]\n" + table)
        hold_connection(home, index, False)
    for index in (1, 2):
        roost_cli(
            "user",
            "add",
            str(home / f"hub-{index}"),
            "owner",
            "--card-file",
            str(base / f"owner-{index}.card"),
            "--password-cost",
            "10",
            "--code-cost",
            "8",
            stdin=f"{PASSWORD}\n{PASSWORD}\n",
        )
    roost_cli(
        "trust", "init", str(base / "trust"), "--ca-info", str(home / "device-1" / "ca-info.bin")
    )
    return summary


def hold_connection(home: Path, index: int, hold: bool) -> None:
    """Set hub ``index``'s ``[broker] hold_connection`` (docs/broker.md, "Held connections")."""
    hub = home / f"hub-{index}.toml"
    text, count = re.subn(
        r"^hold_connection = (true|false)$",
        f"hold_connection = {str(hold).lower()}",
        hub.read_text(),
        flags=re.M,
    )
    if count != 1:
        raise RuntimeError(f"hub-{index}.toml has no hold_connection line")
    hub.write_text(text)


# ------------------------------------------------------------------ the TLS relay process


async def relay_serve(port: int, cert: Path, key: Path) -> None:
    """Pair each receiver (role 1) with the next sender (role 0) and copy sender → receiver,
    decrypting and re-encrypting as the broker's relay does."""
    waiting: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (role,) = RELAY_ROLE.unpack(await reader.readexactly(1))
        if role == 1:
            await waiting.put(writer)
            await reader.read()
            return
        receiver = await waiting.get()
        while data := await reader.read(256 * 1024):
            receiver.write(data)
            await receiver.drain()
        receiver.close()
        writer.close()

    server = await asyncio.start_server(serve, REFLECTOR_IP, port, ssl=server_context(cert, key))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------ helpers on the loop


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def mux_on(lab: NatLab, ns: str) -> UdpMux:
    """A UdpMux on a socket made in `ns`, driven by the calling loop."""
    with lab.inside(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    _, mux = await loop.create_datagram_endpoint(UdpMux, sock=sock)
    return mux


async def reflexive_address(mux: UdpMux, broker_udp: tuple[str, int]) -> tuple[str, int]:
    transaction = os.urandom(12)
    found: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    def on_stun(data: bytes, source: Any) -> None:
        candidate = parse_binding_response(data, transaction)
        if not found.done():
            found.set_result((str(candidate.address), candidate.port))

    mux.on_stun = on_stun
    for _ in range(5):
        mux.sendto(build_binding_request(transaction), broker_udp)
        try:
            return await asyncio.wait_for(asyncio.shield(found), 1.0)
        except TimeoutError:
            continue
    raise TimeoutError("no STUN answer from the broker")


async def udp_echo_rtts(
    send: Callable[[bytes], None], inbox: asyncio.Queue[bytes], count: int
) -> list[float]:
    rtts = []
    for n in range(count):
        probe = b"\x80echo" + n.to_bytes(4, "big") + os.urandom(8)
        start = time.perf_counter()
        send(probe)
        try:
            while (await asyncio.wait_for(inbox.get(), 2.0)) != probe:
                pass
        except TimeoutError:
            continue
        rtts.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.01)
    return rtts


async def read_all(reader: Any, total: int) -> int:
    got = 0
    while got < total:
        data = await reader.read(1 << 20)
        if not data:
            break
        got += len(data)
    return got


# ------------------------------------------------------------------ hub-2 in process


def bulk_handler(method: str, args: tuple[bytes, ...]) -> CallResult:
    """The benchmark's one call: ``bulk SIZE COUNT`` streams COUNT items of SIZE bytes."""
    if method != "bulk" or len(args) != 2:
        raise ValueError(method)
    size, count = int(args[0]), int(args[1])
    payload = os.urandom(size)

    async def items() -> AsyncIterator[Sequence[bytes]]:
        for _ in range(count):
            yield [payload]

    return items()


async def serve_hub2(home: Path, identifier: str, stop: threading.Event) -> dict[str, Any]:
    config = load_hub_config(home / "hub-2.toml")
    assert config.broker is not None
    certificate = certs_from_pem(config.cert.read_bytes())[0]
    der = certificate.public_bytes(Encoding.DER)
    guard = GuardServer(
        lambda: SqliteUserStore.in_state_dir(config.state_dir),
        bulk_handler,
        server_certificate_der=der,
        config=GuardServerConfig(connect_rate_per_source=100.0, connect_burst_per_source=100.0),
    )
    await guard.open()
    agent = BrokerAgent(
        config.broker,
        identifier=identifier,
        certificate=certificate,
        certificate_der=der,
        private_key=key_from_pem(config.key.read_bytes()),
        cert_file=config.cert,
        key_file=config.key,
        trust=TrustUpdater(config.trust_dir),
        guard=guard,
    )
    await agent.start()
    try:
        while not stop.is_set():
            await asyncio.sleep(0.1)
        assert agent.mux is not None
        return {
            "received": dict(agent.mux.received),
            "errors": dict(agent.mux.errors),
            # Logins whose password the brokered request's check admitted (no second KDF).
            "logins_ok": guard.counters.logins_ok,
            "logins_granted": guard.counters.logins_granted,
        }
    finally:
        await agent.stop()
        await guard.stop()


# ------------------------------------------------------------------ the run


def delay_inbound(lab: NatLab, side: Side, delay_ms: float) -> subprocess.Popen[bytes]:
    """Hold every UDP and TCP packet that enters the side from the internet for `delay_ms`
    (the lab's NFQUEUE delayer, `tests.helpers.nfqdelay`).

    Behind a router the packets are held where they arrive, on the router's `wan` in the
    raw table's PREROUTING hook, which runs before connection tracking: the router's NAT
    sees each packet `delay_ms` after it was sent, as a NAT at the far end of an internet
    path does. The delay then lies between the two NATs, so a probe sent at the common
    start opens its own NAT at once and reaches the far NAT a one-way time later, after the
    far side's own probe opened it (with the delay inside the hosts both probes met each
    NAT at the same instant and raced). A public side has no router: its host holds what
    it receives on INPUT.

    Never on the sending side's OUTPUT hook (as `NatLab.delay` does): a packet held in the
    sender's own stack still counts against its socket, and TCP Small Queues then lets
    about a millisecond of data leave at a time (8 MB over 20 ms took 15 s at 0.54 MB/s;
    held on the way in, 0.2 s). Twice the one-way delay on the way in gives every path the
    same round trip as 10 ms each way.
    """
    where = side.router or side.host
    delayer = lab.python(
        where,
        "tests.helpers.nfqdelay",
        "--queue",
        "0",
        "--delay-ms",
        str(delay_ms),
        stdout=subprocess.PIPE,
    )
    assert delayer.stdout is not None
    if delayer.stdout.readline().decode().strip() != "ready queue 0":
        raise RuntimeError("the NFQUEUE delayer did not start")
    if side.router is not None:
        hook = ["-t", "raw", "-A", "PREROUTING", "-i", "wan"]
    else:
        hook = ["-t", "mangle", "-A", "INPUT", "!", "-i", "lo"]
    queue = ["-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]
    for protocol in ("udp", "tcp"):
        lab.exec(where, ["iptables", "-w", *hook, "-p", protocol, *queue])
    return delayer


def port_forward(lab: NatLab) -> None:
    """Router A forwards one TCP port to its host, as a home router's port forward does."""
    assert lab.a.router is not None
    lab.exec(
        lab.a.router,
        [
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            "wan",
            "-p",
            "tcp",
            "--dport",
            str(TLS_PORT_FORWARD),
            "-j",
            "DNAT",
            "--to-destination",
            f"{lab.a.host_ip}:{TLS_PORT_FORWARD}",
        ],
    )


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not happen in {timeout} s")


def hostport(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


async def loopback_ceiling(hub: Path, anchors: Sequence[Any], total: int) -> dict[str, float]:
    """aioquic's own ceiling beside OpenSSL's, with no lab, delay or NAT: ``total`` bytes
    hub → issuer on 127.0.0.1 with both ends on this one event loop (as the benchmark's
    in-process hub-2 shares the issuer's process), over the session's QUIC
    (`roost.rendezvous.quic` on two `UdpMux` sockets) and over TLS 1.3 (asyncio streams,
    hub-2's certificate). Gives MB/s of wall time and MB per CPU second of this process,
    the figure that stays meaningful on a loaded machine."""
    chunk = b"\x00" * 65536
    der = certs_from_pem((hub / "cert.pem").read_bytes())[0].public_bytes(Encoding.DER)
    key = key_from_pem((hub / "key.pem").read_bytes())
    result: dict[str, float] = {}

    async def measure(name: str, sender: Any, reader: Any) -> None:
        async def send() -> None:
            for _ in range(total // len(chunk)):
                sender.write(chunk)
                await sender.drain()

        wall, cpu = time.perf_counter(), time.process_time()
        sending = asyncio.ensure_future(send())
        got = await read_all(reader, total)
        await sending
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if got != total:
            raise RuntimeError(f"{name} gave {got} bytes")
        result[f"loopback_{name}_mb_per_s"] = round(total / wall / 1e6, 2)
        result[f"loopback_{name}_mb_per_cpu_s"] = round(total / cpu / 1e6, 2)

    a = await UdpMux.open(("127.0.0.1", 0))
    b = await UdpMux.open(("127.0.0.1", 0))
    try:
        serving = asyncio.ensure_future(
            quic_serve(a.path_to(b.local_address), certificate_der=der, private_key=key)
        )
        client = await quic_connect(b.path_to(a.local_address), verify_server=lambda c: None)
        server = await serving
        reader, writer = client.stream()
        writer.write(b"go")
        server_reader, server_writer = await server.accept_stream()
        await server_reader.read(2)
        await measure("quic", server_writer, reader)
        client.close()
        server.close()
    finally:
        a.close()
        b.close()
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer)

    listener = await asyncio.start_server(
        on_client, "127.0.0.1", 0, ssl=server_context(hub / "cert.pem", hub / "key.pem")
    )
    port = listener.sockets[0].getsockname()[1]
    context = client_context(list(anchors))
    context.check_hostname = False
    tls_reader, tls_writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    sender = await accepted.get()
    try:
        await measure("tls", sender, tls_reader)
    finally:
        for writer in (sender, tls_writer):
            writer.close()
        listener.close()
        await listener.wait_closed()
    return result
