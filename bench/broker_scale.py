"""Benchmark of the broker at scale: SO_REUSEPORT workers sharing a real Redis registry.

Run as `.venv/bin/python bench/broker_scale.py`. It prints a table, then one JSON line with
``reg_per_s_1``, ``reg_per_s_2``, ``scale_2``, ``reg_per_cpu_s_1``, ``reg_per_cpu_s_2``,
``cpu_efficiency_2``, ``redis_cmds_per_reg``, ``setup_owner_ms``, ``setup_non_owner_ms``.

What is measured, on loopback (127.0.0.1) only (docs/broker-scale.md, "Sizing"):

- Authenticated registrations per second with 1 and with 2 worker processes (`roost broker
  run --workers N`, the registry in a `redis-server` started here, no persistence): a home
  made by `make_home(..., loopback=True)` on /dev/shm, `--equipment` identities issued by
  its authority and enrolled for real (mutual TLS), then sender processes send valid RREG
  datagrams (the pieces of bench/broker.py, `_broker_load`) for `--seconds`. Each identity
  always sends from the same one of `--sockets` source ports, as a real NAT mapping does, so
  the kernel's SO_REUSEPORT hash keeps it on one worker (its owner). A warm-up pass lets
  every worker adopt the entries it receives from Redis; then the sender builds the
  window's `--prepare` datagrams ahead (counters rising, HMACs done), so during the window
  it spends its CPU on `send` alone. The figure is the growth of the workers'
  `registrations` counters (each worker's `/api/status`) over the window. An unpaced
  sender takes a whole core (and the kernel's loopback delivery runs in its time), which
  on two cores leaves a second worker nothing: one worker is first measured unpaced, then
  both cases with the sender paced to `--overload` (1.3) times that rate per worker, and
  `scale_2` compares the two paced figures (wall clock: on two cores shared with the
  sender and Redis it cannot reach 2). Redis runs on the same two cores. The CPU the
  sender and Redis take in the same windows is measured (`sender_cores_2`,
  `redis_cores_2`: CPU seconds per second), and the machine's idle time (`idle_cores_2`,
  /proc/stat); `scale_2_ceiling` is what two workers could reach on the cores they took
  plus the idle ones, at the two workers' own rate per CPU second, against one worker:
  the machine's limit for `scale_2` in this run.
- Registrations per broker CPU second, with 1 and with 2 workers: the same windows'
  registrations divided by the CPU time (user + system, `/proc/PID/stat`) the worker
  processes themselves spent in them, so the figure does not depend on how much of the two
  cores the sender took. `cpu_efficiency_2` is the 2-worker figure over the 1-worker one:
  1.0 means a second worker costs nothing per registration, so with a core of its own per
  worker (the sender elsewhere) two workers would carry about `2 × cpu_efficiency_2` times
  one worker's rate.
- Redis commands per registration at steady state: the growth of every `calls` figure of
  Redis's INFO commandstats over the same window (our own INFO excluded), divided by the
  registrations in it.
- Connection setup through the owner and through a non-owner process: two broker processes
  on their own ports sharing Redis; a scripted target (identity 0, mutual TLS) enrolled and
  registered at broker 1 answers RWAK by presenting its token on a new TLS connection and
  accepting the request. The target runs in a process of its own, as it runs on a host of
  its own: in the issuer's process its handshake would wait for the issuer's reads. The
  issuer's time is from sending `lookup` on a connected TLS channel until `start` arrives,
  through broker 1 (owner) and through broker 2 (forwarded over the node link to broker 1,
  docs/broker-scale.md "Node link"; a warm-up request through broker 2 opens the link
  first), interleaved, `--setups` times each; medians. The JSON names how many of broker
  2's forwarded requests went over the link (`setup_link_sent`), how many fell back to
  Redis pub/sub (`setup_link_fallbacks`), and whether its link was the local socket of
  processes on one host (`setup_link_opened_local`). The same setups are measured twice
  more in the same run: with `presence_cache_s = 0`, where every lookup reads Redis as a
  first request does (the `*_cache_0` keys), and with `node_link_local = false`, the link
  over TLS as between two hosts (the `*_tls_link` keys).

Everything is bounded in count and time; the brokers, Redis and the senders are stopped on
every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from _broker_load import (
    HOST,
    LOCAL,
    configure_limits,
    enroll,
    issue_identities,
    rreg,
    rreg_maker,
    wait_json_line,
)
from _common import (
    load_average,
    machine_facts,
    print_result,
    start_broker,
    state_dir,
    stop_process,
)
from roost.cli.home import free_loopback_ports, make_home
from roost.framing import RECORD_HEADER_SIZE, encode_record
from roost.pki.certs import certs_from_pem
from roost.pki.tls import client_context
from roost.rendezvous import control
from roost.rendezvous.broker_aio import fetch_broker_status
from roost.rendezvous.broker_events import PresenceConfig
from roost.rendezvous.messages import (
    Candidate,
    Registration,
    decode_wake,
    encode_registration,
    verify_wake,
)
from roost.rendezvous.seal import MIN_SEALED

_BURST = 64


# ------------------------------------------------------------------ sender processes


class _Sender:
    """Identity i always sends from socket i % len(socks) (the sockets live as long as the
    identities: a stable NAT mapping per equipment). The datagrams of the measured windows
    are built before them (``prepare``: counters rising, HMACs done), so the sender spends
    its core on ``send`` alone and leaves the other to the workers."""

    def __init__(self, makers: list[tuple[bytes, bytes, bytes]], socks: list[socket.socket]):
        self.makers = makers
        self.socks = socks
        self.counter = 1
        self.index = 0
        self.pool: list[tuple[socket.socket, bytes]] = []
        self.position = 0

    def _next(self) -> tuple[socket.socket, bytes]:
        self.index = (self.index + 1) % len(self.makers)
        if self.index == 0:
            self.counter += 1
        sock = self.socks[self.index % len(self.socks)]
        return sock, rreg(self.makers[self.index], self.counter)

    def prepare(self, count: int) -> None:
        self.pool = [self._next() for _ in range(count)]
        self.position = 0

    def one_pass(self) -> int:
        """Every identity once (the warm-up), built on the fly."""
        for _ in range(len(self.makers)):
            sock, data = self._next()
            with contextlib.suppress(OSError):
                sock.send(data)
        return len(self.makers)

    def blast(self, seconds: float, rate: float) -> int:
        """Send for ``seconds``; with ``rate`` > 0 paced to that many per second (the
        sender then sleeps between bursts instead of taking a whole core)."""
        sent = 0
        start = time.perf_counter()
        end = start + seconds
        while time.perf_counter() < end:
            if rate > 0:
                ahead = start + sent / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            if self.position + _BURST <= len(self.pool):
                burst = self.pool[self.position : self.position + _BURST]
                self.position += _BURST
            else:
                burst = [self._next() for _ in range(_BURST)]
            for sock, data in burst:
                with contextlib.suppress(OSError):
                    sock.send(data)
                    sent += 1
        return sent


def _sender_main(conn: multiprocessing.connection.Connection) -> None:
    sender: _Sender | None = None
    while True:
        command = conn.recv()
        if command[0] == "identities":
            _, identities, port, sockets, prepared = command
            if sender is not None:
                for sock in sender.socks:
                    sock.close()
            socks = []
            for _ in range(sockets):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.connect((HOST, port))
                socks.append(sock)
            sender = _Sender([rreg_maker(i, key) for i, key in identities], socks)
            sender.one_pass()  # the warm-up: adoption happens before the windows
            sender.prepare(prepared)
            conn.send(len(identities))
        elif command[0] == "rreg" and sender is not None:
            conn.send(sender.blast(command[1], command[2]))
        else:
            if sender is not None:
                for sock in sender.socks:
                    sock.close()
            conn.send(None)
            return


def _ask(conn: multiprocessing.connection.Connection, command: Any, timeout: float) -> Any:
    conn.send(command)
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer to {command[0]!r} in {timeout} s")
    return conn.recv()


# ------------------------------------------------------------------ Redis


class _Redis:
    def __init__(self, directory: Path) -> None:
        (self.port,) = free_loopback_ports(1, socket.SOCK_STREAM)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(host=HOST, port=self.port, socket_timeout=5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self.client.ping():
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def calls_by_command(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name != "cmdstat_info"
        }

    def calls(self) -> int:
        return sum(self.calls_by_command().values())

    def stop(self) -> None:
        self.client.close()
        stop_process(self.process, grace=5.0)


# ------------------------------------------------------------------ registrations


def _registrations(ports: list[int]) -> int:
    return sum(fetch_broker_status(HOST, port)["counters"]["registrations"] for port in ports)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used (``/proc/PID/stat`` fields 14 and
    15, read after the command name's closing parenthesis)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def _worker_pids(broker: subprocess.Popen[bytes], log: Path) -> list[int]:
    """The processes that serve: the supervisor's workers, or the one broker process."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"broker"' in line:
            workers = json.loads(line).get("workers")
            if workers:
                return [int(worker["pid"]) for worker in workers]
    return [broker.pid]


