"""RFC 5869 HKDF vectors and golden vectors for our own constructions.

Golden vectors are built from fixed keys and a fixed random stream; set
``ROOST_REGEN_VECTORS=1`` to rewrite ``tests/vectors/guard/golden.json`` after a
deliberate protocol change (and bump the protocol version).
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from roost.guard.card import generate_card
from roost.guard.challenge import AuthConfig, LoginClient, LoginServer
from roost.guard.log import encode_checkpoint, encode_receipt, message_digest, sign_checkpoint
from roost.guard.merkle import inclusion_proof, leaf_hash, root_of
from roost.guard.ratchet import chain_keys
from roost.guard.session import GuardSession, Role, SessionLimits
from roost.guard.suites import SUITES, get_suite, hkdf, mac_input
from roost.guard.userstore import MemoryUserStore, PasswordGrant, make_user

from .helpers import FAST_KDF, FixedRandom

VECTORS = Path(__file__).parents[2] / "vectors" / "guard"
GOLDEN = VECTORS / "golden.json"


@pytest.mark.parametrize(
    "case",
    json.loads((VECTORS / "hkdf_rfc5869.json").read_text())["cases"],
    ids=lambda c: c["name"],
)
def test_hkdf_matches_rfc5869(case: dict[str, Any]) -> None:
    suite = get_suite("RG1-HMAC-SHA256-AES256GCM")
    salt, ikm = bytes.fromhex(case["salt"]), bytes.fromhex(case["ikm"])
    okm = hkdf(suite, salt=salt, ikm=ikm, info=bytes.fromhex(case["info"]), length=case["length"])
    assert okm.hex() == case["okm"]
    # HKDF-Extract is HMAC(salt, IKM), with an all-zero salt when none is given.
    assert hmac.digest(salt or bytes(32), ikm, "sha256").hex() == case["prk"]


def build_golden(suite_name: str) -> dict[str, str]:
    """Every message and key of one scripted login and session, as hex."""
    random = FixedRandom(b"roost golden " + suite_name.encode())
    card = generate_card(5, random_bytes=random)
    store = MemoryUserStore()
    store.add(
        make_user(
            "alice", "pw", card, password_kdf=FAST_KDF, pair_kdf=FAST_KDF, random_bytes=random
        )
    )
    config = AuthConfig(suites=(suite_name,), min_pairs=3, max_pairs=3)
    server = LoginServer(store, config=config, random_bytes=random)
    client = LoginClient("alice", "pw", config=config, random_bytes=random, channel_binding=b"cb")
    handshake = server.handshake(channel_binding=b"cb")
    hello = client.hello()
    challenge = handshake.receive_hello(hello, now=0, wall_ms=1_700_000_000_000)
    labels = client.receive_challenge(challenge)
    proof = client.answer([card.code_for(label) for label in labels])
    accept, server_login = handshake.receive_proof(proof, now=0, wall_ms=1_700_000_000_000)
    client_login = client.receive_result(accept)
    assert client_login == server_login
    up, down = chain_keys(client_login.suite, client_login.root_key)
    limits = SessionLimits(reorder_fields=True)
    sender = GuardSession(client_login, Role.CLIENT, now=0, limits=limits)
    frame0 = sender.seal(b"hello hub", now=0)
    frame1 = sender.seal_fields([b"a=1", b"b=2", b"c=3", b"d=4"], now=0)
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    digests = [
        message_digest(client_login.session_id, 1, i, frame[10:])
        for i, frame in enumerate((frame0, frame1))
    ]
    leaves = [leaf_hash(d) for d in digests]
    checkpoint = sign_checkpoint(key, 2, root_of(leaves), 1_700_000_000_000)
    from roost.guard.log import Receipt

    proof_path = inclusion_proof(1, 2, lambda s, n: root_of(leaves[s : s + n]))
    receipt = Receipt(digests[1], 1, tuple(proof_path), checkpoint)
    # The server-first login (docs/guard.md): a Challenge under a password grant before the
    # Hello, drawn from the same stream after everything above.
    record = store.load("alice")
    assert record is not None
    grant = PasswordGrant.issue(
        "alice", record.password, "pw", now=0, ttl_s=20, random_bytes=random
    )
    first = server.handshake(channel_binding=b"cb", password_grant=grant)
    first_client = LoginClient(
        "alice", "pw", config=config, random_bytes=random, channel_binding=b"cb"
    )
    first_challenge = first.open_challenge(now=0, wall_ms=1_700_000_000_000)
    first_labels = first_client.receive_challenge_first(first_challenge)
    first_hello = first_client.hello()
    assert first.receive_hello(first_hello, now=0, wall_ms=1_700_000_000_000) == b""
    first_proof = first_client.answer([card.code_for(label) for label in first_labels])
    first_accept, first_server = first.receive_proof(first_proof, now=0, wall_ms=1_700_000_000_000)
    first_login = first_client.receive_result(first_accept)
    assert first_login == first_server and first.used_grant
    return {
        "mac_input": mac_input(suite_name, "label", b"a", b"").hex(),
        "hello": hello.hex(),
        "challenge": challenge.hex(),
        "proof": proof.hex(),
        "accept": accept.hex(),
        "session_id": client_login.session_id.hex(),
        "root_key": client_login.root_key.hex(),
        "chain_c2s": up.hex(),
        "chain_s2c": down.hex(),
        "frame0": frame0.hex(),
        "frame1_reordered": frame1.hex(),
        "checkpoint": encode_checkpoint(checkpoint).hex(),
        "receipt": encode_receipt(receipt).hex(),
        "server_first_challenge": first_challenge.hex(),
        "server_first_hello": first_hello.hex(),
        "server_first_proof": first_proof.hex(),
        "server_first_accept": first_accept.hex(),
        "server_first_session_id": first_login.session_id.hex(),
        "server_first_root_key": first_login.root_key.hex(),
    }


def test_golden_vectors() -> None:
    built = {name: build_golden(name) for name in SUITES}
    if os.environ.get("ROOST_REGEN_VECTORS") == "1":
        document = {
            "source": "generated by tests/unit/guard/test_golden.py from fixed keys and a "
            "SHA-256 counter stream; scrypt log2_n=4 r=1 p=1",
            "suites": built,
        }
        GOLDEN.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    stored = json.loads(GOLDEN.read_text())["suites"]
    assert built == stored


def test_golden_frame_opens_with_the_protocol_construction_written_out() -> None:
    """PROTOCOL.md §6 by hand: mk_0 = HMAC(ck_0, 0x01), nonce = j, AAD = sid|dir|j|suite."""
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    for suite_name, vector in json.loads(GOLDEN.read_text())["suites"].items():
        suite = get_suite(suite_name)
        frame = bytes.fromhex(vector["frame0"])
        assert frame[:10] == b"\x10\x01" + bytes(8)
        mk0 = hmac.digest(bytes.fromhex(vector["chain_c2s"]), b"\x01", suite.hash_name)[:32]
        aad = (
            bytes.fromhex(vector["session_id"])
            + struct.pack(">BQB", 1, 0, len(suite_name))
            + suite_name.encode()
        )
        assert AESGCM(mk0).decrypt(bytes(12), frame[10:], aad) == b"hello hub"
