"""Per-message keys and AEAD framing (PROTOCOL.md §6), pure.

Each direction runs a symmetric ratchet: ``mk_j = HMAC(ck_j, 0x01)``, ``ck_{j+1} =
HMAC(ck_j, 0x02)``; the chain key is replaced as soon as the next one exists, so a later
compromise of the state does not expose earlier messages (research note, weakness 7).
Each message is sealed with AES-256-GCM under its own ``mk_j``; nonce = j; associated
data = session id, direction, j, suite. Frame on the wire::

    u8 0x10 | u8 direction | u64 j | ciphertext with 16-byte tag

The receiver accepts out-of-order frames inside a sliding window (like RFC 6479), keeps
the message keys of not-yet-seen positions in that window only, and rejects replays,
positions behind the window and jumps further ahead than the window.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.guard.suites import Suite, hkdf_expand, mac_input, ratchet_step
from roost.wire import check_size

__all__ = [
    "FRAME_HEADER_SIZE",
    "IN_PLACE_FROM",
    "Direction",
    "Frame",
    "ReceivingChain",
    "SendingChain",
    "chain_keys",
    "decode_frame",
    "encode_frame",
    "frame_aad",
    "frame_nonce",
]

FRAME_TYPE = 0x10
FRAME_HEADER_SIZE = 10
TAG_SIZE = 16
_FRAME_HEADER = struct.Struct(">BBQ")
# Plaintext size from which ``SendingChain`` encrypts into the frame buffer instead of
# copying the ciphertext behind the header; the two cost the same near 24 KiB here.
IN_PLACE_FROM = 24 * 1024
# Noise reserves the last nonce value; we stop far earlier, at the message budget.
MAX_POSITION = (1 << 64) - 2


class Direction(enum.IntEnum):
    CLIENT_TO_SERVER = 1
    SERVER_TO_CLIENT = 2


@dataclass(frozen=True, slots=True)
class Frame:
    direction: int
    position: int
    ciphertext: bytes


def encode_frame(frame: Frame) -> bytes:
    if len(frame.ciphertext) < TAG_SIZE:
        raise LocalProtocolError("ciphertext shorter than the tag")
    return struct.pack(">BBQ", FRAME_TYPE, frame.direction, frame.position) + frame.ciphertext


def decode_frame(data: bytes, max_size: int) -> Frame:
    # Hot path (every received message): one bounds check, one unpack, one slice.
    check_size(data, max_size, "frame")
    if len(data) < FRAME_HEADER_SIZE:
        raise RemoteProtocolError("frame is truncated", reason="truncated")
    frame_type, direction, position = _FRAME_HEADER.unpack_from(data)
    if frame_type != FRAME_TYPE:
        raise RemoteProtocolError("not a data frame", reason="unexpected-message")
    if direction not in (Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT):
        raise RemoteProtocolError("unknown direction", reason="malformed")
    if len(data) - FRAME_HEADER_SIZE < TAG_SIZE:
        raise RemoteProtocolError("frame is truncated", reason="truncated")
    return Frame(direction, position, bytes(data[FRAME_HEADER_SIZE:]))


def frame_aad(session_id: bytes, direction: int, position: int, suite_name: str) -> bytes:
    suite_bytes = suite_name.encode("ascii")
    return session_id + struct.pack(">BQB", direction, position, len(suite_bytes)) + suite_bytes


def frame_nonce(position: int) -> bytes:
    # 96-bit nonce = j; unique per key anyway, since every key seals exactly one message.
    return struct.pack(">IQ", 0, position)


def chain_keys(suite: Suite, root_key: bytes) -> tuple[bytes, bytes]:
    """Initial chain keys ``(client→server, server→client)`` from the session root."""
    up = hkdf_expand(suite, prk=root_key, info=mac_input(suite.name, "chain", b"c2s"), length=32)
    down = hkdf_expand(suite, prk=root_key, info=mac_input(suite.name, "chain", b"s2c"), length=32)
    return up, down


class SendingChain:
    """One direction's sender: every call to :meth:`seal` uses and forgets one key."""

    __slots__ = (
        "_aad_prefix",
        "_chain_key",
        "_direction",
        "_hash",
        "_header_prefix",
        "_position",
        "_suite_tail",
    )

    def __init__(self, suite: Suite, session_id: bytes, direction: Direction, chain_key: bytes):
        self._hash = suite.hash_name
        self._direction = int(direction)
        self._chain_key: bytes | None = chain_key
        self._position = 0
        suite_bytes = suite.name.encode("ascii")
        self._aad_prefix = session_id + bytes([self._direction])
        self._header_prefix = bytes([FRAME_TYPE, self._direction])
        self._suite_tail = bytes([len(suite_bytes)]) + suite_bytes

    @property
    def position(self) -> int:
        """How many messages this chain has sealed."""
        return self._position

    def next_key(self) -> tuple[int, bytes]:
        """Advance the chain; return ``(j, mk_j)``. The old chain key is dropped."""
        if self._chain_key is None:
            raise LocalProtocolError("sending chain was erased", reason="session-closed")
        if self._position >= MAX_POSITION:
            raise LocalProtocolError("message positions exhausted", reason="rekey-required")
        position = self._position
        message_key, self._chain_key = ratchet_step(self._hash, self._chain_key)
        self._position = position + 1
        return position, message_key[:32]

    def seal_with(self, position: int, message_key: bytes, plaintext: bytes) -> bytearray:
        """Frame bytes for ``plaintext`` sealed under ``mk_j`` (from :meth:`next_key`).

        The caller owns the returned buffer. From ``IN_PLACE_FROM`` bytes on, the frame is
        allocated once and AES-GCM writes ciphertext and tag straight behind the header
        (``encrypt_into``), which saves copying the ciphertext; below it, setting that up
        costs more than the copy (docs/guard.md, "Sealing cost").
        """
        position_bytes = position.to_bytes(8, "big")
        nonce = b"\0\0\0\0" + position_bytes
        aad = self._aad_prefix + position_bytes + self._suite_tail
        aead = AESGCM(message_key)
        if len(plaintext) < IN_PLACE_FROM:
            frame = bytearray(self._header_prefix + position_bytes)
            frame += aead.encrypt(nonce, plaintext, aad)
            return frame
        frame = bytearray(FRAME_HEADER_SIZE + len(plaintext) + TAG_SIZE)
        _FRAME_HEADER.pack_into(frame, 0, FRAME_TYPE, self._direction, position)
        aead.encrypt_into(nonce, plaintext, aad, memoryview(frame)[FRAME_HEADER_SIZE:])
        return frame

    def seal(self, plaintext: bytes) -> bytearray:
        position, message_key = self.next_key()
        return self.seal_with(position, message_key, plaintext)

    def erase(self) -> None:
        # CPython cannot overwrite immutable bytes; dropping the only reference is the
        # most it can do (docs/guard.md, "What is left out").
        self._chain_key = None


