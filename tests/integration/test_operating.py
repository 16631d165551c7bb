"""Operating a home by hand, as real processes: every everyday mistake ends in one line on
standard error with its documented exit code and the state left as it was; one process per
state folder; the logs of a handover, a failover and a refused rogue hub, in order."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from roost.cli.demo_home import rogue_hub_config
from roost.cli.exitcodes import ExitCode
from roost.cli.home import make_home
from roost.config import load_device_config, load_hub_config, to_toml
from tests.helpers.home import LoopbackHome
from tests.helpers.waits import time_unit

pytestmark = pytest.mark.timeout(120)

_NODES = ("hub-1", "hub-2", "device-1", "broker")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "roost", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "ROOST_DEBUG": ""}


def _state_hash(home: Path) -> str:
    """Every file of every node's folder, by path and content; the lock file is the lock,
    not state (roost.statelock)."""
    digest = hashlib.sha256()
    for node in _NODES:
        for path in sorted((home / node).rglob("*")):
            if path.is_file() and path.name != "lock":
                digest.update(str(path.relative_to(home)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("operating") / "home"
    make_home(path, 2, 1, True, fps=5.0)
    return path


def _variant(home: Path, source: str, name: str, edit: Callable[[str], str]) -> str:
    text = edit((home / source).read_text())
    (home / name).write_text(text)
    return name


def _set(key: str, value: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        pattern = re.compile(rf"^{re.escape(key)} = .*$", re.M)
        assert pattern.search(text), key
        return pattern.sub(f"{key} = {value}", text, count=1)

    return edit


def _both(*edits: Callable[[str], str]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        for one in edits:
            text = one(text)
        return text

    return edit


@contextmanager
def _port_in_use() -> Iterator[int]:
    """A loopback TCP port this test holds listening (so a daemon finds it taken)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_every_everyday_mistake_is_one_line_with_its_code_and_leaves_state_alone(
    home: Path,
) -> None:
    with _port_in_use() as port:
        cases: list[tuple[str, list[str], ExitCode, str]] = [
            (
                "hub config to device run",
                ["device", "run", "--config", "hub-1.toml"],
                ExitCode.CONFIG,
                "is a hub config",
            ),
            (
                "broker config to hub run",
                ["hub", "run", "--config", "broker.toml"],
                ExitCode.CONFIG,
                "is a broker config",
            ),
        ]
        hub_edits = {
            "listen-int": (
                _set("listen", "59449"),
                ExitCode.CONFIG,
                'listen must be a string "HOST:PORT"',
            ),
            "devices-word": (
                _set("max_devices", '"eight"'),
                ExitCode.CONFIG,
                "max_devices must be an integer >= 1",
            ),
            "features-text": (
                _set("features", '"hcsp,webs"'),
                ExitCode.CONFIG,
                'write ["hcsp", "webs"]',
            ),
            "misspelt": (
                lambda t: t.replace("max_devices =", "max_device ="),
                ExitCode.CONFIG,
                "max_device is not a known key (did you mean 'max_devices'?)",
            ),
            "key-mismatch": (
                _set("key", '"hub-1/key.pem"'),
                ExitCode.CONFIG,
                "does not belong to cert",
            ),
            "device-cert": (
                _both(_set("cert", '"device-1/cert.pem"'), _set("key", '"device-1/key.pem"')),
                ExitCode.CONFIG,
                "is a device certificate",
            ),
            "port-in-use": (
                _set("listen", f'"127.0.0.1:{port}"'),
                ExitCode.ADDRESS_IN_USE,
                f"cannot listen on 127.0.0.1:{port} for the device channel (listen in"
                " bad-port-in-use.toml): address already in use",
            ),
        }
        for name, (edit, code, words) in hub_edits.items():
            # hub-2: its folder is never run by the other tests of this module.
            file = _variant(home, "hub-2.toml", f"bad-{name}.toml", edit)
            cases.append((name, ["hub", "run", "--config", file], code, words))
        device_edits = {
            "width": (_set("width", "-1"), "width must be an integer >= 1"),
            "fps-zero": (_set("fps", "0"), "fps must be a number > 0"),
            "fps-negative": (_set("fps", "-2.5"), "fps must be a number > 0"),
        }
        for name, (edit, words) in device_edits.items():
            file = _variant(home, "device-1.toml", f"bad-{name}.toml", edit)
            cases.append((name, ["device", "run", "--config", file], ExitCode.CONFIG, words))
        broker_file = _variant(
            home, "broker.toml", "bad-broker-port.toml", _set("tls", f'"127.0.0.1:{port}"')
        )
        cases.append(
            (
                "broker port in use",
                ["broker", "run", "--config", broker_file],
                ExitCode.ADDRESS_IN_USE,
                f"cannot listen on 127.0.0.1:{port} for the broker's TLS port (tls in"
                f" {broker_file}): address already in use",
            )
        )
        cases.append(
            (
                "config check",
                ["config", "check", "bad-misspelt.toml"],
                ExitCode.CONFIG,
                "did you mean 'max_devices'?",
            )
        )
        before = _state_hash(home)
        # All at once: each is a whole interpreter start, and none waits for another.
        running = [
            (
                case,
                subprocess.Popen(
                    _command(*args),
                    cwd=home,
                    env=_env(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                ),
            )
            for case in cases
            for args in [case[1]]
        ]
        results = []
        try:
            for case, process in running:
                out, err = process.communicate(timeout=60 * time_unit())
                results.append((case, process.returncode, out.decode(), err.decode()))
        finally:
            for _, process in running:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    for (name, _, code, words), returncode, _out, err in results:
        lines = err.splitlines()
        assert returncode == code, (name, returncode, err)
        assert len(lines) == 1 and lines[0].startswith("roost: "), (name, err)
        assert words in lines[0], (name, lines[0])
        assert "Traceback" not in err
    assert _state_hash(home) == before


def _wait_line(process: subprocess.Popen[bytes], what: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert line.startswith("{"), f"{what} did not start: {line!r}"
    return line


def test_a_second_instance_on_a_state_folder_is_refused_naming_the_first(home: Path) -> None:
    first: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for kind, file in (
            ("hub", "hub-1.toml"),
            ("device", "device-1.toml"),
            ("broker", "broker.toml"),
        ):
            first[kind] = subprocess.Popen(
                _command(kind, "run", "--config", file, "--log-level", "warning"),
                cwd=home,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        for kind, process in first.items():
            _wait_line(process, kind)
        seconds = [
            (
                kind,
                subprocess.run(
                    _command(kind, "run", "--config", file),
                    cwd=home,
                    env=_env(),
                    capture_output=True,
                    timeout=60 * time_unit(),
                ),
            )
            for kind, file in (
                ("hub", "hub-1.toml"),
                ("device", "device-1.toml"),
                ("broker", "broker.toml"),
            )
        ]
        for kind, result in seconds:
            err = result.stderr.decode()
            assert result.returncode == ExitCode.STATE, (kind, err)
            assert err.count("\n") == 1, err
            assert f"is in use by pid {first[kind].pid}, roost {kind} run" in err, err
        for process in first.values():
            assert process.poll() is None, "the first instance must keep running"
        # The doctor sees the running hub: its lock's pid, its API where run.json says.
        doctor = subprocess.run(
            _command("doctor", "hub-1.toml", "--json"),
            cwd=home,
            env=_env(),
            capture_output=True,
            timeout=60 * time_unit(),
        )
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert doctor.returncode == 0, doctor.stdout
        assert f"pid {first['hub'].pid}" in checks["instance"]["detail"]
        assert checks["hub API"]["status"] == "ok" and checks["reach broker"]["status"] == "ok"
    finally:
        for process in first.values():
            process.send_signal(signal.SIGTERM)
        for process in first.values():
            try:
                process.wait(timeout=10 * time_unit())
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ------------------------------------------------------------------------ the logs


def _events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        with_event = json.loads(line)
        if with_event.get("event"):
            events.append(with_event)
    return events


def _in_order(events: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> None:
    """``wanted`` (partial matches) appear in ``events`` in this order, others between."""
    position = 0
    for want in wanted:
        while position < len(events) and not all(
            events[position].get(k) == v for k, v in want.items()
        ):
            position += 1
        assert position < len(events), f"missing {want} after the earlier ones in {events}"
        position += 1


def _write_rogue(path: Path) -> None:
    """`hub-rogue.toml`: a hub certified by a CA of its own, announcing to this home."""
    victim = load_hub_config(path / "hub-1.toml")
    device_port = load_device_config(path / "device-1.toml").announce.udp.port
    rogue = rogue_hub_config(path, victim, [device_port])
    doc = {
        "name": "rogue",
        "state_dir": "rogue",
        "cert": "rogue/cert.pem",
        "key": "rogue/key.pem",
        "listen": "127.0.0.1:0",
        "api": "127.0.0.1:0",
        "features": list(rogue.features),
        "announce": {
            "multicast": False,
            "bind": "127.0.0.1",
            "port": 0,
            "peers": [f"{h}:{p}" for h, p in rogue.announce.udp.peers],
        },
    }
    (path / "hub-rogue.toml").write_text(to_toml(doc))


@pytest.fixture
def loop_home(tmp_path: Path) -> Iterator[LoopbackHome]:
    h = LoopbackHome(tmp_path / "home", hubs=2, devices=1, fps=5.0)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.slow
def test_logs_tell_a_handover_a_failover_and_a_refused_rogue_hub_in_order(
    loop_home: LoopbackHome,
) -> None:
    home = loop_home
    json_logs = ("--log-format", "json")
    hub1, hub2 = home.hub_id(1), home.hub_id(2)
    device = home.device_id(1)
    _write_rogue(home.path)
    home.start("hub-1", *json_logs)
    home.wait_bound(1)
    home.start("device-1", *json_logs)
    home.wait_for("camera on hub-1", lambda: home.devices_on(1), 30)
    home.start("hub-rogue", *json_logs)
    device_log, hub1_log = home.path / "device-1.log", home.path / "hub-1.log"

    def refused_chain(log: Path) -> bool:
        return any(e["event"] == "refused" and e.get("reason") == "chain" for e in _events(log))

    home.wait_for(
        "the rogue refused", lambda: refused_chain(device_log) and refused_chain(hub1_log), 20
    )
    home.start("hub-2", *json_logs)
    home.wait_for("camera on hub-2", lambda: home.devices_on(2), 40)
    home.kill("hub-2")
    home.wait_for("camera back on hub-1", lambda: home.devices_on(1), 40)
    home.stop("device-1")
    home.stop("hub-rogue")
    home.stop("hub-1")

    _in_order(
        _events(device_log),
        [
            {"event": "connected", "hub": hub1},
            {"event": "refused", "reason": "chain"},
            {"event": "election", "winner": hub2},
            {"event": "redirect-received", "from_hub": hub1, "hub": hub2},
            {"event": "redirect-followed", "from_hub": hub1, "hub": hub2},
            {"event": "hub-lost", "hub": hub2},
            {"event": "failover", "from_hub": hub2, "hub": hub1},
            {"event": "connected", "hub": hub1},
        ],
    )
    _in_order(
        _events(hub1_log),
        [
            {"event": "listening"},
            {"event": "device-connected", "device": device},
            {"event": "refused", "reason": "chain"},
            {"event": "election", "winner": hub2},
            {"event": "redirect-sent", "device": device, "hub": hub2},
            {"event": "device-left", "device": device},
            # The failover: back before hub-2's announcements are even stale.
            {"event": "device-connected", "device": device},
        ],
    )
    # The rogue never got the camera, and nothing secret reached a log.
    assert not any(e["event"] == "device-connected" for e in _events(home.path / "hub-rogue.log"))
    for log in home.path.glob("*.log"):
        text = log.read_text(errors="replace")
        assert "PRIVATE KEY" not in text and "Traceback" not in text, log.name


def test_doctor_names_what_holds_a_port_and_config_check_lists_every_problem(
    home: Path,
) -> None:
    with _port_in_use() as port:
        file = _variant(home, "hub-2.toml", "doctor-port.toml", _set("api", f'"127.0.0.1:{port}"'))
        before = _state_hash(home)
        doctor = subprocess.run(
            _command("doctor", file, "--json"),
            cwd=home,
            env=_env(),
            capture_output=True,
            timeout=60 * time_unit(),
        )
    assert doctor.returncode == ExitCode.FAILED, doctor.stderr
    report = json.loads(doctor.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["role"] == "hub" and not report["ok"]
    assert checks["port status API"]["status"] == "fail"
    assert f"held by pid {os.getpid()}" in checks["port status API"]["detail"]
    assert checks["identity"]["status"] == "ok" and checks["chain"]["status"] == "ok"
    assert checks["instance"]["detail"].startswith("not running")
    assert _state_hash(home) == before
    # Two mistakes in one file: both listed, one line each, exit 4.
    both = _variant(
        home, "hub-2.toml", "two-problems.toml", _both(_set("max_devices", "0"), _set("api", "1"))
    )
    check = subprocess.run(
        _command("config", "check", both), cwd=home, env=_env(), capture_output=True, text=True
    )
    assert check.returncode == ExitCode.CONFIG
    lines = check.stderr.splitlines()
    assert len(lines) == 2 and "api must be a string" in check.stderr, check.stderr
    assert "max_devices must be an integer >= 1" in check.stderr
