"""`roost init HOME`: an authority, identities, trust stores and ready configs."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import click

from roost.cli.common import echo_json, fail_cleanly, now_utc
from roost.cli.human import print_table
from roost.config import (
    BROKER_TLS_PORT,
    BROKER_UDP_PORT,
    broker_limits_table,
    camera_table,
    connection_table,
    redirect_table,
    to_toml,
)
from roost.errors import StateError
from roost.files import atomic_write
from roost.hcsp.aio import DEFAULT_PORT
from roost.pki.authority import Authority
from roost.pki.certs import Role, cert_to_pem, key_to_pem
from roost.pki.trust import TrustState
from roost.pki.truststore import save_state
from roost.rendezvous.broker_events import HOLD_CONNECTION_DEFAULT, BrokerCoreConfig

__all__ = ["DASHBOARD_PORT", "free_loopback_ports", "init_home", "make_home", "write_broker"]

# Where a hub's dashboard listens when the home is not on loopback.
DASHBOARD_PORT = 8443
# Richer hubs come later in the list, so starting them in order shows a handover.
_HUB_FEATURES = [("hcsp", "webs"), ("hcsp", "webs", "db"), ("hcsp", "webs", "db", "ai")]


def free_loopback_ports(count: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """Distinct ports free on 127.0.0.1 now (all held open until every one is chosen).

    Only for a port others must know before its owner binds it: a peer's unicast
    announcement port, or the download URL signed into CA information. Another process
    may take such a port before its owner binds it, so a listener that can bind port 0
    and report what it bound (a hub's run.json) does that instead (docs/testing.md).
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, kind)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


# Default port of a hub's remote entrance when not on loopback.
REMOTE_PORT = 17321


