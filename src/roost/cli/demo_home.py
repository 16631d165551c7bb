"""Act 2 of `roost demo`: a home of hubs and cameras, in one process on loopback.

Hub A records three cameras; a rogue hub from a self-made CA announces itself richer and
is ignored; hub B, genuinely richer, is verified and takes over (FIG. 6, FIG. 8B); hub B
stops and the cameras fail over back; the owner logs in to hub A's remote entrance (the
guard: password, card codes, sealed calls, a log receipt); then every frame is accounted
for.

Act 3 runs in the same home before the accounting: the broker (started before any hub) and
hub A's broker agent let the owner's remote viewer reach hub A (`roost.cli.demo_remote`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import signal
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from rich.table import Table

from roost.cli.common import console
from roost.cli.demo_net import DemoNet
from roost.cli.demo_remote import RemoteSite, open_net, viewer_act
from roost.cli.home import make_home
from roost.cli.run import build_hub_daemon, start_hub_dashboard
from roost.config import HubConfig, load_device_config, load_hub_config
from roost.device.daemon import DeviceDaemon, read_own_certificate
from roost.device.spool import FrameSpool
from roost.errors import VerificationError
from roost.files import atomic_write
from roost.guard.aio import GuardClient, GuardServer
from roost.guard.card import Card, format_card, generate_card
from roost.guard.log import SqliteMerkleLog
from roost.guard.userstore import SqliteUserStore, make_user
from roost.hub.daemon import HubDaemon
from roost.hub.dashboard import Dashboard
from roost.hub.recorder import Recorder
from roost.hub.remote import build_guard_server, start_remote
from roost.pki.authority import Authority
from roost.pki.certs import Role, cert_to_pem, key_to_pem
from roost.pki.tls import client_context
from roost.pki.trust import TrustState
from roost.pki.truststore import save_state
from roost.pki.updater import TrustUpdater, UpdateConfig

__all__ = ["home_act", "rogue_hub_config"]

_NO_DOWNLOADS = UpdateConfig(fetch_timeout=0.5)


def rogue_hub_config(path: Path, victim: HubConfig, extra_peers: Sequence[int]) -> HubConfig:
    """A hub certified by a self-made CA, announcing more features to `victim`'s home."""
    at = dt.datetime.now(dt.UTC)
    rogue_ca = Authority.init(path / "rogue-ca", "https://127.0.0.1:1/ca/", at)
    issued = rogue_ca.issue(Role.HUB, at, ips=["127.0.0.1"])
    atomic_write(path / "rogue" / "cert.pem", cert_to_pem(issued.cert))
    atomic_write(path / "rogue" / "key.pem", key_to_pem(issued.key), mode=0o600)
    save_state(path / "rogue" / "trust", TrustState.provision(rogue_ca.ca_info(1)))
    victim_udp = victim.announce.udp
    peers = ((victim_udp.bind_host, victim_udp.port), *(("127.0.0.1", p) for p in extra_peers))
    udp = dataclasses.replace(victim_udp, port=0, peers=peers)
    return dataclasses.replace(
        victim,
        name="rogue",
        state_dir=path / "rogue",
        cert=path / "rogue" / "cert.pem",
        key=path / "rogue" / "key.pem",
        listen=("127.0.0.1", 0),
        advertise=("127.0.0.1", 1),
        features=("hcsp", "webs", "db", "ai", "extra"),
        announce=dataclasses.replace(victim.announce, udp=udp),
        remote=None,
    )


def _hub(config: HubConfig) -> HubDaemon:
    trust = TrustUpdater(config.trust_dir, config=_NO_DOWNLOADS)
    return build_hub_daemon(config, trust, Recorder(config.state_dir / "recordings", 1 << 30))


async def _until(condition: Callable[[], bool], seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.1)
    return condition()


def _step(text: str) -> None:
    console.print(f"[bold cyan]▸[/] {text}")


