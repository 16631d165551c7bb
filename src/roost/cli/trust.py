"""`roost trust …`: the client's two-slot trust store (PROTOCOL.md section 2)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click

from roost.cli.common import echo_json, fail_cleanly
from roost.errors import StateError, VerificationError
from roost.pki.cainfo import decode_cainfo
from roost.pki.certs import certs_from_pem
from roost.pki.trust import Slot, TrustState
from roost.pki.truststore import STATE_FILE, load_state, save_state
from roost.pki.updater import FetchOutcome, TrustUpdater

__all__ = ["trust"]

EXIT_NOT_PUBLISHED = 3


@click.group()
def trust() -> None:
    """The two-slot trust store devices, hubs and remote clients keep."""


@trust.command()
@click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
@click.option("--ca-info", "ca_info", type=click.Path(path_type=Path, exists=True), required=True)
@fail_cleanly
def init(state_dir: Path, ca_info: Path) -> None:
    """Provision STATE with the CA information installed at the factory."""
    if (state_dir / STATE_FILE).exists():
        raise StateError(f"{state_dir} already holds a trust store", reason="exists")
    state = TrustState.provision(decode_cainfo(ca_info.read_bytes()))
    save_state(state_dir, state)
    echo_json(state.summary())


@trust.command()
@click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def status(state_dir: Path, as_json: bool) -> None:
    """Show the current and prepared generations and the time floor."""
    summary = load_state(state_dir).summary()
    if as_json:
        echo_json(summary)
        return
    for key, value in summary.items():
        click.echo(f"{key:>10}: {value}")


@trust.command()
@click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
@fail_cleanly
def update(state_dir: Path) -> None:
    """Fetch the successor of the newest slot once (exit 0 stored, 3 not published, 1 error)."""
    updater = TrustUpdater(state_dir)
    outcome = asyncio.run(updater.update_once())
    echo_json({"outcome": outcome.value, **updater.state.summary()})
    if outcome is FetchOutcome.NOT_PUBLISHED:
        sys.exit(EXIT_NOT_PUBLISHED)


@trust.command()
@click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
@click.option("--cert", "cert_file", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--id", "expected_id", default=None, help="The node identifier expected.")
@click.option("--no-fetch", is_flag=True, help="Do not fetch newer CA information on failure.")
@fail_cleanly
def check(state_dir: Path, cert_file: Path, expected_id: str | None, no_fetch: bool) -> None:
    """Authenticate a hub or device certificate the way a device does."""
    certs = certs_from_pem(cert_file.read_bytes())
    if not certs:
        raise click.UsageError(f"{cert_file} holds no certificate")
    leaf = certs[0]
    updater = TrustUpdater(state_dir)

    try:
        updater.state.verify_node(leaf, expected_id)
    except VerificationError:
        if not no_fetch:
            # Claims 4–6 plus the catch-up walk: fetch on failure, then try again.
            asyncio.run(updater.on_verification_failure(time.monotonic(), leaf, expected_id))
    before = updater.state
    node, slot = updater.authenticate(leaf, expected_id)
    new_state = updater.state
    verified_by = before.current if slot is Slot.CURRENT else before.newest
    echo_json(
        {
            "id": node.identifier,
            "verified_by": slot.value,
            "generation": verified_by.generation,
            "promoted": new_state.current.generation != before.current.generation,
            **new_state.summary(),
        }
    )
