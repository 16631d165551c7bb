"""`roost demo`: a whole home on one machine (grows as parts land)."""

from __future__ import annotations

import click

__all__ = ["demo"]


@click.command()
def demo() -> None:
    """Run the narrated demo."""
    click.echo("Roost demo: nothing to show yet.")
