"""Act 3 of `roost demo`: a remote viewer reaches hub A's cameras through the broker.

The broker runs in the demo's process from the start of act 2 (before any hub, so hub A's
agent enrolls at once and never retries), and hub A runs its broker agent with the same
guard server as its remote entrance (docs/broker.md, "Running it"). The viewer is
``roost connect`` in its own process: as root, inside a network namespace behind a NAT
router namespace (`roost.cli.demo_net`); otherwise on loopback, and the demo says why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import roost
from roost.cli.broker import build_broker_daemon
from roost.cli.common import console
from roost.cli.demo_net import DemoNet, demo_net_unavailable
from roost.config import BrokerConfig, BrokerLink, load_broker_config
from roost.files import atomic_write
from roost.guard.aio import GuardServer
from roost.guard.card import Card, format_card
from roost.hub.daemon import HubDaemon
from roost.pki.authority import Authority
from roost.pki.certs import Role, cert_to_pem, key_from_pem, key_to_pem
from roost.pki.trust import TrustState
from roost.pki.truststore import save_state
from roost.rendezvous.agent_aio import BrokerAgent
from roost.rendezvous.broker_aio import BrokerDaemon

__all__ = ["RemoteSite", "open_net", "viewer_act"]

# The viewer's whole run (a fresh interpreter, STUN, lookup, punch, QUIC, the guard login
# with the default KDF costs, three frames) is a few seconds; this bounds a stuck one.
_VIEWER_TIMEOUT_S = 60.0
_FRAMES = 3


def open_net() -> tuple[DemoNet | None, str | None]:
    """The namespaces if they can be built here, else None and the reason (for the
    narration). A build that fails is removed and reported like any other reason."""
    reason = demo_net_unavailable()
    if reason is not None:
        return None, reason
    net = DemoNet()
    try:
        net.__enter__()
    except (OSError, RuntimeError) as exc:
        return None, f"the namespaces could not be built ({exc})"
    return net, None


def _moved(address: tuple[str, int], host: str) -> tuple[str, int]:
    return (host, address[1])


class RemoteSite:
    """The broker, hub A's agent and the owner's viewer files for act 3."""

    def __init__(self, workdir: Path, net: DemoNet | None) -> None:
        self.workdir = workdir
        self.net = net
        config = load_broker_config(workdir / "broker.toml")
        if net is not None:
            config = self._public_broker(config, net.public_ip)
        # The broker's own API is not needed in the demo's process.
        self.config = dataclasses.replace(config, api=None)
        self.broker: BrokerDaemon | None = None
        self.agent: BrokerAgent | None = None

    def _public_broker(self, config: BrokerConfig, host: str) -> BrokerConfig:
        """The broker on the demo network's public address, with a certificate naming it
        (the viewer and the agent check the broker's SAN holds the host they dial)."""
        authority = Authority.load(self.workdir / "ca")
        issued = authority.issue(Role.BROKER, dt.datetime.now(dt.UTC), ips=["127.0.0.1", host])
        cert = config.state_dir / "demo-net-cert.pem"
        key = config.state_dir / "demo-net-key.pem"
        atomic_write(cert, cert_to_pem(issued.cert))
        atomic_write(key, key_to_pem(issued.key), mode=0o600)
        return dataclasses.replace(
            config, cert=cert, key=key, udp=_moved(config.udp, host), tls=_moved(config.tls, host)
        )

    async def start_broker(self) -> None:
        """Start the broker (before any hub)."""
        from roost.pki.updater import TrustUpdater

        self.broker = build_broker_daemon(self.config, TrustUpdater(self.config.trust_dir))
        await self.broker.start()

    def link(self, hub_link: BrokerLink) -> BrokerLink:
        """Hub A's ``[broker]`` table, on the demo network's public address if there is one."""
        if self.net is None:
            return hub_link
        host = self.net.public_ip
        return BrokerLink(
            address=_moved(hub_link.address, host),
            udp=_moved(hub_link.udp, host),
            local=(host, 0),
            hold_connection=hub_link.hold_connection,
        )

    async def start_agent(self, hub: HubDaemon, guard: GuardServer) -> None:
        """Hub A's broker agent, as `roost hub run` starts it."""
        from cryptography.hazmat.primitives.serialization import Encoding

        assert hub.config.broker is not None, "roost init writes [broker] in every hub config"
        await guard.open()
        self.agent = BrokerAgent(
            self.link(hub.config.broker),
            identifier=hub.identifier,
            certificate=hub.certificate,
            certificate_der=hub.certificate.public_bytes(Encoding.DER),
            private_key=key_from_pem(hub.config.key.read_bytes()),
            cert_file=hub.config.cert,
            key_file=hub.config.key,
            trust=hub.trust,
            guard=guard,
        )
        await self.agent.start()
        hub.broker_status = self.agent.status

    def registered(self) -> bool:
        """Whether the broker acknowledged hub A's registration."""
        return self.agent is not None and self.agent.status().acks > 0

    async def stop(self) -> None:
        """Stop the agent, then the broker."""
        if self.agent is not None:
            await self.agent.stop()
        if self.broker is not None:
            await self.broker.stop()


def _viewer_files(workdir: Path, hub: HubDaemon, password: str, card: Card) -> Path:
    """The owner's laptop: a trust store from the factory CA information, the password
    and the printed card, as files `roost connect` reads."""
    laptop = workdir / "viewer"
    save_state(laptop / "trust", TrustState.provision(hub.trust.state.current))
    atomic_write(laptop / "password", (password + "\n").encode(), mode=0o600)
    atomic_write(laptop / "owner.card", format_card("owner", card).encode(), mode=0o600)
    return laptop


def _child_env() -> dict[str, str]:
    # The viewer runs the same code as the demo, also from a checkout's src directory.
    package_root = str(Path(roost.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": package_root if not path else os.pathsep.join([package_root, path]),
        "PYTHONUNBUFFERED": "1",
    }


async def _run_viewer(argv: list[str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_child_env(),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), _VIEWER_TIMEOUT_S)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _step(text: str) -> None:
    console.print(f"[bold cyan]▸[/] {text}")


async def viewer_act(
    site: RemoteSite, hub: HubDaemon, password: str, card: Card, why_loopback: str | None
) -> bool:
    """Run act 3 (the caller printed its title); returns whether every check held."""
    assert site.broker is not None
    net = site.net
    if net is not None:
        _step(
            f"The viewer's laptop is network namespace [bold]{net.viewer}[/], behind NAT "
            f"router {net.router} (port-restricted cone, WAN {net.router_wan_ip}); the "
            f"broker and hub A are on {net.public_ip}"
        )
    else:
        _step(
            f"The viewer runs [bold]on loopback[/] ({why_loopback}; as root with `ip` and "
            f"`iptables` it would sit in a network namespace behind a NAT router)"
        )
    agent = site.agent.status() if site.agent is not None else None
    if agent is not None:
        _step(
            f"The broker has run since before the hubs: hub A's agent enrolled over mutual "
            f"TLS and registered (reflexive address {agent.reflexive})"
        )
    laptop = _viewer_files(site.workdir, hub, password, card)
    host = net.public_ip if net is not None else "127.0.0.1"
    out = site.workdir / "viewer-frames"
    argv = [
        sys.executable, "-m", "roost", "connect", hub.identifier,
        "--broker", f"{host}:{site.broker.tls_port}",
        "--broker-udp", f"{host}:{site.broker.udp_port}",
        "--trust", str(laptop / "trust"), "--user", "owner",
        "--password-file", str(laptop / "password"),
        "--card-file", str(laptop / "owner.card"),
        "--frames", str(_FRAMES), "--out", str(out), "--json",
    ]  # fmt: skip
    if net is not None:
        argv = net.viewer_command(argv)
    code, stdout, stderr = await _run_viewer(argv)
    if code != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        _step(f"[red]roost connect failed[/] (exit {code}): {last}")
        return False
    summary: dict[str, Any] = json.loads(stdout)
    receipt = summary["receipt"]
    saved = sorted(out.glob("*.jpg"))
    agent = site.agent.status() if site.agent is not None else None
    colour = "green" if summary["path"] == "direct" else "yellow"
    _step(
        f"roost connect: lookup and sealed password check at the broker, then path "
        f"[{colour}]{summary['path']}[/] (started on {summary['started_on']}), "
        f"setup_ms {summary['setup_ms']}, rtt_ms {summary['rtt_ms']}"
    )
    _step(
        f"{summary['frames']} live frames of {summary['camera'][:24]}… saved "
        f"({summary['bytes']} bytes, {len(saved)} files in {out.name}/); the watch "
        f"request's receipt (leaf {receipt['leaf_index']}, log size {receipt['size']}) "
        f"verifies against hub A's signed log root"
    )
    if agent is not None:
        _step(
            f"Hub A's agent counts: registrations {agent.registrations}, wake-ups "
            f"{agent.wakes}, sessions accepted {agent.accepted} (direct {agent.direct}, "
            f"relayed {agent.relayed})"
        )
    return summary["frames"] == _FRAMES and len(saved) == _FRAMES and receipt["size"] > 0