def _idle_seconds() -> float:
    """Seconds every CPU of the machine spent idle (or waiting on I/O) since boot:
    the first line of /proc/stat, in clock ticks."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def _measure_workers(
    args: argparse.Namespace,
    home: Path,
    server: _Redis,
    files: list[tuple[Path, Path]],
    workers: int,
    senders: list[multiprocessing.connection.Connection],
    result: dict[str, Any],
    cleanup: list[Any],
    offered: float,
    sender_pids: list[int],
) -> float:
    """The workers' registrations per second; ``offered`` > 0 paces the senders to that
    total rate (0: as fast as they can). The CPU the senders and Redis took in the same
    windows is recorded too (cores: CPU seconds per second of window)."""
    server.client.flushall()
    # Port 0: each worker's API on a free port of its own, read from the start line.
    config = configure_limits(
        home, {"registry": server.url, "api": f"{HOST}:0", "interval_s": 20.0}
    )
    log = home / f"broker-{workers}.log"
    with log.open("wb") as handle:
        broker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roost",
                "broker",
                "run",
                "--config",
                str(config),
                "--workers",
                str(workers),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    cleanup.append(broker)
    started = wait_json_line(broker, log, 30)
    import tomllib

    doc = tomllib.loads(config.read_text())
    udp_port = int(doc["udp"].rsplit(":", 1)[1])
    tls_port = int(doc["tls"].rsplit(":", 1)[1])
    import uvloop

    enrolled = uvloop.run(enroll(home, tls_port, files, args.concurrency))
    expected = encode_registration(Registration(enrolled[0][0], 12345, LOCAL), enrolled[0][1])
    if rreg(rreg_maker(*enrolled[0]), 12345) != expected:
        raise AssertionError("the sender's RREG differs from encode_registration")
    share = len(enrolled) // len(senders)
    prepared = int(args.prepare / len(senders))
    for n, conn in enumerate(senders):
        part = enrolled[n * share : (n + 1) * share]
        conn.send(("identities", part, udp_port, args.sockets, prepared))
    for conn in senders:
        if not conn.poll(120):
            raise TimeoutError("sender did not prepare")
        conn.recv()
    ports = [int(worker["api"][1]) for worker in started.get("workers", [started])]
    pids = _worker_pids(broker, log)
    # The warm-up pass went out before the preparation: every worker has adopted the
    # entries the kernel sends it.
    time.sleep(0.5)
    totals = [0.0, 0.0, 0.0, 0.0]
    others = {"sender": 0.0, "redis": 0.0, "idle": 0.0}
    redis_pids = [server.process.pid]
    by_command_before = server.calls_by_command()
    for _ in range(args.rounds):
        before, calls_before = _registrations(ports), server.calls()
        cpu_before = _cpu_seconds(pids)
        others_before = _cpu_seconds(sender_pids), _cpu_seconds(redis_pids), _idle_seconds()
        started = time.perf_counter()
        for conn in senders:
            conn.send(("rreg", args.seconds, offered / len(senders)))
        for conn in senders:
            if not conn.poll(args.seconds + 30):
                raise TimeoutError("sender")
            conn.recv()
        elapsed = time.perf_counter() - started
        others["sender"] += _cpu_seconds(sender_pids) - others_before[0]
        others["idle"] += _idle_seconds() - others_before[2]
        time.sleep(0.2)  # the last datagrams in the sockets' buffers
        others["redis"] += _cpu_seconds(redis_pids) - others_before[1]
        count = _registrations(ports) - before
        totals[3] += _cpu_seconds(pids) - cpu_before
        totals[0] += count
        totals[1] += elapsed
        totals[2] += server.calls() - calls_before
    by_command = server.calls_by_command()
    result[f"redis_calls_{workers}"] = {
        name: calls - by_command_before.get(name, 0)
        for name, calls in by_command.items()
        if calls != by_command_before.get(name, 0)
    }
    shared = [fetch_broker_status(HOST, port).get("shared") or {} for port in ports]
    result[f"adopted_{workers}"] = sum(int(s.get("adopted", 0)) for s in shared)
    result[f"registry_sizes_{workers}"] = [
        fetch_broker_status(HOST, port)["registry_size"] for port in ports
    ]
    stop_process(broker, grace=10.0)
    rate = totals[0] / totals[1]
    result[f"reg_per_s_{workers}"] = round(rate, 1)
    result[f"reg_per_cpu_s_{workers}"] = round(totals[0] / max(totals[3], 1e-9), 1)
    result[f"worker_cpu_s_{workers}"] = round(totals[3], 2)
    result[f"worker_cores_{workers}"] = round(totals[3] / totals[1], 3)
    result[f"sender_cores_{workers}"] = round(others["sender"] / totals[1], 3)
    result[f"redis_cores_{workers}"] = round(others["redis"] / totals[1], 3)
    result[f"idle_cores_{workers}"] = round(others["idle"] / totals[1], 3)
    if workers == 2:
        result["redis_cmds_per_reg"] = round(totals[2] / max(totals[0], 1), 4)
    return rate


# ------------------------------------------------------------------ connection setup


async def _read_message(reader: asyncio.StreamReader) -> control.ControlMessage:
    header = await asyncio.wait_for(reader.readexactly(RECORD_HEADER_SIZE), 10.0)
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), 10.0)
    message = control.decode_channel_body(body)
    assert not isinstance(message, control.RelayRecord)
    return message


async def _send(writer: asyncio.StreamWriter, op: str, **fields: Any) -> None:
    writer.write(encode_record(control.encode_control(op, **fields)))
    await writer.drain()


class _Target(asyncio.DatagramProtocol):
    """Identity 0 registered at broker 1: presents each wake-up's token and accepts."""

    def __init__(self, home: Path, files: tuple[Path, Path], tls: tuple[str, int]) -> None:
        self.anchors = certs_from_pem((home / "ca" / "gen-1" / "ca-cert.pem").read_bytes())
        self.context: ssl.SSLContext = client_context(self.anchors, *files)
        self.tls = tls
        self.key = b""
        self.identifier = ""
        self.counter = 0
        self.tokens: set[bytes] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self.acked = asyncio.Event()

    async def enroll(self) -> None:
        reader, writer = await asyncio.open_connection(*self.tls, ssl=self.context)
        await _send(writer, "enroll")
        enrolled = await _read_message(reader)
        assert isinstance(enrolled, control.Enrolled)
        self.key, self.identifier = enrolled.key, enrolled.identifier
        writer.close()

    def register(self, udp: tuple[str, int]) -> None:
        assert self.transport is not None
        self.counter += 1
        registration = Registration(self.identifier, self.counter, LOCAL)
        self.transport.sendto(encode_registration(registration, self.key), udp)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if data[:4] == b"RACK":
            self.acked.set()
        elif data[:4] == b"RWAK":
            wake = verify_wake(decode_wake(data), self.key)
            if wake.token not in self.tokens:
                self.tokens.add(wake.token)
                task = asyncio.ensure_future(self.present(wake.token))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def present(self, token: bytes) -> None:
        reader, writer = await asyncio.open_connection(*self.tls, ssl=self.context)
        try:
            await _send(writer, "present", token=token)
            request = await _read_message(reader)
            assert isinstance(request, control.Request), request
            await _send(writer, "accept", session=request.session, candidates=LOCAL)
            await _read_message(reader)  # start
        finally:
            writer.close()