class ReceivingChain:
    """One direction's receiver with a sliding replay window of ``window`` positions."""

    __slots__ = (
        "_aad_prefix",
        "_chain_key",
        "_direction",
        "_hash",
        "_max_frame",
        "_next",
        "_skipped",
        "_suite_tail",
        "_window",
    )

    def __init__(
        self,
        suite: Suite,
        session_id: bytes,
        direction: Direction,
        chain_key: bytes,
        *,
        window: int = 1024,
        max_frame: int = (1 << 20) + 64,
    ) -> None:
        if window < 1:
            raise LocalProtocolError("window must be at least 1")
        self._hash = suite.hash_name
        self._direction = int(direction)
        self._chain_key: bytes | None = chain_key
        self._next = 0
        self._window = window
        self._max_frame = max_frame
        # Keys for positions below ``_next`` not yet received, oldest first.
        self._skipped: dict[int, bytes] = {}
        suite_bytes = suite.name.encode("ascii")
        self._aad_prefix = session_id + bytes([self._direction])
        self._suite_tail = bytes([len(suite_bytes)]) + suite_bytes

    @property
    def highest(self) -> int:
        """One past the highest position accepted so far."""
        return self._next

    def open(self, data: bytes) -> tuple[int, bytes, bytes]:
        """Return ``(j, plaintext, mk_j)``; raise on replay, window, tag or framing errors.

        State changes only after the tag verified, so a forged frame cannot push the
        window forward or burn a legitimate key.
        """
        if self._chain_key is None:
            raise VerificationError("receiving chain was erased", reason="session-closed")
        frame = decode_frame(data, self._max_frame)
        if frame.direction != self._direction:
            raise VerificationError("frame for the other direction", reason="wrong-direction")
        position = frame.position
        aad = self._aad_prefix + struct.pack(">Q", position) + self._suite_tail
        if position >= self._next:
            if position - self._next >= self._window or position > MAX_POSITION:
                raise VerificationError("frame too far ahead", reason="out-of-window")
            chain_key = self._chain_key
            passed: list[tuple[int, bytes]] = []
            for skipped_position in range(self._next, position):
                message_key, chain_key = ratchet_step(self._hash, chain_key)
                passed.append((skipped_position, message_key[:32]))
            message_key, chain_key = ratchet_step(self._hash, chain_key)
            message_key = message_key[:32]
            plaintext = self._decrypt(message_key, position, frame.ciphertext, aad)
            self._chain_key = chain_key
            self._next = position + 1
            self._skipped.update(passed)
            self._prune()
            return position, plaintext, message_key
        message_key_or_none = self._skipped.get(position)
        if message_key_or_none is None:
            if position < self._next - self._window:
                raise VerificationError("frame behind the window", reason="out-of-window")
            raise VerificationError("frame already received", reason="replay")
        plaintext = self._decrypt(message_key_or_none, position, frame.ciphertext, aad)
        del self._skipped[position]
        return position, plaintext, message_key_or_none

    def _decrypt(self, key: bytes, position: int, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(key).decrypt(frame_nonce(position), ciphertext, aad)
        except InvalidTag:
            raise VerificationError("frame failed authentication", reason="bad-tag") from None

    def _prune(self) -> None:
        floor = self._next - self._window
        skipped = self._skipped
        while skipped:
            oldest = next(iter(skipped))
            if oldest >= floor:
                break
            del skipped[oldest]

    def erase(self) -> None:
        self._chain_key = None
        self._skipped.clear()
