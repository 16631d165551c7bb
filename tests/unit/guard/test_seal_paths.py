"""Both sealing paths (copy below ``IN_PLACE_FROM``, ``encrypt_into`` from it on) give
the PROTOCOL.md §6 frame byte for byte, for every suite and direction."""

from __future__ import annotations

import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from roost.guard.ratchet import IN_PLACE_FROM, Direction, ReceivingChain, SendingChain
from roost.guard.suites import SUITES, get_suite

SIZES = [0, 1, 100, IN_PLACE_FROM - 1, IN_PLACE_FROM, IN_PLACE_FROM + 1, 64 * 1024]


def frame_by_hand(
    suite_name: str, session_id: bytes, direction: int, chain_key: bytes, j: int, data: bytes
) -> bytes:
    hash_name = get_suite(suite_name).hash_name
    for _ in range(j):
        chain_key = hmac.digest(chain_key, b"\x02", hash_name)
    message_key = hmac.digest(chain_key, b"\x01", hash_name)[:32]
    aad = session_id + struct.pack(">BQB", direction, j, len(suite_name)) + suite_name.encode()
    sealed = AESGCM(message_key).encrypt(struct.pack(">IQ", 0, j), data, aad)
    return struct.pack(">BBQ", 0x10, direction, j) + sealed


@pytest.mark.parametrize("suite_name", list(SUITES))
@pytest.mark.parametrize("direction", list(Direction))
def test_every_size_matches_the_construction_written_out(
    suite_name: str, direction: Direction
) -> None:
    suite = get_suite(suite_name)
    session_id, chain_key = bytes(range(16)), bytes(range(100, 132))
    sender = SendingChain(suite, session_id, direction, chain_key)
    receiver = ReceivingChain(suite, session_id, direction, chain_key)
    for j, size in enumerate(SIZES):
        data = bytes((i * 7 + size) & 0xFF for i in range(size))
        frame = sender.seal(data)
        assert isinstance(frame, bytearray)
        assert len(frame) == 10 + size + 16
        assert frame == frame_by_hand(suite_name, session_id, direction, chain_key, j, data)
        assert receiver.open(bytes(frame))[:2] == (j, data)


def test_frames_do_not_share_a_buffer() -> None:
    suite = get_suite(next(iter(SUITES)))
    sender = SendingChain(suite, b"s" * 16, Direction.CLIENT_TO_SERVER, b"k" * 32)
    data = b"x" * IN_PLACE_FROM
    first = sender.seal(data)
    copy = bytes(first)
    second = sender.seal(data)
    second[20] ^= 1
    assert first == copy
    assert first[10:] != second[10:]
