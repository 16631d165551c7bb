"""Benchmark of the rendezvous broker: registrations, STUN answers and memory per equipment.

Run as `.venv/bin/python bench/broker.py`. It prints a table, then one JSON line.

What is measured, on loopback (127.0.0.1) only (issue 9, "Benchmarks"):

- Authenticated registrations per second of one broker process: a real `roost broker run`
  (uvloop) from a home made by `make_home(..., loopback=True)` on /dev/shm. `--equipment`
  hub identities are issued by the home's authority, each enrolled for real (mutual TLS,
  `enroll` -> `enrolled`, which hands out its registration key). One sender process then
  sends valid RREG datagrams (identities in turn, the counter rising by one per datagram,
  one local candidate: 65 bytes) at the broker's UDP port as fast as it can for
  `--seconds`; the figure is the growth of the broker's `registrations` counter (its
  `/api/status`) over the window. The RREG bytes are built by a precomputed prefix + counter
  + candidates + HMAC (`hmac.digest`), checked byte for byte against
  `messages.encode_registration` before the run, so the sender is never the bottleneck.
- The raw UDP receive rate of the same process type: a child process on uvloop with a
  `DatagramProtocol` that only counts, on another port, fed by the same sender with the
  same datagrams (same size), interleaved with the broker in the same run.
- STUN Binding answers per second: the sender sends `stun.build_binding_request` (56 bytes,
  so the broker's amplification rule answers it) in bursts and counts the answers it reads
  back, against the broker and against coturn's `turnserver` started here in STUN-only
  mode with `--relay-threads 0` (coturn's single-threaded mode), interleaved.
- Memory per registered equipment at `--entries` (1,000,000): in a child process, a
  `Registry` with that many enrolled and registered entries (identifiers are `hcsp:` + 22
  base64url characters of random 16-byte digests, the shape `identifier_for_key` gives,
  without making a million keys), measured with tracemalloc and, in another child, as the
  RSS growth (/proc/self/status). Entries hold one shared certificate object, as the
  registry's own test does; a third figure gives each entry its own certificate bytes of a
  real DER's size (what a broker holding every enrolled DER pays).

The benchmark raises the broker's UDP and TLS rate limits (`[limits]` in broker.toml): every
packet comes from 127.0.0.1, which the per-source bucket (50/s) would otherwise shed. The
buckets are still consulted for every datagram. Everything is bounded in count and time;
the broker, coturn and the child processes are stopped on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import io
import multiprocessing
import multiprocessing.connection
import os
import pstats
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from _broker_load import LIMITS as _LIMITS
from _broker_load import LOCAL as _LOCAL
from _broker_load import configure_limits as _configure
from _broker_load import enroll as _enroll
from _broker_load import issue_identities as _issue
from _broker_load import rreg as _rreg
from _broker_load import rreg_maker as _rreg_maker
from _broker_load import wait_json_line as _wait_json_line
from _common import (
    cpu_seconds,
    load_average,
    machine_facts,
    print_result,
    start_broker,
    state_dir,
    stop_process,
)
from roost.cli.home import free_loopback_ports, make_home
from roost.config import load_broker_config
from roost.pki.certs import certs_from_pem
from roost.rendezvous import stun
from roost.rendezvous.broker_aio import fetch_broker_status
from roost.rendezvous.messages import (
    Candidate,
    Registration,
    encode_registration,
)
from roost.rendezvous.registry import Registry

_HOST = "127.0.0.1"
_BURST = 64
_POOL = 64 * 256


# ------------------------------------------------------------------ the sender process


def _blast_rreg(
    makers: list[tuple[bytes, bytes, bytes]], counter: int, port: int, seconds: float
) -> tuple[int, float, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((_HOST, port))
    count = len(makers)
    sent = 0
    start = time.perf_counter()
    end = start + seconds
    try:
        while time.perf_counter() < end:
            for _ in range(_BURST):
                counter += 1
                # Identities in turn; one counter for all keeps every identity's rising.
                try:
                    sock.send(_rreg(makers[counter % count], counter))
                except OSError:
                    continue
                sent += 1
    finally:
        sock.close()
    return sent, time.perf_counter() - start, counter


def _blast_pool(pool: list[bytes], port: int, seconds: float) -> tuple[int, float]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((_HOST, port))
    sent = 0
    start = time.perf_counter()
    end = start + seconds
    try:
        while time.perf_counter() < end:
            for data in pool[(sent % _POOL) : (sent % _POOL) + _BURST]:
                with contextlib.suppress(OSError):
                    sock.send(data)
            sent += _BURST
    finally:
        sock.close()
    return sent, time.perf_counter() - start


def _blast_stun(port: int, seconds: float) -> tuple[int, int, int, float]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.connect((_HOST, port))
    sock.setblocking(False)
    requests = [stun.build_binding_request(os.urandom(12)) for _ in range(1024)]
    ids = {r[8:20] for r in requests}
    sent = answers = good = 0
    start = time.perf_counter()
    end = start + seconds
    try:
        while time.perf_counter() < end:
            for k in range(_BURST):
                try:
                    sock.send(requests[(sent + k) % len(requests)])
                except (BlockingIOError, ConnectionRefusedError):
                    continue
            sent += _BURST
            while True:
                try:
                    data = sock.recv(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                answers += 1
                # A Binding success response to one of our transactions (checked cheaply).
                if data[:2] == b"\x01\x01" and data[8:20] in ids:
                    good += 1
        elapsed = time.perf_counter() - start
    finally:
        sock.close()
    return sent, answers, good, elapsed


def _sender_main(conn: multiprocessing.connection.Connection) -> None:
    makers: list[tuple[bytes, bytes, bytes]] = []
    pool: list[bytes] = []
    counter = 0
    while True:
        command = conn.recv()
        kind = command[0]
        if kind == "identities":
            makers = [_rreg_maker(identifier, key) for identifier, key in command[1]]
            counter = 0
            conn.send(len(makers))
        elif kind == "rreg":
            sent, elapsed, counter = _blast_rreg(makers, counter, command[1], command[2])
            conn.send((sent, elapsed))
        elif kind == "pool":
            # The counting receiver checks nothing, so valid RREGs built once and sent in a
            # cycle spare the sender its HMACs: same bytes and size, a faster sender.
            if len(pool) < _POOL:
                pool[:] = [_rreg(makers[n % len(makers)], n + 1) for n in range(_POOL)]
            conn.send(_blast_pool(pool, command[1], command[2]))
        elif kind == "stun":
            conn.send(_blast_stun(command[1], command[2]))
        else:
            conn.send(None)
            return


# ------------------------------------------------------------------ the raw receiver


class _Counting(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.count = 0

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.count += 1


class _Answering:
    """The broker's own receive shape (batches of 64 off a non-blocking socket, see
    broker_aio) doing no work but a 19-byte answer per datagram, RACK's size: the ceiling
    of a request/answer service in this process, since on loopback each send pays the
    receiver's side of the kernel too."""

    def __init__(self, sock: socket.socket) -> None:
        self.count = 0
        self._sock = sock

    def readable(self) -> None:
        receive, send = self._sock.recvfrom, self._sock.sendto
        answer = b"RACK" + bytes(15)
        for _ in range(64):
            try:
                _, addr = receive(2048)
            except (BlockingIOError, InterruptedError):
                break
            with contextlib.suppress(OSError):
                send(answer, addr)
            self.count += 1


