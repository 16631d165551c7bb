"""Across real hosts: three network namespaces on a bridge, multicast announcements
between them (section 3: 239.255.77.77:17320, TTL 1), and the handover works."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from roost.cli.home import make_home
from roost.config import to_toml
from tests.helpers.netns import bridged_hosts
from tests.helpers.processes import run_roost, stop_processes
from tests.helpers.tools import require_netns
from tests.helpers.waits import wait_until_or_show_logs

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(150)]


def _rewrite(path: Path, changes: dict[str, object], announce: dict[str, object]) -> None:
    doc = tomllib.loads(path.read_text())
    doc.update(changes)
    doc["announce"] = {**doc.get("announce", {}), **announce}
    path.write_text(to_toml(doc))


def _device_hub(home: Path, index: int) -> str | None:
    try:
        status = json.loads((home / f"device-{index}" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return status.get("hub") if status.get("state") == "streaming" else None


def test_handover_across_namespaces_over_multicast(tmp_path: Path) -> None:
    require_netns()
    home = tmp_path / "home"
    summary = make_home(home, hubs=2, devices=3, loopback=False, fps=5.0)
    hub_ids = list(summary["hubs"])  # type: ignore[call-overload]
    processes: list[subprocess.Popen[bytes]] = []
    with bridged_hosts(3) as hosts:
        (ns_a, ip_a), (ns_b, ip_b), (ns_d, ip_d) = hosts
        for index, ip in enumerate([ip_a, ip_b], start=1):
            _rewrite(
                home / f"hub-{index}.toml",
                {"listen": f"{ip}:17320", "advertise": f"{ip}:17320", "api": f"{ip}:8080"},
                {"interfaces": [ip]},
            )
        for index in (1, 2, 3):
            _rewrite(home / f"device-{index}.toml", {}, {"interfaces": [ip_d]})

        def start(ns: str, kind: str, name: str) -> None:
            processes.append(run_roost(home, kind, name, namespace=ns))

        try:
            start(ns_a, "hub", "hub-1")
            for index in (1, 2, 3):
                start(ns_d, "device", f"device-{index}")
            wait_until_or_show_logs(
                "cameras on hub A over multicast",
                lambda: all(_device_hub(home, i) == hub_ids[0] for i in (1, 2, 3)),
                40,
                home,
            )
            start(ns_b, "hub", "hub-2")
            wait_until_or_show_logs(
                "cameras on hub B after the handover",
                lambda: all(_device_hub(home, i) == hub_ids[1] for i in (1, 2, 3)),
                40,
                home,
            )
        finally:
            stop_processes(processes)
