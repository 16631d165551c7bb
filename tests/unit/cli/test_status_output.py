"""Human status output of the hub, the device and the broker: names next to identifiers,
relative times, no ``None``, no millisecond epochs; a stopped device says it is not running.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from roost.cli.broker import print_broker_status
from roost.cli.exitcodes import ExitCode
from roost.cli.home import make_home
from roost.cli.main import _register, cli
from roost.cli.names import home_names, resolve_node
from roost.cli.run import print_hub_status
from roost.hub.runfile import HubRunState, write_run_file

_register()


def assert_human(text: str) -> None:
    assert text.strip() and "None" not in text and "null" not in text, text
    assert not re.search(r"\b1[0-9]{12}\b", text), text


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    path = tmp_path_factory.mktemp("home") / "home"
    return path, make_home(path, hubs=2, devices=1, loopback=True)


def test_names_map_and_resolve(home: tuple[Path, dict[str, object]]) -> None:
    path, summary = home
    names = home_names(path)
    hubs, devices = summary["hubs"], summary["devices"]
    assert isinstance(hubs, list) and isinstance(devices, list)
    assert names[hubs[0]] == "hub-1" and names[devices[0]] == "device-1"
    assert resolve_node("device-1", path) == devices[0]
    assert resolve_node(devices[0], path) == devices[0]
    # A word that names no node goes on as it is: the hub refuses it in its own words.
    assert resolve_node("device-9", path) == "device-9"


def test_hub_status_shows_names_and_relative_times(
    home: tuple[Path, dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, summary = home
    hubs, devices = summary["hubs"], summary["devices"]
    assert isinstance(hubs, list) and isinstance(devices, list)
    doc = {
        "id": hubs[0],
        "name": "hub-1",
        "endpoint": "127.0.0.1:40000",
        "features": ["hcsp", "webs"],
        "max": 8,
        "connected": [devices[0]],
        "winner": hubs[1],
        "hubs": [
            {
                "id": hubs[0],
                "endpoint": "127.0.0.1:40000",
                "features": [],
                "connected": 1,
                "max": 8,
                "rank": 2,
                "self": True,
                "last_seen_s_ago": 0.0,
            },
            {
                "id": hubs[1],
                "endpoint": "127.0.0.1:40001",
                "features": [],
                "connected": 0,
                "max": 8,
                "rank": 1,
                "self": False,
                "last_seen_s_ago": 3.2,
            },
        ],
        "trust": {"current": 1, "prepared": None, "time_floor": "2026-01-01T00:00:00+00:00"},
        "counters": {"frames_stored": 12},
        "remote": None,
        "uptime_s": 125.0,
        "broker": None,
    }
    print_hub_status(doc, home_names(path))
    out = capsys.readouterr().out
    assert_human(out)
    assert f"device-1 ({devices[0]})" in out and "standing by for hub-2" in out
    assert "3 s ago" in out and "2 min" in out


def test_broker_status_is_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    print_broker_status(
        {
            "name": "broker",
            "udp": "127.0.0.1:3478",
            "tls": "127.0.0.1:7443",
            "registry_size": 1,
            "channels": 1,
            "sessions": 0,
            "relaying": 0,
            "trust": {"current": 1, "prepared": None, "time_floor": "2026-01-01T00:00:00+00:00"},
            "counters": {"registrations": 4, "refusals": {}},
            "uptime_s": 7.0,
        }
    )
    out = capsys.readouterr().out
    assert_human(out)
    assert "registrations" in out and "7 s" in out


def test_device_status_says_not_running_when_its_process_is_gone(
    home: tuple[Path, dict[str, object]],
) -> None:
    path, summary = home
    devices = summary["devices"]
    assert isinstance(devices, list)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    status = {
        "id": devices[0],
        "name": "device-1",
        "state": "streaming",
        "hub": summary["hubs"][0],  # type: ignore[index]
        "hub_endpoint": "127.0.0.1:40000",
        "last_acked_seq": 41,
        "buffered": 2,
        "buffered_bytes": 2048,
        "dropped": 0,
        "captured": 43,
        "frames_total": 43,
        "trust": {"current": 1, "prepared": None, "time_floor": "2026-01-01T00:00:00+00:00"},
        "counters": {},
        "written_at": time.time() - 65,
        "pid": int(gone.stdout),
        "running": True,
    }
    status_file = path / "device-1" / "status.json"
    status_file.write_text(json.dumps(status))
    config = str(path / "device-1.toml")
    result = CliRunner().invoke(cli, ["device", "status", "--config", config])
    assert result.exit_code == 0 and "is not running" in result.output, result.output
    assert "1 min ago" in result.output and "streaming" not in result.output
    assert_human(result.output)
    scripted = json.loads(
        CliRunner().invoke(cli, ["device", "status", "--config", config, "--json"]).output
    )
    assert scripted["running"] is False
    status["pid"] = os.getpid()
    status_file.write_text(json.dumps(status))
    result = CliRunner().invoke(cli, ["device", "status", "--config", config])
    assert "streaming" in result.output and "hub-1 (" in result.output, result.output
    assert_human(result.output)
    stopped = {**status, "running": False}
    status_file.write_text(json.dumps(stopped))
    result = CliRunner().invoke(cli, ["device", "status", "--config", config])
    assert "is not running" in result.output


def test_hub_status_of_a_killed_hub_says_it_is_not_running(
    home: tuple[Path, dict[str, object]],
) -> None:
    path, _ = home
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    address = ("127.0.0.1", 1)
    write_run_file(
        path / "hub-1" / "run.json", HubRunState(int(gone.stdout), address, address, address)
    )
    result = CliRunner().invoke(cli, ["hub", "status", "--config", str(path / "hub-1.toml")])
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "hub-1 is not running" in result.output and "gone" in result.output
    (path / "hub-1" / "run.json").unlink()