def _raw_main(conn: multiprocessing.connection.Connection, mode: str = "count") -> None:
    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        counter: _Counting | _Answering
        if mode == "count":
            counter = protocol = _Counting()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: protocol, local_addr=(_HOST, 0)
            )
            conn.send(transport.get_extra_info("sockname")[1])
            close = transport.close
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((_HOST, 0))
            counter = answering = _Answering(sock)
            loop.add_reader(sock.fileno(), answering.readable)
            conn.send(sock.getsockname()[1])
            close = sock.close
        done = asyncio.Event()

        def command() -> None:
            if conn.recv() == "count":
                conn.send(counter.count)
            else:
                done.set()

        loop.add_reader(conn.fileno(), command)
        await done.wait()
        close()

    uvloop.run(serve())


def _ask(conn: multiprocessing.connection.Connection, command: Any, timeout: float) -> Any:
    conn.send(command)
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer to {command!r:.40} in {timeout} s")
    return conn.recv()


# ------------------------------------------------------------------ memory per entry


def _identifier() -> str:
    return "hcsp:" + base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def _fill(registry: Registry, count: int, certificate: bytes | None, distinct: bool) -> None:
    for n in range(count):
        identifier = _identifier()
        cert = bytes(os.urandom(len(certificate))) if distinct and certificate else certificate
        registry.enroll(identifier, os.urandom(32), cert, now=0.0)
        registry.register(
            identifier,
            1_700_000_000_000 + n,
            Candidate.of(f"198.51.{n >> 8 & 255}.{n & 255}", 1024 + n % 60000),
            _LOCAL,
            now=1.0,
        )


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _memory_main(
    conn: multiprocessing.connection.Connection,
    count: int,
    cert_size: int,
    mode: str,
) -> None:
    import gc
    import tracemalloc

    certificate = b"\x30" * cert_size
    registry = Registry(ttl=60.0, max_entries=count)
    gc.collect()
    start = time.perf_counter()
    if mode == "rss":
        before = _rss()
        _fill(registry, count, certificate, distinct=False)
        gc.collect()
        used = _rss() - before
    else:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        _fill(registry, count, certificate, distinct=mode == "distinct")
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    assert len(registry) == count
    conn.send((used / count, time.perf_counter() - start))


