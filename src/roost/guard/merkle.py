"""RFC 6962 Merkle tree hashing, proofs and their verification (RFC 9162 §2.1), pure.

The seed had the server keep protected data "to check tampering later", but a server
holding the keys can re-MAC anything (research note, weakness 8). An append-only Merkle
log with signed checkpoints gives third-party evidence instead: inclusion proofs show a
message is in the log, consistency proofs show a later log extends an earlier one.
Proof generation works over any ``subtree(start, size)`` function, so the in-memory
reference tree in the tests and the SQLite log share it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from roost.errors import VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "SubtreeHash",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeHash = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 §2.1: MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1: SHA-256(0x01 || MTH(left) || MTH(right))."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two strictly smaller than ``size`` (size > 1)."""
    return 1 << ((size - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, by the recursive definition of RFC 6962 §2.1."""
    if not leaf_hashes:
        return EMPTY_ROOT
    if len(leaf_hashes) == 1:
        return leaf_hashes[0]
    k = _split(len(leaf_hashes))
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


def inclusion_proof(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 §2.1.1."""
    if not 0 <= index < size:
        raise ValueError("leaf index outside the tree")
    proof: list[bytes] = []
    start = 0
    while size > 1:
        k = _split(size)
        if index < k:
            proof.append(subtree(start + k, size - k))
            size = k
        else:
            proof.append(subtree(start, k))
            start, index, size = start + k, index - k, size - k
    proof.reverse()
    return proof


def consistency_proof(old_size: int, new_size: int, subtree: SubtreeHash) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 6962 §2.1.2; empty when either size is 0 or they are equal."""
    if not 0 <= old_size <= new_size:
        raise ValueError("sizes out of order")
    if old_size == 0 or old_size == new_size:
        return []
    proof: list[bytes] = []
    start, m, n, whole = 0, old_size, new_size, True
    while m != n:
        k = _split(n)
        if m <= k:
            proof.append(subtree(start + k, n - k))
            n = k
        else:
            proof.append(subtree(start, k))
            start, m, n, whole = start + k, m - k, n - k, False
    if not whole:
        proof.append(subtree(start, n))
    proof.reverse()
    return proof


def _check_hashes(*values: bytes) -> None:
    for value in values:
        if len(value) != HASH_SIZE:
            raise VerificationError("hash has the wrong length", reason="bad-proof")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2. ``leaf`` is the leaf *hash*. Raises ``VerificationError``."""
    _check_hashes(leaf, root, *proof)
    if not 0 <= index < size:
        raise VerificationError("leaf index outside the tree", reason="bad-proof")
    fn, sn, result = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            raise VerificationError("inclusion proof too long", reason="bad-proof")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0 or not hmac.compare_digest(result, root):
        raise VerificationError("inclusion proof does not match the root", reason="bad-proof")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2, using up the whole second size. Raises ``VerificationError``."""
    _check_hashes(old_root, new_root, *proof)
    if not 0 <= old_size <= new_size:
        raise VerificationError("sizes out of order", reason="bad-proof")
    if old_size == new_size:
        if proof or not hmac.compare_digest(old_root, new_root):
            raise VerificationError("equal sizes need equal roots", reason="bad-proof")
        return
    if old_size == 0:
        if proof:
            raise VerificationError("proof from the empty tree must be empty", reason="bad-proof")
        return
    if not proof:
        raise VerificationError("empty consistency proof", reason="bad-proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first = second = path[0]
    for item in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof too long", reason="bad-proof")
        if fn & 1 or fn == sn:
            first = node_hash(item, first)
            second = node_hash(item, second)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            second = node_hash(second, item)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof too short", reason="bad-proof")
    if not (hmac.compare_digest(first, old_root) and hmac.compare_digest(second, new_root)):
        raise VerificationError("consistency proof does not match", reason="bad-proof")
