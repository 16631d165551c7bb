"""Finding hubs with DNS-SD across real hosts: three network namespaces on a private bridge,
mDNS multicast on that bridge only. Announcements are unicast-only with no peer listed and
the device has no bootstrap list, so DNS-SD is the only way anyone can find anyone: the
hubs find each other (and then elect over unicast announcements), the device finds a hub
and streams to it, and `roost discover` lists both (docs/hub-and-device.md)."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from roost.cli.home import make_home
from roost.config import to_toml
from tests.helpers.netns import bridged_hosts
from tests.helpers.processes import roost_command, run_roost, stop_processes
from tests.helpers.tools import require_netns
from tests.helpers.waits import scaled, wait_until_or_show_logs

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(120)]


def _rewrite(path: Path, changes: dict[str, object]) -> None:
    doc = tomllib.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            doc[key] = {**doc.get(key, {}), **value}
        else:
            doc[key] = value
    path.write_text(to_toml(doc))


def _roost(ns: str, *args: str) -> list[str]:
    return roost_command(*args, namespace=ns)


def _json_of(ns: str, *args: str) -> Any:
    done = subprocess.run(_roost(ns, *args), capture_output=True, timeout=scaled(20))
    if done.returncode != 0:
        return None
    return json.loads(done.stdout)


def _device_status(home: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((home / "device-1" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc


def test_hubs_and_a_device_find_each_other_through_dns_sd_alone(tmp_path: Path) -> None:
    require_netns()
    home = tmp_path / "home"
    summary = make_home(home, hubs=2, devices=1, loopback=False, fps=5.0)
    hub_ids: list[str] = list(summary["hubs"])  # type: ignore[call-overload]
    processes: list[subprocess.Popen[bytes]] = []
    with bridged_hosts(3) as hosts:
        (ns_a, ip_a), (ns_b, ip_b), (ns_d, ip_d) = hosts
        # Multicast announcements off and no unicast peers: nothing but DNS-SD to go on.
        silent = {"multicast": False, "peers": []}
        for index, ip in enumerate([ip_a, ip_b], start=1):
            _rewrite(
                home / f"hub-{index}.toml",
                {
                    "listen": f"{ip}:17320",
                    "advertise": f"{ip}:17320",
                    "api": f"{ip}:8080",
                    "announce": {**silent, "bind": ip},
                },
            )
        _rewrite(
            home / "device-1.toml",
            {
                "announce": {**silent, "bind": ip_d},
                "dns_sd": {"enabled": True, "interfaces": [ip_d]},
            },
        )
        assert "hubs" not in tomllib.loads((home / "device-1.toml").read_text())

        def start(ns: str, kind: str, name: str) -> None:
            processes.append(run_roost(home, kind, name, namespace=ns))

        def hub_status(ns: str, index: int) -> dict[str, Any]:
            doc = _json_of(
                ns, "hub", "status", "--json", "--config", str(home / f"hub-{index}.toml")
            )
            return doc if isinstance(doc, dict) else {}

        def knows_both(ns: str, index: int) -> bool:
            status = hub_status(ns, index)
            return {hub["id"] for hub in status.get("hubs", [])} == set(hub_ids)

        try:
            start(ns_a, "hub", "hub-1")
            start(ns_b, "hub", "hub-2")
            start(ns_d, "device", "device-1")
            wait_until_or_show_logs(
                "both hubs verified each other's announcements",
                lambda: knows_both(ns_a, 1) and knows_both(ns_b, 2),
                40,
                home,
            )
            status_a = hub_status(ns_a, 1)
            assert [hub["id"] for hub in status_a["dns_sd"]] == [hub_ids[1]]
            assert status_a["dns_sd"][0]["endpoint"] == f"{ip_b}:17320"
            wait_until_or_show_logs(
                "the device streams to a hub it found through DNS-SD",
                lambda: (
                    _device_status(home).get("state") == "streaming"
                    and _device_status(home).get("hub") in hub_ids
                ),
                40,
                home,
            )
            device = _device_status(home)
            assert device["counters"]["announcements_accepted"] == 0  # none could arrive
            assert {hint["id"] for hint in device["dns_sd"]} == set(hub_ids)

            found = _json_of(ns_d, "discover", "--json", "--timeout", "2", "--interface", ip_d)
            assert isinstance(found, list)
            by_id = {hub["id"]: hub for hub in found}
            assert set(by_id) == set(hub_ids)
            assert by_id[hub_ids[0]]["endpoint"] == f"{ip_a}:17320"
            assert by_id[hub_ids[1]]["api"] == f"{ip_b}:8080"
            assert by_id[hub_ids[0]]["name"] == "hub-1"
        finally:
            stop_processes(processes)


def test_roost_discover_on_an_empty_lan_and_on_a_missing_interface(tmp_path: Path) -> None:
    require_netns()
    with bridged_hosts(1) as [(ns, ip)]:
        empty = subprocess.run(
            _roost(ns, "discover", "--json", "--timeout", "0.5", "--interface", ip),
            capture_output=True,
            timeout=scaled(20),
        )
        assert (empty.returncode, json.loads(empty.stdout)) == (0, [])
        text = subprocess.run(
            _roost(ns, "discover", "--timeout", "0.5", "--interface", ip),
            capture_output=True,
            timeout=scaled(20),
        )
        assert text.returncode == 0 and b"no hubs answered within 0.5 s" in text.stdout
        # No interface holds this address in the namespace: one line, "unreachable".
        missing = subprocess.run(
            _roost(ns, "discover", "--timeout", "0.5", "--interface", "10.231.78.9"),
            capture_output=True,
            timeout=scaled(20),
        )
        assert missing.returncode == 8, missing.stderr
        assert missing.stderr.decode().startswith("roost: mDNS is not available on")
