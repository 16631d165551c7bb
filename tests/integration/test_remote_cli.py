"""The owner's remote entrance as real processes: `roost user add`, `roost hub run`,
`roost device run`, then `roost remote call` with a receipt `roost log verify` accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.cli.exitcodes import ExitCode
from tests.helpers.home import LoopbackHome

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
PASSWORD = "owner password"


def roost(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roost", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.fixture
def home(tmp_path: Path) -> Iterator[LoopbackHome]:
    built = LoopbackHome(tmp_path / "home", hubs=1, devices=1, fps=5.0)
    added = roost(
        "user",
        "add",
        str(built.path / "hub-1"),
        "owner",
        "--card-file",
        str(tmp_path / "owner.card"),
        "--password-cost",
        "10",
        "--code-cost",
        "8",
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert added.returncode == 0, added.stderr
    trusted = roost(
        "trust",
        "init",
        str(tmp_path / "owner-trust"),
        "--ca-info",
        str(built.path / "device-1" / "ca-info.bin"),
    )
    assert trusted.returncode == 0, trusted.stderr
    try:
        built.start("hub-1")
        built.start("device-1")
        built.wait_for("camera streaming to hub-1", lambda: built.devices_on(1), 30)
        yield built
    finally:
        built.close()


def _call(
    home: LoopbackHome, *args: str, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    # The hub binds its remote entrance on port 0 and reports the port in run.json.
    remote = home.wait_bound(1).remote
    assert remote is not None
    address = f"{remote[0]}:{remote[1]}"
    base = home.path.parent
    return roost(
        "remote",
        "call",
        address,
        *args,
        "--user",
        "owner",
        "--trust",
        str(base / "owner-trust"),
        "--card-file",
        str(base / "owner.card"),
        stdin=password + "\n",
        cwd=base,
    )


def test_owner_reads_status_and_a_frame_and_keeps_a_verifiable_receipt(
    home: LoopbackHome,
) -> None:
    base = home.path.parent
    status = _call(home, "status", "--hub-id", home.hub_id(1), "--receipt", "status.receipt")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["id"] == home.hub_id(1)
    assert document["connected"] == [home.device_id(1)]
    assert document["remote"]["logins_ok"] == 1
    verified = roost("log", "verify", str(base / "status.receipt"))
    assert verified.returncode == 0, verified.stderr + verified.stdout

    frame = _call(home, "latest-frame", home.device_id(1), "--out", "frame.jpg")
    assert frame.returncode == 0, frame.stderr
    shown = json.loads(frame.stdout)
    assert shown["mime"] == "image/jpeg" and shown["seq"] >= 0
    assert (base / "frame.jpg").read_bytes()[:2] == b"\xff\xd8"

    # Next visit: the receipt kept from the first call shows the log was not rewritten.
    again = _call(home, "status", "--since-receipt", "status.receipt")
    assert again.returncode == 0, again.stderr
    assert "extends status.receipt" in again.stderr

    # The hub's own log command sees the same log the sessions wrote to.
    checkpoint = roost("log", "checkpoint", str(home.path / "hub-1"))
    assert checkpoint.returncode == 0, checkpoint.stderr
    assert json.loads(checkpoint.stdout)["size"] >= 10


def test_wrong_password_and_unknown_device_fail_cleanly(home: LoopbackHome) -> None:
    refused = _call(home, "status", password="not it")
    assert refused.returncode == ExitCode.REFUSED and "refused" in refused.stderr
    assert "Traceback" not in refused.stderr
    missing = _call(home, "latest-frame", "no-such-camera")
    assert missing.returncode == ExitCode.REFUSED and "no-frame" in missing.stderr
    wrong_hub = _call(home, "status", "--hub-id", "hcsp:" + "A" * 20)
    assert wrong_hub.returncode == ExitCode.VERIFICATION and "Traceback" not in wrong_hub.stderr


def test_owner_watches_the_next_frames_into_a_directory(home: LoopbackHome) -> None:
    base = home.path.parent
    watched = _call(home, "watch", home.device_id(1), "--frames", "3", "--out", "frames")
    assert watched.returncode == 0, watched.stderr
    shown = [json.loads(line) for line in watched.stdout.splitlines()]
    seqs = [frame["seq"] for frame in shown]
    assert len(seqs) == 3 and seqs == sorted(set(seqs))
    assert all(frame["mime"] == "image/jpeg" for frame in shown)
    files = sorted((base / "frames").iterdir())
    assert [path.name for path in files] == [f"{seq:020d}.jpg" for seq in seqs]
    assert all(path.read_bytes()[:2] == b"\xff\xd8" for path in files)
    assert [path.stat().st_size for path in files] == [frame["bytes"] for frame in shown]
    # --frames belongs to watch; above the hub's bound the hub refuses cleanly.
    misplaced = _call(home, "status", "--frames", "2")
    assert misplaced.returncode != 0 and "Traceback" not in misplaced.stderr
    too_many = _call(home, "watch", home.device_id(1), "--frames", "1000")
    assert too_many.returncode == ExitCode.REFUSED and "bad-args" in too_many.stderr
