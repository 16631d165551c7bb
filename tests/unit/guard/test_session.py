"""Per-message keys, replay window, expiry and field reordering (PROTOCOL.md §6)."""

from __future__ import annotations

import pytest

from roost.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from roost.guard.challenge import LoginServer
from roost.guard.ratchet import Direction, ReceivingChain, SendingChain
from roost.guard.session import GuardSession, Role, SessionLimits, field_permutation
from roost.guard.suites import SUITES, get_suite, ratchet_step
from roost.guard.userstore import MemoryUserStore

from .helpers import login, new_user


def make_sessions(
    limits: SessionLimits | None = None, now: float = 0.0
) -> tuple[GuardSession, GuardSession, list[bytes]]:
    store = MemoryUserStore()
    card = new_user(store)
    client_login, server_login = login(LoginServer(store), card)
    logged: list[bytes] = []

    def record(digest: bytes) -> int:
        logged.append(digest)
        return len(logged) - 1

    client = GuardSession(client_login, Role.CLIENT, now=now, limits=limits)
    server = GuardSession(server_login, Role.SERVER, now=now, limits=limits, recorder=record)
    return client, server, logged


def test_messages_flow_both_ways_and_are_logged() -> None:
    client, server, logged = make_sessions()
    for i in range(5):
        assert server.open(client.seal(b"up %d" % i, now=i), now=i) == b"up %d" % i
        assert client.open(server.seal(b"down %d" % i, now=i), now=i) == b"down %d" % i
    assert len(logged) == 10 and server.last_leaf_index == 9
    assert len(set(logged)) == 10


def test_every_message_has_its_own_key() -> None:
    suite = get_suite(next(iter(SUITES)))
    sender = SendingChain(suite, b"s" * 16, Direction.CLIENT_TO_SERVER, b"k" * 32)
    keys = [sender.next_key()[1] for _ in range(50)]
    assert len(set(keys)) == 50


def test_ratchet_step_matches_the_protocol_definition() -> None:
    import hmac

    for hash_name in ("sha256", "sha512"):
        chain_key = bytes(range(32))
        message_key, next_key = ratchet_step(hash_name, chain_key)
        assert message_key == hmac.digest(chain_key, b"\x01", hash_name)
        assert next_key == hmac.digest(chain_key, b"\x02", hash_name)


def test_replayed_frame_is_rejected_and_counted() -> None:
    client, server, _ = make_sessions()
    frame = client.seal(b"pay 10", now=0)
    server.open(frame, now=0)
    with pytest.raises(VerificationError) as caught:
        server.open(frame, now=0)
    assert caught.value.reason == "replay"
    assert server.rejections["replay"] == 1


def test_out_of_order_within_window_is_accepted_once() -> None:
    client, server, _ = make_sessions(SessionLimits(window=8))
    frames = [client.seal(b"m%d" % i, now=0) for i in range(6)]
    for i in (5, 1, 3, 0, 4, 2):
        assert server.open(frames[i], now=0) == b"m%d" % i
    with pytest.raises(VerificationError) as caught:
        server.open(frames[3], now=0)
    assert caught.value.reason == "replay"


def test_frame_behind_the_window_is_rejected() -> None:
    client, server, _ = make_sessions(SessionLimits(window=4))
    frames = [client.seal(b"m%d" % i, now=0) for i in range(10)]
    for i in (3, 7, 9):
        server.open(frames[i], now=0)
    with pytest.raises(VerificationError) as caught:
        server.open(frames[2], now=0)
    assert caught.value.reason == "out-of-window"
    assert server.open(frames[6], now=0) == b"m6"  # still inside the window
    assert server.rejections["out-of-window"] == 1


def test_frame_too_far_ahead_is_rejected() -> None:
    client, server, _ = make_sessions(SessionLimits(window=4))
    frames = [client.seal(b"m%d" % i, now=0) for i in range(6)]
    with pytest.raises(VerificationError) as caught:
        server.open(frames[5], now=0)
    assert caught.value.reason == "out-of-window"
    assert server.open(frames[0], now=0) == b"m0"


@pytest.mark.parametrize("bit", [0, 7, 80, 85, 200, -1])
def test_flipped_bit_is_rejected_and_does_not_burn_the_key(bit: int) -> None:
    client, server, _ = make_sessions()
    frame = bytearray(client.seal(b"x" * 20, now=0))
    index = bit // 8 if bit >= 0 else len(frame) - 1
    original = bytes(frame)
    frame[index] ^= 1 << (bit % 8 if bit >= 0 else 0)
    with pytest.raises((VerificationError, RemoteProtocolError)):
        server.open(bytes(frame), now=0)
    assert server.rejections.total() == 1
    # The genuine frame still opens: a forgery never advances the window.
    assert server.open(original, now=0) == b"x" * 20


