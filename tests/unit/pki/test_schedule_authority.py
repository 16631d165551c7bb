"""The FIG. 5/6 operator schedule and the authority directory."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest

from roost.cli.ca import tick_authority
from roost.errors import StateError
from roost.pki.authority import Authority
from roost.pki.cainfo import accept_successor
from roost.pki.certs import Role, identifier_of
from roost.pki.schedule import Action, GenerationTimes, Step, plan

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)
LEAD = 5 * YEAR


def gens(*rows: tuple[int, int, bool]) -> list[GenerationTimes]:
    return [GenerationTimes(g, T0 + years * YEAR, pub) for g, years, pub in rows]


def test_nothing_to_do_early() -> None:
    assert plan(gens((1, 20, True)), 1, T0 + 10 * YEAR, LEAD) == []


def test_prepare_at_lead_time() -> None:
    assert plan(gens((1, 20, True)), 1, T0 + 15 * YEAR, LEAD) == [Step(Action.PREPARE, 2)]


def test_activate_at_expiry() -> None:
    table = gens((1, 20, True), (2, 35, True))
    assert plan(table, 1, T0 + 19 * YEAR, LEAD) == []
    steps = plan(table, 1, T0 + 20 * YEAR, LEAD)
    assert Step(Action.ACTIVATE, 2) in steps
    assert Step(Action.UNPUBLISH, 2) in steps  # its download certificate was CA 1's


def test_authority_init_refuses_second_and_bad_input(tmp_path: Path) -> None:
    Authority.init(tmp_path / "ca", "https://127.0.0.1:1/ca/", T0)
    with pytest.raises(StateError):
        Authority.init(tmp_path / "ca", "https://127.0.0.1:1/ca/", T0)
    with pytest.raises(StateError):
        Authority.init(tmp_path / "x", "http://insecure/", T0)
    with pytest.raises(StateError):
        Authority.init(tmp_path / "y", "https://a/", T0, dl_keys=2, dl_threshold=3)
    with pytest.raises(StateError):
        Authority.load(tmp_path / "nothing")


def test_keys_are_private_and_generations_chain(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path, "https://127.0.0.1:1/ca/", T0)
    authority.roll(T0 + YEAR)
    keys = list(tmp_path.rglob("*key*.pem")) + list((tmp_path / "dl-keys").iterdir())
    assert len(keys) >= 3 + 2 + 1
    for key in keys:
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    accept_successor(authority.ca_info(1), authority.ca_info(2))
    assert authority.ca_info(1).body.next_url == "https://127.0.0.1:1/ca/2.rcai"
    assert authority.publish_path(2) == "/ca/2.rcai"


def test_issue_uses_active_generation_and_indexes(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path, "https://127.0.0.1:1/ca/", T0)
    hub = authority.issue(Role.HUB, T0, ips=["127.0.0.1"])
    assert hub.identifier == identifier_of(hub.cert) and hub.generation == 1
    authority.roll(T0 + YEAR)
    assert authority.issue(Role.DEVICE, T0 + YEAR).generation == 1
    authority.activate()
    assert authority.issue(Role.DEVICE, T0 + YEAR).generation == 2
    roles = [row["role"] for row in authority.issued()]
    assert roles == ["hub", "download", "device", "device"]


def test_revoke_current_moves_issuing_at_once(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path, "https://127.0.0.1:1/ca/", T0)
    info = authority.roll(T0 + YEAR, revoke_current=True)
    assert info.revokes_previous and authority.settings.active == 2


def test_tick_follows_the_whole_schedule(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path, "https://127.0.0.1:1/ca/", T0)
    assert tick_authority(authority, T0 + 10 * YEAR) == []
    assert tick_authority(authority, T0 + 15 * YEAR) == [{"action": "prepare", "generation": 2}]
    assert authority.published_generations() == [2] and authority.settings.active == 1
    done = tick_authority(authority, T0 + 20 * YEAR + dt.timedelta(days=10))
    assert {"action": "activate", "generation": 2} in done
    assert {"action": "unpublish", "generation": 2} in done
    assert authority.settings.active == 2 and authority.published_generations() == []
