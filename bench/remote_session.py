"""Benchmark of a remote session through the broker in the NAT lab: setup time and throughput.

Run as root: `.venv/bin/python bench/remote_session.py`. It prints a table, then one JSON line.

Topology (issue 9, "Benchmarks"): the NAT lab of `tests/helpers/natlab.py` (imported by
path from `tests/helpers`: the lab is a test helper and nothing under `src/` needs it; the
pieces this benchmark adds around it are in `bench/_remote_lab.py`): `roost broker run` on
the inet bridge (198.18.0.1); `roost hub run` (hub-1) and `roost device run` (one camera)
in side A's host namespace behind a port-restricted cone router; the issuer in side B's
host namespace behind a port-restricted cone router too, so the punched path is direct.
Each router holds every UDP and TCP packet that reaches its `wan` from the internet for
2 × `--delay-ms` with the lab's NFQUEUE delayer, before its connection tracking sees it
(`_remote_lab.delay_inbound` says why there): a host to the broker is a 20 ms round trip,
host to host, direct or relayed, 40 ms.

Setup: `connect_via_broker` runs in process in side B's namespace (no process start-up
counted), then the guard login over the QUIC stream and a `watch` of one frame, as
`roost connect` does; the time from the call to the first frame is the figure, with its
parts. `--samples` direct and as many relayed (`punch=False`), interleaved. Both hubs run
with `hold_connection = false` first: the wake-up flow (RWAK, the hub's new mutual-TLS
connection, `present`), the `setup_*` and `relay_setup_*` keys. Then (unless `--no-held`)
hub-1 is restarted with `hold_connection = true`, the default `roost init` writes
(docs/broker.md, "Held connections"), and the same samples give the `held_setup_*` and
`held_relay_setup_*` keys; `held_phase_counters` holds the broker's counters over that
phase (no RWAK sent, no hub connection accepted, one pushed request per sample).

Throughput: a second hub identity (hub-2) is served in process in side A by a real
`BrokerAgent` with a real `GuardServer` whose one call, `bulk`, streams `--chunk`-byte
items (sealed guard records) as fast as the stack takes them; the issuer reads them over
the brokered QUIC session, direct and relayed. The baselines on the same paths: raw QUIC
(`roost.rendezvous.quic` over a plain `UdpPath` between the two hosts' punched addresses,
one stream, the same drain), raw QUIC writing everything at once (aioquic's own flow
control only), raw TLS direct (a port forward on router A, TLS 1.3 hub → issuer), and raw
TLS through a TLS relay on the bridge (two TLS hops, a separate process, as the broker's
relay is: the broker terminates both TLS connections).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from rich.table import Table

from _common import (
    cpu_seconds,
    load_average,
    machine_facts,
    print_result,
    state_dir,
    stop_process,
)

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(_ROOT))
from _remote_lab import (  # noqa: E402
    PASSWORD,
    RELAY_ROLE,
    TLS_PORT_FORWARD,
    Echo,
    delay_inbound,
    hold_connection,
    hostport,
    loopback_ceiling,
    mux_on,
    port_forward,
    prepare_home,
    read_all,
    reflexive_address,
    relay_serve,
    serve_hub2,
    udp_echo_rtts,
    wait_for,
)
from roost.cli.remote import answer_from  # noqa: E402
from roost.guard.aio import GuardClient  # noqa: E402
from roost.guard.calls import tls_server_end_point  # noqa: E402
from roost.pki.certs import certs_from_pem, key_from_pem  # noqa: E402
from roost.pki.tls import client_context, server_context  # noqa: E402
from roost.pki.truststore import load_state  # noqa: E402
from roost.rendezvous.broker_aio import fetch_broker_status  # noqa: E402
from roost.rendezvous.issuer_aio import connect_via_broker  # noqa: E402
from roost.rendezvous.paths import UdpMux  # noqa: E402
from roost.rendezvous.quic import QuicSession, quic_connect, quic_serve  # noqa: E402
from tests.helpers.natlab import BROKER_IP, REFLECTOR_IP, NatLab, NatType  # noqa: E402


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    # Nearest rank: p99 of 10 samples is the largest, never an interpolation past it.
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# ------------------------------------------------------------------ the bench


class _Bench:
    def __init__(
        self,
        lab: NatLab,
        base: Path,
        summary: dict[str, Any],
        args: argparse.Namespace,
        broker: dict[str, Any],
    ) -> None:
        self.lab = lab
        self.base = base
        self.home = base / "home"
        self.summary = summary
        self.args = args
        self.broker_tls = broker["tls"]
        self.broker_udp = broker["udp"]
        self.trust = load_state(base / "trust")
        self.result: dict[str, Any] = {}

    def client_tls(self) -> ssl.SSLContext:
        return client_context(self.trust.anchors)

    # -------------------------------------------------- path facts: RTTs and handshakes

    async def measure_paths(self) -> None:
        lab, count = self.lab, self.args.echoes
        loop = asyncio.get_running_loop()
        with lab.inside(lab.inet):
            echo_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo_sock.bind((REFLECTOR_IP, 0))
        echo_sock.setblocking(False)
        echo_transport, _ = await loop.create_datagram_endpoint(Echo, sock=echo_sock)
        echo = echo_sock.getsockname()
        muxes = {side: await mux_on(lab, lab.sides[side].host) for side in ("A", "B")}
        rtt: dict[str, list[float]] = {}
        try:
            for side, mux in muxes.items():
                inbox: asyncio.Queue[bytes] = asyncio.Queue()
                mux.on_unrouted = lambda data, source, q=inbox: q.put_nowait(data)
                rtt[f"{side}_inet"] = await udp_echo_rtts(
                    lambda data, m=mux: m.sendto(data, echo), inbox, count
                )
            reflexive = {s: await reflexive_address(m, self.broker_udp) for s, m in muxes.items()}
            self.result["reflexive"] = {s: f"{h}:{p}" for s, (h, p) in reflexive.items()}
            # Punch: each side sends first, so each router has the mapping before the
            # other side's datagrams arrive (port-restricted cone, RFC 4787 section 5).
            for _ in range(3):
                muxes["A"].sendto(b"\x80punch", reflexive["B"])
                muxes["B"].sendto(b"\x80punch", reflexive["A"])
                await asyncio.sleep(0.05)
            path_a = muxes["A"].path_to(reflexive["B"])
            path_b = muxes["B"].path_to(reflexive["A"])
            path_a.set_receiver(path_a.send)  # A echoes what B sends.
            inbox_b: asyncio.Queue[bytes] = asyncio.Queue()
            path_b.set_receiver(inbox_b.put_nowait)
            rtt["direct"] = await udp_echo_rtts(path_b.send, inbox_b, count)
            path_a.close()
            path_b.close()
            # A raw QUIC handshake on the same punched path, with hub-2's certificate.
            handshakes = []
            for _ in range(self.args.handshakes):
                server, client = await self._raw_quic_pair(muxes, reflexive)
                handshakes.append(self._last_handshake_ms)
                client.close()
                server.close()
                await asyncio.sleep(0.05)
            self.result["quic_handshake_ms"] = round(statistics.median(handshakes), 2)
            self.result["quic_handshake_samples_ms"] = [round(h, 2) for h in handshakes]
        finally:
            for mux in muxes.values():
                mux.close()
            echo_transport.close()
        for name, values in rtt.items():
            self.result[f"rtt_{name}_udp_ms"] = round(statistics.median(values), 2)
            self.result[f"rtt_{name}_udp_max_ms"] = round(max(values), 2)
        # TCP connect (one round trip) and the whole TLS handshake to the broker from B.
        tcp, tls = [], []
        host, port = self.broker_tls
        for _ in range(self.args.handshakes):
            start = time.perf_counter()
            _, writer = await asyncio.open_connection(host, port)
            tcp.append((time.perf_counter() - start) * 1000)
            writer.close()
            start = time.perf_counter()
            _, writer = await asyncio.open_connection(host, port, ssl=self.client_tls())
            tls.append((time.perf_counter() - start) * 1000)
            writer.close()
            await asyncio.sleep(0.05)
        self.result["rtt_B_broker_tcp_ms"] = round(statistics.median(tcp), 2)
        self.result["tls_handshake_ms"] = round(statistics.median(tls), 2)

    async def _raw_quic_pair(
        self, muxes: dict[str, UdpMux], reflexive: dict[str, tuple[str, int]]
    ) -> tuple[QuicSession, QuicSession]:
        hub = self.home / "hub-2"
        cert = certs_from_pem((hub / "cert.pem").read_bytes())[0]
        path_a = muxes["A"].path_to(reflexive["B"])
        path_b = muxes["B"].path_to(reflexive["A"])
        start = time.perf_counter()
        serving = asyncio.ensure_future(
            quic_serve(
                path_a,
                certificate_der=cert.public_bytes(Encoding.DER),
                private_key=key_from_pem((hub / "key.pem").read_bytes()),
            )
        )
        client = await quic_connect(path_b, verify_server=lambda certificate: None)
        self._last_handshake_ms = (time.perf_counter() - start) * 1000
        return await serving, client

    # -------------------------------------------------- setup to the first frame

    async def _session(self, hub: int, punch: bool) -> tuple[Any, GuardClient, dict[str, float]]:
        marks = {"start": time.perf_counter()}
        connection = await connect_via_broker(
            self.summary["hubs"][hub - 1],
            broker=self.broker_tls,
            broker_udp=self.broker_udp,
            trust=self.trust,
            user="owner",
            password=PASSWORD,
            punch=punch,
        )
        marks["quic"] = time.perf_counter()
        # As `roost connect`: the hub's login stream when it opened one (server-first).
        reader, writer = connection.quic.login_stream()
        try:
            client = await GuardClient.over_stream(
                reader,
                writer,
                channel_binding=tls_server_end_point(connection.quic.server_certificate_der),
                user_id="owner",
                password=PASSWORD,
                answer=answer_from(self.base / f"owner-{hub}.card"),
                pipeline=True,
                server_first=connection.quic.server_first,
            )
        except BaseException:
            await connection.close()
            raise
        marks["login"] = time.perf_counter()
        return connection, client, marks

    async def one_setup(self, punch: bool) -> dict[str, Any]:
        connection, client, marks = await self._session(1, punch)
        try:
            camera = self.summary["devices"][0].encode()
            async for response in client.call_stream("watch", camera, b"1"):
                if not response.ok:
                    raise RuntimeError(f"watch refused: {response.reason}")
                marks["frame"] = time.perf_counter()
            rtt = connection.quic.rtt_ms
            path = connection.current_path.value
            server_first = connection.quic.server_first
        finally:
            await client.close()
            await connection.close()
        ms = {k: (marks[k] - marks["start"]) * 1000 for k in ("quic", "login", "frame")}
        return {
            "path": path,
            "to_first_frame_ms": ms["frame"],
            "to_quic_ms": ms["quic"],
            "login_ms": ms["login"] - ms["quic"],
            "watch_ms": ms["frame"] - ms["login"],
            "broker_setup_ms": connection.outcome.setup_ms,
            "timings": dict(connection.outcome.timings),
            "quic_rtt_ms": rtt,
            "server_first": server_first,
        }

    async def warm_up(self) -> None:
        """Until one session gets a frame (not counted): the camera streams, the hub answers."""
        deadline = time.monotonic() + 60
        while True:
            try:
                await self.one_setup(True)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)

    async def measure_setup(self, held: bool = False) -> None:
        """``--samples`` setups per path to hub-1; ``held``: its connection is held (the
        ``held_`` keys)."""
        # The hub's guard allows 10 new streams per source at once, then one per 2 s
        # (GuardServerConfig); samples past the burst are paced so none is refused.
        samples: dict[str, list[dict[str, Any]]] = {"direct": [], "relay": []}
        for n in range(self.args.samples * 2):
            punch = n % 2 == 0
            if n >= 8:
                await asyncio.sleep(2.1)
            sample = await self.one_setup(punch)
            expected = "direct" if punch else "relay"
            if sample["path"] != expected:
                raise RuntimeError(f"expected a {expected} session, got {sample['path']}")
            samples[expected].append(sample)
            await asyncio.sleep(0.2)
        for kind, runs in samples.items():
            prefix = ("held_" if held else "") + ("setup" if kind == "direct" else "relay_setup")
            first = [r["to_first_frame_ms"] for r in runs]
            self.result[f"{prefix}_p50_ms"] = round(_percentile(first, 50), 1)
            self.result[f"{prefix}_p99_ms"] = round(_percentile(first, 99), 1)
            for part in ("to_quic_ms", "login_ms", "watch_ms", "broker_setup_ms"):
                self.result[f"{prefix}_{part.removesuffix('_ms')}_p50_ms"] = round(
                    _percentile([r[part] for r in runs], 50), 1
                )
            keys = sorted({k for r in runs for k in r["timings"]})
            self.result[f"{prefix}_timings_p50_ms"] = {
                k: _percentile([r["timings"].get(k, 0) for r in runs], 50) for k in keys
            }
            # Logins the hub opened with its Challenge (docs/guard.md, "Server-first login").
            self.result[f"{prefix}_server_first"] = sum(bool(r["server_first"]) for r in runs)
            rtts = [r["quic_rtt_ms"] for r in runs if r["quic_rtt_ms"] is not None]
            self.result[f"{prefix}_quic_srtt_p50_ms"] = round(_percentile(rtts, 50), 2)
            self.result[f"{prefix}_samples_ms"] = [round(v, 1) for v in first]
            self.result[f"{prefix}_samples_parts_ms"] = [
                [
                    round(r["to_quic_ms"]),
                    r["broker_setup_ms"],
                    round(r["login_ms"]),
                    round(r["watch_ms"]),
                    r["timings"].get("punch_ms", 0),
                ]
                for r in runs
            ]

    async def profile_direct_quic(self) -> None:
        """Direct sessions to hub-2 (served in process, so its socket's counters can be
        read): time to QUIC up and the broker's setup, to see where the direct path's
        time goes. The hub's socket counts QUIC datagrams from a source it has no path
        for yet ("unrouted"); they are dropped and QUIC resends them after its PTO."""
        parts = []
        for _ in range(self.args.samples):
            connection, client, marks = await self._session(2, True)
            parts.append(
                [
                    round((marks["quic"] - marks["start"]) * 1000),
                    connection.outcome.setup_ms,
                    connection.outcome.timings.get("punch_ms", 0),
                ]
            )
            await client.close()
            await connection.close()
            await asyncio.sleep(0.2)
        self.result["hub2_direct_parts_ms"] = parts

    # -------------------------------------------------- throughput

    async def roost_throughput(self, punch: bool) -> float:
        connection, client, marks = await self._session(2, punch)
        name = "direct" if punch else "relay"
        self.result[f"{name}_bulk_session_to_quic_ms"] = round(
            (marks["quic"] - marks["start"]) * 1000, 1
        )
        self.result[f"{name}_bulk_broker_setup_ms"] = connection.outcome.setup_ms
        total = self.args.megabytes * (1 << 20)
        count = total // self.args.chunk
        rates = []
        try:
            for _ in range(self.args.rounds):
                got = 0
                start = time.perf_counter()
                async for response in client.call_stream(
                    "bulk", str(self.args.chunk).encode(), str(count).encode()
                ):
                    got += len(response.results[0])
                elapsed = time.perf_counter() - start
                if got != count * self.args.chunk:
                    raise RuntimeError(f"bulk gave {got} bytes")
                rates.append(got / elapsed / 1e6)
            kind = connection.current_path.value
        finally:
            await client.close()
            await connection.close()
        if kind != ("direct" if punch else "relay"):
            raise RuntimeError(f"throughput session went {kind}")
        return statistics.median(rates)

    async def raw_quic_throughput(self, drain: bool) -> float:
        """Hub → issuer bulk on one stream of a bare QUIC session between the hosts'
        punched addresses; the server end runs on its own loop in a thread in side A,
        as the in-process agent does, so both ends share the GIL the same way."""
        lab, hub = self.lab, self.home / "hub-2"
        der = certs_from_pem((hub / "cert.pem").read_bytes())[0].public_bytes(Encoding.DER)
        key = key_from_pem((hub / "key.pem").read_bytes())
        total = self.args.megabytes * (1 << 20)
        chunk, rounds = b"\x00" * self.args.chunk, self.args.rounds
        addresses: dict[str, concurrent.futures.Future[tuple[str, int]]] = {
            side: concurrent.futures.Future() for side in ("A", "B")
        }

        async def punch(mux: UdpMux, own: str, other: str) -> tuple[str, int]:
            addresses[own].set_result(await reflexive_address(mux, self.broker_udp))
            peer = await asyncio.wrap_future(addresses[other])
            for _ in range(3):
                mux.sendto(b"\x80punch", peer)
                await asyncio.sleep(0.05)
            return peer

        async def server_end() -> None:
            mux = await UdpMux.open(("0.0.0.0", 0))
            try:
                peer = await punch(mux, "A", "B")
                server = await quic_serve(mux.path_to(peer), certificate_der=der, private_key=key)
                for _ in range(rounds):
                    reader, writer = await server.accept_stream()
                    await reader.read(2)
                    for _ in range(total // len(chunk)):
                        writer.write(chunk)
                        if drain:
                            await writer.drain()
                    while await reader.read(1 << 16):
                        pass
                await asyncio.wait_for(server.wait_closed(), 30)
            finally:
                mux.close()

        serving = lab.spawn(lab.a.host, server_end)
        mux = await UdpMux.open(("0.0.0.0", 0))
        rates = []
        try:
            peer = await punch(mux, "B", "A")
            client = await quic_connect(mux.path_to(peer), verify_server=lambda c: None)
            for _ in range(rounds):
                reader, writer = client.stream()
                writer.write(b"go")
                start = time.perf_counter()
                got = await read_all(reader, total)
                elapsed = time.perf_counter() - start
                if got != total:
                    raise RuntimeError(f"raw QUIC gave {got} bytes")
                rates.append(total / elapsed / 1e6)
                writer.close()
            client.close()
        finally:
            mux.close()
        await asyncio.to_thread(serving.result, 60)
        return statistics.median(rates)

    async def _tls_bulk(
        self, open_sender: Callable[[], Any], open_receiver: Callable[[], Any]
    ) -> float:
        total = self.args.megabytes * (1 << 20)
        chunk = b"\x00" * self.args.chunk
        rates = []
        for _ in range(self.args.rounds):
            receiver, receiver_writer = await open_receiver()
            sender_writer = await open_sender()
            start = time.perf_counter()

            async def send(writer: asyncio.StreamWriter = sender_writer) -> None:
                for _ in range(total // len(chunk)):
                    writer.write(chunk)
                    await writer.drain()

            sending = asyncio.ensure_future(send())
            got = await read_all(receiver, total)
            elapsed = time.perf_counter() - start
            await sending
            if got != total:
                raise RuntimeError(f"raw TLS gave {got} bytes")
            rates.append(total / elapsed / 1e6)
            sender_writer.close()
            receiver_writer.close()
            await asyncio.sleep(0.1)
        return statistics.median(rates)

    async def raw_tls_direct(self) -> float:
        lab = self.lab
        hub = self.home / "hub-2"
        accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accepted.put(writer)
            await reader.read()

        with lab.inside(lab.a.host):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", TLS_PORT_FORWARD))
        listener.listen(8)
        server = await asyncio.start_server(
            on_client, sock=listener, ssl=server_context(hub / "cert.pem", hub / "key.pem")
        )
        context = self.client_tls()

        async def open_receiver() -> Any:
            return await asyncio.open_connection(lab.a.wan_ip, TLS_PORT_FORWARD, ssl=context)

        async def open_sender() -> Any:
            return await accepted.get()

        try:
            return await self._tls_bulk(open_sender, open_receiver)
        finally:
            server.close()

    async def raw_tls_relay(self, port: int) -> float:
        lab = self.lab
        context = self.client_tls()

        async def open_receiver() -> Any:
            reader, writer = await asyncio.open_connection(REFLECTOR_IP, port, ssl=context)
            writer.write(RELAY_ROLE.pack(1))
            await writer.drain()
            await asyncio.sleep(0.1)
            return reader, writer

        async def open_sender() -> Any:
            with lab.inside(lab.a.host):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.connect((REFLECTOR_IP, port))
            sock.setblocking(False)
            _, writer = await asyncio.open_connection(
                sock=sock, ssl=context, server_hostname=REFLECTOR_IP
            )
            writer.write(RELAY_ROLE.pack(0))
            return writer

        return await self._tls_bulk(open_sender, open_receiver)


def _run(args: argparse.Namespace, base: Path, result: dict[str, Any]) -> None:
    summary = prepare_home(base, args.fps)
    home = base / "home"
    broker = {k: hostport(str(summary["broker"][k])) for k in ("tls", "udp", "api")}
    # prepare_home moved the UDP and TLS ports onto the bridge; the API stays on loopback.
    broker["tls"] = (BROKER_IP, broker["tls"][1])
    broker["udp"] = (BROKER_IP, broker["udp"][1])
    if args.megabytes:
        # Before the lab starts: aioquic's and OpenSSL's own ceilings on this machine.
        result.update(
            asyncio.run(
                loopback_ceiling(
                    home / "hub-2",
                    load_state(base / "trust").anchors,
                    args.megabytes * (1 << 20),
                )
            )
        )
    with NatLab(NatType.PORT_RESTRICTED, NatType.PORT_RESTRICTED) as lab:
        delayers = [delay_inbound(lab, side, 2 * args.delay_ms) for side in (lab.a, lab.b)]
        port_forward(lab)
        logs = {
            name: (base / f"{name}.log").open("wb") for name in ("broker", "hub", "cam", "relay")
        }
        env = {"PYTHONUNBUFFERED": "1"}
        lab.python(
            lab.inet,
            "roost",
            "broker",
            "run",
            "--config",
            str(home / "broker.toml"),
            stdout=logs["broker"],
            stderr=subprocess.STDOUT,
            env=env,
        )

        def broker_status() -> dict[str, Any] | None:
            with lab.inside(lab.inet):
                try:
                    return fetch_broker_status(*broker["api"], timeout=2.0)
                except OSError:
                    return None

        wait_for("the broker's API", lambda: broker_status() is not None, 30)

        def start_hub() -> subprocess.Popen[bytes]:
            return lab.python(
                lab.a.host,
                "roost",
                "hub",
                "run",
                "--config",
                str(home / "hub-1.toml"),
                stdout=logs["hub"],
                stderr=subprocess.STDOUT,
                env=env,
            )

        hubs = [start_hub()]
        lab.python(
            lab.a.host,
            "roost",
            "device",
            "run",
            "--config",
            str(home / "device-1.toml"),
            stdout=logs["cam"],
            stderr=subprocess.STDOUT,
            env=env,
        )
        relay_port = 17500
        relay = lab.run(
            lab.inet,
            [
                sys.executable,
                __file__,
                "--tls-relay",
                str(relay_port),
                str(home / "broker" / "cert.pem"),
                str(home / "broker" / "key.pem"),
            ],
            stdout=subprocess.PIPE,
            stderr=logs["relay"],
            env=env,
        )
        assert relay.stdout is not None
        if relay.stdout.readline().strip() != b"ready":
            raise RuntimeError("the TLS relay did not start")
        stop = threading.Event()
        agent = lab.spawn(lab.a.host, lambda: serve_hub2(home, summary["hubs"][1], stop))

        wait_for(
            "both hubs registered",
            lambda: (
                (broker_status() or {}).get("registry_size", 0) >= 2
                and (broker_status() or {})["counters"].get("registrations", 0) >= 2
            ),
            30,
        )
        bench = _Bench(lab, base, summary, args, broker)

        async def wake_flow() -> None:
            await bench.measure_paths()
            # Warm-up (not counted): the camera streams and both hubs answer.
            await bench.warm_up()
            cpu0 = cpu_seconds(hubs[0].pid)
            await bench.measure_setup()
            bench.result["hub_cpu_s_during_setup"] = round(cpu_seconds(hubs[0].pid) - cpu0, 2)
            await bench.profile_direct_quic()

        async def held_flow() -> None:
            await bench.warm_up()
            cpu0 = cpu_seconds(hubs[0].pid)
            before = (broker_status() or {}).get("counters", {})
            await bench.measure_setup(held=True)
            after = (broker_status() or {}).get("counters", {})
            bench.result["held_hub_cpu_s_during_setup"] = round(cpu_seconds(hubs[0].pid) - cpu0, 2)
            names = ("wakes_sent", "wake_pushes", "presents", "equipment_channels")
            delta = {k: after[k] - before[k] for k in (*names, "requests_pushed", "connects")}
            bench.result["held_phase_counters"] = delta
            if any(delta[k] for k in names) or delta["requests_pushed"] != delta["connects"]:
                raise RuntimeError(f"the held flow woke the hub or connected anew: {delta}")

        async def throughput() -> None:
            if args.megabytes:
                cases = {
                    "direct": lambda: bench.roost_throughput(True),
                    "relay": lambda: bench.roost_throughput(False),
                    "raw_quic": lambda: bench.raw_quic_throughput(True),
                    "raw_quic_no_drain": lambda: bench.raw_quic_throughput(False),
                    "raw_tls": bench.raw_tls_direct,
                    "raw_tls_relay": lambda: bench.raw_tls_relay(relay_port),
                }
                for name, case in cases.items():
                    d0 = sum(cpu_seconds(d.pid) for d in delayers)
                    started = time.perf_counter()
                    bench.result[f"{name}_mb_per_s"] = round(await case(), 2)
                    spent = time.perf_counter() - started
                    share = (sum(cpu_seconds(d.pid) for d in delayers) - d0) / spent
                    bench.result[f"{name}_delayer_cpu_share"] = round(share, 2)

        lab.spawn(lab.b.host, wake_flow).result(args.timeout)
        if args.held:
            # hub-1 again, holding its connection: the broker pushes each request over it.
            stop_process(hubs[0], grace=10.0)
            hold_connection(home, 1, True)
            hubs[0] = start_hub()
            wait_for(
                "hub-1's connection held",
                lambda: (broker_status() or {}).get("holding", 0) >= 1,
                60,
            )
            lab.spawn(lab.b.host, held_flow).result(args.timeout)
        lab.spawn(lab.b.host, throughput).result(args.timeout)
        stop.set()
        result["hub2_socket_datagrams"] = agent.result(30)
        result.update(bench.result)
        status = broker_status() or {}
        result["broker_counters"] = {
            k: v
            for k, v in status.get("counters", {}).items()
            if k in ("accepts", "rejects", "relayed_sessions", "relayed_bytes", "refusals")
        }
        for handle in logs.values():
            handle.close()


def _goals(result: dict[str, Any], delay_ms: float) -> None:
    rtt_direct = result["rtt_direct_udp_ms"]
    # The relayed path's round trip: B to the broker and the broker to A, each measured.
    rtt_relay = result["rtt_B_inet_udp_ms"] + result["rtt_A_inet_udp_ms"]
    result["rtt_relay_udp_ms"] = round(rtt_relay, 2)
    result["emulated_rtt_per_hop_ms"] = 2 * delay_ms
    tls, quic = result["tls_handshake_ms"], result["quic_handshake_ms"]
    result["setup_goal_ms"] = round(4 * rtt_direct + tls + quic, 1)
    # The held flow has the same bound: it removes work above it, not the bound's parts.
    result["held_setup_goal_ms"] = result["setup_goal_ms"]
    # The QUIC handshake inside relay records costs its round trip on the relayed path.
    result["relay_setup_goal_ms"] = round(4 * rtt_relay + tls + quic - rtt_direct + rtt_relay, 1)
    for name in ("direct", "relay"):
        if f"{name}_mb_per_s" not in result:
            continue
        ours = result[f"{name}_mb_per_s"]
        # Raw QUIC runs on the direct path only (see the module docstring).
        quic_base = result["raw_quic_mb_per_s"]
        tls_base = result["raw_tls_mb_per_s" if name == "direct" else "raw_tls_relay_mb_per_s"]
        result[f"{name}_vs_raw_quic"] = round(ours / quic_base, 3)
        result[f"{name}_vs_raw_tls"] = round(ours / tls_base, 3)
    if "direct_mb_per_s" in result:
        result["direct_vs_raw_quic_no_drain"] = round(
            result["direct_mb_per_s"] / result["raw_quic_no_drain_mb_per_s"], 3
        )


def _table(result: dict[str, Any]) -> Table:
    table = Table(title="Remote session in the NAT lab (port-restricted both sides)")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("goal")

    def row(name: str, key: str, fmt: str = "{:.1f}", goal: str = "") -> None:
        if key in result:
            table.add_row(name, fmt.format(result[key]), goal)

    row("UDP echo RTT B ↔ bridge (ms)", "rtt_B_inet_udp_ms")
    row("UDP echo RTT A ↔ bridge (ms)", "rtt_A_inet_udp_ms")
    row("UDP echo RTT A ↔ B direct (ms)", "rtt_direct_udp_ms")
    row("TCP connect B → broker (ms)", "rtt_B_broker_tcp_ms")
    row("TLS handshake B → broker (ms)", "tls_handshake_ms")
    row("raw QUIC handshake A ↔ B (ms)", "quic_handshake_ms")
    g = result.get("setup_goal_ms", 0)
    row("direct: call → first frame p50 (ms)", "setup_p50_ms", goal=f"≤ {g:.0f}")
    row("direct: call → first frame p99 (ms)", "setup_p99_ms")
    row("  to QUIC up / login / watch p50 (ms)", "setup_to_quic_p50_ms")
    row("  login p50 (ms)", "setup_login_p50_ms")
    row("  watch first frame p50 (ms)", "setup_watch_p50_ms")
    row("  logins the hub opened (server-first)", "setup_server_first", "{}")
    g = result.get("relay_setup_goal_ms", 0)
    row("relay: call → first frame p50 (ms)", "relay_setup_p50_ms", goal=f"≤ {g:.0f}")
    row("relay: call → first frame p99 (ms)", "relay_setup_p99_ms")
    row("  to QUIC up p50 (ms)", "relay_setup_to_quic_p50_ms")
    row("  login p50 (ms)", "relay_setup_login_p50_ms")
    row("  watch first frame p50 (ms)", "relay_setup_watch_p50_ms")
    row("  logins the hub opened (server-first)", "relay_setup_server_first", "{}")
    g = result.get("held_setup_goal_ms", 0)
    row("held: direct call → first frame p50 (ms)", "held_setup_p50_ms", goal=f"≤ {g:.0f}")
    row("held: direct call → first frame p99 (ms)", "held_setup_p99_ms")
    row("  to QUIC up p50 (ms)", "held_setup_to_quic_p50_ms")
    row("  broker flow p50 (ms)", "held_setup_broker_setup_p50_ms")
    row("held: relay call → first frame p50 (ms)", "held_relay_setup_p50_ms")
    row("held: relay call → first frame p99 (ms)", "held_relay_setup_p99_ms")
    row("session direct (MB/s)", "direct_mb_per_s", "{:.2f}")
    row("session relayed (MB/s)", "relay_mb_per_s", "{:.2f}")
    row("raw QUIC direct, same drain (MB/s)", "raw_quic_mb_per_s", "{:.2f}")
    row("raw QUIC direct, no drain (MB/s)", "raw_quic_no_drain_mb_per_s", "{:.2f}")
    row("raw TLS direct (MB/s)", "raw_tls_mb_per_s", "{:.2f}")
    row("raw TLS via TLS relay (MB/s)", "raw_tls_relay_mb_per_s", "{:.2f}")
    row("loopback QUIC, one loop (MB per CPU s)", "loopback_quic_mb_per_cpu_s", "{:.2f}")
    row("loopback TLS, one loop (MB per CPU s)", "loopback_tls_mb_per_cpu_s", "{:.2f}")
    row("direct / raw QUIC", "direct_vs_raw_quic", "{:.3f}", "≥ 0.8")
    row("direct / raw TLS", "direct_vs_raw_tls", "{:.3f}", "≥ 0.8")
    row("relayed / raw QUIC direct", "relay_vs_raw_quic", "{:.3f}")
    row("relayed / raw TLS relay", "relay_vs_raw_tls", "{:.3f}", "≥ 0.8")
    return table


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--tls-relay":
        asyncio.run(relay_serve(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10, help="setups per path")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one way, per side")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--echoes", type=int, default=20)
    parser.add_argument("--handshakes", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=8, help="per throughput round; 0 skips")
    parser.add_argument("--chunk", type=int, default=64 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--no-held",
        dest="held",
        action="store_false",
        help="skip the phase with hub-1 holding its broker connection",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the NAT lab needs root (network namespaces, iptables)")
    result: dict[str, Any] = {"loadavg_1m_before": load_average()}
    started = time.perf_counter()
    with state_dir("roost-bench-remote-") as base:
        _run(args, base, result)
    _goals(result, args.delay_ms)
    result.update(machine_facts())
    result.update(
        samples_per_path=args.samples,
        delay_ms_one_way_per_host=args.delay_ms,
        fps=args.fps,
        megabytes_per_round=args.megabytes,
        chunk_bytes=args.chunk,
        rounds=args.rounds,
        wall_s=round(time.perf_counter() - started, 1),
        loop="asyncio",
        topology="broker on bridge; hub+camera behind A (port-restricted); issuer behind B "
        "(port-restricted)",
    )
    print_result(result, _table(result))


if __name__ == "__main__":
    main()
