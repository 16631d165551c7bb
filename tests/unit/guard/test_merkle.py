"""Merkle log against published RFC 6962/9162 vectors, plus the SQLite log and receipts."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from roost.errors import RemoteProtocolError, VerificationError
from roost.guard.log import (
    SqliteMerkleLog,
    checkpoint_to_json,
    decode_receipt,
    encode_receipt,
    load_or_create_log_key,
    verify_checkpoint,
    verify_receipt,
)
from roost.guard.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parents[2] / "vectors" / "guard"


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


REFERENCE = _load("merkle_reference_tree.json")
LEAVES = [bytes.fromhex(x) for x in REFERENCE["leaf_inputs_hex"]]


def naive_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 written out literally, independent of the module under test."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:])).digest()


def test_reference_tree_roots_match_published_values() -> None:
    hashes = [leaf_hash(leaf) for leaf in LEAVES]
    assert [h.hex() for h in hashes] == REFERENCE["leaf_hashes_hex"]
    for size, expected in enumerate(REFERENCE["root_hashes_hex_by_size"]):
        assert root_of(hashes[:size]).hex() == expected
        assert naive_mth(LEAVES[:size]).hex() == expected


@pytest.mark.parametrize("case", _load("merkle_inclusion.json")["cases"], ids=lambda c: c["file"])
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    proof = [_b64(p) for p in case["proof"] or []]
    args = (_b64(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("case", _load("merkle_consistency.json")["cases"], ids=lambda c: c["file"])
def test_consistency_vectors(case: dict[str, Any]) -> None:
    proof = [_b64(p) for p in case["proof"] or []]
    args = (case["size1"], case["size2"], _b64(case["root1"]), _b64(case["root2"]), proof)
    if case["wantErr"]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_generated_proofs_match_published_happy_paths() -> None:
    hashes = [leaf_hash(leaf) for leaf in LEAVES]

    def subtree(start: int, size: int) -> bytes:
        return root_of(hashes[start : start + size])

    for case in _load("merkle_inclusion.json")["cases"]:
        if not case["wantErr"] and case["treeSize"] <= 8:
            proof = inclusion_proof(case["leafIdx"], case["treeSize"], subtree)
            assert proof == [_b64(p) for p in case["proof"] or []]
    for case in _load("merkle_consistency.json")["cases"]:
        if not case["wantErr"]:
            proof = consistency_proof(case["size1"], case["size2"], subtree)
            assert proof == [_b64(p) for p in case["proof"] or []]


def test_every_proof_up_to_33_leaves_verifies_and_no_neighbour_does() -> None:
    leaves = [b"leaf %d" % i for i in range(33)]
    hashes = [leaf_hash(leaf) for leaf in leaves]

    def subtree(start: int, size: int) -> bytes:
        return root_of(hashes[start : start + size])

    for size in range(1, 34):
        root = naive_mth(leaves[:size])
        for index in range(size):
            proof = inclusion_proof(index, size, subtree)
            verify_inclusion(hashes[index], index, size, proof, root)
            if size > 1:
                with pytest.raises(VerificationError):
                    verify_inclusion(hashes[index], (index + 1) % size, size, proof, root)
        for old in range(0, size + 1):
            proof = consistency_proof(old, size, subtree)
            verify_consistency(old, size, naive_mth(leaves[:old]), root, proof)
            if 0 < old < size:
                with pytest.raises(VerificationError):
                    verify_consistency(old, size, naive_mth(leaves[:old]), root, proof[:-1])


def test_sqlite_log_matches_the_naive_tree_and_survives_reopen(tmp_path: Path) -> None:
    log = SqliteMerkleLog(tmp_path / "log.sqlite3")
    digests = [hashlib.sha256(b"%d" % i).digest() for i in range(21)]
    for i, digest in enumerate(digests):
        assert log.append(digest) == i
        assert log.root() == naive_mth(digests[: i + 1])
    log.close()
    reopened = SqliteMerkleLog(tmp_path / "log.sqlite3")
    assert reopened.size == 21 and reopened.root() == naive_mth(digests)
    reopened.append(b"\x00" * 32)
    assert reopened.root() == naive_mth([*digests, b"\x00" * 32])
    for old in (1, 5, 16, 21):
        proof = reopened.consistency_proof(old)
        verify_consistency(old, 22, reopened.root_at(old), reopened.root(), proof)


def test_receipt_round_trip_and_offline_verification(tmp_path: Path) -> None:
    key = load_or_create_log_key(tmp_path / "log-key.pem")
    assert oct((tmp_path / "log-key.pem").stat().st_mode & 0o777) == "0o600"
    assert load_or_create_log_key(tmp_path / "log-key.pem").public_key() == key.public_key()
    log = SqliteMerkleLog(tmp_path / "log.sqlite3")
    for i in range(7):
        log.append(hashlib.sha256(b"m%d" % i).digest())
    checkpoint = log.checkpoint(key, timestamp_ms=1_700_000_000_000)
    verify_checkpoint(checkpoint)
    receipt = log.receipt(3, checkpoint)
    encoded = encode_receipt(receipt)
    assert decode_receipt(encoded) == receipt
    verify_receipt(receipt)
    # Later checkpoint with a consistency proof from the receipt's size.
    for i in range(7, 12):
        log.append(hashlib.sha256(b"m%d" % i).digest())
    later = log.checkpoint(key, timestamp_ms=1_700_000_001_000)
    document = checkpoint_to_json(later)
    document["consistency"] = {
        "from_size": checkpoint.size,
        "from_root": base64.b64encode(checkpoint.root).decode(),
        "proof": [base64.b64encode(p).decode() for p in log.consistency_proof(checkpoint.size)],
    }
    verify_receipt(receipt, json.dumps(document).encode())
    # Without a consistency proof the later checkpoint cannot vouch for the receipt.
    with pytest.raises(VerificationError) as caught:
        verify_receipt(receipt, json.dumps(checkpoint_to_json(later)).encode())
    assert caught.value.reason == "no-consistency-proof"
    # A checkpoint from another key is refused.
    other = SqliteMerkleLog(tmp_path / "other.sqlite3")
    for i in range(7):
        other.append(hashlib.sha256(b"m%d" % i).digest())
    foreign = other.checkpoint(Ed25519PrivateKey.generate(), timestamp_ms=0)
    with pytest.raises(VerificationError) as caught:
        verify_receipt(receipt, json.dumps(checkpoint_to_json(foreign)).encode())
    assert caught.value.reason == "wrong-log-key"


def test_tampered_receipts_fail(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    log = SqliteMerkleLog(tmp_path / "log.sqlite3")
    for i in range(5):
        log.append(hashlib.sha256(b"m%d" % i).digest())
    receipt = log.receipt(2, log.checkpoint(key, timestamp_ms=0))
    document = json.loads(encode_receipt(receipt))
    document["message_digest"] = base64.b64encode(b"\x01" * 32).decode()
    with pytest.raises(VerificationError):
        verify_receipt(decode_receipt(json.dumps(document).encode()))
    document = json.loads(encode_receipt(receipt))
    document["checkpoint"]["size"] = 6
    with pytest.raises(VerificationError) as caught:
        verify_receipt(decode_receipt(json.dumps(document).encode()))
    assert caught.value.reason == "bad-signature"
    with pytest.raises(RemoteProtocolError):
        decode_receipt(b"{not json")
