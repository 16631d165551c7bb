"""The `roost` command: the composition root that wires real sockets, files and keys."""

from __future__ import annotations

import click

from roost.cli.common import DEBUG_META, RoostGroup
from roost.cli.exitcodes import epilog

__all__ = ["cli", "main"]


@click.group(
    cls=RoostGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=epilog(),
)
@click.version_option(package_name="roost")
@click.option(
    "--debug",
    is_flag=True,
    envvar="ROOST_DEBUG",
    help="Print the traceback when a command fails (also ROOST_DEBUG=1).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Roost: trusted hubs, clockless trust rollover, remote reach, protected messages."""
    ctx.meta[DEBUG_META] = debug


def _register() -> None:
    # Each command group lives in its own module; the list below is the whole CLI.
    from roost.cli.broker import broker
    from roost.cli.ca import ca
    from roost.cli.connect import connect
    from roost.cli.demo import demo
    from roost.cli.discover import discover
    from roost.cli.doctor import config, doctor
    from roost.cli.home import init_home
    from roost.cli.log import log
    from roost.cli.remote import remote
    from roost.cli.run import device, hub
    from roost.cli.trust import trust
    from roost.cli.user import user

    cli.add_command(ca)
    cli.add_command(trust)
    cli.add_command(demo)
    cli.add_command(user)
    cli.add_command(log)
    cli.add_command(init_home)
    cli.add_command(hub)
    cli.add_command(device)
    cli.add_command(remote)
    cli.add_command(broker)
    cli.add_command(connect)
    cli.add_command(discover)
    cli.add_command(config)
    cli.add_command(doctor)


def main() -> None:
    _register()
    # Shell completion is click's: `eval "$(_ROOST_COMPLETE=bash_source roost)"` (README).
    # Naming the variable keeps it the same under `python -m roost`.
    cli(complete_var="_ROOST_COMPLETE")
