"""`roost trust update` and `roost trust check` against a real `roost ca serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.net import free_port, time_unit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def roost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roost", *args], capture_output=True, text=True, timeout=60
    )


def test_update_exit_codes_and_check_promotes(tmp_path: Path) -> None:
    port = free_port()
    ca, dev = str(tmp_path / "ca"), str(tmp_path / "dev")
    assert roost("ca", "init", ca, "--publish-url", f"https://127.0.0.1:{port}/ca/").returncode == 0
    assert (
        roost("ca", "issue", ca, "--role", "device", "--out", str(tmp_path / "d")).returncode == 0
    )
    assert (
        roost("trust", "init", dev, "--ca-info", str(tmp_path / "d" / "ca-info.bin")).returncode
        == 0
    )
    # Nothing serves yet: a transport error is exit 1 and the store is unchanged.
    assert roost("trust", "update", dev).returncode == 1
    assert roost("ca", "roll", ca).returncode == 0
    server = subprocess.Popen(
        [sys.executable, "-m", "roost", "ca", "serve", ca, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        assert "serving" in line, line
        stored = roost("trust", "update", dev)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        assert json.loads(stored.stdout)["prepared"] == 2
        assert roost("trust", "update", dev).returncode == 3  # generation 3 not published
        assert roost("ca", "activate", ca).returncode == 0
        hub = str(tmp_path / "h")
        assert (
            roost("ca", "issue", ca, "--role", "hub", "--out", hub, "--ip", "127.0.0.1").returncode
            == 0
        )
        checked = roost("trust", "check", dev, "--cert", f"{hub}/cert.pem", "--json")
        doc = json.loads(checked.stdout)
        assert checked.returncode == 0 and doc["verified_by"] == "prepared" and doc["promoted"]
        assert json.loads(roost("trust", "status", dev, "--json").stdout)["current"] == 2
    finally:
        server.terminate()
        server.wait(timeout=10 * time_unit())