async def _owner_visit(
    hub: HubDaemon, guard: tuple[GuardServer, SqliteMerkleLog], password: str, card: Card
) -> bool:
    """The owner reaches hub A's remote entrance with the default KDF costs (docs/guard.md).

    The entrance shares its guard server with hub A's broker agent, as in `roost hub run`;
    it keeps listening until the home stops.
    """
    server, _ = await start_remote(hub, guard=guard)
    asked: list[int] = []

    def codes(labels: tuple[str, ...]) -> list[str]:
        asked.append(len(labels))
        return [card.code_for(label) for label in labels]

    def is_hub_a(leaf: x509.Certificate) -> None:
        # The owner's laptop trusts the same CA; it wants hub A, not any certified node.
        hub.trust.state.verify_node(leaf, hub.identifier)

    async def connect(answer: Callable[[tuple[str, ...]], list[str]]) -> GuardClient:
        return await GuardClient.connect(
            "127.0.0.1",
            server.bound_port,
            client_context(hub.trust.state.anchors),
            user_id="owner",
            password=password,
            answer=answer,
            check_server=is_hub_a,
        )

    client = await connect(codes)
    try:
        response = await client.call("status")
        status = json.loads(response.results[0]) if response.ok else {}
        receipt = await client.receipt(response)
    finally:
        await client.close()
    try:
        await connect(lambda labels: ["ZZZZZZZZ"] * len(labels))
        wrong_code_refused = False
    except VerificationError:
        wrong_code_refused = True
    _step(
        f"The owner logs in to hub A's remote entrance: password, then {asked[0]} of "
        f"{len(card.entries)} card codes; the status ({len(status.get('connected', []))} "
        f"cameras) arrives sealed under its own key; the receipt for leaf "
        f"{receipt.leaf_index} verifies against the signed log root of size "
        f"{receipt.checkpoint.size}; a wrong code is refused"
    )
    return bool(status.get("connected")) and wrong_code_refused


async def _capture(devices: Sequence[DeviceDaemon]) -> None:
    """Every camera's capture, on one schedule the demo can stop before it drains.

    The accounting compares frames captured with frames stored, so capture must end
    before the spools are drained and the cameras stop; a camera's own capture loop would
    go on until its ``stop()``, and a frame taken in between would count as lost.
    """
    loop = asyncio.get_running_loop()
    period = 1.0 / max(d.config.fps for d in devices)
    next_at = loop.time()
    while True:
        for device in devices:
            device.capture_one()
        next_at = max(next_at + period, loop.time())
        await asyncio.sleep(next_at - loop.time())


