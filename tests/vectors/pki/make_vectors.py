"""Regenerate tests/vectors/pki/cainfo.json (run from the repository root).

The CA certificate is fixed bytes (an ECDSA signature is randomized, so it is made once and
stored); the DL keys are derived from labels, and Ed25519 signatures are deterministic, so
the encoded document is reproducible byte for byte.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from roost.pki.cainfo import CAInfoBody, Flags, sign_body
from roost.pki.certs import make_ca
from tests.helpers.dlkeys import dl_key, public

HERE = Path(__file__).parent


def main() -> None:
    ca_key = ec.derive_private_key(int.from_bytes(hashlib.sha256(b"ca-1").digest()), ec.SECP256R1())
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ca = make_ca(ca_key, 1, start, start + dt.timedelta(days=365 * 20))
    labels = ["dl-0", "dl-1", "dl-2"]
    body = CAInfoBody(
        generation=1,
        issued_at=int(start.timestamp()),
        flags=Flags.NONE,
        prev_digest=bytes(32),
        ca_cert_der=ca.public_bytes(serialization.Encoding.DER),
        next_url="https://ca.home.arpa/roost/2.rcai",
        dl_threshold=2,
        dl_keys=tuple(public(dl_key(label)) for label in labels),
    )
    encoded = sign_body(body, [dl_key(label) for label in labels[:2]])
    vector = {
        "source": "Roost's own construction, PROTOCOL.md section 2",
        "generation": 1,
        "issued_at": body.issued_at,
        "flags": 0,
        "prev_digest": body.prev_digest.hex(),
        "ca_cert_der": body.ca_cert_der.hex(),
        "next_url": body.next_url,
        "dl_threshold": 2,
        "dl_key_labels": labels,
        "signer_labels": labels[:2],
        "encoded": encoded.hex(),
        "sha256": hashlib.sha256(encoded).hexdigest(),
    }
    (HERE / "cainfo.json").write_text(json.dumps(vector, indent=2) + "\n")


if __name__ == "__main__":
    main()
