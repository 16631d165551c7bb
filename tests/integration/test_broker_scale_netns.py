"""Brokers on two hosts sharing one Redis, the hub behind a NAT router (network namespaces,
`tests/helpers/natlab.py`): the connection request enters on one broker host and the
wake-up leaves from the other, the one whose socket the hub's NAT mapping points at; once
the node link between the two hosts is up, the routed request takes it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from roost.cli.home import make_home
from roost.hub.api import fetch_status
from roost.hub.runfile import read_run_file
from roost.rendezvous.broker_aio import fetch_broker_status
from tests.helpers.natlab import BROKER_IP, NatLab, NatType, natlab_available
from tests.helpers.processes import roost_succeeds
from tests.helpers.redisserver import server_binaries
from tests.helpers.waits import scaled, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(240)]
PASSWORD = "owner password"
HOSTS = {1: "198.18.0.21", 2: "198.18.0.22"}
REDIS_PORT = 6390
API = ("127.0.0.1", 7080)


def _home(base: Path) -> str:
    home = base / "home"
    summary = make_home(home, 1, 1, True, 8, 5.0)
    base_config = (home / "broker.toml").read_text()
    for index, ip in HOSTS.items():
        out = home / f"broker{index}"
        out.mkdir()
        roost_succeeds(
            "ca", "issue", str(home / "ca"), "--role", "broker", "--ip", ip, "--out", str(out)
        )
        # One broker process per state folder (its lock): each host's broker keeps its own
        # copy of the home broker's trust store next to its certificate.
        shutil.copytree(home / "broker" / "trust", out / "trust")
        lines = []
        for line in base_config.splitlines():
            key = line.split("=", 1)[0].strip()
            values = {
                "cert": f'"broker{index}/cert.pem"',
                "key": f'"broker{index}/key.pem"',
                "state_dir": f'"broker{index}"',
                "udp": f'"{ip}:3478"',
                "tls": f'"{ip}:7443"',
                "api": f'"{API[0]}:{API[1]}"',
                "interval_s": "1.0",
            }
            if key in values:
                line = f"{key} = {values[key]}"
            if line.startswith("[limits]"):
                lines += [
                    f'registry = "redis://{BROKER_IP}:{REDIS_PORT}/0"',
                    f'node = "host{index}"',
                    # Advertised to the other host: this host's address, any free port.
                    f'node_link = "{ip}:0"',
                ]
            lines.append(line)
        (home / f"broker-{index}.toml").write_text("\n".join(lines) + "\n")
    hub = home / "hub-1.toml"
    text = hub.read_text().split("[broker]")[0]
    text += "[broker]\n"
    text += "address = [" + ", ".join(f'"{ip}:7443"' for ip in HOSTS.values()) + "]\n"
    text += "udp = [" + ", ".join(f'"{ip}:3478"' for ip in HOSTS.values()) + "]\n"
    text += 'local = "0.0.0.0:0"\n'
    # The base flow's routing (RWAK from the owner's host), not the held connection.
    text += "hold_connection = false\n"
    hub.write_text(text)
    roost_succeeds(
        "user", "add", str(home / "hub-1"), "owner", "--card-file", str(base / "owner.card"),
        "--password-cost", "10", "--code-cost", "8", stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )  # fmt: skip
    roost_succeeds(
        "trust", "init", str(base / "trust"),
        "--ca-info", str(home / "device-1" / "ca-info.bin"),
    )  # fmt: skip
    (base / "password").write_text(PASSWORD + "\n")
    return str(summary["hubs"][0])


def test_request_enters_on_one_host_and_the_wake_up_leaves_from_the_other(
    tmp_path: Path,
) -> None:
    reason = natlab_available()
    if reason is not None:
        pytest.skip(reason)
    binary = shutil.which(server_binaries()[0])
    if binary is None:
        pytest.skip("redis-server is not installed; this test needs the real server")
    hub_id = _home(tmp_path)
    home = tmp_path / "home"

    def logs() -> str:
        return json.dumps(
            {p.name: p.read_text(errors="replace")[-1500:] for p in tmp_path.glob("*.log")}
        )[:6000]

    with NatLab(NatType.PORT_RESTRICTED, NatType.PUBLIC) as lab:
        hosts = {index: lab.add_public_host(f"k{index}", ip) for index, ip in HOSTS.items()}

        def start(ns: str, argv: list[str], name: str) -> None:
            with (tmp_path / f"{name}.log").open("ab") as log:
                lab.run(ns, argv, stdout=log, stderr=subprocess.STDOUT)

        start(
            lab.inet,
            [binary, "--port", str(REDIS_PORT), "--bind", BROKER_IP, "--protected-mode", "no",
             "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)],
            "redis",
        )  # fmt: skip

        def status(index: int) -> dict[str, Any] | None:
            with lab.inside(hosts[index]):
                try:
                    return fetch_broker_status(*API, timeout=2.0)
                except OSError:
                    return None

        def owner() -> str | None:
            with lab.inside(lab.inet):
                client = redis.Redis(host=BROKER_IP, port=REDIS_PORT, socket_timeout=1)
                try:
                    value = client.get(f"roost:p:{hub_id}")
                except redis.RedisError:
                    return None
                finally:
                    client.close()
            from roost.rendezvous.presence import decode_presence

            return None if value is None else decode_presence(value).owner

        roost = [sys.executable, "-m", "roost"]
        for index, ns in hosts.items():
            config = str(home / f"broker-{index}.toml")
            start(ns, [*roost, "broker", "run", "--config", config], f"broker-{index}")
        for index in hosts:
            wait_until(lambda i=index: status(i) is not None, 20, what=f"broker {index}; {logs()}")
        for kind, name in (("hub", "hub-1"), ("device", "device-1")):
            start(lab.a.host, [*roost, kind, "run", "--config", str(home / f"{name}.toml")], name)
        wait_until(lambda: owner() == "host1", 30, what=f"hub registered at host 1; {logs()}")

        def hub_reflexive() -> str | None:
            try:
                state = read_run_file(home / "hub-1" / "run.json")
            except Exception:
                return None
            with lab.inside(lab.a.host):
                try:
                    return (fetch_status(*state.api, timeout=2).get("broker") or {}).get(
                        "reflexive"
                    )
                except OSError:
                    return None

        # The broker saw the router's WAN address: the hub is behind the NAT.
        wait_until(lambda: str(hub_reflexive() or "").startswith(lab.a.wan_ip), 20, what="NAT")
        time.sleep(0.5)
        before = {i: (status(i) or {})["counters"]["wakes_sent"] for i in hosts}
        argv = [
            *roost, "connect", hub_id, "--broker", f"{HOSTS[2]}:7443",
            "--broker-udp", f"{HOSTS[2]}:3478", "--trust", str(tmp_path / "trust"),
            "--user", "owner", "--password-file", str(tmp_path / "password"),
            "--card-file", str(tmp_path / "owner.card"), "--frames", "2",
            "--out", str(tmp_path / "frames"), "--json",
        ]  # fmt: skip
        process = lab.run(lab.b.host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate(timeout=scaled(60))
        assert process.returncode == 0, f"{err.decode()}; {logs()}"
        summary = json.loads(out)
        assert summary["frames"] == 2
        after = {i: (status(i) or {})["counters"]["wakes_sent"] for i in hosts}
        # Entered on host 2, woken from host 1's socket through the NAT's pinhole.
        assert after[1] > before[1] and after[2] == before[2]
        assert (status(2) or {})["shared"]["forwarded"] >= 1
        assert (status(1) or {})["shared"]["hosted"] >= 1
        # Host 2 asked for a node link to host 1 at that request: the next one takes it,
        # between the namespaces, with no Redis pub/sub message.
        wait_until(lambda: (status(2) or {})["shared"]["links_up"] >= 1, 10, what="link")
        linked = (status(2) or {})["shared"]
        assert linked["node_link"].startswith(HOSTS[2])
        argv[argv.index("--frames") + 1] = "1"
        process = lab.run(lab.b.host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate(timeout=scaled(60))
        assert process.returncode == 0, f"{err.decode()}; {logs()}"
        shared = (status(2) or {})["shared"]
        assert shared["link_sent"] > linked["link_sent"]
        assert shared["published"] == linked["published"]
        # Two hosts (network namespaces): TLS over TCP, never a local socket.
        assert shared["link_opened"] >= 1 and shared["link_opened_local"] == 0
