"""`roost log`: the Guard's tamper-evident message log (PROTOCOL.md §6).

``checkpoint`` signs (when the log grew) and prints the latest checkpoint; ``receipt``
exports a leaf's receipt; ``verify`` checks a receipt offline, needing no state.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from roost.cli.common import Failure, RoostGroup, fail_cleanly
from roost.cli.exitcodes import ExitCode
from roost.errors import RoostError
from roost.guard.log import (
    LOG_KEY_FILENAME,
    SqliteMerkleLog,
    checkpoint_document,
    checkpoint_to_json,
    covering_checkpoint,
    decode_receipt,
    encode_receipt,
    load_or_create_log_key,
    verify_receipt,
)

__all__ = ["log"]

_STATE = click.argument("state", type=click.Path(file_okay=False, path_type=Path))


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@click.group(cls=RoostGroup)
def log() -> None:
    """Merkle log of protected messages: checkpoints, receipts, offline verification."""


@log.command("checkpoint")
@_STATE
@click.option(
    "--consistency-from",
    type=click.IntRange(0),
    help="Include a consistency proof from this earlier log size.",
)
@fail_cleanly
def checkpoint(state: Path, consistency_from: int | None) -> None:
    """Print the latest signed checkpoint as JSON, signing a new one if the log grew."""
    merkle_log = SqliteMerkleLog.in_state_dir(state)
    try:
        key = load_or_create_log_key(state / LOG_KEY_FILENAME)
        # The CLI is the composition root, the one place allowed to read the clock.
        latest = covering_checkpoint(
            merkle_log, key, size_at_least=merkle_log.size, timestamp_ms=_wall_ms()
        )
        document = checkpoint_document(merkle_log, latest, consistency_from)
    finally:
        merkle_log.close()
    click.echo(json.dumps(document, indent=2, sort_keys=True))


@log.command("receipt")
@_STATE
@click.argument("index", type=click.IntRange(0))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@fail_cleanly
def receipt(state: Path, index: int, out: Path | None) -> None:
    """Export the receipt of leaf INDEX against the latest checkpoint."""
    merkle_log = SqliteMerkleLog.in_state_dir(state)
    try:
        key = load_or_create_log_key(state / LOG_KEY_FILENAME)
        latest = covering_checkpoint(
            merkle_log, key, size_at_least=index + 1, timestamp_ms=_wall_ms()
        )
        encoded = encode_receipt(merkle_log.receipt(index, latest))
    finally:
        merkle_log.close()
    if out is None:
        sys.stdout.write(encoded.decode())
    else:
        out.write_bytes(encoded)


@log.command("verify")
@click.argument("receipt_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A later checkpoint (from `roost log checkpoint`) the receipt must be consistent with.",
)
@fail_cleanly
def verify(receipt_file: Path, checkpoint_file: Path | None) -> None:
    """Verify RECEIPT_FILE offline; exit 0 when valid, 1 when not."""
    try:
        parsed = decode_receipt(receipt_file.read_bytes())
        later = checkpoint_file.read_bytes() if checkpoint_file is not None else None
        verify_receipt(parsed, later)
    except RoostError as error:
        # This command's documented contract: 1 for any invalid receipt, whatever the class.
        raise Failure(f"invalid receipt ({error.reason}): {error}", ExitCode.FAILED) from error
    key_id = checkpoint_to_json(parsed.checkpoint)["key_id"]
    click.echo(
        f"valid: leaf {parsed.leaf_index} is in the log of size {parsed.checkpoint.size}"
        f" signed by key {key_id}"
        + (" and consistent with the given checkpoint" if checkpoint_file else "")
    )
