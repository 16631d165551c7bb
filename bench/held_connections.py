"""What a held connection costs the broker: memory and descriptors per holding hub.

Run as `.venv/bin/python bench/held_connections.py`. It prints a table, then one JSON line.

On loopback only: a real `roost broker run` from a home made by `make_home(...,
loopback=True)` on /dev/shm, its rate limits lifted (`_broker_load.LIMITS`: every packet
comes from 127.0.0.1), `max_held` and `max_channels` raised above `--hubs`. `--hubs` hub
identities are issued by the home's authority. Three readings of the broker process
(/proc/PID/status VmRSS, the entries of /proc/PID/fd):

1. started, nothing enrolled;
2. every identity enrolled once over mutual TLS (`enroll` → `enrolled`, then the connection
   closed): what a hub on UDP registrations alone leaves in the broker (its registry entry,
   its certificate), the docs/broker.md way of serving a million hubs;
3. every identity connected again, enrolled and held (`enroll`, `hold` → `holding`), the
   connections kept open with a keepalive every 15 s: what `hold_connection = true` adds.

The figures per hub are the differences divided by `--hubs`; the broker's own status
(`holding`, `channels`) confirms every connection is held. Everything is bounded in count
and time, and the broker is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from _broker_load import HOST, configure_limits, enroll, issue_identities, wait_json_line
from _common import (
    load_average,
    machine_facts,
    print_result,
    start_broker,
    state_dir,
    stop_process,
)
from roost.cli.home import make_home
from roost.config import load_broker_config
from roost.framing import RECORD_HEADER_SIZE, encode_record
from roost.pki.certs import certs_from_pem
from roost.pki.tls import client_context
from roost.rendezvous import control
from roost.rendezvous.broker_aio import fetch_broker_status


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# The keepalive task of the held connections (referenced until the run ends).
_background: set[asyncio.Future[None]] = set()


async def _read_body(reader: asyncio.StreamReader) -> control.ControlMessage:
    header = await asyncio.wait_for(reader.readexactly(RECORD_HEADER_SIZE), 20.0)
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), 20.0)
    message = control.decode_channel_body(body)
    if not isinstance(message, control.ControlMessage):
        raise RuntimeError("a relay record on a control connection")
    return message


async def _hold_all(
    home: Path, port: int, files: list[tuple[Path, Path]], concurrency: int, stop: asyncio.Event
) -> tuple[list[asyncio.StreamWriter], float]:
    """Open, enroll and hold one connection per identity; keep them open until ``stop``."""
    anchors = certs_from_pem((home / "ca" / "gen-1" / "ca-cert.pem").read_bytes())
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    queue = list(files)

    async def one(cert_file: Path, key_file: Path) -> None:
        context: ssl.SSLContext = client_context(anchors, cert_file, key_file)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, ssl=context), 20.0
        )
        writer.write(encode_record(control.encode_control("enroll")))
        if not isinstance(await _read_body(reader), control.Enrolled):
            raise RuntimeError("enroll was not answered enrolled")
        writer.write(encode_record(control.encode_control("hold")))
        answer = await _read_body(reader)
        if not isinstance(answer, control.Holding):
            raise RuntimeError(f"hold was answered {answer!r}")
        writers.append(writer)
        readers.append(reader)

    async def worker() -> None:
        while queue:
            await one(*queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started

    async def keepalives() -> None:
        # The broker closes a held connection quiet for its TTL (three intervals).
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 15.0)
            for writer in writers:
                writer.write(encode_record(control.encode_control("keepalive")))
            for reader in readers:
                # Echoes pile up unread otherwise; the content does not matter.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.read(65536), 0.01)

    _background.add(asyncio.ensure_future(keepalives()))
    return writers, elapsed


async def _measure(args: argparse.Namespace, home: Path, result: dict[str, Any]) -> None:
    config_path = configure_limits(
        home,
        {
            "max_channels": args.hubs + 256,
            "limits": {"max_held": args.hubs + 128, "target_burst": 1000.0},
        },
    )
    config = load_broker_config(config_path)
    assert config.api is not None
    api = config.api
    started = time.perf_counter()
    files = issue_identities(home, args.hubs)
    result["issue_s"] = round(time.perf_counter() - started, 2)
    log = home / "broker.log"
    broker = start_broker(config_path, log)
    stop = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []
    try:
        wait_json_line(broker, log, 20)
        await asyncio.sleep(1.0)
        rss0, fds0 = _rss_kib(broker.pid), _fds(broker.pid)
        await enroll(home, config.tls[1], files, args.concurrency)
        await asyncio.sleep(1.0)
        rss1, fds1 = _rss_kib(broker.pid), _fds(broker.pid)
        writers, elapsed = await _hold_all(home, config.tls[1], files, args.concurrency, stop)
        await asyncio.sleep(2.0)
        rss2, fds2 = _rss_kib(broker.pid), _fds(broker.pid)
        status = await asyncio.to_thread(fetch_broker_status, *api)
        if status["holding"] != args.hubs:
            raise RuntimeError(f"the broker holds {status['holding']} of {args.hubs}")
        n = args.hubs
        result.update(
            {
                "hubs": n,
                "rss_start_kib": rss0,
                "rss_enrolled_kib": rss1,
                "rss_held_kib": rss2,
                "fds_start": fds0,
                "fds_enrolled": fds1,
                "fds_held": fds2,
                "enrolled_bytes_per_hub": round((rss1 - rss0) * 1024 / n),
                "held_bytes_per_hub": round((rss2 - rss1) * 1024 / n),
                "held_fds_per_hub": round((fds2 - fds1) / n, 3),
                "hold_per_s": round(n / elapsed, 1),
                "broker_holding": status["holding"],
                "broker_channels": status["channels"],
                "broker_holds": status["counters"]["holds"],
            }
        )
    finally:
        stop.set()
        for writer in writers:
            writer.close()
        stop_process(broker, grace=5.0)


def _table(result: dict[str, Any]) -> Table:
    table = Table(title=f"Broker cost of held connections ({result.get('hubs', 0)} hubs)")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    rows = [
        ("RSS started (KiB)", "rss_start_kib"),
        ("RSS, every hub enrolled, UDP only (KiB)", "rss_enrolled_kib"),
        ("RSS, every hub held (KiB)", "rss_held_kib"),
        ("enrolled, per hub (bytes)", "enrolled_bytes_per_hub"),
        ("held connection, per hub (bytes)", "held_bytes_per_hub"),
        ("descriptors per held hub", "held_fds_per_hub"),
        ("connections enrolled and held per second", "hold_per_s"),
    ]
    for name, key in rows:
        if key in result:
            table.add_row(name, f"{result[key]:,}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hubs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.hubs + 512
    if hard < need:
        sys.exit(f"needs {need} descriptors, the hard limit is {hard}")
    # The broker, started from here, inherits the raised limit.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    result: dict[str, Any] = {"loadavg_1m_before": load_average()}
    with state_dir("roost-bench-held-") as base:
        make_home(base / "home", hubs=1, devices=0, loopback=True)
        asyncio.run(_measure(args, base / "home", result))
    result.update(machine_facts())
    result["loop"] = "uvloop (broker), asyncio (clients)"
    print_result(result, _table(result))


if __name__ == "__main__":
    main()
