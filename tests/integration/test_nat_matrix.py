"""The NAT matrix with the real broker, hub, camera and `roost connect` (issue 9).

Each of the 25 cells (side A type x side B type, `tools/nat_matrix.py`) gets its own
`NatLab`: `roost broker run` on the lab's broker address in the internet namespace, `roost
hub run` and one camera (`roost device run`) in side A's host namespace, and `roost connect
--frames 2 --json` in side B's. The path the summary reports must be `expected_path(a, b)`,
which is fixed before any run. The cells that connected are written to a results file
(the test's temporary directory, or ``ROOST_NAT_RESULTS``); to refresh the doc::

    ROOST_NAT_RESULTS=docs/nat-matrix-results.json pytest tests/integration/test_nat_matrix.py
    python tools/nat_matrix.py --results docs/nat-matrix-results.json

Cells run a few labs at a time (each lab's names are unique), every cell from a fresh copy
of one home, so no cell sees another's broker, hub or conntrack state.

The mapping-expiry tests shorten router A's conntrack UDP timeouts: registrations more
often than the timeout keep the mapping, so the broker's RWAK still reaches the hub; with
registrations rarer than the timeout, the mapping is gone when the wake-up is sent, unless
the hub holds its broker connection (the request then comes over TCP).

The matrix and the expiry tests run the hub with ``hold_connection = false``: they test the
UDP registration and wake-up path (and the punch, which is the same either way); the last
test runs the held flow (docs/broker.md, "Held connections").
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from roost.cli.exitcodes import ExitCode
from roost.cli.home import make_home
from roost.hub.api import fetch_status
from roost.hub.runfile import read_run_file
from roost.rendezvous.broker_aio import fetch_broker_status
from tests.helpers.natlab import BROKER_IP, NatLab, NatType, Side, natlab_available
from tests.helpers.processes import roost_succeeds
from tests.helpers.waits import scaled, wait_until
from tools.nat_matrix import CELLS, DEFAULT_RESULTS, expected_path

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PASSWORD = "owner password"
BROKER_UDP = f"{BROKER_IP}:3478"
BROKER_TLS = f"{BROKER_IP}:7443"
# The broker's API listens on the internet namespace's own loopback.
BROKER_API = ("127.0.0.1", 7080)
# Labs built at once: the machine has two cores, and a cell is mostly waiting.
PARALLEL = 3


def _set_keys(path: Path, table: str | None, values: dict[str, str]) -> None:
    """Rewrite ``key = value`` lines of one TOML table (None: the top level)."""
    current: str | None = None
    lines = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped.strip("[]")
        key = stripped.split("=", 1)[0].strip() if "=" in stripped else None
        if current == table and key in values:
            line = f"{key} = {values[key]}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def _make_template(base: Path) -> dict[str, Any]:
    """One home for the lab: the broker on BROKER_IP, the hub's agent pointing at it."""
    home = base / "home"
    summary = make_home(home, 1, 1, True, 8, 5.0)
    broker_dir = home / "broker"
    for name in ("cert.pem", "key.pem", "ca-info.bin"):
        (broker_dir / name).unlink()
    # The issuer and the agent check that the broker's certificate names the dialled host.
    roost_succeeds(
        "ca",
        "issue",
        str(home / "ca"),
        "--role",
        "broker",
        "--ip",
        BROKER_IP,
        "--out",
        str(broker_dir),
    )
    _set_keys(
        home / "broker.toml",
        None,
        {
            "udp": f'"{BROKER_UDP}"',
            "tls": f'"{BROKER_TLS}"',
            "api": f'"{BROKER_API[0]}:{BROKER_API[1]}"',
            # Registrations every second (the agent's floor), so a cell is registered fast.
            "interval_s": "1.0",
        },
    )
    # A shorter punch window keeps the relay cells quick; three rounds still fit in it.
    _set_keys(home / "broker.toml", "limits", {"deadline_ms": "2000"})
    _set_keys(
        home / "hub-1.toml",
        "broker",
        {
            "address": f'"{BROKER_TLS}"',
            "udp": f'"{BROKER_UDP}"',
            "local": '"0.0.0.0:0"',
            "hold_connection": "false",
        },
    )
    roost_succeeds(
        "user",
        "add",
        str(home / "hub-1"),
        "owner",
        "--card-file",
        str(base / "owner.card"),
        "--password-cost",
        "10",
        "--code-cost",
        "8",
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )
    roost_succeeds(
        "trust",
        "init",
        str(base / "owner-trust"),
        "--ca-info",
        str(home / "device-1" / "ca-info.bin"),
    )
    (base / "password").write_text(PASSWORD + "\n")
    return summary


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    reason = natlab_available()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("natmatrix-template")
    summary = _make_template(base)
    return base, str(summary["hubs"][0])


