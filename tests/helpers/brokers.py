"""Several `roost broker run` processes of one loopback home sharing a Redis registry."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from roost.rendezvous.broker_aio import fetch_broker_status
from tests.helpers.processes import end_process, run_roost
from tests.helpers.waits import wait_until

__all__ = ["BrokerFleet", "free_port"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class BrokerFleet:
    """``count`` broker configs next to the home's ``broker.toml`` (same certificate and
    trust store, own ports and node name), all with ``registry = url``; broker 1 keeps the
    home's ports. The hub configs list every broker, broker 1 first."""

    def __init__(
        self, home: Path, count: int, url: str, *, interval_s: float = 1.0, every: int = 4
    ) -> None:
        self.home = home
        self.count = count
        base = (home / "broker.toml").read_text()
        self.ports: dict[int, dict[str, int]] = {}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        for index in range(1, count + 1):
            lines = []
            ports = {"udp": free_port(socket.SOCK_DGRAM), "tls": free_port(), "api": free_port()}
            for line in base.splitlines():
                key = line.split("=", 1)[0].strip()
                if index > 1 and key in ports:
                    line = f'{key} = "127.0.0.1:{ports[key]}"'
                elif key in ports:
                    ports[key] = int(line.split(":")[-1].strip('"'))
                if key == "interval_s":
                    line = f"interval_s = {interval_s}"
                if key == "state_dir" and index > 1:
                    # One broker process per state folder (its lock): each of the fleet gets
                    # a copy of the home broker's folder (certificate, key, trust store).
                    source = home / line.split("=", 1)[1].strip().strip('"')
                    copy = home / f"broker-{index}-state"
                    if not copy.exists():
                        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("lock"))
                    line = f'state_dir = "{copy.name}"'

                if line.startswith("[limits]"):
                    lines.append(f'registry = "{url}"')
                    lines.append(f'node = "b{index}"')
                    lines.append(f"presence_every = {every}")
                lines.append(line)
            self.ports[index] = ports
            (home / f"broker-{index}.toml").write_text("\n".join(lines) + "\n")
        for hub in home.glob("hub-*.toml"):
            text = hub.read_text()
            tls = ", ".join(f'"127.0.0.1:{self.ports[i]["tls"]}"' for i in self.ports)
            udp = ", ".join(f'"127.0.0.1:{self.ports[i]["udp"]}"' for i in self.ports)
            out = []
            for line in text.splitlines():
                if line.startswith("address = ") and "[broker]" in "\n".join(out[-3:]):
                    line = f"address = [{tls}]"
                elif line.startswith("udp = ") and out and out[-1].startswith("address = ["):
                    line = f"udp = [{udp}]"
                out.append(line)
            hub.write_text("\n".join(out) + "\n")

    def tls(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]['tls']}"

    def udp(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]['udp']}"

    def start(self, index: int, *extra: str) -> None:
        self.processes[index] = run_roost(self.home, "broker", f"broker-{index}", *extra)
        wait_until(lambda: self.status(index) is not None, 20, what=f"broker {index} API")

    def status(self, index: int) -> dict[str, Any] | None:
        try:
            return fetch_broker_status("127.0.0.1", self.ports[index]["api"], timeout=2.0)
        except OSError:
            return None

    def shared(self, index: int) -> dict[str, Any]:
        status = self.status(index) or {}
        shared: dict[str, Any] = status.get("shared") or {}
        return shared

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        end_process(self.processes.pop(index), sig)

    def close(self) -> None:
        for index in list(self.processes):
            self.kill(index, signal.SIGTERM)

    def logs(self) -> str:
        return json.dumps(
            {p.name: p.read_text(errors="replace")[-2000:] for p in self.home.glob("broker-*.log")}
        )
