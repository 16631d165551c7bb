"""`roost demo`: a narrated walk through Roost on one machine (loopback only).

Act 1 is the authority and a clockless device following it through a normal rollover and
an emergency revocation, against a real HTTPS download server. Act 2 is a home of hubs and
cameras (`roost.cli.demo_home`); act 3, in that home, a remote viewer reaching hub A through
the broker, from a network namespace behind a NAT router when run as root
(`roost.cli.demo_remote`, `roost.cli.demo_net`), else on loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from pathlib import Path

import click
from aiohttp import web
from rich.table import Table

from roost.cli.common import console
from roost.cli.demo_home import home_act
from roost.cli.home import free_loopback_ports
from roost.errors import VerificationError
from roost.pki.authority import Authority
from roost.pki.certs import Role
from roost.pki.download import DownloadServer, download_tls_context
from roost.pki.trust import TrustState
from roost.pki.truststore import save_state
from roost.pki.updater import TrustUpdater, UpdateConfig

__all__ = ["authority_act", "demo"]

_YEAR = dt.timedelta(days=365)


class _Downloads:
    """The authority's HTTPS download server, restarted when its certificate must change."""

    def __init__(self, authority: Authority, port: int) -> None:
        self.authority = authority
        self.port = port
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        await self.stop()
        self.runner = web.AppRunner(DownloadServer(self.authority).app, access_log=None)
        await self.runner.setup()
        ctx = download_tls_context(self.authority)
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def _step(text: str) -> None:
    console.print(f"[bold cyan]▸[/] {text}")


def _device_view(device: TrustUpdater) -> str:
    s = device.state
    prepared = s.prepared.generation if s.prepared else "—"
    return f"current {s.current.generation}, prepared {prepared}, floor {s.time_floor.date()}"


async def _device_meets(device: TrustUpdater, authority: Authority, generation: int) -> str:
    """A hub presents a certificate of `generation`; the device authenticates it."""
    hub = authority.issue(Role.HUB, _when(authority), ips=["127.0.0.1"], generation=generation)

    try:
        device.state.verify_node(hub.cert)
    except VerificationError:
        await device.on_verification_failure(0.0, hub.cert)
    try:
        _, slot = device.authenticate(hub.cert)
    except VerificationError as exc:
        return f"[red]rejected[/] ({exc.reason})"
    return f"[green]accepted[/] under {slot.value}"


def _when(authority: Authority) -> dt.datetime:
    newest = authority.settings.record(authority.settings.newest)
    return dt.datetime.fromisoformat(newest.not_before)


async def authority_act(workdir: Path) -> list[tuple[str, str, str]]:
    """Init, issue, roll, revoke, with a clockless device following; returns the log."""
    port = free_loopback_ports(1)[0]
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rows: list[tuple[str, str, str]] = []
    authority = Authority.init(workdir / "ca", f"https://127.0.0.1:{port}/ca/", t0)
    _step(f"Authority created: generation 1, 2-of-3 DL keys, publishes at :{port}")
    device_dir = workdir / "camera"
    save_state(device_dir, TrustState.provision(authority.ca_info(1)))
    device = TrustUpdater(device_dir, config=UpdateConfig(failure_backoff_initial=0.0))
    _step(f"Camera provisioned with CA information 1 ({_device_view(device)})")
    result = await _device_meets(device, authority, 1)
    rows.append(("hub on CA 1", result, _device_view(device)))

    downloads = _Downloads(authority, port)
    try:
        authority.roll(t0 + 15 * _YEAR)
        await downloads.start()
        _step("Fifteen years on: generation 2 prepared, its download server is up (S502–S504)")
        await device.poll(0.0)
        rows.append(("periodic poll", "fetched CA information 2", _device_view(device)))
        authority.activate()
        _step("CA 1 reaches expiry: issuing moves to generation 2 (S510)")
        result = await _device_meets(device, authority, 2)
        rows.append(("hub on CA 2", result, _device_view(device)))

        authority.roll(t0 + 16 * _YEAR, revoke_current=True)
        await downloads.start()
        _step("[red]CA 2 is compromised[/]: generation 3 flags REVOKES_PREVIOUS (S509–S511)")
        result = await _device_meets(device, authority, 3)
        rows.append(("hub on CA 3", result, _device_view(device)))
        result = await _device_meets(device, authority, 2)
        rows.append(("attacker with CA 2", result, _device_view(device)))
        rogue = Authority.init(workdir / "rogue", f"https://127.0.0.1:{port}/ca/", t0)
        result = await _device_meets(device, rogue, 1)
        rows.append(("hub from a self-made CA", result, _device_view(device)))
    finally:
        await downloads.stop()
    return rows


@click.command()
@click.option("--keep", type=click.Path(path_type=Path, file_okay=False), default=None)
def demo(keep: Path | None) -> None:
    """Run the narrated demo (loopback, and as root two network namespaces for the remote
    viewer); state in a temporary directory unless --keep."""
    console.rule("[bold]Roost — act 1: trust that outlives its CA, without a clock")
    with tempfile.TemporaryDirectory(prefix="roost-demo-") as tmp:
        workdir = keep or Path(tmp)
        rows = asyncio.run(authority_act(workdir / "act-1"))
        table = Table(title="What the camera saw")
        for column in ("event", "result", "camera trust store"):
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        expected = ["accepted", "fetched", "accepted", "accepted", "rejected", "rejected"]
        if any(word not in row[1] for word, row in zip(expected, rows, strict=True)):
            raise click.ClickException("act 1 did not go as narrated")
        console.rule("[bold]Roost — act 2: cameras always on the best trusted hub")
        # Act 3 (the remote viewer) runs inside act 2's home, before its accounting.
        try:
            accounting, ok, remote_ok = asyncio.run(home_act(workdir / "act-2"))
        except asyncio.CancelledError:
            # SIGTERM during acts 2 and 3 (see home_act): everything is stopped and removed.
            raise click.Abort() from None
        console.print(accounting)
        if not ok:
            raise click.ClickException("act 2 did not go as narrated")
        if not remote_ok:
            raise click.ClickException("act 3 did not go as narrated")