async def home_act(workdir: Path, cameras: int = 3) -> tuple[Table, bool, bool]:
    """Run acts 2 and 3; returns the accounting table and whether each act's checks held."""
    make_home(workdir, hubs=2, devices=cameras, loopback=True, fps=8.0)
    hub_a = _hub(load_hub_config(workdir / "hub-1.toml"))
    hub_b = _hub(load_hub_config(workdir / "hub-2.toml"))
    devices = []
    for j in range(1, cameras + 1):
        config = load_device_config(workdir / f"device-{j}.toml")
        trust = TrustUpdater(config.trust_dir, config=_NO_DOWNLOADS)
        spool = FrameSpool(None, 10_000, 1 << 28)
        devices.append(DeviceDaemon(config, trust, spool, read_own_certificate(config)))
    # The owner (act 2's remote entrance, act 3's remote viewer), default KDF costs.
    card = generate_card()
    password = "demo owner password"
    store = SqliteUserStore.in_state_dir(hub_a.config.state_dir)
    store.add(make_user("owner", password, card))
    store.close()

    def on(hub: HubDaemon) -> bool:
        return all(d.channel is not None and d.channel.hub_id == hub.identifier for d in devices)

    def drained() -> bool:
        return all(d.spool.buffered == 0 for d in devices)

    ok = True
    # SIGTERM cancels the act like Ctrl-C does, so every `finally` below runs: the
    # namespaces of act 3 are removed and the viewer's process is killed.
    loop = asyncio.get_running_loop()
    act = asyncio.current_task()
    if act is not None:
        with contextlib.suppress(ValueError, NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, act.cancel)
    guard = build_guard_server(hub_a)
    hub_a.guard = guard[0]
    net: DemoNet | None = None
    site: RemoteSite | None = None
    capture: asyncio.Task[None] | None = None
    rogue: HubDaemon | None = None
    dashboard: Dashboard | None = None
    remote_ok = False
    try:
        net, why_loopback = open_net()
        site = RemoteSite(workdir, net)
        # The broker first: hub A's agent then enrolls at once, with no retry to log.
        await site.start_broker()
        await hub_a.start()
        dashboard = await start_hub_dashboard(hub_a, hub_a.config)
        card_file = workdir / "owner-card.txt"
        card_file.write_text(format_card("owner", card))
        card_file.chmod(0o600)
        _step(
            f"Hub A's dashboard: {dashboard.url} (TLS with the hub's certificate). Log in "
            f"as [bold]owner[/], password [bold]{password}[/], then the codes your card "
            f"shows ({card_file}; run with --keep to keep it)"
        )
        await site.start_agent(hub_a, guard[0])
        for device in devices:
            await device.start(capture=False)
        capture = asyncio.create_task(_capture(devices))
        rogue_ports = [d.config.announce.udp.port for d in devices]
        rogue = _hub(rogue_hub_config(workdir, hub_a.config, rogue_ports))
        ok &= await _until(lambda: on(hub_a), 30)
        _step(f"Hub A ({','.join(hub_a.config.features)}) records {cameras} cameras")
        await rogue.start()
        # Wait for hub A to see the rogue, then one hold-down more: a camera that took the
        # rogue's announcement for genuine would have moved by then (FIG. 6).
        ok &= await _until(lambda: hub_a.core.counters.rejected["chain"] > 0, 20)
        await asyncio.sleep(hub_a.config.announce.hold_down + 0.5)
        rejected = hub_a.core.counters.rejected["chain"]
        ok &= on(hub_a) and rejected > 0
        _step(
            f"A rogue hub (self-made CA, {len(rogue.config.features)} features) announces: "
            f"rejected {rejected}× by hub A, cameras unmoved"
        )
        await rogue.stop()
        await hub_b.start()
        ok &= await _until(lambda: on(hub_b), 40)
        _step(
            f"Hub B ({','.join(hub_b.config.features)}) joins, is verified, wins after its "
            f"hold-down; "
            f"hub A sent {hub_a.counters.redirects_sent} redirects"
        )
        await asyncio.sleep(1.0)
        # Hub B's stop closes its channels at once, so a frame it stored but had not yet
        # acknowledged would be sent again to hub A and counted twice. The cameras pause
        # until hub B has acknowledged everything, so the accounting shows the failover
        # itself, not that race.
        capture.cancel()
        ok &= await _until(drained, 30)
        await hub_b.stop()
        capture = asyncio.create_task(_capture(devices))
        ok &= await _until(lambda: on(hub_a), 40)
        _step("Hub B stops: the cameras fail over back to hub A")
        ok &= await _owner_visit(hub_a, guard, password, card)

        console.rule("[bold]Roost — act 3: a remote viewer through the broker")
        registered = await _until(site.registered, 20)
        if not registered:
            _step("[red]Hub A's agent did not register with the broker[/]")
        remote_ok = registered and await viewer_act(site, hub_a, password, card, why_loopback)

        capture.cancel()
        ok &= await _until(drained, 30)
    finally:
        if capture is not None:
            capture.cancel()
        for device in devices:
            await device.stop()
        if site is not None:
            await site.stop()
        if dashboard is not None:
            await dashboard.stop()
        await guard[0].stop()
        guard[1].close()
        hub_a.guard = None
        await hub_a.stop()
        await hub_b.stop()
        if rogue is not None:
            await rogue.stop()
        if net is not None:
            net.close()
        with contextlib.suppress(ValueError, NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
    table = Table(title="Every frame accounted for")
    for column in ("camera", "captured", "stored on A", "stored on B", "lost", "duplicated"):
        table.add_column(column, justify="right")
    for device in devices:
        seen: Counter[int] = Counter()
        on_a = hub_a.recorder.seqs(device.identifier)
        on_b = hub_b.recorder.seqs(device.identifier)
        seen.update(on_a)
        seen.update(on_b)
        captured = device.spool.added
        lost = captured - len(seen)
        duplicated = sum(c - 1 for c in seen.values())
        ok &= lost == 0 and duplicated == 0 and captured > 0
        table.add_row(
            device.config.name,
            str(captured),
            str(len(on_a)),
            str(len(on_b)),
            str(lost),
            str(duplicated),
        )
    for hub in (hub_a, hub_b):
        hub.recorder.close()
    return table, ok, remote_ok
