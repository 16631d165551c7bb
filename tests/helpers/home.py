"""A whole home on loopback as real processes: start, stop, kill, observe, account."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost.cli.home import make_home
from roost.config import load_device_config, load_hub_config
from roost.errors import StateError
from roost.hub.api import fetch_status
from roost.hub.recorder import Recorder
from roost.hub.runfile import HubRunState, read_run_file
from tests.helpers.processes import end_process, run_roost
from tests.helpers.waits import wait_until


@dataclass
class Accounting:
    captured: int
    stored: int
    lost: int
    duplicated: int


@dataclass
class LoopbackHome:
    """`roost init --loopback` plus process control; every process is killed on close."""

    path: Path
    hubs: int
    devices: int
    fps: float = 10.0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = make_home(self.path, self.hubs, self.devices, True, 8, self.fps)

    def hub_id(self, index: int) -> str:
        return str(self.summary["hubs"][index - 1])

    def device_id(self, index: int) -> str:
        return str(self.summary["devices"][index - 1])

    def hold_connection(self, index: int, hold: bool) -> None:
        """Set hub ``index``'s ``[broker] hold_connection`` (`roost init` writes it true;
        docs/broker.md, "Held connections"). Tests of the UDP wake-up path set it false."""
        config = self.path / f"hub-{index}.toml"
        text = config.read_text()
        line = "\nhold_connection = true\n"
        assert line in text or not hold, "roost init wrote no hold_connection line"
        config.write_text(text.replace(line, f"\nhold_connection = {str(hold).lower()}\n"))

    def start(self, name: str, *options: str) -> None:
        """Run ``NAME.toml`` (a hub when the name starts with "hub"), output to NAME.log."""
        kind = "hub" if name.startswith("hub") else "device"
        self.processes[name] = run_roost(self.path, kind, name, *options)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        end_process(self.processes.pop(name), sig)

    def kill(self, name: str) -> None:
        self.stop(name, signal.SIGKILL)

    def close(self) -> None:
        for name in list(self.processes):
            self.kill(name)

    def hub_run_state(self, index: int) -> HubRunState | None:
        """Hub `index`'s bound addresses, from the run.json its running process wrote.

        None while it has not bound everything yet, and when the file was left by an
        earlier process of that hub (a killed one never removes it).
        """
        process = self.processes.get(f"hub-{index}")
        if process is None:
            return None
        try:
            state = read_run_file(load_hub_config(self.path / f"hub-{index}.toml").run_file)
        except StateError:
            return None
        return state if state.pid == process.pid else None

    def wait_bound(self, index: int, seconds: float = 20) -> HubRunState:
        """Wait for hub `index` to report its bound addresses; returns them."""
        self.wait_for(f"hub-{index} run.json", lambda: self.hub_run_state(index), seconds)
        state = self.hub_run_state(index)
        assert state is not None
        return state

    def hub_status(self, index: int) -> dict[str, Any] | None:
        state = self.hub_run_state(index)
        if state is None:
            return None
        try:
            return fetch_status(*state.api, timeout=2)
        except OSError:
            return None

    def device_status(self, index: int) -> dict[str, Any] | None:
        config = load_device_config(self.path / f"device-{index}.toml")
        try:
            doc: dict[str, Any] = json.loads(config.status_file.read_bytes())
            return doc
        except (FileNotFoundError, ValueError):
            return None

    def wait_for(self, what: str, condition: Callable[[], bool], seconds: float) -> None:
        """Poll `condition` for `seconds` time units; on timeout the error carries the logs."""
        try:
            wait_until(condition, seconds, interval=0.2, what=what)
        except AssertionError as timed_out:
            logs = {p.name: p.read_text(errors="replace")[-1500:] for p in self.path.glob("*.log")}
            raise AssertionError(f"{timed_out}; logs: {json.dumps(logs)[:6000]}") from None

    def frames_stored(self, index: int) -> int:
        """Frames hub `index` has stored so far (0 while its API does not answer)."""
        status = self.hub_status(index) or {}
        return int(status.get("counters", {}).get("frames_stored", 0))

    def buffered(self, index: int) -> int:
        """Frames device `index` holds unacknowledged, as of its last status file."""
        return int((self.device_status(index) or {}).get("buffered", 0))

    def devices_on(self, hub_index: int) -> bool:
        wanted = self.hub_id(hub_index)
        for i in range(1, self.devices + 1):
            status = self.device_status(i)
            if not status or status.get("hub") != wanted or status.get("state") != "streaming":
                return False
        return True

    def flushed(self, index: int) -> bool:
        status = self.device_status(index)
        return bool(status) and status is not None and status["buffered"] == 0

    def account(self) -> Accounting:
        """After every process stopped: frames captured vs stored across all hubs."""
        captured = stored = lost = duplicated = 0
        recorders = [
            Recorder(self.path / f"hub-{i}" / "recordings", 1 << 40)
            for i in range(1, self.hubs + 1)
        ]
        try:
            for j in range(1, self.devices + 1):
                device = self.device_id(j)
                seen: Counter[int] = Counter()
                for recorder in recorders:
                    seen.update(recorder.seqs(device))
                status = self.device_status(j) or {}
                total = int(status.get("frames_total", 0))
                captured += total
                stored += len(seen)
                duplicated += sum(c - 1 for c in seen.values() if c > 1)
                # Everything the device ever queued is either stored somewhere or lost.
                lost += total - len(seen)
        finally:
            for recorder in recorders:
                recorder.close()
        return Accounting(captured, stored, lost, duplicated)