@dataclass
class Cell:
    """One running lab: broker, hub and camera up, the hub registered."""

    lab: NatLab
    base: Path
    hub_id: str

    @property
    def home(self) -> Path:
        return self.base / "home"

    def broker_status(self) -> dict[str, Any] | None:
        with self.lab.inside(self.lab.inet):
            try:
                return fetch_broker_status(*BROKER_API, timeout=2.0)
            except OSError:
                return None

    def hub_status(self) -> dict[str, Any] | None:
        try:
            state = read_run_file(self.home / "hub-1" / "run.json")
        except Exception:  # not written yet, or half written
            return None
        with self.lab.inside(self.lab.a.host):
            try:
                return fetch_status(*state.api, timeout=2)
            except OSError:
                return None

    def hub_broker(self) -> dict[str, Any]:
        return dict((self.hub_status() or {}).get("broker") or {})

    def camera_streaming(self) -> bool:
        try:
            doc = json.loads((self.home / "device-1" / "status.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        return bool(doc.get("hub") == self.hub_id and doc.get("state") == "streaming")

    def logs(self) -> str:
        return json.dumps(
            {p.name: p.read_text(errors="replace")[-1500:] for p in self.base.glob("*.log")}
        )[:6000]

    def connect(self, name: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`roost connect` for two frames from side B's host; its stdout is the summary."""
        argv = [
            sys.executable,
            "-m",
            "roost",
            "connect",
            self.hub_id,
            "--broker",
            BROKER_TLS,
            "--broker-udp",
            BROKER_UDP,
            "--trust",
            str(self.base / "owner-trust"),
            "--user",
            "owner",
            "--password-file",
            str(self.base / "password"),
            "--card-file",
            str(self.base / "owner.card"),
            "--frames",
            "2",
            "--out",
            str(self.base / name),
            "--json",
        ]
        process = self.lab.run(
            self.lab.b.host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = process.communicate(timeout=scaled(timeout))
        return subprocess.CompletedProcess(argv, process.returncode, out.decode(), err.decode())


def _start(
    lab: NatLab,
    template: tuple[Path, str],
    base: Path,
    broker_interval: float,
    *,
    hold: bool = False,
) -> Cell:
    shutil.copytree(template[0], base)
    if broker_interval != 1.0:
        _set_keys(base / "home" / "broker.toml", None, {"interval_s": str(broker_interval)})
    if hold:
        _set_keys(base / "home" / "hub-1.toml", "broker", {"hold_connection": "true"})
    cell = Cell(lab, base, template[1])
    home = cell.home

    def start(ns: str, kind: str, name: str) -> None:
        log = (base / f"{name}.log").open("ab")
        argv = [sys.executable, "-m", "roost", kind, "run", "--config", str(home / f"{name}.toml")]
        lab.run(ns, argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    start(lab.inet, "broker", "broker")
    wait_until(lambda: cell.broker_status() is not None, 20, what=f"broker API; {cell.logs()}")
    start(lab.a.host, "hub", "hub-1")
    start(lab.a.host, "device", "device-1")
    return cell


def _reachable(cell: Cell, side: Side) -> bool:
    """The hub can be woken: registered over UDP, or holding its TLS connection."""
    broker = cell.hub_broker()
    if side.nat is NatType.UDP_BLOCKED:
        # No RACK ever comes back: the agent falls back to a held connection (step 2).
        return int(broker.get("fallbacks", 0)) >= 1 and broker.get("state") == "held"
    return int(broker.get("acks", 0)) >= 1


def _ready(cell: Cell) -> None:
    wait_until(cell.camera_streaming, 30, interval=0.2, what=f"camera streaming; {cell.logs()}")
    wait_until(
        lambda: _reachable(cell, cell.lab.a),
        30,
        interval=0.2,
        what=f"hub reachable through the broker; {cell.hub_broker()} {cell.logs()}",
    )


def _summary(cell: Cell, done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, f"connect failed ({done.returncode}): {done.stderr}; {cell.logs()}"
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


@dataclass(frozen=True)
class Observed:
    a: NatType
    b: NatType
    expected: str
    observed: str | None
    frames: int
    seconds: float
    connect_seconds: float
    error: str | None


def _run_cell(template: tuple[Path, str], root: Path, a: NatType, b: NatType) -> Observed:
    expected = expected_path(a, b)
    began = time.monotonic()
    connect_seconds = 0.0
    try:
        with NatLab(a, b) as lab:
            cell = _start(lab, template, root / f"{a.value}-{b.value}", 1.0)
            _ready(cell)
            connect_began = time.monotonic()
            done = cell.connect("frames")
            connect_seconds = time.monotonic() - connect_began
            summary = _summary(cell, done)
            saved = len(list((cell.base / "frames").glob("*.jpg")))
            frames = min(int(summary["frames"]), saved)
            path = str(summary["path"])
            error = None if frames >= 2 else f"{frames} frames saved"
            return Observed(
                a, b, expected, path, frames, time.monotonic() - began, connect_seconds, error
            )
    except Exception as failed:  # reported per cell below, with the others
        return Observed(
            a, b, expected, None, 0, time.monotonic() - began, connect_seconds, repr(failed)
        )


def _write_results(results: list[Observed], target: Path) -> None:
    document = {
        "cells": [
            {
                "a": cell.a.value,
                "b": cell.b.value,
                "expected": cell.expected,
                "observed": cell.observed,
                "frames": cell.frames,
                "seconds": round(cell.seconds, 1),
                "connect_seconds": round(cell.connect_seconds, 1),
            }
            for cell in results
            if cell.observed is not None and cell.error is None
        ]
    }
    target.write_text(json.dumps(document, indent=2) + "\n")


@pytest.mark.timeout(600)
def test_every_cell_takes_the_expected_path_with_live_frames(
    template: tuple[Path, str], tmp_path: Path
) -> None:
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        futures = [pool.submit(_run_cell, template, tmp_path, a, b) for a, b in CELLS]
        results = [future.result() for future in futures]
    for cell in results:
        print(
            f"{cell.a.value:>16} x {cell.b.value:<16} expected {cell.expected:<6} "
            f"observed {cell.observed} frames {cell.frames} "
            f"{cell.seconds:.1f} s (connect {cell.connect_seconds:.1f} s) {cell.error or ''}"
        )
    # The checkout's results file is written only when asked (ROOST_NAT_RESULTS), so a
    # test run leaves the tree as it was; the doc is then rendered from it by hand.
    target = Path(os.environ.get("ROOST_NAT_RESULTS", str(tmp_path / DEFAULT_RESULTS.name)))
    _write_results(results, target)
    print(f"results: {target}")
    failed = {f"{c.a.value} x {c.b.value}": c.error for c in results if c.error is not None}
    assert not failed, f"cells that did not connect: {failed}"
    wrong = {
        f"{c.a.value} x {c.b.value}": (c.observed, c.expected)
        for c in results
        if c.observed != c.expected
    }
    assert not wrong, f"cells that did not take the expected path (got, expected): {wrong}"


def _counters(cell: Cell) -> dict[str, Any]:
    status = cell.broker_status()
    assert status is not None, f"broker API down; {cell.logs()}"
    return dict(status["counters"])


@pytest.mark.timeout(120)
def test_a_peer_reflexive_address_is_learned_and_answered(
    template: tuple[Path, str], tmp_path: Path
) -> None:
    # The issuer behind a symmetric NAT probes the hub from a port the broker never saw;
    # the hub (full cone) learns that address, answers it, and the session goes direct.
    # The routers here accept unsolicited inbound UDP: the hub's probes to the issuer's
    # registered port land in the issuer's router, which must not matter for this cell.
    a, b = NatType.FULL_CONE, NatType.SYMMETRIC
    assert expected_path(a, b) == "direct"
    with NatLab(a, b, router_accepts_inbound=True) as lab:
        cell = _start(lab, template, tmp_path / "prflx", 1.0)
        _ready(cell)
        summary = _summary(cell, cell.connect("frames"))
        assert summary["path"] == "direct" and summary["frames"] >= 2
        hub = cell.hub_broker()
        assert hub["learned"] >= 1 and hub["direct"] == 1, hub


@pytest.mark.timeout(120)
def test_registrations_more_often_than_the_nat_timeout_keep_the_wake_up_on_udp(
    template: tuple[Path, str], tmp_path: Path
) -> None:
    # Router A forgets a UDP mapping 3 s after its last packet; the hub registers every
    # second (± 20 %), so the mapping the broker knows stays open and RWAK still arrives
    # after four timeouts.
    with NatLab(NatType.PORT_RESTRICTED, NatType.PUBLIC) as lab:
        assert lab.a.router is not None
        lab.set_udp_timeouts(lab.a.router, 3)
        assert lab.udp_timeouts(lab.a.router) == (3, 3)
        cell = _start(lab, template, tmp_path / "alive", 1.0)
        _ready(cell)
        acks = int(cell.hub_broker()["acks"])
        time.sleep(12)
        before = _counters(cell)
        hub = cell.hub_broker()
        assert int(hub["acks"]) >= acks + 8 and hub["fallbacks"] == 0, hub
        summary = _summary(cell, cell.connect("frames"))
        assert summary["frames"] >= 2
        after = _counters(cell)
        hub = cell.hub_broker()
    # Woken over UDP (RWAK), never over a held TLS connection: the agent never fell back.
    assert after["wakes_sent"] > before["wakes_sent"]
    assert after["wake_pushes"] == before["wake_pushes"] == 0
    assert after["presents"] == before["presents"] + 1
    assert hub["wakes"] == 1 and hub["fallbacks"] == 0 and hub["state"] == "registering", hub


@pytest.mark.timeout(120)
def test_registrations_rarer_than_the_nat_timeout_lose_the_wake_up(
    template: tuple[Path, str], tmp_path: Path
) -> None:
    # The same router, but the broker's interval is 20 s: the mapping is gone 3 s after
    # each registration. Every registration opens it afresh and gets its RACK, so the
    # agent sees nothing wrong and holds no TLS connection (its fallback is for missing
    # RACKs, docs/broker.md step 2); the broker's RWAKs to the expired mapping are dropped
    # by the router for the whole wake window, and the issuer is told the hub is offline.
    with NatLab(NatType.PORT_RESTRICTED, NatType.PUBLIC) as lab:
        assert lab.a.router is not None
        lab.set_udp_timeouts(lab.a.router, 3)
        cell = _start(lab, template, tmp_path / "expired", 20.0)
        # The first registration follows the enrollment; the next is 16 to 24 s later,
        # later than the mapping's expiry plus the broker's 5 s of RWAK resends.
        wait_until(lambda: cell.hub_broker().get("acks", 0) >= 1, 30, interval=0.1)
        registered = time.monotonic()
        _ready(cell)
        time.sleep(max(0.0, registered + 4.5 - time.monotonic()))
        before = _counters(cell)
        done = cell.connect("never")
        after = _counters(cell)
        hub = cell.hub_broker()
    assert done.returncode == ExitCode.HUB_OFFLINE, done.stderr
    assert "hub offline" in done.stderr and "wake-timeout" in done.stderr, done.stderr
    assert after["wakes_sent"] >= before["wakes_sent"] + 5
    assert after["presents"] == before["presents"] and after["wake_pushes"] == 0
    # One registration all along: none reopened the mapping during the wake window.
    assert hub["registrations"] == 1 and hub["acks"] == 1 and hub["wakes"] == 0, hub
    assert hub["fallbacks"] == 0 and hub["state"] == "registering", hub


@pytest.mark.timeout(120)
def test_a_held_connection_reaches_the_hub_whose_udp_mapping_expired(
    template: tuple[Path, str], tmp_path: Path
) -> None:
    # The router and interval of the test above, but the hub holds its broker connection:
    # the request comes over that TCP connection (whose conntrack entry the keepalives keep;
    # only UDP was shortened), so the lost UDP mapping does not matter: no RWAK is sent,
    # the hub opens no connection, and the session still punches direct.
    with NatLab(NatType.PORT_RESTRICTED, NatType.PUBLIC) as lab:
        assert lab.a.router is not None
        lab.set_udp_timeouts(lab.a.router, 3)
        cell = _start(lab, template, tmp_path / "held", 20.0, hold=True)
        wait_until(lambda: cell.hub_broker().get("holding") is True, 30, interval=0.1)
        registered = time.monotonic()
        _ready(cell)
        time.sleep(max(0.0, registered + 4.5 - time.monotonic()))
        before = _counters(cell)
        summary = _summary(cell, cell.connect("frames"))
        after = _counters(cell)
        hub = cell.hub_broker()
    assert summary["path"] == "direct" and summary["frames"] >= 2
    assert after["wakes_sent"] == before["wakes_sent"] == 0
    assert after["presents"] == before["presents"] == 0
    assert after["equipment_channels"] == before["equipment_channels"] == 1
    assert after["requests_pushed"] == before["requests_pushed"] + 1
    assert hub["held_requests"] == 1 and hub["wakes"] == 0 and hub["holding"], hub
