"""`roost broker run --workers N`: N broker processes on one host sharing the UDP and TLS
ports with ``SO_REUSEPORT`` and their registry in Redis/Valkey (docs/broker-scale.md).

The kernel spreads datagrams over the workers by the source's address and port, so one
piece of equipment keeps landing on the same worker (its owner) until that worker dies;
then its next registration lands on another, which adopts the entry from Redis. This
supervisor picks the ports once (a configured port 0 becomes one free port for all),
starts the workers, prints one JSON line when every worker is bound, restarts a worker
that dies (after a pause) and forwards SIGTERM/SIGINT to all of them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from roost.config import BrokerConfig

__all__ = ["run_workers"]

_RESTART_PAUSE_S = 1.0
_START_TIMEOUT_S = 30.0


def _reserve(kind: int, host: str, port: int) -> socket.socket:
    """A socket on ``host:port`` with SO_REUSEPORT, so the workers can join its port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    if kind == socket.SOCK_STREAM:
        # Connections of an earlier run in TIME_WAIT must not block the restart (asyncio's
        # listeners set the same option).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker_command(config_file: Path, index: int, udp: int, tls: int, verbose: bool) -> list[str]:
    command = [sys.executable, "-m", "roost", "broker", "run", "--config", str(config_file)]
    command += ["--worker", str(index), "--udp-port", str(udp), "--tls-port", str(tls)]
    return command + (["--verbose"] if verbose else [])


def run_workers(config: BrokerConfig, config_file: Path, workers: int, verbose: bool) -> None:
    """Supervise ``workers`` broker processes until SIGINT/SIGTERM."""
    # Held until every worker is bound: a port 0 becomes one port the workers share.
    udp_sock = _reserve(socket.SOCK_DGRAM, *config.udp)
    tls_sock = _reserve(socket.SOCK_STREAM, *config.tls)
    udp_port, tls_port = udp_sock.getsockname()[1], tls_sock.getsockname()[1]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: dict[int, subprocess.Popen[str]] = {}
    summaries: list[dict[str, Any]] = []
    for index in range(workers):
        command = _worker_command(config_file, index, udp_port, tls_port, verbose)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        processes[index] = process
    deadline = time.monotonic() + _START_TIMEOUT_S
    for index, process in processes.items():
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            for other in processes.values():
                other.kill()
            raise click.ClickException(f"broker worker {index} did not start")
        summaries.append({"worker": index, "pid": process.pid, **json.loads(line)})
    udp_sock.close()
    tls_sock.close()
    click.echo(
        json.dumps(
            {
                "broker": config.name,
                "udp": [config.udp[0], udp_port],
                "tls": [config.tls[0], tls_port],
                "api": summaries[0]["api"],
                "workers": summaries,
            }
        ),
        nl=True,
    )
    sys.stdout.flush()
    restart_at: dict[int, float] = {}
    while not stopping:
        time.sleep(0.2)
        for index, process in list(processes.items()):
            if process.poll() is None:
                continue
            if index not in restart_at:
                restart_at[index] = time.monotonic() + _RESTART_PAUSE_S
            elif time.monotonic() >= restart_at.pop(index):
                command = _worker_command(config_file, index, udp_port, tls_port, verbose)
                processes[index] = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, text=True, env=env
                )
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
