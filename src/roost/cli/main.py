"""The `roost` command: the composition root that wires real sockets, files and keys."""

from __future__ import annotations

import importlib
import sys

import click

from roost.cli.common import DEBUG_META, RoostGroup
from roost.cli.exitcodes import ExitCode, epilog

__all__ = ["cli", "main"]


# Each command group lives in its own module; this table is the whole CLI. A group's module
# is imported only when that group runs (or help lists them all): a device agent started as
# `roost device run` must not carry the broker, the guard, aiohttp and aioquic that other
# groups import (docs/BENCHMARKS.md, "Soak and footprint").
_COMMANDS: dict[str, tuple[str, str]] = {
    "ca": ("roost.cli.ca", "ca"),
    "trust": ("roost.cli.trust", "trust"),
    "demo": ("roost.cli.demo", "demo"),
    "user": ("roost.cli.user", "user"),
    "log": ("roost.cli.log", "log"),
    "init": ("roost.cli.home", "init_home"),
    "hub": ("roost.cli.run", "hub"),
    "device": ("roost.cli.run", "device"),
    "remote": ("roost.cli.remote", "remote"),
    "broker": ("roost.cli.broker", "broker"),
    "connect": ("roost.cli.connect", "connect"),
    "discover": ("roost.cli.discover", "discover"),
    "config": ("roost.cli.doctor", "config"),
    "doctor": ("roost.cli.doctor", "doctor"),
}


class _LazyGroup(RoostGroup):
    """The top-level group: commands from ``_COMMANDS``, each module loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            _load(cmd_name)
        return super().get_command(ctx, cmd_name)


def _load(name: str) -> None:
    module, attribute = _COMMANDS[name]
    command = getattr(importlib.import_module(module), attribute)
    cli.add_command(command, name)


@click.group(
    cls=_LazyGroup,
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
    """Load every command group now (tests that walk ``cli.commands`` call this)."""
    for name in _COMMANDS:
        _load(name)


def main() -> None:
    """Run the ``roost`` command line."""
    # Shell completion is click's: `eval "$(_ROOST_COMPLETE=bash_source roost)"` (README).
    # Naming the variable keeps it the same under `python -m roost`. Not standalone, so a
    # usage mistake is one line here rather than click's usage block (docs/exit-codes.md).
    try:
        code = cli.main(complete_var="_ROOST_COMPLETE", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        # A group given no command shows its help, as click would (exit 2, documented).
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        sys.exit(ExitCode.USAGE)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "roost"
        click.echo(f"{command}: {exc.format_message()} (see {command} --help)", err=True)
        sys.exit(ExitCode.USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("roost: aborted", err=True)
        sys.exit(ExitCode.FAILED)
    # ``--help`` and ``--version`` end through click's Exit, which returns its code here.
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)