def make_home(
    home: Path, hubs: int, devices: int, loopback: bool, max_devices: int = 8, fps: float = 5.0
) -> dict[str, object]:
    """Create everything a home needs; returns a summary (paths and identifiers)."""
    if home.exists() and any(home.iterdir()):
        raise StateError(f"{home} is not empty", reason="exists")
    home.mkdir(parents=True, exist_ok=True)
    at = now_utc()
    # The download URL is signed into the CA information, so its port is chosen now.
    dl_port = free_loopback_ports(1, socket.SOCK_STREAM)[0]
    # Announcements are unicast on loopback: every peer must know where to send them
    # before any of them starts, so these UDP ports are chosen now too. The hubs' TCP
    # listeners bind port 0 instead and report the bound ports in STATE_DIR/run.json;
    # devices learn a hub's bound channel port from its verified announcement.
    udp = free_loopback_ports(hubs + devices, socket.SOCK_DGRAM) if loopback else []
    host = "127.0.0.1"
    authority = Authority.init(home / "ca", f"https://{host}:{dl_port}/ca/", at)
    summary: dict[str, object] = {"home": str(home), "download_server": f"{host}:{dl_port}"}

    def provision(name: str, role: Role, ips: list[str]) -> str:
        node_dir = home / name
        issued = authority.issue(role, at, ips=ips)
        atomic_write(node_dir / "key.pem", key_to_pem(issued.key), mode=0o600)
        atomic_write(node_dir / "cert.pem", cert_to_pem(issued.cert))
        atomic_write(node_dir / "ca-info.bin", issued.ca_info)
        save_state(node_dir / "trust", TrustState.provision(authority.ca_info(1)))
        return issued.identifier or ""

    announce_ports = udp if loopback else [DEFAULT_PORT] * (hubs + devices)

    def announce(index: int) -> dict[str, object]:
        if not loopback:
            return {"multicast": True, "port": DEFAULT_PORT}
        peers = [f"{host}:{p}" for i, p in enumerate(announce_ports) if i != index]
        return {"multicast": False, "bind": host, "port": announce_ports[index], "peers": peers}

    hub_ids = []
    for i in range(hubs):
        name = f"hub-{i + 1}"
        identifier = provision(name, Role.HUB, [host] if loopback else [])
        hub_ids.append(identifier)
        listen_port = 0 if loopback else DEFAULT_PORT
        config = {
            "name": name,
            "state_dir": name,
            "cert": f"{name}/cert.pem",
            "key": f"{name}/key.pem",
            "listen": f"{host if loopback else '0.0.0.0'}:{listen_port}",
            "advertise": f"{host}:{listen_port}",
            "api": f"{host}:{0 if loopback else 8080}",
            # The owner's guard sessions (roost user add, roost remote call).
            "remote": f"{host}:0" if loopback else f"0.0.0.0:{REMOTE_PORT}",
            "features": list(_HUB_FEATURES[min(i, len(_HUB_FEATURES) - 1)]),
            "max_devices": max_devices,
            "retention_mb": 512,
            "announce": announce(i),
            "redirect": redirect_table(),
            # The home's web app over TLS with the hub's certificate (docs/dashboard.md);
            # log in with a user from `roost user add --state {name}`.
            "dashboard": {"listen": f"{host}:0" if loopback else f"0.0.0.0:{DASHBOARD_PORT}"},
        }
        comment = f"Roost hub {name} ({identifier}). Run: roost hub run --config {name}.toml"
        (home / f"{name}.toml").write_text(to_toml(config, comment))
    device_ids = []
    for j in range(devices):
        name = f"device-{j + 1}"
        identifier = provision(name, Role.DEVICE, [])
        device_ids.append(identifier)
        config = {
            "name": name,
            "state_dir": name,
            "cert": f"{name}/cert.pem",
            "key": f"{name}/key.pem",
            "fps": fps,
            "width": 320,
            "height": 240,
            "max_buffer_frames": 20000,
            "max_buffer_mb": 256,
            "announce": announce(hubs + j),
            "connection": connection_table(),
            # Where frames come from: the test pattern, a file, an RTSP/HTTP URL, /dev/videoN.
            "camera": camera_table(),
        }
        comment = f"Roost camera {name} ({identifier}). Run: roost device run --config {name}.toml"
        (home / f"{name}.toml").write_text(to_toml(config, comment))
    summary["hubs"] = hub_ids
    summary["devices"] = device_ids
    summary["broker"] = write_broker(home, authority, at, loopback, hubs)
    return summary


# Where the broker's API listens when the home is not on loopback.
BROKER_API_PORT = 8090