def _target_main(
    conn: multiprocessing.connection.Connection,
    home: Path,
    files: tuple[Path, Path],
    tls: tuple[str, int],
    udp: tuple[str, int],
) -> None:
    """The target in a process of its own, as it is on a host of its own: it enrolls,
    registers, sends its identifier, then registers again on each ``register`` and stops
    on anything else."""
    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        target = _Target(home, files, tls)
        await target.enroll()
        await loop.create_datagram_endpoint(lambda: target, local_addr=(HOST, 0))
        target.register(udp)
        await asyncio.wait_for(target.acked.wait(), 10)
        conn.send(target.identifier)
        done = asyncio.Event()

        def command() -> None:
            try:
                what = conn.recv()
            except EOFError:
                what = "stop"
            if what == "register":
                target.register(udp)
            else:
                done.set()

        loop.add_reader(conn.fileno(), command)
        try:
            await done.wait()
        finally:
            loop.remove_reader(conn.fileno())

    uvloop.run(serve())


async def _setups(
    home: Path,
    target: multiprocessing.connection.Connection,
    identifier: str,
    brokers: dict[int, dict[str, int]],
    count: int,
    warmed: Callable[[], None],
) -> dict[int, list[float]]:
    """``count`` timed setups through each broker, interleaved, after one untimed through
    each (broker 2's opens its node link to broker 1); ``warmed`` runs between. The
    target (registered at broker 1) runs in its own process (``_target_main``)."""
    await asyncio.sleep(0.3)  # the enrollment's presence write
    anchors = certs_from_pem((home / "ca" / "gen-1" / "ca-cert.pem").read_bytes())
    issuer_context = client_context(anchors)
    times: dict[int, list[float]] = {1: [], 2: []}
    candidate = (Candidate.of("198.51.100.9", 50000),)
    for n in range(-2, count * 2):
        via = 1 + n % 2
        if n == 0:
            await asyncio.sleep(0.2)  # the link broker 2 asked for at the warm-up
            warmed()
        reader, writer = await asyncio.open_connection(
            HOST, brokers[via]["tls"], ssl=issuer_context
        )
        try:
            started = time.perf_counter()
            await _send(writer, "lookup", target=identifier)
            found = await _read_message(reader)
            assert isinstance(found, control.LookupResult), found
            await _send(
                writer,
                "connect",
                target=identifier,
                candidates=candidate,
                sealed=bytes(MIN_SEALED),
            )
            assert isinstance(await _read_message(reader), control.Connecting)
            start = await _read_message(reader)
            assert isinstance(start, control.Start), start
            if n >= 0:
                times[via].append((time.perf_counter() - started) * 1000)
        finally:
            writer.close()
        if n % 8 == 7:
            target.send("register")
        await asyncio.sleep(0.02)
    return times


