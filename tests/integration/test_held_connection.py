"""The hub's held broker connection (`[broker] hold_connection = true`, docs/broker.md "Held
connections") as real processes on loopback: `roost broker run`, `roost hub run`, one camera
and `roost connect`. A request comes straight over the held connection: the broker sends no
RWAK and accepts no second connection from the hub, two owners share it at once, the relay
runs over it, and it comes back after the broker restarts."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.waits import wait_until
from tests.integration.test_connect import PASSWORD, Site, _site, _summary, add_owner

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    for built in _site(tmp_path_factory.mktemp("held"), hold=True):
        _wait_held(built)
        yield built


def _wait_held(site: Site, timeout: float = 30) -> None:
    wait_until(
        lambda: (
            (site.hub_broker() or {}).get("holding") is True
            and (site.broker_status() or {}).get("holding") == 1
        ),
        timeout,
        what="the broker holds the hub's connection",
    )


def _counters(site: Site) -> dict[str, Any]:
    status = site.broker_status()
    assert status is not None, "broker API down"
    counters: dict[str, Any] = status["counters"]
    return counters


def _no_wake_up_and_no_hub_connection(
    before: dict[str, Any], after: dict[str, Any], connects: int
) -> None:
    # No RWAK and no wake push went out, nothing was presented, and the broker accepted no
    # connection from the hub: only the issuers' own (one each).
    for name in ("wakes_sent", "wake_pushes", "presents", "equipment_channels"):
        assert after[name] == before[name], name
    assert after["channels_opened"] == before["channels_opened"] + connects
    assert after["requests_pushed"] == before["requests_pushed"] + connects


def test_a_connect_comes_over_the_held_connection(site: Site) -> None:
    before, hub_before = _counters(site), site.hub_broker() or {}
    summary = _summary(site.connect(None, "--frames", "3", "--out", "held"))
    assert summary["path"] == "direct" and summary["frames"] == 3
    assert len(list((site.base / "held").glob("*.jpg"))) == 3
    _no_wake_up_and_no_hub_connection(before, _counters(site), 1)
    hub = site.hub_broker() or {}
    assert hub["held_requests"] == hub_before["held_requests"] + 1
    assert hub["wakes"] == hub_before["wakes"] == 0
    assert hub["holding"] and hub["direct"] == hub_before["direct"] + 1


def test_the_relay_runs_over_the_held_connection(site: Site) -> None:
    before = _counters(site)
    summary = _summary(site.connect(None, "--frames", "3", "--out", "relayed", "--no-punch"))
    assert summary["path"] == "relay" and summary["started_on"] == "relay"
    assert summary["frames"] == 3
    after = _counters(site)
    _no_wake_up_and_no_hub_connection(before, after, 1)
    assert after["relayed_sessions"] == before["relayed_sessions"] + 1
    assert after["relayed_bytes"] > before["relayed_bytes"] + summary["bytes"]
    hub = site.hub_broker() or {}
    assert hub["relayed"] >= 1 and hub["holding"]


def test_two_owners_at_once_share_the_held_connection(site: Site) -> None:
    # Two sessions pushed over the one held connection at the same moment, each told
    # apart by its session number; one punches direct, the other is relayed over it.
    (site.base / "password").write_text(PASSWORD + "\n")
    added = add_owner(site.home.path / "hub-1", "second-owner", site.base / "second-owner.card")
    assert added.returncode == 0, added.stderr
    before, hub_before = _counters(site), site.hub_broker() or {}
    runs = [
        subprocess.Popen(
            site.connect_command("--frames", "3", "--out", "both-1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=site.base,
        ),
        subprocess.Popen(
            site.connect_command(
                "--frames",
                "3",
                "--out",
                "both-2",
                "--no-punch",
                user="second-owner",
                card="second-owner.card",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=site.base,
        ),
    ]
    try:
        outputs = [run.communicate(timeout=120) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    paths = []
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr
        summary = json.loads(stdout)
        assert summary["frames"] == 3
        paths.append(summary["path"])
    assert paths == ["direct", "relay"]
    for index in (1, 2):
        assert len(list((site.base / f"both-{index}").glob("*.jpg"))) == 3
    after = _counters(site)
    _no_wake_up_and_no_hub_connection(before, after, 2)
    hub = site.hub_broker() or {}
    assert hub["held_requests"] == hub_before["held_requests"] + 2
    assert hub["direct"] == hub_before["direct"] + 1
    assert hub["relayed"] == hub_before["relayed"] + 1


def test_the_held_connection_comes_back_after_the_broker_restarts(site: Site) -> None:
    # Last in the module: the broker restarts (its registry empty, its counters at zero).
    hub_before = site.hub_broker() or {}
    assert site.broker is not None
    site.broker.terminate()
    site.broker.wait(timeout=10)
    wait_until(
        lambda: (site.hub_broker() or {}).get("holding") is False,
        20,
        what="the hub saw its held connection end",
    )
    time.sleep(1.0)
    site.start_broker()
    # The agent reopens with its jittered back-off (5 s, then 10 s…), enrolls again on the
    # new connection and asks for it to be held.
    _wait_held(site, timeout=60)
    hub = site.hub_broker() or {}
    assert hub["enrollments"] > hub_before["enrollments"]
    counters = _counters(site)
    assert counters["holds"] == 1 and counters["equipment_channels"] == 1
    summary = _summary(site.connect(None, "--frames", "2", "--out", "after-restart"))
    assert summary["path"] == "direct" and summary["frames"] == 2
    after = _counters(site)
    assert after["wakes_sent"] == 0 and after["presents"] == 0
    assert after["equipment_channels"] == 1 and after["requests_pushed"] == 1
