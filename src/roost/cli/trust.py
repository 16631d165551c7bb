"""`roost trust …`: the client's two-slot trust store (PROTOCOL.md section 2)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click

from roost.cli.common import RoostGroup, echo_json, fail_cleanly, fail_with, now_utc
from roost.cli.exitcodes import ExitCode
from roost.cli.human import absolute, fingerprint, print_fields, relative
from roost.errors import StateError, VerificationError
from roost.pki.cainfo import check_standalone, decode_cainfo
from roost.pki.certs import certs_from_pem
from roost.pki.trust import Slot, TrustState
from roost.pki.truststore import STATE_FILE, load_state, save_state
from roost.pki.updater import FetchOutcome, TrustUpdater

__all__ = ["trust"]


@click.group(cls=RoostGroup)
def trust() -> None:
    """The two-slot trust store devices, hubs and remote clients keep."""


@trust.command()
@click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
@click.option("--ca-info", "ca_info", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@fail_cleanly
def init(state_dir: Path, ca_info: Path, as_json: bool) -> None:
    """Provision STATE with the CA information installed at the factory.

    The file is checked as far as it can check itself (its own DL-key signatures and
    threshold, the form of next_url, the CA certificate); nothing proves where it came
    from, so compare the printed fingerprint with `roost ca status` on the authority.
    """
    if (state_dir / STATE_FILE).exists():
        raise StateError(f"{state_dir} already holds a trust store", reason="exists")
    info = decode_cainfo(ca_info.read_bytes())
    state = TrustState.provision(info)
    try:
        check_standalone(info, state.time_floor)
    except VerificationError as exc:
        raise VerificationError(f"{ca_info} refused: {exc}", reason=exc.reason) from exc
    save_state(state_dir, state)
    digest = info.digest
    if as_json:
        echo_json({**state.summary(), "fingerprint": digest.hex()})
        return
    print_fields(
        f"Trust store {state_dir} provisioned with generation {info.generation}",
        [
            ("fingerprint", fingerprint(digest)),
            ("CA valid until", absolute(info.ca_certificate.not_valid_after_utc)),
            ("next generation at", info.body.next_url),
            ("DL keys", f"{info.body.dl_threshold} of {len(info.body.dl_keys)} must sign"),
        ],
    )
    click.echo(
        "Compare the fingerprint with the authority's (`roost ca status`, column"
        " fingerprint) before trusting it."
    )


def _status_doc(state: TrustState) -> dict[str, object]:
    return {
        **state.summary(),
        "fingerprint": state.current.digest.hex(),
        "next_url": state.newest.body.next_url,
        "revoked_by": state.revoked_by,
        "retired": len(state.retired),
    }


@trust.command()
@click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@fail_cleanly
def status(state_dir: Path, as_json: bool) -> None:
    """Show the current and prepared generations and the time floor."""
    state = load_state(state_dir)
    if as_json:
        echo_json(_status_doc(state))
        return
    now = now_utc()
    current = state.current.ca_certificate.not_valid_after_utc
    prepared = state.prepared
    print_fields(
        f"Trust store {state_dir}",
        [
            (
                "current",
                f"generation {state.current.generation}, CA valid until"
                f" {absolute(current)} ({relative(current, now)})",
            ),
            ("prepared", f"generation {prepared.generation}" if prepared else "none"),
            ("fingerprint", fingerprint(state.current.digest)),
            ("time floor", f"{absolute(state.time_floor)} ({relative(state.time_floor, now)})"),
            ("next fetch", state.newest.body.next_url),
            ("revoked by", ", ".join(f"generation {g}" for g in state.revoked_by) or "-"),
        ],
    )


@trust.command()
@click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
@fail_with(ExitCode.FAILED)
def update(state_dir: Path) -> None:
    """Fetch the successor of the newest slot once (exit 0 stored, 3 not published, 1 error)."""
    # Those three codes are this command's documented contract (README), older than the
    # table in docs/exit-codes.md: every Roost error exits 1, still printed with its reason.
    updater = TrustUpdater(state_dir)
    outcome = asyncio.run(updater.update_once())
    echo_json({"outcome": outcome.value, **updater.state.summary()})
    if outcome is FetchOutcome.NOT_PUBLISHED:
        sys.exit(ExitCode.NOT_PUBLISHED)


@trust.command()
@click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
@click.option("--cert", "cert_file", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--id", "expected_id", default=None, help="The node identifier expected.")
@click.option("--no-fetch", is_flag=True, help="Do not fetch newer CA information on failure.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@fail_cleanly
def check(
    state_dir: Path, cert_file: Path, expected_id: str | None, no_fetch: bool, as_json: bool
) -> None:
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
    doc = {
        "id": node.identifier,
        "verified_by": slot.value,
        "generation": verified_by.generation,
        "promoted": new_state.current.generation != before.current.generation,
        **new_state.summary(),
    }
    if as_json:
        echo_json(doc)
        return
    promoted = "; the prepared generation is now current" if doc["promoted"] else ""
    click.echo(
        f"{node.identifier} is trusted: issued by generation {verified_by.generation}"
        f" ({slot.value} slot){promoted}"
    )