def _measure_setup(
    args: argparse.Namespace,
    home: Path,
    server: _Redis,
    files: list[tuple[Path, Path]],
    result: dict[str, Any],
    cleanup: list[Any],
    suffix: str = "",
    overrides: dict[str, Any] | None = None,
) -> None:
    """Timed setups through the owner and a non-owner, the brokers at their defaults
    (the plain ``setup_*`` keys) or with ``overrides`` of their broker.toml (the keys then
    end in ``suffix``)."""
    server.client.flushall()
    import tomllib

    # configure_limits rewrites the home's broker.toml: the keys a variant changes are
    # set back to their defaults first.
    defaults = PresenceConfig()
    cache = {
        "presence_cache_s": defaults.lookup_cache_s,
        "node_link_local": defaults.local_link,
        **(overrides or {}),
    }

    brokers: dict[int, dict[str, int]] = {}
    processes = []
    for index in (1, 2):
        config = configure_limits(
            home,
            {
                "registry": server.url,
                "node": f"b{index}",
                # Port 0: bound by the broker itself, read from its start line.
                "udp": f"{HOST}:0",
                "tls": f"{HOST}:0",
                "api": f"{HOST}:0",
                **cache,
                # One target asked for again and again: its per-target bucket lifted.
                "limits": {"target_rate": 1_000_000.0, "target_burst": 1_000_000.0},
            },
        )
        path = home / f"broker-setup-{index}.toml"
        text = config.read_text()
        if index > 1:
            # One broker process per state folder (its lock): the second one runs on a copy
            # of the first one's folder (certificate, key and trust store).
            state = tomllib.loads(text)["state_dir"]
            copy = home / f"broker-setup-{index}-state"
            if not copy.exists():
                shutil.copytree(home / state, copy, ignore=shutil.ignore_patterns("lock"))
            text = text.replace(f'state_dir = "{state}"', f'state_dir = "{copy.name}"', 1)
            assert tomllib.loads(text)["state_dir"] == copy.name
        path.write_text(text)
        assert tomllib.loads(path.read_text())["node"] == f"b{index}"
        log = home / f"broker-setup-{index}.log"
        process = start_broker(path, log)
        cleanup.append(process)
        processes.append(process)
        started = wait_json_line(process, log, 30)
        brokers[index] = {key: int(started[key][1]) for key in ("udp", "tls", "api")}
    import uvloop

    before: dict[str, Any] = {}

    def warmed() -> None:
        before.update(fetch_broker_status(HOST, brokers[2]["api"]).get("shared") or {})

    # Forked before this process runs an event loop.
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    target = context.Process(
        target=_target_main,
        args=(child, home, files[0], (HOST, brokers[1]["tls"]), (HOST, brokers[1]["udp"])),
        daemon=True,
    )
    target.start()
    cleanup.append(target)
    try:
        if not parent.poll(30):
            raise TimeoutError("the target did not register in 30 s")
        identifier = parent.recv()
        times = uvloop.run(_setups(home, parent, identifier, brokers, args.setups, warmed))
        parent.send("stop")
        target.join(10)
    finally:
        _stop(target)
    after = fetch_broker_status(HOST, brokers[2]["api"]).get("shared") or {}
    for key in ("link_sent", "link_fallbacks", "forwarded", "lookups_cached"):
        result[f"setup_{key}{suffix}"] = int(after.get(key, 0)) - int(before.get(key, 0))
    # Opened at the warm-up: the link the timed setups took was local, or TLS.
    result[f"setup_link_opened_local{suffix}"] = int(after.get("link_opened_local", 0))
    owner = result[f"setup_owner_ms{suffix}"] = round(statistics.median(times[1]), 3)
    other = result[f"setup_non_owner_ms{suffix}"] = round(statistics.median(times[2]), 3)
    result[f"setup_extra_ms{suffix}"] = round(other - owner, 3)
    result["setups_each"] = len(times[1])
    for process in processes:
        stop_process(process, grace=5.0)


