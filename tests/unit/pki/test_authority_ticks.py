"""`roost ca tick` at any date: missed steps, long gaps, recovery of a half-applied authority.

A device trust store (the real `TrustState`) follows the authority after every tick the
way the updater does: it authenticates the certificate the download server would present
(`download_tls_context`'s choice, the oldest published generation's) against its transport
anchors at its own time floor, then accepts each published successor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from pathlib import Path

import pytest

from roost.errors import StateError, VerificationError
from roost.pki import authority_ops
from roost.pki.authority import Authority
from roost.pki.certs import Role, certs_from_pem
from roost.pki.schedule import MAX_CATCH_UP_STEPS, Action, GenerationTimes, catch_up
from roost.pki.trust import TrustState
from roost.pki.verify import verify_server_name

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)
URL = "https://127.0.0.1:1/ca/"


def tree_digest(directory: Path) -> str:
    """A hash of every path and file content under `directory`."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        digest.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def follow(state: TrustState, authority: Authority) -> TrustState:
    """Walk a device's trust store through every published successor, as the updater does."""
    published = authority.published_generations()
    if not published:
        return state
    cert_file, _ = authority.download_credentials(min(published))
    server_cert = certs_from_pem(cert_file.read_bytes())[0]
    for generation in sorted(published):
        if generation != state.newest.generation + 1:
            continue
        verify_server_name(server_cert, state.transport_anchors, state.time_floor, "127.0.0.1")
        state = state.accept(authority.ca_info(generation))
    return state


def assert_usable(authority: Authority, at: dt.datetime) -> None:
    assert authority_ops.check(authority) == []
    active = authority.settings.record(authority.settings.active)
    assert dt.datetime.fromisoformat(active.not_before) <= at < active.not_after_time
    assert authority.issue(Role.DEVICE, at).generation == active.generation


def tick_dates(seed: int) -> list[dt.datetime]:
    """20 increasing dates over 40 years with missed steps: ticks close together in the
    first years, then a gap past generation 1's prepare and expiry (years 15 and 20), a few
    ticks, then a gap of over a decade to the end."""
    rng = random.Random(seed)
    segments = [(0, 3, 8), (23, 27, 6), (27, 29, 4), (39, 40, 2)]
    days: list[int] = []
    for start, end, count in segments:
        days += rng.sample(range(start * 365 + 1, end * 365), count)
    return [T0 + dt.timedelta(days=d, hours=rng.randrange(24)) for d in sorted(days)]


@pytest.mark.parametrize("seed", [1, 2])
def test_twenty_ticks_over_forty_years_stay_usable_and_followable(
    tmp_path: Path, seed: int
) -> None:
    authority = Authority.init(tmp_path / "ca", URL, T0)
    device = TrustState.provision(authority.ca_info(1))
    hub_at = T0
    for at in tick_dates(seed):
        authority_ops.tick(authority, at)
        authority = Authority.load(tmp_path / "ca")  # what the next command reads
        assert_usable(authority, at)
        device = follow(device, authority)
        assert device.newest.generation == authority.settings.newest, at
        hub = authority.issue(Role.HUB, at, ips=["127.0.0.1"])
        device.verify_node(hub.cert)
        hub_at = at
    assert hub_at > T0 + 39 * YEAR
    assert authority.settings.newest >= 3


def test_one_tick_forty_years_late_equals_many_on_time_but_stays_published(
    tmp_path: Path,
) -> None:
    late = Authority.init(tmp_path / "late", URL, T0)
    at = T0 + 40 * YEAR
    steps = authority_ops.tick(late, at)
    assert [s.action for s in steps if s.action is Action.PREPARE]
    assert all(s.due <= at for s in steps)
    assert_usable(late, at)
    # Made late, the generations stay published so that a device still at 1 can follow.
    device = follow(TrustState.provision(late.ca_info(1)), late)
    assert device.newest.generation == late.settings.newest
    # A second tick at the same time has nothing left to do.
    assert authority_ops.tick(late, at) == []


def test_a_device_left_behind_for_decades_catches_up_after_a_late_tick(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "ca", URL, T0)
    device = TrustState.provision(authority.ca_info(1))
    authority_ops.tick(authority, T0 + 16 * YEAR)
    device = follow(device, authority)
    assert device.newest.generation == 2
    authority_ops.tick(authority, T0 + 38 * YEAR)
    device = follow(device, authority)
    assert device.newest.generation == authority.settings.newest


def test_a_tick_that_cannot_be_applied_changes_nothing(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "ca", URL, T0, validity_years=2, lead_years=1)
    before = tree_digest(tmp_path / "ca")
    with pytest.raises(StateError) as raised:
        authority_ops.tick(authority, T0 + 2000 * YEAR)
    assert raised.value.reason == "bad-args" and str(MAX_CATCH_UP_STEPS) in str(raised.value)
    assert tree_digest(tmp_path / "ca") == before
    with pytest.raises(StateError, match="9999"):
        catch_up(
            [GenerationTimes(1, T0 + 20 * YEAR, True)],
            1,
            dt.datetime(9999, 1, 1, tzinfo=dt.UTC),
            5 * YEAR,
            20 * YEAR,
        )


