"""Deterministic Ed25519 DL keys and CA-information chains for tests."""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from roost.pki.cainfo import CAInfo, CAInfoBody, Flags, decode_cainfo, sign_body
from tests.helpers.pki import EPOCH, TestCA


def dl_key(label: str) -> Ed25519PrivateKey:
    """An Ed25519 key derived from a label, so vectors are reproducible."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def build(
    generation: int,
    ca: TestCA,
    prev: CAInfo | None,
    own_keys: list[Ed25519PrivateKey],
    signers: list[Ed25519PrivateKey],
    *,
    threshold: int = 2,
    flags: Flags = Flags.NONE,
    issued_at: dt.datetime = EPOCH,
    base_url: str = "https://127.0.0.1:9/ca/",
    prev_digest: bytes | None = None,
) -> CAInfo:
    body = CAInfoBody(
        generation=generation,
        issued_at=int(issued_at.timestamp()),
        flags=flags,
        prev_digest=prev_digest
        if prev_digest is not None
        else (prev.digest if prev else bytes(32)),
        ca_cert_der=ca.cert.public_bytes(serialization.Encoding.DER),
        next_url=f"{base_url}{generation + 1}.rcai",
        dl_threshold=threshold,
        dl_keys=tuple(public(k) for k in own_keys),
    )
    return decode_cainfo(sign_body(body, signers))


class Chain:
    """Generations 1..n sharing one 2-of-3 DL key set unless told otherwise."""

    def __init__(self, count: int = 1, base_url: str = "https://127.0.0.1:9/ca/") -> None:
        self.keys = [dl_key(f"dl-{i}") for i in range(3)]
        self.base_url = base_url
        self.cas: list[TestCA] = []
        self.infos: list[CAInfo] = []
        for _ in range(count):
            self.extend()

    def extend(self, flags: Flags = Flags.NONE, issued_at: dt.datetime = EPOCH) -> CAInfo:
        generation = len(self.infos) + 1
        ca = TestCA(generation=generation)
        prev = self.infos[-1] if self.infos else None
        info = build(
            generation,
            ca,
            prev,
            self.keys,
            self.keys[:2],
            flags=flags,
            issued_at=issued_at,
            base_url=self.base_url,
        )
        self.cas.append(ca)
        self.infos.append(info)
        return info


_SHARED: Chain | None = None


def shared_chain() -> Chain:
    """One generation built once per process (hypothesis tests reuse it)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Chain(1)
    return _SHARED