def _memory(count: int, cert_size: int, mode: str, timeout: float) -> float:
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_memory_main, args=(child, count, cert_size, mode))
    process.start()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"memory measurement ({mode}) took over {timeout} s")
        per_entry, _ = parent.recv()
        return float(per_entry)
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)


# ------------------------------------------------------------------ provisioning


def _start_coturn(home: Path, port: int) -> subprocess.Popen[bytes]:
    log = home / "coturn.log"
    command = [
        "turnserver",
        "-n",
        "--listening-ip=127.0.0.1",
        f"--listening-port={port}",
        "--stun-only",
        "--no-tls",
        "--no-dtls",
        "--no-tcp",
        "--no-cli",
        "--no-auth",
        "--relay-threads=0",
        f"--pidfile={home / 'coturn.pid'}",
        f"--log-file={home / 'coturn-log.txt'}",
        "--simple-log",
        "--no-stdout-log",
    ]
    with log.open("wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _wait_stun(port: int, timeout: float) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    transaction = os.urandom(12)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.sendto(stun.build_binding_request(transaction), (_HOST, port))
            with contextlib.suppress(OSError):
                data, _ = sock.recvfrom(2048)
                mapped = stun.parse_binding_response(data, transaction)
                return mapped.host == _HOST
    finally:
        sock.close()
    return False


# ------------------------------------------------------------------ the run


def _profile_core(enrolled: list[tuple[str, bytes]], count: int) -> list[str]:
    """cProfile of BrokerCore.receive_datagram on RREG and STUN (in process, no sockets)."""
    import dataclasses

    from roost.rendezvous.broker import BrokerCore
    from roost.rendezvous.broker_events import BrokerCoreConfig

    config = dataclasses.replace(BrokerCoreConfig(), **_LIMITS)
    core = BrokerCore(config)
    for identifier, key in enrolled:
        core.registry.enroll(identifier, key, None, now=0.0)
    makers = [_rreg_maker(identifier, key) for identifier, key in enrolled]
    datagrams = [_rreg(makers[n % len(makers)], count + n + 1) for n in range(count)]
    requests = [stun.build_binding_request(os.urandom(12)) for _ in range(count)]
    addr = (_HOST, 40000)
    lines: list[str] = []
    # Unprofiled first (counters below the profiled batch's, so both are accepted).
    fresh = [_rreg(makers[n % len(makers)], n + 1) for n in range(count)]
    for name, batch in (("rreg", fresh), ("stun", requests)):
        start = time.perf_counter()
        for k, data in enumerate(batch):
            core.receive_datagram(data, addr, 0.5 + k * 1e-7)
            core.datagrams_to_send()
        lines.append(f"core_{name}_us={(time.perf_counter() - start) / count * 1e6:.2f}")
    for name, batch in (("rreg", datagrams), ("stun", requests)):
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for k, data in enumerate(batch):
            core.receive_datagram(data, addr, 1.0 + k * 1e-6)
            core.datagrams_to_send()
        profiler.disable()
        elapsed = time.perf_counter() - start
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        lines.append(
            f"== {name}: {count} datagrams, {elapsed / count * 1e6:.1f} µs each (profiled)"
        )
        lines.extend(out.getvalue().splitlines())
    return lines


def _run(args: argparse.Namespace, home: Path, result: dict[str, Any], cleanup: list[Any]) -> None:
    context = multiprocessing.get_context("fork")
    sender_conn, sender_child = context.Pipe()
    sender = context.Process(target=_sender_main, args=(sender_child,), daemon=True)
    raw_conn, raw_child = context.Pipe()
    raw = context.Process(target=_raw_main, args=(raw_child,), daemon=True)
    echo_conn, echo_child = context.Pipe()
    echo = context.Process(target=_raw_main, args=(echo_child, "answer"), daemon=True)
    sender.start()
    raw.start()
    echo.start()
    cleanup.extend([sender, raw, echo])
    if not raw_conn.poll(10) or not echo_conn.poll(10):
        raise TimeoutError("raw receiver did not start")
    raw_port = raw_conn.recv()
    echo_port = echo_conn.recv()

    make_home(home / "home", hubs=1, devices=0, loopback=True)
    home = home / "home"
    config_path = _configure(home)
    config = load_broker_config(config_path)
    assert config.api is not None
    api_host, api_port = config.api
    log = home / "broker.log"
    broker = start_broker(config_path, log)
    cleanup.append(broker)
    _wait_json_line(broker, log, 20)
    udp_port, tls_port = config.udp[1], config.tls[1]

    (coturn_port,) = free_loopback_ports(1, socket.SOCK_DGRAM)
    coturn = _start_coturn(home, coturn_port)
    cleanup.append(coturn)
    if not _wait_stun(coturn_port, 10):
        raise RuntimeError(f"coturn does not answer: {(home / 'coturn.log').read_text()[-1500:]}")
    if not _wait_stun(udp_port, 5):
        raise RuntimeError("the broker does not answer STUN")
    result["coturn_threads"] = _threads(coturn.pid)
    result["broker_threads"] = _threads(broker.pid)

    started = time.perf_counter()
    files = _issue(home, args.equipment)
    result["issue_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    import uvloop

    enrolled = uvloop.run(_enroll(home, tls_port, files, args.concurrency))
    result["enroll_s"] = round(time.perf_counter() - started, 2)
    result["enroll_per_s"] = round(len(enrolled) / (time.perf_counter() - started), 1)
    # The sender's fast encoder must give encode_registration's bytes exactly.
    for identifier, key in enrolled[:16]:
        expected = encode_registration(Registration(identifier, 12345, _LOCAL), key)
        if _rreg(_rreg_maker(identifier, key), 12345) != expected:
            raise AssertionError("the sender's RREG differs from encode_registration")
    result["rreg_bytes"] = len(expected)
    result["stun_request_bytes"] = len(stun.build_binding_request(b"x" * 12))
    if _ask(sender_conn, ("identities", enrolled), 30) != len(enrolled):
        raise RuntimeError("sender did not take the identities")
    before = fetch_broker_status(api_host, api_port)
    result["registry_size"] = before["registry_size"]

    cases = ["raw", "raw_answer", "broker", "broker_stun", "coturn_stun"]
    totals: dict[str, list[float]] = {c: [0.0, 0.0, 0.0, 0.0] for c in cases}  # n, s, sent, cpu
    rounds: dict[str, list[float]] = {c: [] for c in cases}
    seconds = args.seconds
    timeout = seconds + 30
    for r in range(args.rounds):
        # Rotate the order each round so outside load falls on every case alike.
        for case in cases[r % len(cases) :] + cases[: r % len(cases)]:
            if case in ("raw", "raw_answer"):
                conn, child, port = (
                    (raw_conn, raw, raw_port) if case == "raw" else (echo_conn, echo, echo_port)
                )
                c0 = _ask(conn, "count", 5)
                cpu0 = cpu_seconds(child.pid)
                sent, elapsed = _ask(sender_conn, ("pool", port, seconds), timeout)
                n = _ask(conn, "count", 5) - c0
                cpu = cpu_seconds(child.pid) - cpu0
            elif case == "broker":
                s0 = fetch_broker_status(api_host, api_port)["counters"]["registrations"]
                cpu0 = cpu_seconds(broker.pid)
                sent, elapsed = _ask(sender_conn, ("rreg", udp_port, seconds), timeout)
                cpu = cpu_seconds(broker.pid) - cpu0
                n = fetch_broker_status(api_host, api_port)["counters"]["registrations"] - s0
            else:
                port, pid = (
                    (udp_port, broker.pid) if case == "broker_stun" else (coturn_port, coturn.pid)
                )
                cpu0 = cpu_seconds(pid)
                sent, answers, good, elapsed = _ask(sender_conn, ("stun", port, seconds), timeout)
                cpu = cpu_seconds(pid) - cpu0
                if good != answers:
                    raise AssertionError(f"{case}: {answers - good} answers were not ours")
                n = good
            totals[case][0] += n
            totals[case][1] += elapsed
            totals[case][2] += sent
            totals[case][3] += cpu
            rounds[case].append(round(n / elapsed, 1))
    after = fetch_broker_status(api_host, api_port)
    refusals = after["counters"]["refusals"]
    rate = {c: totals[c][0] / totals[c][1] for c in cases}
    # Per CPU second of the receiving process: its capacity even when the one sender,
    # not the receiver, set the pace (the counting receiver and coturn, see the docs).
    per_cpu = {c: totals[c][0] / totals[c][3] for c in cases}
    result.update(
        {
            "registrations_per_s": round(rate["broker"], 1),
            "raw_udp_recv_per_s": round(rate["raw"], 1),
            "registrations_vs_raw_udp": round(rate["broker"] / rate["raw"], 3),
            "raw_udp_answer_per_s": round(rate["raw_answer"], 1),
            "registrations_vs_raw_answer": round(rate["broker"] / rate["raw_answer"], 3),
            "raw_udp_answer_per_cpu_s": round(per_cpu["raw_answer"], 1),
            "stun_per_s": round(rate["broker_stun"], 1),
            "coturn_stun_per_s": round(rate["coturn_stun"], 1),
            "stun_vs_coturn": round(rate["broker_stun"] / rate["coturn_stun"], 3),
            "registrations_per_cpu_s": round(per_cpu["broker"], 1),
            "raw_udp_recv_per_cpu_s": round(per_cpu["raw"], 1),
            "registrations_vs_raw_udp_per_cpu": round(per_cpu["broker"] / per_cpu["raw"], 3),
            "stun_per_cpu_s": round(per_cpu["broker_stun"], 1),
            "coturn_stun_per_cpu_s": round(per_cpu["coturn_stun"], 1),
            "stun_vs_coturn_per_cpu": round(per_cpu["broker_stun"] / per_cpu["coturn_stun"], 3),
            "sent_per_s": {c: round(totals[c][2] / totals[c][1], 1) for c in cases},
            "receiver_cpu_share": {c: round(totals[c][3] / totals[c][1], 2) for c in cases},
            "per_round_per_s": rounds,
            "broker_refusals": refusals,
            "broker_registry_size": after["registry_size"],
        }
    )
    if args.profile:
        lines = _profile_core(enrolled, args.profile)
        for line in lines:
            if line.startswith("core_"):
                key, _, value = line.partition("=")
                result[key] = float(value)
        result["profile"] = [line for line in lines if not line.startswith("core_")]


def _memory_figures(args: argparse.Namespace, result: dict[str, Any]) -> None:
    timeout = 600.0
    result["entries"] = args.entries
    result["bytes_per_equipment"] = round(_memory(args.entries, 600, "trace", timeout), 1)
    result["bytes_per_equipment_rss"] = round(_memory(args.entries, 600, "rss", timeout), 1)
    if args.distinct_certificates:
        result["bytes_per_equipment_own_certificate"] = round(
            _memory(args.entries, args.cert_size, "distinct", timeout), 1
        )
        result["certificate_bytes"] = args.cert_size


def _table(result: dict[str, Any]) -> Table:
    table = Table(title="Broker (loopback, one process each, uvloop)")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("goal")

    def row(name: str, key: str, fmt: str = "{:,.0f}", goal: str = "") -> None:
        if key in result:
            table.add_row(name, fmt.format(result[key]), goal)

    row("authenticated registrations /s", "registrations_per_s")
    row("raw UDP receive /s (counting protocol, same datagrams)", "raw_udp_recv_per_s")
    row("registrations / raw UDP", "registrations_vs_raw_udp", "{:.3f}", "≥ 0.5")
    row("  same, per CPU second of each receiver", "registrations_vs_raw_udp_per_cpu", "{:.3f}")
    row("raw UDP receive + 19-byte answer /s (broker's read loop)", "raw_udp_answer_per_s")
    row("registrations / raw receive + answer", "registrations_vs_raw_answer", "{:.3f}")
    row("STUN Binding answers /s, broker", "stun_per_s")
    row("STUN Binding answers /s, coturn (-m 0)", "coturn_stun_per_s")
    row("broker / coturn", "stun_vs_coturn", "{:.3f}", "≥ 0.5")
    row("  same, per CPU second of each server", "stun_vs_coturn_per_cpu", "{:.3f}")
    row("bytes per equipment (tracemalloc)", "bytes_per_equipment", "{:,.1f}", "≤ 400")
    row("bytes per equipment (RSS growth)", "bytes_per_equipment_rss", "{:,.1f}")
    row("bytes per equipment, own certificate", "bytes_per_equipment_own_certificate", "{:,.1f}")
    row("BrokerCore.receive_datagram, RREG (µs, no sockets)", "core_rreg_us", "{:.1f}")
    row("BrokerCore.receive_datagram, STUN (µs, no sockets)", "core_stun_us", "{:.1f}")
    row("enrollments /s (mutual TLS)", "enroll_per_s", "{:,.1f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--equipment", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--cert-size", type=int, default=0, help="0: the issued DER's size")
    parser.add_argument(
        "--no-distinct-certificates", dest="distinct_certificates", action="store_false"
    )
    parser.add_argument("--profile", type=int, default=0, help="cProfile N datagrams per kind")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if shutil.which("turnserver") is None:
        sys.exit("coturn's turnserver is not installed")
    result: dict[str, Any] = {"loadavg_1m_before": load_average()}
    cleanup: list[Any] = []
    try:
        with state_dir("roost-bench-broker-") as home:
            _run(args, home, result, cleanup)
            if args.cert_size == 0:
                der = certs_from_pem((home / "home" / "equipment" / "0.pem").read_bytes())
                from cryptography.hazmat.primitives.serialization import Encoding

                args.cert_size = len(der[0].public_bytes(Encoding.DER))
            for item in cleanup:
                _stop(item)
        if not args.skip_memory:
            _memory_figures(args, result)
    finally:
        for item in cleanup:
            _stop(item)
    profile = result.pop("profile", None)
    if profile:
        print("\n".join(profile))
    result.update(machine_facts())
    result["loop"] = "uvloop"
    result["seconds_per_measurement"] = args.seconds
    result["rounds"] = args.rounds
    result["equipment"] = args.equipment
    print_result(result, _table(result))


def _stop(item: Any) -> None:
    if isinstance(item, subprocess.Popen):
        stop_process(item, grace=5.0)
    elif isinstance(item, multiprocessing.process.BaseProcess) and item.is_alive():
        item.kill()
        item.join(5)


if __name__ == "__main__":
    main()
