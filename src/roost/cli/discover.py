"""`roost discover`: list the hubs DNS-SD finds on the LAN (``_roost._tcp.local.``).

What it prints are hints, not verified hubs: a device dialling one still requires mutual
TLS with the home's CA and the identifier the record names (docs/hub-and-device.md,
"Finding hubs with DNS-SD").
"""

from __future__ import annotations

import asyncio
import socket

import click

from roost.cli.common import echo_json, fail_cleanly
from roost.dnssd.aio import discover_hubs

__all__ = ["discover"]


def _check_interfaces(interfaces: tuple[str, ...]) -> None:
    for address in interfaces:
        try:
            socket.inet_aton(address)
        except OSError as exc:
            raise click.BadParameter(
                f"{address!r} is not an IPv4 address", param_hint="--interface"
            ) from exc


@click.command("discover")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of the hubs found.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=60.0),
    default=3.0,
    show_default=True,
    help="Seconds to listen for answers.",
)
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    metavar="ADDR",
    help="Query on the interface with this IPv4 address (repeatable); "
    "default: the interface of the default route only.",
)
@fail_cleanly
def discover(as_json: bool, timeout: float, interfaces: tuple[str, ...]) -> None:
    """List the hubs on the LAN that DNS-SD finds (unverified hints)."""
    _check_interfaces(interfaces)
    hubs = asyncio.run(discover_hubs(interfaces, timeout))
    if as_json:
        echo_json([hub.to_json() for hub in hubs])
        return
    if not hubs:
        click.echo(f"no hubs answered within {timeout:g} s")
        return
    for hub in hubs:
        features = ",".join(hub.features) or "-"
        api = f"  api {hub.host}:{hub.api_port}" if hub.api_port else ""
        click.echo(
            f"{hub.name or '?':<16} {hub.identifier}  {hub.endpoint:<21} "
            f"features {features}  max {hub.max_devices}{api}"
        )
