"""Persistence of the two-slot trust store (PROTOCOL.md section 2, "persists every change
atomically"): the file adapter around the pure `roost.pki.trust.TrustState`.

One JSON file holds both slots, the time floor and the retired anchors; it is replaced
atomically (`roost.files.atomic_write`), so a crash leaves the old store or the new one.
Loading re-checks what it reads: a file edited by hand must not bypass the successor rule.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

from cryptography import x509

from roost.errors import RemoteProtocolError, StateError, VerificationError
from roost.files import atomic_write
from roost.pki.cainfo import accept_successor, decode_cainfo
from roost.pki.trust import MAX_RETIRED, TrustState

__all__ = ["STATE_FILE", "load_state", "save_state"]

STATE_FILE = "trust-store.json"
_STATE_FORMAT = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def save_state(directory: Path, state: TrustState) -> None:
    """Persist both slots and the floor in one atomically replaced file."""
    doc = {
        "format": _STATE_FORMAT,
        "current": _b64(state.current.raw),
        "prepared": _b64(state.prepared.raw) if state.prepared else None,
        "time_floor": state.time_floor.isoformat(),
        "retired": [_b64(d) for d in state.retired],
        "revocations": [[by, gen, key_id.hex()] for by, gen, key_id in state.revocations],
    }
    atomic_write(directory / STATE_FILE, json.dumps(doc, indent=2).encode("utf-8"))


def load_state(directory: Path) -> TrustState:
    """Load and re-check a persisted store; StateError when missing or inconsistent."""
    path = directory / STATE_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise StateError(f"no trust store at {directory}", reason="missing") from exc
    except (OSError, ValueError) as exc:
        raise StateError(f"trust store at {directory} is unreadable", reason="corrupt") from exc
    try:
        if doc.get("format") != _STATE_FORMAT:
            raise StateError("unknown trust store format", reason="corrupt")
        current = decode_cainfo(base64.b64decode(doc["current"], validate=True))
        prepared_b64 = doc.get("prepared")
        prepared = (
            decode_cainfo(base64.b64decode(prepared_b64, validate=True)) if prepared_b64 else None
        )
        floor = dt.datetime.fromisoformat(doc["time_floor"])
        retired = tuple(base64.b64decode(d, validate=True) for d in doc.get("retired", []))
        for der in retired:
            x509.load_der_x509_certificate(der)
        revocations = tuple(
            (int(by), int(gen), bytes.fromhex(key_id))
            for by, gen, key_id in doc.get("revocations", [])
        )
        if prepared is not None:
            # The pair was accepted as a chain; a file edited by hand must not bypass that.
            accept_successor(current, prepared)
    except (KeyError, TypeError, ValueError, RemoteProtocolError, VerificationError) as exc:
        raise StateError(f"trust store at {directory} is corrupt: {exc}", reason="corrupt") from exc
    if floor.tzinfo is None:
        raise StateError("trust store floor has no time zone", reason="corrupt")
    return TrustState(current, prepared, floor, retired[-MAX_RETIRED:], revocations)
