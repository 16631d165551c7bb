"""Allow-listed suites, key derivation and MAC input encoding (PROTOCOL.md §6), pure.

Everything bound by a MAC or a KDF goes through :func:`mac_input`, which length-prefixes
every field and puts the suite name first, so no two distinct inputs share an encoding
(research note, weakness 3) and a suite cannot be swapped under a valid tag (weakness 4).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.wire import Writer

__all__ = [
    "DEFAULT_PAIR_KDF",
    "DEFAULT_PASSWORD_KDF",
    "SUITES",
    "KdfParams",
    "RandomBytes",
    "Suite",
    "get_suite",
    "hkdf",
    "hkdf_expand",
    "mac",
    "mac_input",
    "ratchet_step",
    "scrypt",
]

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class Suite:
    """One allow-listed combination of hash (MAC, HKDF, ratchet) and AEAD."""

    name: str
    hash_name: str  # hashlib name
    digest_size: int

    def hash(self, data: bytes) -> bytes:
        return hashlib.new(self.hash_name, data).digest()

    def cryptography_hash(self) -> hashes.HashAlgorithm:
        return hashes.SHA256() if self.hash_name == "sha256" else hashes.SHA512()


# The allow-list: SHA-256 and SHA-512 only, AES-256-GCM only (research note, weakness 4).
# SHA-1 and MD5 are not representable at all, so no configuration can re-enable them.
SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite("RG1-HMAC-SHA256-AES256GCM", "sha256", 32),
        Suite("RG1-HMAC-SHA512-AES256GCM", "sha512", 64),
    )
}


def get_suite(name: str) -> Suite:
    """Return the allow-listed suite called ``name`` or raise ``VerificationError``."""
    suite = SUITES.get(name)
    if suite is None:
        raise VerificationError(f"suite {name!r} is not allow-listed", reason="suite-not-allowed")
    return suite


@dataclass(frozen=True, slots=True)
class KdfParams:
    """scrypt cost: N = 2**log2_n, block size r, parallelism p (memory = 128 * r * N bytes)."""

    log2_n: int
    r: int = 8
    p: int = 1

    # Bounds a client accepts from a server, so a hostile server cannot make it burn
    # gigabytes of memory (PROTOCOL.md preamble: every input has an explicit bound).
    MAX_LOG2_N = 20
    MAX_R = 16
    MAX_P = 4

    def check(self) -> None:
        if not (1 <= self.log2_n <= self.MAX_LOG2_N and 1 <= self.r <= self.MAX_R):
            raise RemoteProtocolError("KDF cost out of bounds", reason="kdf-bounds")
        if not 1 <= self.p <= self.MAX_P:
            raise RemoteProtocolError("KDF cost out of bounds", reason="kdf-bounds")


# Password: 16 MiB, about 30 ms here. Response codes: 4 MiB, about 8 ms each; a login
# derives 3 to 5 of them on the client, so the default login costs tens of milliseconds
# (docs/guard.md, "KDF parameters").
DEFAULT_PASSWORD_KDF = KdfParams(log2_n=14)
DEFAULT_PAIR_KDF = KdfParams(log2_n=12)


def scrypt(secret: bytes, salt: bytes, params: KdfParams, length: int = 32) -> bytes:
    """Memory-hard derivation for low-entropy secrets (passwords, response codes)."""
    kdf = Scrypt(salt=salt, length=length, n=1 << params.log2_n, r=params.r, p=params.p)
    return kdf.derive(secret)


def mac_input(suite_name: str, label: str, *fields: bytes) -> bytes:
    """Unambiguous MAC/KDF input: suite name, domain label, then length-prefixed fields."""
    suite_bytes = suite_name.encode("ascii")
    label_bytes = label.encode("ascii")
    writer = Writer().u8(len(suite_bytes)).raw(suite_bytes).u8(len(label_bytes)).raw(label_bytes)
    for field in fields:
        writer.u32(len(field)).raw(field)
    return writer.bytes()


def mac(suite: Suite, key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, suite.hash_name)


def hkdf(suite: Suite, *, salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 extract-then-expand (checked against RFC 5869 App. A in the tests)."""
    return HKDF(
        algorithm=suite.cryptography_hash(), length=length, salt=salt or None, info=info
    ).derive(ikm)


def hkdf_expand(suite: Suite, *, prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=suite.cryptography_hash(), length=length, info=info).derive(prk)


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
# Pad bytes standing in for the zero bytes that extend a short key to the block (RFC 2104).
_IPAD_FILL = b"\x36" * 128
_OPAD_FILL = b"\x5c" * 128


_HASHES = {"sha256": (hashlib.sha256, 64), "sha512": (hashlib.sha512, 128)}


def ratchet_step(hash_name: str, chain_key: bytes) -> tuple[bytes, bytes]:
    """Return ``(HMAC(ck, 0x01), HMAC(ck, 0x02))``: the message key and the next chain key.

    PROTOCOL.md §6 fixes the construction. Both HMACs share one key schedule (RFC 2104):
    the inner and outer pad blocks are hashed once and copied, which costs about half of
    two independent ``hmac.digest`` calls; this matters at 64 KiB, where the AEAD itself
    takes only a few microseconds (docs/guard.md, "Sealing cost").
    """
    constructor, block = _HASHES[hash_name]
    fill = block - len(chain_key)
    if fill < 0:
        raise LocalProtocolError("chain key longer than the hash block")
    inner = constructor(chain_key.translate(_IPAD) + _IPAD_FILL[:fill])
    outer = constructor(chain_key.translate(_OPAD) + _OPAD_FILL[:fill])
    inner_one = inner.copy()
    inner_one.update(b"\x01")
    inner.update(b"\x02")
    outer_one = outer.copy()
    outer_one.update(inner_one.digest())
    outer.update(inner.digest())
    return outer_one.digest(), outer.digest()
