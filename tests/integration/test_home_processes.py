"""A home as real processes on loopback: handover, no move to a worse hub, failover,
device restart; in every case no frame is lost and none is stored twice (section 4)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.home import LoopbackHome
from tests.helpers.waits import pause

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[LoopbackHome]:
    h = LoopbackHome(tmp_path / "home", hubs=2, devices=3)
    try:
        yield h
    finally:
        h.close()


def _finish(home: LoopbackHome, *, hub_killed: bool = False) -> None:
    """Let every device flush, stop everything gracefully, then account.

    ``hub_killed``: a hub died by SIGKILL. Frames it stored whose ACK had not left yet are
    sent again to the next hub, the store-then-ACK window docs/hub-and-device.md ("Known
    limits") counts and explains; each device has at most one read's batch in that window
    (a few frames at its rate), so a few duplicates across hubs are allowed then, never a
    loss."""
    for i in range(1, home.devices + 1):
        home.wait_for(f"device-{i} flushed", lambda i=i: home.flushed(i), 20)
    for i in range(1, home.devices + 1):
        home.stop(f"device-{i}")
    for name in [n for n in home.processes if n.startswith("hub")]:
        home.stop(name)
    result = home.account()
    assert result.captured > 0
    assert result.lost == 0, result
    allowed = 3 * home.devices if hub_killed else 0
    assert result.duplicated <= allowed, result


def test_handover_to_better_hub_then_failover_back(home: LoopbackHome) -> None:
    home.start("hub-1")
    home.wait_for("hub-1 API", lambda: home.hub_status(1) is not None, 20)
    for i in range(1, 4):
        home.start(f"device-{i}")
    home.wait_for("cameras on hub-1", lambda: home.devices_on(1), 30)
    # Hub 2 has more features: it wins after its hold-down and hub 1 redirects (FIG. 8B).
    home.start("hub-2")
    home.wait_for("cameras on hub-2", lambda: home.devices_on(2), 40)
    status = home.hub_status(1)
    assert status is not None and status["counters"]["redirects_sent"] == 3
    # Hub 2 dies: the cameras fail over to hub 1.
    home.kill("hub-2")
    home.wait_for("cameras back on hub-1", lambda: home.devices_on(1), 40)
    stored = home.frames_stored(1)
    home.wait_for("frames on hub-1 after the failover", lambda: home.frames_stored(1) > stored, 20)
    _finish(home, hub_killed=True)


def test_no_move_to_a_worse_hub(home: LoopbackHome) -> None:
    home.start("hub-2")
    home.wait_for("hub-2 API", lambda: home.hub_status(2) is not None, 20)
    for i in range(1, 4):
        home.start(f"device-{i}")
    home.wait_for("cameras on hub-2", lambda: home.devices_on(2), 30)
    home.start("hub-1")
    home.wait_for(
        "hub-2 to see hub-1", lambda: len((home.hub_status(2) or {}).get("hubs", [])) == 2, 20
    )
    pause(5.0)  # longer than the hold-down: hub-1 is heard, verified, and loses
    assert home.devices_on(2)
    status = home.hub_status(2)
    assert status is not None and status["counters"]["redirects_sent"] == 0
    assert status["winner"] == home.hub_id(2)
    _finish(home)


def test_device_restart_resends_unacknowledged_frames(home: LoopbackHome) -> None:
    home.start("hub-1")
    home.wait_for("hub-1 API", lambda: home.hub_status(1) is not None, 20)
    home.start("device-1")
    home.wait_for(
        "device-1 streaming", lambda: (home.device_status(1) or {}).get("state") == "streaming", 30
    )
    home.wait_for("frames stored on hub-1", lambda: home.frames_stored(1) >= 5, 20)
    # Stop the hub so frames pile up unacknowledged, then kill the device outright.
    home.stop("hub-1")
    home.wait_for("frames piling up on device-1", lambda: home.buffered(1) >= 5, 20)
    home.kill("device-1")
    home.start("device-1")
    home.start("hub-1")
    home.wait_for(
        "device-1 back", lambda: (home.device_status(1) or {}).get("state") == "streaming", 30
    )
    home.devices = 1
    _finish(home)