def test_frame_for_the_other_direction_is_rejected() -> None:
    client, _server, _ = make_sessions()
    frame = client.seal(b"mine", now=0)
    with pytest.raises(VerificationError) as caught:
        client.open(frame, now=0)
    assert caught.value.reason == "wrong-direction"


def test_frame_from_another_session_is_rejected() -> None:
    client_a, _, _ = make_sessions()
    _, server_b, _ = make_sessions()
    with pytest.raises(VerificationError) as caught:
        server_b.open(client_a.seal(b"hi", now=0), now=0)
    assert caught.value.reason == "bad-tag"


def test_idle_expiry_erases_keys_and_needs_new_login() -> None:
    limits = SessionLimits(idle_s=900, absolute_s=43200)
    client, server, _ = make_sessions(limits, now=1000.0)
    assert server.next_deadline() == 1900.0
    server.open(client.seal(b"a", now=1800.0), now=1800.0)
    assert server.next_deadline() == 2700.0
    frame = client.seal(b"late", now=2600.0)
    with pytest.raises(VerificationError) as caught:
        server.open(frame, now=2700.0)
    assert caught.value.reason == "session-idle-expired"
    assert not server.is_open and server.next_deadline() is None
    with pytest.raises(VerificationError) as caught:
        server.open(frame, now=2700.0)
    assert caught.value.reason == "session-closed"
    assert server.rejections["session-idle-expired"] == 1
    assert server.rejections["session-closed"] == 1


def test_absolute_lifetime_ends_an_active_session() -> None:
    limits = SessionLimits(idle_s=900, absolute_s=3600)
    client, server, _ = make_sessions(limits)
    now = 0.0
    while now < 3600 - 600:
        now += 600
        server.open(client.seal(b"keepalive", now=now), now=now)
    with pytest.raises(VerificationError) as caught:
        client.seal(b"one more", now=3600.0)
    assert caught.value.reason == "session-lifetime-expired"


def test_timer_closes_the_session() -> None:
    client, _, _ = make_sessions(SessionLimits(idle_s=10))
    client.handle_timer(5.0)
    assert client.is_open
    client.handle_timer(10.0)
    assert not client.is_open and client.closed_reason == "session-idle-expired"


def test_message_budget_requires_reauthentication() -> None:
    client, server, _ = make_sessions(SessionLimits(max_messages=3))
    for _ in range(3):
        server.open(client.seal(b".", now=0), now=0)
    with pytest.raises(LocalProtocolError) as caught:
        client.seal(b".", now=0)
    assert caught.value.reason == "reauth-required"
    assert not client.is_open


def test_oversized_frame_is_rejected_before_parsing() -> None:
    client, server, _ = make_sessions(SessionLimits(max_frame=100))
    with pytest.raises(RemoteProtocolError) as caught:
        server.open(client.seal(b"x" * 200, now=0), now=0)
    assert caught.value.reason == "oversized"


@pytest.mark.parametrize("reorder", [False, True])
def test_field_records_round_trip(reorder: bool) -> None:
    client, server, _ = make_sessions(SessionLimits(reorder_fields=reorder))
    fields = [b"amount=10", b"to=bob", b"", b"memo=rent", b"currency=EUR"]
    for _ in range(5):
        assert server.open_fields(client.seal_fields(fields, now=0), now=0) == tuple(fields)


def test_field_permutation_depends_on_the_message_key() -> None:
    suite = get_suite(next(iter(SUITES)))
    orders = {tuple(field_permutation(suite, bytes([i]) * 32, 10)) for i in range(20)}
    assert len(orders) > 10
    for order in orders:
        assert sorted(order) == list(range(10))


def test_receiving_chain_rejects_after_erase() -> None:
    suite = get_suite(next(iter(SUITES)))
    sender = SendingChain(suite, b"s" * 16, Direction.CLIENT_TO_SERVER, b"k" * 32)
    receiver = ReceivingChain(suite, b"s" * 16, Direction.CLIENT_TO_SERVER, b"k" * 32)
    frame = sender.seal(b"x")
    receiver.erase()
    with pytest.raises(VerificationError):
        receiver.open(frame)
