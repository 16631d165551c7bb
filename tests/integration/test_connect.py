"""The first end-to-end remote session through the broker, as real processes on loopback:
`roost broker run`, `roost hub run` with its `[broker]` table, one camera, and
`roost connect` (direct, relayed, and every documented failure with its exit code)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.cli.exitcodes import ExitCode
from roost.rendezvous.broker_aio import fetch_broker_status
from tests.helpers.home import LoopbackHome
from tests.helpers.waits import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PASSWORD = "owner password"


def roost(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roost", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


class Site:
    """A loopback home with its broker running, an owner and the owner's trust store."""

    def __init__(
        self, base: Path, relay_max_bytes: int | None = None, *, hold: bool = False
    ) -> None:
        self.base = base
        self.home = LoopbackHome(base / "home", hubs=1, devices=1, fps=5.0)
        # `roost init` writes hold_connection = true; this module tests the flow without
        # it (UDP registrations, RWAK, the hub's present connection), exactly as before
        # the option existed; test_held_connection.py tests the held flow.
        self.home.hold_connection(1, hold)
        # This module connects to the one hub about ten times within seconds; the per-target
        # limit (burst 5 by default) is exercised by test_abuse_limits_broker and
        # test_broker_abuse, so here it is raised out of the way: a refusal here would hide
        # the outcome each test looks for (CI once got rate-limited instead of hub-offline).
        overrides = {"target_burst": "1000.0", "target_rate": "100.0"}
        if relay_max_bytes is not None:
            overrides["relay_max_bytes"] = str(relay_max_bytes)
        config = self.home.path / "broker.toml"
        lines = []
        for line in config.read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            lines.append(f"{key} = {overrides[key]}" if key in overrides else line)
        config.write_text("\n".join(lines) + "\n")
        self.broker_summary: dict[str, Any] = self.home.summary["broker"]
        self.broker: subprocess.Popen[bytes] | None = None

    @property
    def tls(self) -> str:
        return str(self.broker_summary["tls"])

    @property
    def udp(self) -> str:
        return str(self.broker_summary["udp"])

    def start_broker(self) -> None:
        log = (self.home.path / "broker.log").open("ab")
        self.broker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roost",
                "broker",
                "run",
                "--config",
                str(self.home.path / "broker.toml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_until(lambda: self.broker_status() is not None, 20, what="broker API")

    def broker_status(self) -> dict[str, Any] | None:
        host, port = str(self.broker_summary["api"]).rsplit(":", 1)
        try:
            return fetch_broker_status(host, int(port), timeout=2.0)
        except OSError:
            return None

    def hub_broker(self) -> dict[str, Any] | None:
        status = self.home.hub_status(1)
        return None if status is None else status.get("broker")

    def connect(
        self,
        hub_id: str | None = None,
        *extra: str,
        password: str = PASSWORD,
        trust: str = "owner-trust",
        broker: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        (self.base / "password").write_text(password + "\n")
        return roost(
            "connect",
            hub_id or self.home.hub_id(1),
            "--broker",
            broker or self.tls,
            "--broker-udp",
            self.udp,
            "--trust",
            str(self.base / trust),
            "--user",
            "owner",
            "--password-file",
            str(self.base / "password"),
            "--card-file",
            str(self.base / "owner.card"),
            "--json",
            *extra,
            cwd=self.base,
        )

    def connect_command(
        self,
        *extra: str,
        password_file: str = "password",
        user: str = "owner",
        card: str = "owner.card",
    ) -> list[str]:
        """The argument list of one ``roost connect`` to hub-1 (for concurrent runs)."""
        return [
            sys.executable,
            "-m",
            "roost",
            "connect",
            self.home.hub_id(1),
            "--broker",
            self.tls,
            "--broker-udp",
            self.udp,
            "--trust",
            str(self.base / "owner-trust"),
            "--user",
            user,
            "--password-file",
            str(self.base / password_file),
            "--card-file",
            str(self.base / card),
            "--json",
            *extra,
        ]

    def close(self) -> None:
        self.home.close()
        if self.broker is not None:
            self.broker.send_signal(signal.SIGTERM)
            try:
                self.broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait()


def add_owner(
    hub_state: Path, user: str, card: Path, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    """``roost user add`` of an owner on a hub, at the tests' cheap KDF costs."""
    return roost(
        "user",
        "add",
        str(hub_state),
        user,
        "--card-file",
        str(card),
        "--password-cost",
        "10",
        "--code-cost",
        "8",
        stdin=f"{password}\n{password}\n",
    )


def _site(base: Path, relay_max_bytes: int | None = None, *, hold: bool = False) -> Iterator[Site]:
    built = Site(base, relay_max_bytes, hold=hold)
    try:
        added = add_owner(built.home.path / "hub-1", "owner", base / "owner.card")
        assert added.returncode == 0, added.stderr
        for name, home in (("owner-trust", built.home.path), ("other-trust", base / "other")):
            if name == "other-trust":
                LoopbackHome(home, hubs=1, devices=1)
            trusted = roost(
                "trust",
                "init",
                str(base / name),
                "--ca-info",
                str(home / "device-1" / "ca-info.bin"),
            )
            assert trusted.returncode == 0, trusted.stderr
        built.start_broker()
        built.home.start("hub-1")
        built.home.start("device-1")
        built.home.wait_for("camera streaming to hub-1", lambda: built.home.devices_on(1), 30)
        wait_until(
            lambda: (built.hub_broker() or {}).get("acks", 0) >= 1,
            20,
            what="the hub registered with the broker",
        )
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from _site(tmp_path_factory.mktemp("connect"))


@pytest.fixture
def limited_site(tmp_path: Path) -> Iterator[Site]:
    # A relay that carries about 40 kB per session: a few frames, not twenty.
    yield from _site(tmp_path, relay_max_bytes=40_000)


def _summary(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def _frames(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jpg"))


def test_connect_goes_direct_on_loopback_and_saves_live_frames(site: Site) -> None:
    before = (site.broker_status() or {})["counters"]
    summary = _summary(site.connect(None, "--frames", "4", "--out", "direct"))
    assert summary["path"] == "direct"
    # The hub opened the login with its Challenge (docs/guard.md, "Server-first login").
    assert summary["login"] == "server-first"
    assert summary["frames"] == 4
    frames = _frames(site.base / "direct")
    assert len(frames) == 4 and all(path.read_bytes()[:2] == b"\xff\xd8" for path in frames)
    assert summary["bytes"] == sum(path.stat().st_size for path in frames)
    assert summary["setup_ms"] > 0 and summary["rtt_ms"] > 0
    receipt = summary["receipt"]
    assert receipt["leaf_index"] >= 0 and receipt["size"] > receipt["leaf_index"]
    assert len(receipt["root"]) == 64
    hub = site.hub_broker()
    assert hub is not None and hub["accepted"] >= 1 and hub["direct"] >= 1
    # Without hold_connection the hub is woken over UDP and presents on a new connection.
    after = (site.broker_status() or {})["counters"]
    assert after["wakes_sent"] > before["wakes_sent"]
    assert after["presents"] == before["presents"] + 1
    assert after["requests_pushed"] == 0 and not hub["holding"]


def test_no_punch_goes_through_the_relay_and_frames_still_arrive(site: Site) -> None:
    # --no-punch: the issuer neither sends nor answers probes, so no direct path can
    # form and the session runs inside relay records over the two TLS connections.
    before = (site.broker_status() or {})["counters"]["relayed_sessions"]
    summary = _summary(site.connect(None, "--frames", "3", "--out", "relay", "--no-punch"))
    assert summary["path"] == "relay" and summary["started_on"] == "relay"
    assert summary["login"] == "server-first"
    assert summary["frames"] == 3
    assert len(_frames(site.base / "relay")) == 3
    after = (site.broker_status() or {})["counters"]
    assert after["relayed_sessions"] == before + 1 and after["relayed_bytes"] > summary["bytes"]
    hub = site.hub_broker()
    assert hub is not None and hub["relayed"] >= 1


def test_wrong_password_is_refused_before_any_punching(site: Site) -> None:
    before_broker = (site.broker_status() or {})["counters"]
    before_hub = site.hub_broker() or {}
    refused = site.connect(None, "--out", "never", password="not it")
    assert refused.returncode == ExitCode.REFUSED, refused.stderr
    assert "wrong password" in refused.stderr and "Traceback" not in refused.stderr
    after_broker = (site.broker_status() or {})["counters"]
    after_hub = site.hub_broker() or {}
    # The hub rejected the sealed request: the broker sent no start, nobody punched.
    assert after_broker["rejects"] == before_broker["rejects"] + 1
    assert after_broker["accepts"] == before_broker["accepts"]
    assert after_hub["rejected"].get("bad-password", 0) == (
        before_hub["rejected"].get("bad-password", 0) + 1
    )
    assert (after_hub["direct"], after_hub["relayed"]) == (
        before_hub["direct"],
        before_hub["relayed"],
    )
    assert not (site.base / "never").exists()


def test_unknown_hub_has_its_own_code(site: Site) -> None:
    unknown = site.connect("hcsp:" + "A" * 22)
    assert unknown.returncode == ExitCode.UNKNOWN_HUB, unknown.stderr
    assert "unknown hub" in unknown.stderr and "unknown-target" in unknown.stderr


def test_broker_unreachable_is_the_unreachable_code(site: Site) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    done = site.connect(None, broker=f"127.0.0.1:{port}")
    assert done.returncode == ExitCode.UNREACHABLE, done.stderr
    assert "unreachable" in done.stderr and "Traceback" not in done.stderr


def test_broker_certificate_of_another_ca_is_the_verification_code(site: Site) -> None:
    done = site.connect(None, trust="other-trust")
    assert done.returncode == ExitCode.VERIFICATION, done.stderr
    assert "not trusted" in done.stderr and "Traceback" not in done.stderr


def test_a_direct_path_takes_over_a_session_begun_on_the_relay(site: Site) -> None:
    # --relay-first: the relay is asked at once and the punch goes on; the session starts
    # on the relay and the direct path takes it over without dropping it.
    before = (site.hub_broker() or {}).get("switched", 0)
    summary = _summary(site.connect(None, "--frames", "3", "--out", "switch", "--relay-first"))
    assert summary["started_on"] == "relay" and summary["path"] == "direct"
    assert summary["frames"] == 3 and len(_frames(site.base / "switch")) == 3
    hub = site.hub_broker()
    assert hub is not None and hub["switched"] == before + 1


def test_the_relay_limit_has_its_own_code(limited_site: Site) -> None:
    done = limited_site.connect(None, "--frames", "20", "--out", "limited", "--no-punch")
    assert done.returncode == ExitCode.RELAY_LIMIT, done.stderr
    assert "relay limit reached" in done.stderr and "Traceback" not in done.stderr
    counters = (limited_site.broker_status() or {})["counters"]
    assert counters["refusals"].get("relay-limit", 0) >= 1


def test_two_owners_connecting_at_once_both_get_direct_sessions(site: Site) -> None:
    # Two owners' `roost connect` at the same moment: the hub punches for both sessions on
    # its one socket (each probe goes to its session's puncher), so both go direct and get
    # frames. Two owners, not one owner twice: one card's access counter admits one login
    # per challenge (the user store's compare-and-set), so a single owner's two racing
    # logins would end with one refused by design.
    (site.base / "password").write_text(PASSWORD + "\n")
    added = add_owner(site.home.path / "hub-1", "second-owner", site.base / "second-owner.card")
    assert added.returncode == 0, added.stderr
    before = site.hub_broker() or {}
    owners = {1: ("owner", "owner.card"), 2: ("second-owner", "second-owner.card")}
    runs = [
        subprocess.Popen(
            site.connect_command(
                "--frames",
                "3",
                "--out",
                f"both-{index}",
                user=owners[index][0],
                card=owners[index][1],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=site.base,
        )
        for index in (1, 2)
    ]
    try:
        outputs = [run.communicate(timeout=120) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr
        summary = json.loads(stdout)
        assert summary["path"] == "direct" and summary["frames"] == 3
    for index in (1, 2):
        assert len(_frames(site.base / f"both-{index}")) == 3
    after = site.hub_broker() or {}
    assert after["direct"] == before.get("direct", 0) + 2
    assert after["relayed"] == before.get("relayed", 0)


def test_hub_offline_has_its_own_code(site: Site) -> None:
    # Last in the module: the hub stops. Its registration is still within its TTL, so the
    # broker wakes it and gets no answer (wake-timeout): the hub is offline.
    site.home.stop("hub-1")
    done = site.connect(None)
    assert done.returncode == ExitCode.HUB_OFFLINE, done.stderr
    assert "hub offline" in done.stderr and "Traceback" not in done.stderr