def write_broker(
    home: Path, authority: Authority, at: dt.datetime, loopback: bool, hubs: int
) -> dict[str, object]:
    """``broker.toml`` and ``broker/`` (certificate of role broker, key, trust store), and a
    ``[broker]`` table appended to every hub config (PROTOCOL.md section 5).

    The broker's UDP and TLS ports are chosen here, not at start-up (port 0): every hub's
    config names them, so they must be known before the broker runs. On loopback they are
    free ports on 127.0.0.1 now; otherwise 3478 (UDP) and 7443 (TLS) on every address.
    """
    host = "127.0.0.1"
    if loopback:
        (udp_port,) = free_loopback_ports(1, socket.SOCK_DGRAM)
        tls_port, api_port = free_loopback_ports(2, socket.SOCK_STREAM)
        bind = host
        names: dict[str, list[str]] = {"ips": [host], "dns": []}
    else:
        udp_port, tls_port, api_port = BROKER_UDP_PORT, BROKER_TLS_PORT, BROKER_API_PORT
        bind = "0.0.0.0"
        # The issuer checks the SAN holds the host it dialed: the machine's name and
        # loopback here; `roost ca issue --role broker --ip …` makes one for a public address.
        names = {"ips": [host], "dns": [socket.gethostname()]}
    node_dir = home / "broker"
    issued = authority.issue(Role.BROKER, at, dns=names["dns"], ips=names["ips"])
    atomic_write(node_dir / "key.pem", key_to_pem(issued.key), mode=0o600)
    atomic_write(node_dir / "cert.pem", cert_to_pem(issued.cert))
    atomic_write(node_dir / "ca-info.bin", issued.ca_info)
    save_state(node_dir / "trust", TrustState.provision(authority.ca_info(1)))
    config = {
        "name": "broker",
        "state_dir": "broker",
        "cert": "broker/cert.pem",
        "key": "broker/key.pem",
        "udp": f"{bind}:{udp_port}",
        "tls": f"{bind}:{tls_port}",
        "api": f"{host}:{api_port}",
        "interval_s": BrokerCoreConfig().interval_s,
        "limits": broker_limits_table(),
    }
    comment = "Roost rendezvous broker. Run: roost broker run --config broker.toml"
    (home / "broker.toml").write_text(to_toml(config, comment))
    section = {
        "address": f"{host}:{tls_port}",
        "udp": f"{host}:{udp_port}",
        "local": f"{host}:0" if loopback else "0.0.0.0:0",
    }
    for i in range(hubs):
        hub_file = home / f"hub-{i + 1}.toml"
        if hub_file.exists():
            text = hub_file.read_text()
            lines = [""] + ["[broker]"] + [f'{k} = "{v}"' for k, v in section.items()]
            # Written out, so the choice is visible in the file (docs/broker.md, "Held
            # connections").
            lines.append(f"hold_connection = {'true' if HOLD_CONNECTION_DEFAULT else 'false'}")
            hub_file.write_text(text + "\n".join(lines) + "\n")
    return {
        "config": "broker.toml",
        "udp": config["udp"],
        "tls": config["tls"],
        "api": config["api"],
    }


@click.command("init")
@click.argument("home", type=click.Path(path_type=Path, file_okay=False))
@click.option("--hubs", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option("--devices", default=3, show_default=True, type=click.IntRange(0, 256))
@click.option(
    "--loopback", is_flag=True, help="Everything on 127.0.0.1; hubs bind free ports (see run.json)."
)
@click.option(
    "--max-devices", default=8, show_default=True, type=click.IntRange(1, 1024), help="Per hub."
)
@click.option("--fps", default=5.0, show_default=True, type=click.FloatRange(0.1, 60.0))
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@fail_cleanly
def init_home(
    home: Path,
    hubs: int,
    devices: int,
    loopback: bool,
    max_devices: int,
    fps: float,
    as_json: bool,
) -> None:
    """Create a home: authority, hub and device identities, trust stores, configs."""
    summary = make_home(home, hubs, devices, loopback, max_devices, fps)
    if as_json:
        echo_json(summary)
        return
    _print_summary(home, summary)


def _print_summary(home: Path, summary: dict[str, object]) -> None:
    hub_ids = summary["hubs"]
    device_ids = summary["devices"]
    assert isinstance(hub_ids, list) and isinstance(device_ids, list)
    rows = [(f"hub-{i + 1}", "hub", ident, f"hub-{i + 1}.toml") for i, ident in enumerate(hub_ids)]
    rows += [
        (f"device-{j + 1}", "camera", ident, f"device-{j + 1}.toml")
        for j, ident in enumerate(device_ids)
    ]
    rows.append(("broker", "broker", "-", "broker.toml"))
    print_table(f"Home {home}", ("name", "role", "identifier", "config"), rows)
    click.echo(
        f"Authority: {home}/ca; its download server will listen on {summary['download_server']}"
    )
    click.echo("Next, from that directory, each in its own terminal (or under systemd, contrib/):")
    lines = [f"cd {home}", f"roost ca serve ca --listen {summary['download_server']} &"]
    lines += [f"roost hub run --config hub-{i + 1}.toml &" for i in range(len(hub_ids))]
    lines += [f"roost device run --config device-{j + 1}.toml &" for j in range(len(device_ids))]
    lines += ["roost broker run --config broker.toml &", "roost hub status --config hub-1.toml"]
    for line in lines:
        click.echo(f"  {line}")
