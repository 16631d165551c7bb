"""Pieces of the broker's two ends on real objects: the guard's password check for a
brokered request (step 5) and the issuer's and hub's check that the broker is the broker."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from roost.cli.home import make_home
from roost.errors import VerificationError
from roost.guard.aio import GuardServer, GuardServerConfig
from roost.guard.card import generate_card
from roost.guard.challenge import AuthConfig
from roost.guard.suites import KdfParams
from roost.guard.userstore import LockoutPolicy, MemoryUserStore, make_user
from roost.pki.certs import certs_from_pem
from roost.pki.truststore import load_state
from roost.rendezvous.channel_aio import verify_broker

FAST = KdfParams(log2_n=4, r=1, p=1)
PASSWORD = "owner password"


def _refuse(method: str, args: tuple[bytes, ...]) -> list[bytes]:
    raise AssertionError("no call is made by a password check")


def _guard(max_failures: int = 5) -> tuple[GuardServer, MemoryUserStore]:
    store = MemoryUserStore()
    store.add(make_user("owner", PASSWORD, generate_card(20), password_kdf=FAST, pair_kdf=FAST))
    config = GuardServerConfig(auth=AuthConfig(lockout=LockoutPolicy(max_failures=max_failures)))
    return GuardServer(lambda: store, _refuse, config=config), store


async def test_a_brokered_password_check_counts_toward_the_lock_out() -> None:
    guard, store = _guard(max_failures=2)
    try:
        await guard.check_password("owner", PASSWORD)
        with pytest.raises(VerificationError) as unknown:
            await guard.check_password("nobody", PASSWORD)
        assert unknown.value.reason == "unknown-user"
        for _ in range(2):
            with pytest.raises(VerificationError) as wrong:
                await guard.check_password("owner", "guess")
            assert wrong.value.reason == "bad-password"
        record = store.load("owner")
        assert record is not None and record.failures == 2 and record.locked_until_ms > 0
        # Locked out: even the right password is refused until the back-off passes.
        with pytest.raises(VerificationError) as locked:
            await guard.check_password("owner", PASSWORD)
        assert locked.value.reason == "locked-out"
        assert guard.counters.logins_failed == 2
    finally:
        await guard.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    make_home(tmp_path / "home", hubs=1, devices=1, loopback=True)
    return tmp_path / "home"


def test_only_the_broker_certificate_for_the_dialled_host_is_the_broker(
    home: Path, tmp_path: Path
) -> None:
    state = load_state(home / "broker" / "trust")
    floor = state.time_floor
    broker = certs_from_pem((home / "broker" / "cert.pem").read_bytes())[0]
    verify_broker(broker, state.anchors, floor, "127.0.0.1")
    with pytest.raises(VerificationError) as other_host:
        verify_broker(broker, state.anchors, floor, "127.0.0.2")
    assert other_host.value.reason == "chain"
    # A hub's certificate chains to the same CA and names 127.0.0.1, but is no broker.
    hub = certs_from_pem((home / "hub-1" / "cert.pem").read_bytes())[0]
    with pytest.raises(VerificationError) as not_broker:
        verify_broker(hub, state.anchors, floor, "127.0.0.1")
    assert not_broker.value.reason == "not-broker"
    # Another home's CA does not vouch for this broker.
    make_home(tmp_path / "other", hubs=1, devices=0, loopback=True)
    other = load_state(tmp_path / "other" / "broker" / "trust")
    with pytest.raises(VerificationError) as untrusted:
        verify_broker(broker, other.anchors, floor, "127.0.0.1")
    assert untrusted.value.reason == "chain"
    assert isinstance(floor, dt.datetime)
