"""What the benchmarks share: hub processes, a state directory in memory, the machine they
ran on, and the output shape (a table for people, then one JSON line as the last line).

The scripts run as ``python bench/<name>.py``, so this directory is first on the path and
they import this module as ``_common``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from roost.config import load_hub_config
from roost.errors import StateError
from roost.hub.runfile import HubRunState, read_run_file

__all__ = [
    "HubProcesses",
    "bound_addresses",
    "cpu_model",
    "cpu_seconds",
    "load_average",
    "machine_facts",
    "print_result",
    "state_dir",
    "stop_process",
]


def stop_process(
    process: subprocess.Popen[Any] | None, grace: float = 10.0, kill_wait: float = 5.0
) -> None:
    """SIGTERM, up to `grace` seconds for a clean exit, then SIGKILL; nothing if it ended."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(kill_wait)


class HubProcesses:
    """Every hub process a benchmark starts, so its last ``finally`` can kill any left."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def start(self, config: Path, log: Path) -> subprocess.Popen[bytes]:
        """`roost hub run --config <config>` with its output in `log`."""
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "roost", "hub", "run", "--config", str(config)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._started.append(process)
        return process

    def kill_all(self) -> None:
        """Kill whatever is still running; a benchmark calls this on every exit path."""
        for process in self._started:
            if process.poll() is None:
                process.kill()
                process.wait(5)


def start_broker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``roost broker run --config CONFIG`` as a child process, its output in LOG."""
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "roost", "broker", "run", "--config", str(config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def bound_addresses(config: Path, process: subprocess.Popen[bytes] | None) -> HubRunState | None:
    """The ports hub `process` bound, from the run.json it writes; None before it has.

    The benchmarks' hubs bind port 0, so nothing can take a chosen port first; a file left
    by an earlier, killed process names another pid and is not taken for this one's.
    """
    if process is None:
        return None
    try:
        state = read_run_file(load_hub_config(config).run_file)
    except StateError:
        return None
    return state if state.pid == process.pid else None


@contextlib.contextmanager
def state_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory on /dev/shm when the machine has one, so that the fsyncs of
    spools, recorders and trust stores measure the code rather than the disk; removed on
    exit."""
    shm = Path("/dev/shm")
    home = Path(tempfile.mkdtemp(prefix=prefix, dir=shm if shm.is_dir() else None))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds of a process (this one when `pid` is None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5) (utime, stime) are the 12th and 13th after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo, else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> float:
    """The one-minute load average, rounded: a loaded machine explains a slow figure."""
    return round(os.getloadavg()[0], 2)


def machine_facts() -> dict[str, Any]:
    """Where a run happened, as the JSON keys the benchmark reports share."""
    return {
        "loadavg_1m_after": load_average(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def print_result(
    result: dict[str, Any], table: Table | None = None, *, width: int | None = None
) -> None:
    """The table (when there is one), then `result` as one JSON line, the last line."""
    if table is not None:
        Console(width=width).print(table)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
