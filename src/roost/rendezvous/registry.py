"""The broker's registry of enrolled equipment (PROTOCOL.md section 5), in memory and pure.

One entry per identifier: the 32-byte registration key handed out at enrollment, the last
accepted registration counter, and the reflexive address (the datagram SOURCE the broker
saw) with the local candidates, all packed into one ``bytes`` value; the time of the last
sign of presence; the enrolled certificate (DER, held by reference for ``lookup``); and the
id of a held TLS connection.

Entries are slotted objects in an ``OrderedDict`` kept in order of last presence: every
registration moves its entry to the end, so the entries that may have expired are always
at the front and :meth:`Registry.expire` does bounded work per call (no scan). A held
connection keeps an entry live whatever its last registration; when ``expire`` meets one
at the front it moves it to the back and forgets its stale addresses. The entry carries no
copy of the identifier (the dictionary's key is the only one); with it, an entry costs
about 300 bytes (``tests/unit/rendezvous/test_registry.py`` measures it).

TTL is three registration intervals (section 5): an entry whose last registration or
enrollment is older than that is not live, and is forgotten by the next ``expire`` that
reaches it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from roost.errors import RefusedError
from roost.reasons import Reason
from roost.rendezvous.messages import (
    REGISTRATION_KEY_SIZE,
    Candidate,
    decode_candidates,
    encode_candidates,
)

__all__ = ["Registry", "RegistryEntry"]


_COUNTER_END = REGISTRATION_KEY_SIZE + 8


class _Entry:
    """One identifier's state. ``data`` packs ``key (32) | u64 last counter (0: none yet)
    | encode_candidates((reflexive, *local))``, the last part absent before a registration
    under the current key: one bytes object instead of three keeps the entry small."""

    __slots__ = ("certificate", "data", "held", "seen")

    def __init__(self, data: bytes, certificate: bytes | None, seen: float) -> None:
        self.data = data
        self.certificate = certificate
        self.seen = seen
        self.held: int | None = None

    @property
    def key(self) -> bytes:
        return self.data[:REGISTRATION_KEY_SIZE]

    @property
    def counter(self) -> int | None:
        value = int.from_bytes(self.data[REGISTRATION_KEY_SIZE:_COUNTER_END], "big")
        return value or None

    @property
    def has_addresses(self) -> bool:
        return len(self.data) > _COUNTER_END

    def addresses(self) -> tuple[Candidate, ...]:
        return decode_candidates(self.data[_COUNTER_END:]) if self.has_addresses else ()


def _pack(key: bytes, counter: int | None, addresses: bytes = b"") -> bytes:
    return key + (counter or 0).to_bytes(8, "big") + addresses


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """A read-only view of one entry, decoded (what the broker core works with)."""

    identifier: str
    key: bytes
    counter: int | None
    reflexive: Candidate | None
    local: tuple[Candidate, ...]
    last_seen: float
    certificate: bytes | None
    held: int | None


class Registry:
    """Identifier → entry, with a TTL of ``ttl`` seconds and at most ``max_entries``."""

    __slots__ = ("_entries", "_max_entries", "ttl")

    def __init__(self, ttl: float, max_entries: int) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("a registry needs ttl > 0 and room for one entry")
        self.ttl = ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, identifier: object) -> bool:
        return identifier in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    @property
    def max_entries(self) -> int:
        return self._max_entries

    # ------------------------------------------------------------------------ writing

    def enroll(self, identifier: str, key: bytes, certificate: bytes | None, now: float) -> None:
        """Create or replace the entry's key and certificate (section 5, enrollment).

        A re-enrollment keeps the last counter (old datagrams stay replays) and the held
        connection, and forgets the addresses: they are trusted again only after a
        registration under the new key. Raises RefusedError("table-full") when full.
        """
        if len(key) != REGISTRATION_KEY_SIZE:
            raise ValueError("a registration key is 32 bytes")
        entry = self._entries.get(identifier)
        if entry is None:
            if len(self._entries) >= self._max_entries:
                self.expire(now, budget=16)
            if len(self._entries) >= self._max_entries:
                raise RefusedError("the registry is full", reason=Reason.TABLE_FULL)
            self._entries[identifier] = _Entry(_pack(key, None), certificate, now)
            return
        entry.data = _pack(key, entry.counter)
        entry.certificate = certificate
        self._touch(identifier, entry, now)

    def register(
        self,
        identifier: str,
        counter: int,
        reflexive: Candidate,
        local: tuple[Candidate, ...],
        now: float,
    ) -> bool:
        """Record a verified registration (the caller checked tag and counter); True when
        its addresses differ from the entry's (the shared registry writes then)."""
        # Sixteen local candidates plus the reflexive one would exceed what encode takes.
        addresses = encode_candidates((reflexive, *local[:15]))
        return self.register_packed(identifier, counter, addresses, now)

    def adopt(
        self, identifier: str, key: bytes, counter: int, certificate: bytes | None, now: float
    ) -> None:
        """Take over an entry another broker process wrote to the shared registry
        (docs/broker-scale.md): its key and certificate, and its counter as the replay
        floor; no addresses until the equipment registers here."""
        self.enroll(identifier, key, certificate, now)
        entry = self._entries[identifier]
        known = entry.counter or 0
        entry.data = _pack(key, max(known, counter) or None)

    def register_packed(self, identifier: str, counter: int, addresses: bytes, now: float) -> bool:
        """``register`` for the broker's hot path: ``addresses`` is already the wire form
        ``encode_candidates((reflexive, *local))`` (at most 16), the counter checked; True
        when the addresses differ from the entry's (the shared registry writes then)."""
        entry = self._entries[identifier]
        if not 1 <= counter < 2**64:
            raise ValueError("a registration counter is a positive u64")
        data = entry.data
        changed = data[_COUNTER_END:] != addresses
        entry.data = data[:REGISTRATION_KEY_SIZE] + counter.to_bytes(8, "big") + addresses
        self._touch(identifier, entry, now)
        return changed

    def hold(self, identifier: str, channel: int) -> None:
        """A TLS connection of this identifier stays open (section 5, the fallback)."""
        self._entries[identifier].held = channel

    def release(self, identifier: str, channel: int) -> None:
        """The held connection ``channel`` closed (a newer one is left alone)."""
        entry = self._entries.get(identifier)
        if entry is not None and entry.held == channel:
            entry.held = None

    def forget(self, identifier: str) -> None:
        self._entries.pop(identifier, None)

    def _touch(self, identifier: str, entry: _Entry, now: float) -> None:
        entry.seen = now
        self._entries.move_to_end(identifier)

    # ------------------------------------------------------------------------ reading

    def key_of(self, identifier: str) -> bytes | None:
        """The registration key, or None when the identifier is not enrolled."""
        entry = self._entries.get(identifier)
        return None if entry is None else entry.key

    def key_and_counter(self, identifier: str) -> tuple[bytes, int] | None:
        """The registration key and the last accepted counter (0: none yet), or None when
        the identifier is not enrolled: one lookup for the broker's hot path."""
        entry = self._entries.get(identifier)
        if entry is None:
            return None
        data = entry.data
        return data[:REGISTRATION_KEY_SIZE], int.from_bytes(
            data[REGISTRATION_KEY_SIZE:_COUNTER_END], "big"
        )

    def counter_of(self, identifier: str) -> int | None:
        entry = self._entries.get(identifier)
        return None if entry is None else entry.counter

    def live(self, identifier: str, now: float) -> bool:
        """Enrolled and present: a registration or enrollment within TTL, or held."""
        entry = self._entries.get(identifier)
        return entry is not None and (entry.held is not None or now - entry.seen < self.ttl)

    def udp_fresh(self, identifier: str, now: float) -> bool:
        """A registration under the current key within TTL: RWAK can reach it."""
        entry = self._entries.get(identifier)
        return entry is not None and entry.has_addresses and now - entry.seen < self.ttl

    def get(self, identifier: str) -> RegistryEntry | None:
        """The decoded entry, or None."""
        entry = self._entries.get(identifier)
        if entry is None:
            return None
        addresses = entry.addresses()
        return RegistryEntry(
            identifier=identifier,
            key=entry.key,
            counter=entry.counter,
            reflexive=addresses[0] if addresses else None,
            local=addresses[1:],
            last_seen=entry.seen,
            certificate=entry.certificate,
            held=entry.held,
        )

    # ------------------------------------------------------------------------ expiry

    def next_expiry(self) -> float | None:
        """When the front entry's TTL ends (the registry's timer), or None when empty."""
        for entry in self._entries.values():
            return entry.seen + self.ttl
        return None

    def expire(self, now: float, budget: int = 1024) -> int:
        """Forget up to ``budget`` entries past TTL from the front; returns how many.

        At most ``budget`` entries are visited, so one call never stalls the broker; the
        caller calls again when ``next_expiry`` is still due.
        """
        removed = 0
        for _ in range(budget):
            if not self._entries:
                break
            identifier, entry = next(iter(self._entries.items()))
            if now - entry.seen < self.ttl:
                break
            if entry.held is not None:
                # Live through its connection: back of the queue; its addresses are past
                # TTL, so RWAK no longer goes there (the wake-up uses the connection).
                entry.data = entry.data[:_COUNTER_END]
                entry.seen = now
                self._entries.move_to_end(identifier)
                continue
            del self._entries[identifier]
            removed += 1
        return removed
