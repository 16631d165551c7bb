"""The announce core's table of verified hubs (PROTOCOL.md section 3), pure.

One entry per hub identifier that passed the whole receive order: what it last announced,
whether it is live, and the high-water mark of its sequence numbers. A hub that goes
silent stays as a departed entry until any datagram it sent has left the freshness
window, so its old announcements cannot be replayed to bring it back (section 3,
"Replay"). The table is bounded: a new hub is admitted only while there is room, and
room is made only by evicting a departed entry, never a live one.
"""

from __future__ import annotations

from collections.abc import Iterator

from roost.errors import VerificationError
from roost.hcsp.documents import Subscribe
from roost.hcsp.election import rank_of
from roost.hcsp.events import HubDown, HubUp, HubUpdated, LiveHub

__all__ = ["HubState", "HubTable", "serial_greater"]

_SERIAL_HALF = 1 << 63
_SERIAL_MOD = 1 << 64


def serial_greater(a: int, b: int) -> bool:
    """RFC 1982 serial-number order on u64: True when ``a`` comes after ``b``.

    Sequence numbers are Unix milliseconds (section 3), so wrap-around is centuries away;
    serial order keeps the comparison well defined anyway, as keepalived's auth_hmac does.
    """
    difference = (a - b) % _SERIAL_MOD
    return 0 < difference < _SERIAL_HALF


class HubState:
    """Mutable table entry; ``live`` is False while only the replay mark is retained."""

    __slots__ = (
        "connected",
        "endpoint",
        "features",
        "first_heard",
        "highest_seq",
        "identifier",
        "last_seen",
        "live",
        "max_clients",
        "rank",
    )

    def __init__(self, document: Subscribe, now: float) -> None:
        self.identifier = document.sender.identifier
        self.first_heard = now
        self.live = True
        self._take(document, now)

    def update(self, document: Subscribe, now: float) -> bool:
        """Advance to a newer verified announcement; True when anything visible changed."""
        before = (self.endpoint, self.features, self.connected, self.max_clients)
        self._take(document, now)
        return before != (self.endpoint, self.features, self.connected, self.max_clients)

    def _take(self, document: Subscribe, now: float) -> None:
        """What a verified announcement sets, the first one and every newer one alike."""
        self.highest_seq = document.seq
        self.last_seen = now
        self.endpoint = document.sender.endpoint
        self.features = document.features
        self.connected = document.connected
        self.max_clients = document.max_clients
        self.rank = rank_of(document.features, document.max_clients, self.identifier)

    def snapshot(self) -> LiveHub:
        """The immutable view events and the election work on."""
        return LiveHub(
            identifier=self.identifier,
            endpoint=self.endpoint,
            features=self.features,
            connected=self.connected,
            max_clients=self.max_clients,
            rank=self.rank,
            first_heard=self.first_heard,
            last_seen=self.last_seen,
        )


class HubTable:
    """Verified hubs by identifier, live and departed, at most ``max_hubs`` entries."""

    __slots__ = ("_departed_retention", "_hubs", "_max_hubs")

    def __init__(self, max_hubs: int, departed_retention: float) -> None:
        if max_hubs < 1 or departed_retention < 0:
            raise ValueError("the hub table needs room for one hub and a retention >= 0")
        self._max_hubs = max_hubs
        self._departed_retention = departed_retention
        self._hubs: dict[str, HubState] = {}

    def __len__(self) -> int:
        return len(self._hubs)

    def get(self, identifier: str) -> HubState | None:
        """The entry of ``identifier``, live or departed, or None."""
        return self._hubs.get(identifier)

    def live(self) -> Iterator[HubState]:
        """Entries of hubs currently considered live, in first-admission order."""
        return (state for state in self._hubs.values() if state.live)

    def check_sequence(self, identifier: str, seq: int) -> HubState | None:
        """Receive order step 6: ``seq`` must pass the hub's high-water mark (serial order).

        Returns the hub's entry (None for a hub never seen or already forgotten); raises
        VerificationError ``replay`` or ``seq-not-increasing``. Nothing is changed.
        """
        state = self._hubs.get(identifier)
        if state is not None and not serial_greater(seq, state.highest_seq):
            reason = "replay" if seq == state.highest_seq else "seq-not-increasing"
            raise VerificationError(f"{identifier} sequence does not increase", reason=reason)
        return state

    def check_room(self, state: HubState | None) -> None:
        """Refuse a new hub (``state`` None) when every slot holds a live hub.

        Runs before the public-key work, so a flood of new identifiers cannot buy
        signature checks once the table is full of live hubs.
        """
        if state is None and not self._has_room():
            raise VerificationError("hub table is full of live hubs", reason="table-full")

    def record(
        self, state: HubState | None, document: Subscribe, now: float
    ) -> HubUp | HubUpdated | None:
        """Receive order step 9: advance the entry of a fully verified announcement.

        ``state`` is what ``check_sequence`` returned for it. Returns the event the change
        makes visible, or None when nothing a listener sees has changed.
        """
        if state is None:
            self._evict_departed_if_full()
            state = HubState(document, now)
            self._hubs[state.identifier] = state
            return HubUp(state.snapshot())
        if not state.live:
            # A hub that comes back is a newcomer again: its hold-down restarts, so a hub
            # in a restart loop cannot keep taking the devices (handover §3 item 5).
            state.update(document, now)
            state.live = True
            state.first_heard = now
            return HubUp(state.snapshot())
        if state.update(document, now):
            return HubUpdated(state.snapshot())
        return None

    def expire(self, now: float, timeout: float) -> list[HubDown]:
        """Mark hubs silent for ``timeout`` as down and forget replay marks past retention."""
        events: list[HubDown] = []
        for identifier, state in list(self._hubs.items()):
            # Compared exactly as the core computes the deadline, so a timer that fires
            # on time always expires the hub (no busy loop on float rounding).
            if state.live and now >= state.last_seen + timeout:
                state.live = False
                events.append(HubDown(state.snapshot()))
            elif not state.live and now - state.last_seen > self._departed_retention:
                del self._hubs[identifier]
        return events

    def _has_room(self) -> bool:
        return len(self._hubs) < self._max_hubs or any(
            not state.live for state in self._hubs.values()
        )

    def _evict_departed_if_full(self) -> None:
        # Runs only after a new hub verified, so unverified datagrams can never push out
        # a departed hub's replay mark (keepalived auth_hmac allocates after the HMAC too).
        if len(self._hubs) < self._max_hubs:
            return
        departed = [state for state in self._hubs.values() if not state.live]
        oldest = min(departed, key=lambda state: state.last_seen)
        del self._hubs[oldest.identifier]
