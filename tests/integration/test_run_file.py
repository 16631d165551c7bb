"""A hub process configured with port 0 everywhere (what `roost init --loopback` writes)
binds free ports, reports them in STATE_DIR/run.json and removes the file at a clean stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.cli.exitcodes import ExitCode
from roost.config import load_hub_config
from roost.hub.api import fetch_status
from tests.helpers.home import LoopbackHome
from tests.helpers.waits import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[LoopbackHome]:
    built = LoopbackHome(tmp_path / "home", hubs=1, devices=1, fps=5.0)
    try:
        yield built
    finally:
        built.close()


def _hub_status_cli(home: LoopbackHome, *extra: str) -> subprocess.CompletedProcess[str]:
    config = str(home.path / "hub-1.toml")
    return subprocess.run(
        [sys.executable, "-m", "roost", "hub", "status", "--config", config, *extra],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "120"},
    )


def test_run_file_names_the_bound_ports_and_goes_at_a_clean_stop(home: LoopbackHome) -> None:
    config = load_hub_config(home.path / "hub-1.toml")
    # What `roost init --loopback` writes: no TCP port chosen in advance.
    assert config.listen[1] == config.advertise[1] == config.api[1] == 0
    assert config.remote is not None and config.remote[1] == 0
    home.start("hub-1")
    state = home.wait_bound(1)
    assert state.pid == home.processes["hub-1"].pid
    ports = {state.listen[1], state.api[1], state.remote[1] if state.remote else 0}
    assert 0 not in ports and len(ports) == 3
    assert state.advertise == state.listen == ("127.0.0.1", state.listen[1])

    # The API answers on the reported port, and announces the bound channel port.
    status = fetch_status(*state.api, timeout=5)
    assert status["id"] == home.hub_id(1)
    assert status["endpoint"] == f"127.0.0.1:{state.listen[1]}"
    # `roost hub status --config` finds the API through run.json.
    shown = _hub_status_cli(home, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["endpoint"] == status["endpoint"]
    human = _hub_status_cli(home)
    assert human.returncode == 0 and f"Hub hub-1 ({home.hub_id(1)})" in human.stdout
    assert "None" not in human.stdout
    # A camera that knows no hub port reaches the hub from its verified announcement.
    home.start("device-1")
    home.wait_for("camera streaming to hub-1", lambda: home.devices_on(1), 30)

    home.stop("device-1")
    home.stop("hub-1")
    assert not config.run_file.exists()
    gone = _hub_status_cli(home)
    assert gone.returncode == ExitCode.UNREACHABLE, gone.stdout + gone.stderr
    assert "not running" in gone.stderr


def test_a_killed_hub_leaves_a_run_file_that_is_not_taken_for_its_successor(
    home: LoopbackHome,
) -> None:
    home.start("hub-1")
    first = home.wait_bound(1)
    home.kill("hub-1")
    run_file = load_hub_config(home.path / "hub-1.toml").run_file
    assert run_file.exists()  # SIGKILL leaves no chance to remove it
    home.start("hub-1")
    second = home.wait_bound(1)
    assert second.pid != first.pid
    wait_until(lambda: home.hub_status(1) is not None, 20, what="the new hub's API")
