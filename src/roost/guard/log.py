"""The tamper-evident message log: SQLite storage, signed checkpoints, receipts.

PROTOCOL.md §6: the server appends ``SHA-256(session id | direction | j | ciphertext)``
of every message as an RFC 6962 leaf, signs checkpoints with the hub's Ed25519 log key,
and hands clients receipts (inclusion proof + signed checkpoint) that anyone can verify
offline. Codecs here are pure; :class:`SqliteMerkleLog` is the only part doing I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from roost.errors import RemoteProtocolError, StateError, VerificationError
from roost.guard.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from roost.wire import Reader, Writer, check_size

__all__ = [
    "LOG_KEY_FILENAME",
    "MAX_DOCUMENT_SIZE",
    "Checkpoint",
    "Receipt",
    "SqliteMerkleLog",
    "checkpoint_document",
    "checkpoint_from_json",
    "checkpoint_to_json",
    "covering_checkpoint",
    "decode_checkpoint",
    "decode_checkpoint_document",
    "decode_receipt",
    "encode_checkpoint",
    "encode_receipt",
    "key_id_of",
    "load_or_create_log_key",
    "message_digest",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_receipt",
]

CHECKPOINT_CONTEXT = b"roost-guard-checkpoint/v1\n"
MAX_CHECKPOINT_SIZE = 512
MAX_DOCUMENT_SIZE = 64 * 1024
MAX_PROOF_LENGTH = 64
DEFAULT_ORIGIN = "roost guard log"
# The log key's file in a hub's state directory, next to SqliteMerkleLog.FILENAME.
LOG_KEY_FILENAME = "log-key.pem"


def message_digest(session_id: bytes, direction: int, position: int, ciphertext: bytes) -> bytes:
    """The leaf data for one message: fixed-width fields, then the ciphertext last."""
    return hashlib.sha256(
        session_id + struct.pack(">BQ", direction, position) + ciphertext
    ).digest()


def key_id_of(public_key: Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "the log named ``origin`` had ``size`` leaves with ``root``"."""

    origin: str
    size: int
    root: bytes
    timestamp_ms: int
    public_key: bytes  # raw Ed25519, 32 bytes
    signature: bytes  # 64 bytes over CHECKPOINT_CONTEXT + signed body

    def signed_body(self) -> bytes:
        return _checkpoint_body(
            self.origin, self.size, self.root, self.timestamp_ms, self.public_key
        )


def _checkpoint_body(
    origin: str, size: int, root: bytes, timestamp_ms: int, public_key: bytes
) -> bytes:
    origin_bytes = origin.encode("utf-8")
    writer = Writer().u8(len(origin_bytes)).raw(origin_bytes).u64(size).raw(root)
    return writer.u64(timestamp_ms).raw(public_key).bytes()


def sign_checkpoint(
    key: Ed25519PrivateKey, size: int, root: bytes, timestamp_ms: int, origin: str = DEFAULT_ORIGIN
) -> Checkpoint:
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    body = _checkpoint_body(origin, size, root, timestamp_ms, public)
    return Checkpoint(origin, size, root, timestamp_ms, public, key.sign(CHECKPOINT_CONTEXT + body))


def verify_checkpoint(checkpoint: Checkpoint, trusted_key: bytes | None = None) -> None:
    """Check the signature (and, when given, that it is the pinned log key)."""
    if trusted_key is not None and checkpoint.public_key != trusted_key:
        raise VerificationError("checkpoint signed by another key", reason="wrong-log-key")
    try:
        Ed25519PublicKey.from_public_bytes(checkpoint.public_key).verify(
            checkpoint.signature, CHECKPOINT_CONTEXT + checkpoint.signed_body()
        )
    except (InvalidSignature, ValueError):
        raise VerificationError("checkpoint signature is bad", reason="bad-signature") from None


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    return checkpoint.signed_body() + checkpoint.signature