# ------------------------------------------------------------------ main


def _table(result: dict[str, Any]) -> Table:
    table = Table(title="Broker at scale (loopback, SO_REUSEPORT workers, shared Redis)")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("goal")

    def row(name: str, key: str, fmt: str = "{:,.1f}", goal: str = "") -> None:
        if key in result:
            table.add_row(name, fmt.format(result[key]), goal)

    row("registrations /s, 1 worker", "reg_per_s_1")
    row("registrations /s, 2 workers", "reg_per_s_2")
    row("2 workers / 1 (wall clock)", "scale_2", "{:.3f}", "≥ 1.7")
    row("  cores taken by the sender, 2 workers", "sender_cores_2", "{:.2f}")
    row("  cores taken by Redis, 2 workers", "redis_cores_2", "{:.2f}")
    row("  cores taken by the 2 workers", "worker_cores_2", "{:.2f}")
    row("  cores idle meanwhile, 2 workers", "idle_cores_2", "{:.2f}")
    row("  ceiling of 2 / 1 on the cores left (same run)", "scale_2_ceiling", "{:.3f}")
    row("registrations per worker CPU second, 1 worker", "reg_per_cpu_s_1")
    row("registrations per worker CPU second, 2 workers", "reg_per_cpu_s_2")
    row("CPU efficiency, 2 workers / 1", "cpu_efficiency_2", "{:.3f}", "≈ 1")
    row("Redis commands per registration", "redis_cmds_per_reg", "{:.4f}", "≤ 0.1")
    row("setup through the owner (ms, median)", "setup_owner_ms", "{:.2f}")
    row("setup through a non-owner (ms, median)", "setup_non_owner_ms", "{:.2f}")
    row("extra for the non-owner (ms)", "setup_extra_ms", "{:.2f}", "≤ 1")
    row("  lookups answered from the presence cache", "setup_lookups_cached", "{}")
    row("setup through the owner, no cache (ms)", "setup_owner_ms_cache_0", "{:.2f}")
    row("setup through a non-owner, no cache (ms)", "setup_non_owner_ms_cache_0", "{:.2f}")
    row("extra for the non-owner, no cache (ms)", "setup_extra_ms_cache_0", "{:.2f}")
    row("setup through the owner, TLS link (ms)", "setup_owner_ms_tls_link", "{:.2f}")
    row("setup through a non-owner, TLS link (ms)", "setup_non_owner_ms_tls_link", "{:.2f}")
    row("extra for the non-owner, TLS link (ms)", "setup_extra_ms_tls_link", "{:.2f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--equipment", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--sockets", type=int, default=32)
    parser.add_argument(
        "--prepare", type=int, default=300_000, help="datagrams built before the windows"
    )
    parser.add_argument(
        "--overload", type=float, default=1.3, help="paced offer / one worker's unpaced rate"
    )
    parser.add_argument("--setups", type=int, default=30)
    parser.add_argument("--setup-only", action="store_true", help="skip the registration rates")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    result: dict[str, Any] = {"loadavg_1m_before": load_average()}
    cleanup: list[Any] = []
    context = multiprocessing.get_context("fork")
    senders = []
    sender_pids: list[int] = []
    try:
        for _ in range(args.senders):
            parent, child = context.Pipe()
            process = context.Process(target=_sender_main, args=(child,), daemon=True)
            process.start()
            cleanup.append(process)
            senders.append(parent)
            sender_pids.append(int(process.pid or 0))
        with state_dir("roost-bench-broker-scale-") as base:
            make_home(base / "home", hubs=1, devices=0, loopback=True)
            home = base / "home"
            server = _Redis(base)
            cleanup.append(server)
            files = issue_identities(home, args.equipment)
            if not args.setup_only:
                # The senders share the two cores with the workers: unpaced, one of them
                # takes a whole core. So 1 worker is measured unpaced (it has a core of
                # its own either way), then both cases again with the senders paced above
                # what the workers can take, which leaves the workers the CPU.
                free = _measure_workers(
                    args, home, server, files, 1, senders, result, cleanup, 0.0, sender_pids
                )
                result["reg_per_s_1_unpaced"] = result["reg_per_s_1"]
                result["reg_per_cpu_s_1_unpaced"] = result["reg_per_cpu_s_1"]
                offered = free * args.overload
                one = _measure_workers(
                    args, home, server, files, 1, senders, result, cleanup, offered, sender_pids
                )
                two = _measure_workers(
                    args, home, server, files, 2, senders, result, cleanup, 2 * offered, sender_pids
                )
                result["offered_per_s_1"] = round(offered, 1)
                result["offered_per_s_2"] = round(2 * offered, 1)
                result["scale_2"] = round(two / one, 3)
                result["cpu_efficiency_2"] = round(
                    result["reg_per_cpu_s_2"] / result["reg_per_cpu_s_1"], 3
                )
                # The machine's own limit for the 2-worker case: the cores the workers took
                # plus those left idle, at the 2 workers' measured rate per CPU second,
                # against one worker's rate. scale_2 near it means the cores ran out (the
                # sender, Redis, anything else running), not the workers' scaling.
                left = result["worker_cores_2"] + result["idle_cores_2"]
                result["cores_left_for_workers_2"] = round(left, 3)
                result["scale_2_ceiling"] = round(left * result["reg_per_cpu_s_2"] / one, 3)
            # The plain setup_* keys: the local node link; then the same with every lookup
            # reading Redis (a first request), and with the link over TLS, as between hosts.
            for suffix, overrides in (
                ("", {"node_link_local": True}),
                ("_cache_0", {"presence_cache_s": 0, "node_link_local": True}),
                ("_tls_link", {"node_link_local": False}),
            ):
                _measure_setup(args, home, server, files, result, cleanup, suffix, overrides)
            for item in cleanup:
                _stop(item)
    finally:
        for item in cleanup:
            _stop(item)
    result.update(machine_facts())
    result.update(
        {
            "equipment": args.equipment,
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "senders": args.senders,
            "source_sockets": args.sockets,
        }
    )
    print_result(result, _table(result))


def _stop(item: Any) -> None:
    if isinstance(item, subprocess.Popen):
        stop_process(item, grace=5.0)
    elif isinstance(item, _Redis):
        item.stop()
    elif isinstance(item, multiprocessing.process.BaseProcess) and item.is_alive():
        item.kill()
        item.join(5)


if __name__ == "__main__":
    main()