def test_a_failure_midway_rolls_the_whole_tick_back(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "ca", URL, T0)
    table_before = (tmp_path / "ca" / "authority.json").read_bytes()
    calls = 0
    real_roll = authority.roll

    def failing_roll(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full")
        return real_roll(*args, **kwargs)  # type: ignore[arg-type]

    authority.roll = failing_roll  # type: ignore[method-assign]
    with pytest.raises(OSError):
        authority_ops.tick(authority, T0 + 40 * YEAR)
    assert (tmp_path / "ca" / "authority.json").read_bytes() == table_before
    assert authority.settings.newest == 1 and authority.settings.active == 1
    assert sorted(
        p.name for p in (tmp_path / "ca").iterdir() if p.name.startswith(("gen", ".gen"))
    ) == ["gen-1"]
    reloaded = Authority.load(tmp_path / "ca")
    authority_ops.tick(reloaded, T0 + 40 * YEAR)
    assert_usable(reloaded, T0 + 40 * YEAR)


def test_roll_and_issue_after_expiry_are_refused_before_writing(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "ca", URL, T0)
    before = tree_digest(tmp_path / "ca")
    with pytest.raises(StateError, match="expired") as raised:
        authority.roll(T0 + 25 * YEAR)
    assert raised.value.reason == "ca-expired"
    with pytest.raises(StateError, match="expired"):
        authority.issue(Role.HUB, T0 + 25 * YEAR, ips=["127.0.0.1"])
    with pytest.raises(StateError, match="--rotate-dl-keys"):
        authority.roll(T0 + YEAR, rotate_dl_keys=1)
    assert tree_digest(tmp_path / "ca") == before


def half_applied_by_the_old_tick(directory: Path) -> Authority:
    """What the old `ca tick --at <after expiry>` left: steps saved, then debris."""
    authority = Authority.init(directory, URL, T0)
    authority.roll(T0 + 15 * YEAR)
    authority.unpublish(2)
    authority.activate()
    staging = directory / ".gen-3.tmp-4242"
    staging.mkdir()
    (staging / "ca-key.pem").write_bytes(b"partial")
    stray = directory / "gen-3"
    stray.mkdir()
    (stray / "ca-cert.pem").write_bytes(b"partial")
    return Authority.load(directory)


def test_repair_then_tick_recovers_an_authority_the_old_tick_half_applied(
    tmp_path: Path,
) -> None:
    authority = half_applied_by_the_old_tick(tmp_path / "ca")
    problems = authority_ops.check(authority)
    assert len(problems) == 2 and all(p.repairable for p in problems)
    removed = authority_ops.repair(authority)
    assert len(removed) == 2 and authority_ops.check(authority) == []
    at = T0 + 45 * YEAR
    authority_ops.tick(authority, at)
    assert_usable(authority, at)


def test_a_tick_alone_also_recovers_it(tmp_path: Path) -> None:
    authority = half_applied_by_the_old_tick(tmp_path / "ca")
    at = T0 + 45 * YEAR
    authority_ops.tick(authority, at)
    assert_usable(authority, at)


def test_a_missing_generation_file_is_reported_not_repaired(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "ca", URL, T0)
    authority.roll(T0 + YEAR)
    (tmp_path / "ca" / "gen-2" / "ca-info.bin").unlink()
    problems = authority_ops.check(authority)
    assert problems and not problems[0].repairable and "ca-info.bin" in problems[0].message
    before = tree_digest(tmp_path / "ca")
    with pytest.raises(StateError, match="backup"):
        authority_ops.repair(authority)
    with pytest.raises(StateError, match="inconsistent"):
        authority_ops.tick(authority, T0 + 30 * YEAR)
    assert tree_digest(tmp_path / "ca") == before


def test_revocation_is_explained_by_generation(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "ca", URL, T0)
    old_hub = authority.issue(Role.HUB, T0, ips=["127.0.0.1"])
    authority.roll(T0 + YEAR)
    authority.roll(T0 + 2 * YEAR, revoke_current=True)
    state = TrustState.provision(authority.ca_info(1))
    state = state.accept(authority.ca_info(2)).accept(authority.ca_info(3))
    with pytest.raises(VerificationError) as raised:
        state.verify_node(old_hub.cert)
    assert raised.value.reason == "revoked"
    assert "issued by generation 1, which generation 3 revoked" in str(raised.value)
    newer = Authority.init(tmp_path / "other", URL, T0)
    newer.roll(T0 + YEAR)
    newer.activate()
    ahead = newer.issue(Role.HUB, T0 + YEAR, ips=["127.0.0.1"])
    behind = TrustState.provision(newer.ca_info(1))
    with pytest.raises(VerificationError) as raised:
        behind.verify_node(ahead.cert)
    assert raised.value.reason == "not-yet-known" and "generation 2" in str(raised.value)


def test_foreign_and_retired_certificates_are_worded_by_key_identifier(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "ca", URL, T0)
    old_hub = authority.issue(Role.HUB, T0, ips=["127.0.0.1"])
    authority.roll(T0 + YEAR)
    authority.roll(T0 + 2 * YEAR, revoke_current=True)
    revoked = TrustState.provision(authority.ca_info(1))
    revoked = revoked.accept(authority.ca_info(2)).accept(authority.ca_info(3))
    # A self-made CA also calls itself "generation 1": still a plain chain error.
    rogue = Authority.init(tmp_path / "rogue", URL, T0)
    forged = rogue.issue(Role.HUB, T0, ips=["127.0.0.1"])
    with pytest.raises(VerificationError) as raised:
        revoked.verify_node(forged.cert)
    assert raised.value.reason == "chain"
    # Three normal generations: the store slides past 1, which is retired, not revoked.
    normal = Authority.init(tmp_path / "normal", URL, T0)
    first = normal.issue(Role.HUB, T0, ips=["127.0.0.1"])
    normal.roll(T0 + YEAR)
    normal.activate()
    normal.roll(T0 + 2 * YEAR)
    slid = TrustState.provision(normal.ca_info(1))
    slid = slid.accept(normal.ca_info(2)).accept(normal.ca_info(3))
    assert slid.current.generation == 2
    with pytest.raises(VerificationError) as raised:
        slid.verify_node(first.cert)
    assert raised.value.reason == "retired" and "generation 1" in str(raised.value)
    assert old_hub.generation == 1