def decode_checkpoint(data: bytes) -> Checkpoint:
    check_size(data, MAX_CHECKPOINT_SIZE, "checkpoint")
    reader = Reader(data, "checkpoint")
    try:
        origin = reader.take(reader.u8()).decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("origin is not UTF-8", reason="malformed") from None
    size = reader.u64()
    root = reader.take(HASH_SIZE)
    timestamp_ms = reader.u64()
    public_key = reader.take(32)
    signature = reader.take(64)
    reader.expect_end()
    return Checkpoint(origin, size, root, timestamp_ms, public_key, signature)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise RemoteProtocolError(f"{what} must be base64 text", reason="malformed")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise RemoteProtocolError(f"{what} is not base64", reason="malformed") from None
    if size is not None and len(raw) != size:
        raise RemoteProtocolError(f"{what} has the wrong length", reason="malformed")
    return raw


def _uint(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise RemoteProtocolError(f"{what} must be a non-negative integer", reason="malformed")
    return value


def checkpoint_to_json(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root": _b64(checkpoint.root),
        "timestamp_ms": checkpoint.timestamp_ms,
        "public_key": _b64(checkpoint.public_key),
        "key_id": key_id_of(Ed25519PublicKey.from_public_bytes(checkpoint.public_key)).hex(),
        "signature": _b64(checkpoint.signature),
    }


def checkpoint_from_json(value: Any) -> Checkpoint:
    if not isinstance(value, dict):
        raise RemoteProtocolError("checkpoint must be an object", reason="malformed")
    origin = value.get("origin")
    try:
        origin_ok = isinstance(origin, str) and 1 <= len(origin.encode("utf-8")) <= 255
    except UnicodeEncodeError:
        origin_ok = False
    if not origin_ok:
        raise RemoteProtocolError("checkpoint origin", reason="malformed")
    assert isinstance(origin, str)
    return Checkpoint(
        origin=origin,
        size=_uint(value.get("size"), "size"),
        root=_unb64(value.get("root"), "root", HASH_SIZE),
        timestamp_ms=_uint(value.get("timestamp_ms"), "timestamp_ms"),
        public_key=_unb64(value.get("public_key"), "public_key", 32),
        signature=_unb64(value.get("signature"), "signature", 64),
    )


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a client keeps: its message digest, where it sits, and the signed root."""

    message_digest: bytes
    leaf_index: int
    proof: tuple[bytes, ...]
    checkpoint: Checkpoint


def encode_receipt(receipt: Receipt) -> bytes:
    document = {
        "version": 1,
        "message_digest": _b64(receipt.message_digest),
        "leaf_index": receipt.leaf_index,
        "proof": [_b64(item) for item in receipt.proof],
        "checkpoint": checkpoint_to_json(receipt.checkpoint),
    }
    return json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def _parse_json(data: bytes, what: str) -> Any:
    check_size(data, MAX_DOCUMENT_SIZE, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RemoteProtocolError(f"{what} is not JSON", reason="malformed") from None


def decode_receipt(data: bytes) -> Receipt:
    document = _parse_json(data, "receipt")
    if not isinstance(document, dict) or document.get("version") != 1:
        raise RemoteProtocolError("not a version 1 receipt", reason="malformed")
    proof = document.get("proof")
    if not isinstance(proof, list) or len(proof) > MAX_PROOF_LENGTH:
        raise RemoteProtocolError("receipt proof", reason="malformed")
    return Receipt(
        message_digest=_unb64(document.get("message_digest"), "message_digest", HASH_SIZE),
        leaf_index=_uint(document.get("leaf_index"), "leaf_index"),
        proof=tuple(_unb64(item, "proof", HASH_SIZE) for item in proof),
        checkpoint=checkpoint_from_json(document.get("checkpoint")),
    )


def decode_checkpoint_document(
    data: bytes,
) -> tuple[Checkpoint, tuple[int, bytes, list[bytes]] | None]:
    """Parse ``roost log checkpoint`` output: a checkpoint, optionally with a consistency
    proof ``(old size, old root, proof)`` from an earlier size."""
    document = _parse_json(data, "checkpoint document")
    checkpoint = checkpoint_from_json(document)
    extra = document.get("consistency")
    if extra is None:
        return checkpoint, None
    if not isinstance(extra, dict):
        raise RemoteProtocolError("consistency", reason="malformed")
    proof = extra.get("proof")
    if not isinstance(proof, list) or len(proof) > MAX_PROOF_LENGTH:
        raise RemoteProtocolError("consistency proof", reason="malformed")
    return checkpoint, (
        _uint(extra.get("from_size"), "from_size"),
        _unb64(extra.get("from_root"), "from_root", HASH_SIZE),
        [_unb64(item, "proof", HASH_SIZE) for item in proof],
    )


def verify_receipt(receipt: Receipt, later: bytes | None = None) -> None:
    """Verify a receipt offline: checkpoint signature, then inclusion. With ``later`` (a
    checkpoint document from ``roost log checkpoint``), also require the same log key and
    that the later checkpoint extends the receipt's (equal roots or a consistency proof)."""
    checkpoint = receipt.checkpoint
    verify_checkpoint(checkpoint)
    verify_inclusion(
        leaf_hash(receipt.message_digest),
        receipt.leaf_index,
        checkpoint.size,
        receipt.proof,
        checkpoint.root,
    )
    if later is None:
        return
    newer, consistency = decode_checkpoint_document(later)
    verify_checkpoint(newer, trusted_key=checkpoint.public_key)
    if newer.size == checkpoint.size:
        verify_consistency(checkpoint.size, newer.size, checkpoint.root, newer.root, [])
        return
    if consistency is None or consistency[0] != checkpoint.size:
        raise VerificationError(
            f"the checkpoint carries no consistency proof from size {checkpoint.size}",
            reason="no-consistency-proof",
        )
    from_size, from_root, proof = consistency
    if from_root != checkpoint.root:
        raise VerificationError("consistency proof starts at another root", reason="bad-proof")
    verify_consistency(from_size, newer.size, from_root, newer.root, proof)


def load_or_create_log_key(path: str | Path) -> Ed25519PrivateKey:
    """The hub's Ed25519 log key (PEM, mode 0600), created on first use."""
    key_path = Path(path)
    if key_path.exists():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise StateError(f"log key {key_path} is unreadable: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise StateError(f"log key {key_path} is not Ed25519")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS leaves (idx INTEGER PRIMARY KEY, digest BLOB NOT NULL,
                                   hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL,
                                  hash BLOB NOT NULL, PRIMARY KEY (level, idx));
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, body BLOB NOT NULL);
"""


class SqliteMerkleLog:
    """Append-only RFC 6962 log. Every complete subtree hash is stored when it completes,
    so roots and proofs cost O(log n) lookups. Appends join the open transaction;
    :meth:`commit` (or :meth:`checkpoint`) makes them durable in batches."""

    FILENAME = "guard-log.sqlite3"

    def __init__(self, path: str | Path) -> None:
        try:
            self._db = sqlite3.connect(Path(path))
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_LOG_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open log {path}: {exc}") from exc
        (count,) = self._db.execute("SELECT COUNT(*) FROM leaves").fetchone()
        self._size = int(count)
        # The compact range: (level, hash) of the perfect subtrees covering [0, size).
        self._frontier: list[tuple[int, bytes]] = []
        start = 0
        for level in range(self._size.bit_length() - 1, -1, -1):
            if self._size >> level & 1:
                self._frontier.append((level, self.subtree(start, 1 << level)))
                start += 1 << level

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> SqliteMerkleLog:
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory / cls.FILENAME)

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        self._db.commit()
        self._db.close()

    def commit(self) -> None:
        self._db.commit()

    def append(self, digest: bytes) -> int:
        """Append one message digest; return its leaf index."""
        index = self._size
        node = leaf_hash(digest)
        self._db.execute("INSERT INTO leaves VALUES (?, ?, ?)", (index, digest, node))
        level, position = 0, index
        frontier = self._frontier
        while frontier and frontier[-1][0] == level:
            _, left = frontier.pop()
            node = node_hash(left, node)
            level, position = level + 1, position >> 1
            self._db.execute("INSERT INTO nodes VALUES (?, ?, ?)", (level, position, node))
        frontier.append((level, node))
        self._size = index + 1
        return index

    def root(self) -> bytes:
        if not self._frontier:
            return EMPTY_ROOT
        result = self._frontier[-1][1]
        for _, left in reversed(self._frontier[:-1]):
            result = node_hash(left, result)
        return result

    def subtree(self, start: int, size: int) -> bytes:
        """MTH(D[start:start+size]) from stored complete subtrees."""
        if size & (size - 1) == 0 and start % size == 0:
            level = size.bit_length() - 1
            if level == 0:
                row = self._db.execute("SELECT hash FROM leaves WHERE idx = ?", (start,))
            else:
                row = self._db.execute(
                    "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, start >> level)
                )
            found = row.fetchone()
            if found is None:
                raise StateError("log is missing a subtree hash", reason="log-corrupt")
            value: bytes = found[0]
            return value
        k = 1 << ((size - 1).bit_length() - 1)
        return node_hash(self.subtree(start, k), self.subtree(start + k, size - k))

    def root_at(self, size: int) -> bytes:
        return self.subtree(0, size) if size else EMPTY_ROOT

    def digest_at(self, index: int) -> bytes:
        row = self._db.execute("SELECT digest FROM leaves WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise StateError(f"no leaf {index}", reason="no-such-leaf")
        value: bytes = row[0]
        return value

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self._size if size is None else size, self.subtree)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return consistency_proof(
            old_size, self._size if new_size is None else new_size, self.subtree
        )

    def checkpoint(self, key: Ed25519PrivateKey, *, timestamp_ms: int) -> Checkpoint:
        """Sign and store a checkpoint at the current size (commits pending appends)."""
        checkpoint = sign_checkpoint(key, self._size, self.root(), timestamp_ms)
        self._db.execute(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?)",
            (checkpoint.size, encode_checkpoint(checkpoint)),
        )
        self._db.commit()
        return checkpoint

    def latest_checkpoint(self) -> Checkpoint | None:
        row = self._db.execute("SELECT body FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        return None if row is None else decode_checkpoint(row[0])

    def receipt(self, index: int, checkpoint: Checkpoint) -> Receipt:
        """Receipt for leaf ``index`` against ``checkpoint`` (which must cover it)."""
        if not 0 <= index < checkpoint.size <= self._size:
            raise StateError("checkpoint does not cover that leaf", reason="not-covered")
        proof = inclusion_proof(index, checkpoint.size, self.subtree)
        return Receipt(self.digest_at(index), index, tuple(proof), checkpoint)


def covering_checkpoint(
    merkle_log: SqliteMerkleLog, key: Ed25519PrivateKey, *, size_at_least: int, timestamp_ms: int
) -> Checkpoint:
    """The latest stored checkpoint if it covers ``size_at_least`` leaves, else a new one
    signed now at the log's current size."""
    latest = merkle_log.latest_checkpoint()
    if latest is None or latest.size < size_at_least:
        latest = merkle_log.checkpoint(key, timestamp_ms=timestamp_ms)
    return latest


def checkpoint_document(
    merkle_log: SqliteMerkleLog, checkpoint: Checkpoint, consistency_from: int | None = None
) -> dict[str, Any]:
    """The JSON form ``roost log checkpoint`` prints, optionally with a consistency proof
    from an earlier size (``decode_checkpoint_document`` reads it back)."""
    document = checkpoint_to_json(checkpoint)
    if consistency_from is not None:
        if consistency_from > checkpoint.size:
            raise StateError(
                f"the log has only {checkpoint.size} leaves", reason="beyond-checkpoint"
            )
        proof = merkle_log.consistency_proof(consistency_from, checkpoint.size)
        document["consistency"] = {
            "from_size": consistency_from,
            "from_root": _b64(merkle_log.root_at(consistency_from)),
            "proof": [_b64(item) for item in proof],
        }
    return document
