"""The hub table on its own: admission, replay marks, liveness and the bound (PROTOCOL.md
section 3), with plain Subscribe documents and no signatures."""

from __future__ import annotations

import pytest

from roost.errors import VerificationError
from roost.hcsp.documents import Endpoint, HubAddress, Subscribe
from roost.hcsp.events import HubDown, HubUp, HubUpdated
from roost.hcsp.hubtable import HubTable, serial_greater

SEQ = 1_790_000_000_000


def _identifier(number: int) -> str:
    return "hcsp:" + f"{number:022d}"


def _subscribe(number: int, seq: int, *, connected: int = 0, host: str = "10.0.0.1") -> Subscribe:
    sender = HubAddress(_identifier(number), Endpoint(host, 17320))
    return Subscribe(sender, ("hcsp",), connected, 5, seq, seq)


def _admit(table: HubTable, document: Subscribe, now: float) -> HubUp | HubUpdated | None:
    state = table.check_sequence(document.sender.identifier, document.seq)
    table.check_room(state)
    return table.record(state, document, now)


def test_a_new_hub_comes_up_and_a_change_is_an_update() -> None:
    table = HubTable(max_hubs=4, departed_retention=10.0)
    first = _admit(table, _subscribe(1, SEQ), 0.0)
    assert isinstance(first, HubUp) and first.hub.identifier == _identifier(1)
    # The same content under a newer seq changes nothing a listener sees.
    assert _admit(table, _subscribe(1, SEQ + 1), 1.0) is None
    changed = _admit(table, _subscribe(1, SEQ + 2, connected=3), 2.0)
    assert isinstance(changed, HubUpdated) and changed.hub.connected == 3
    state = table.get(_identifier(1))
    assert state is not None and state.highest_seq == SEQ + 2 and state.last_seen == 2.0
    assert state.first_heard == 0.0


@pytest.mark.parametrize(("offset", "reason"), [(0, "replay"), (-1, "seq-not-increasing")])
def test_a_sequence_that_does_not_pass_the_mark_is_refused(offset: int, reason: str) -> None:
    table = HubTable(max_hubs=4, departed_retention=10.0)
    _admit(table, _subscribe(1, SEQ), 0.0)
    with pytest.raises(VerificationError) as caught:
        table.check_sequence(_identifier(1), SEQ + offset)
    assert caught.value.reason == reason
    state = table.get(_identifier(1))
    assert state is not None and state.highest_seq == SEQ


def test_serial_order_wraps_around_u64() -> None:
    assert serial_greater(0, 2**64 - 1)
    assert not serial_greater(2**64 - 1, 0)
    assert serial_greater(SEQ + 1, SEQ) and not serial_greater(SEQ, SEQ)


def test_a_silent_hub_goes_down_keeps_its_mark_then_is_forgotten() -> None:
    table = HubTable(max_hubs=4, departed_retention=10.0)
    _admit(table, _subscribe(1, SEQ), 0.0)
    assert table.expire(2.9, timeout=3.0) == []
    (down,) = table.expire(3.0, timeout=3.0)
    assert isinstance(down, HubDown) and down.hub.identifier == _identifier(1)
    assert list(table.live()) == [] and len(table) == 1
    # While retained, the departed hub's old datagrams are still replays.
    with pytest.raises(VerificationError):
        table.check_sequence(_identifier(1), SEQ)
    assert table.expire(10.0, timeout=3.0) == []
    assert len(table) == 1
    assert table.expire(10.5, timeout=3.0) == []
    assert len(table) == 0 and table.check_sequence(_identifier(1), SEQ) is None


def test_a_returning_hub_is_a_newcomer_again() -> None:
    table = HubTable(max_hubs=4, departed_retention=10.0)
    _admit(table, _subscribe(1, SEQ), 0.0)
    table.expire(3.0, timeout=3.0)
    back = _admit(table, _subscribe(1, SEQ + 5000), 5.0)
    assert isinstance(back, HubUp) and back.hub.first_heard == 5.0
    assert [state.identifier for state in table.live()] == [_identifier(1)]


def test_a_full_table_of_live_hubs_refuses_a_new_one_before_any_change() -> None:
    table = HubTable(max_hubs=2, departed_retention=10.0)
    _admit(table, _subscribe(1, SEQ), 0.0)
    _admit(table, _subscribe(2, SEQ), 0.0)
    state = table.check_sequence(_identifier(3), SEQ)
    with pytest.raises(VerificationError) as caught:
        table.check_room(state)
    assert caught.value.reason == "table-full" and len(table) == 2
    # A known hub is never refused for room.
    table.check_room(table.check_sequence(_identifier(1), SEQ + 1))


def test_room_is_made_by_evicting_the_oldest_departed_hub_only() -> None:
    table = HubTable(max_hubs=2, departed_retention=100.0)
    _admit(table, _subscribe(1, SEQ), 0.0)
    _admit(table, _subscribe(2, SEQ), 1.0)
    table.expire(4.5, timeout=3.0)  # both silent: hub 1 since 0.0, hub 2 since 1.0
    _admit(table, _subscribe(3, SEQ), 5.0)
    assert table.get(_identifier(1)) is None
    assert table.get(_identifier(2)) is not None and len(table) == 2
    _admit(table, _subscribe(4, SEQ), 6.0)
    assert table.get(_identifier(2)) is None
    assert sorted(state.identifier for state in table.live()) == [_identifier(3), _identifier(4)]


def test_the_table_needs_room_for_a_hub() -> None:
    with pytest.raises(ValueError):
        HubTable(max_hubs=0, departed_retention=1.0)
