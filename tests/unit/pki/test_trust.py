"""The two-slot trust store: acceptance, promotion, revocation, catch-up, time floor."""

from __future__ import annotations

import datetime as dt

import pytest

from roost.errors import VerificationError
from roost.pki.cainfo import Flags
from roost.pki.certs import Role
from roost.pki.trust import Slot, TrustState
from tests.helpers.dlkeys import Chain, build, dl_key
from tests.helpers.pki import EPOCH, TestCA

DAY = dt.timedelta(days=1)


def test_provision_sets_floor_from_build_time_and_issue_time() -> None:
    chain = Chain(1)
    state = TrustState.provision(chain.infos[0], build_time=EPOCH - DAY)
    assert state.time_floor == EPOCH
    later = TrustState.provision(chain.infos[0], build_time=EPOCH + DAY)
    assert later.time_floor == EPOCH + DAY


def test_normal_successor_fills_prepared_then_promotes() -> None:
    chain = Chain(2)
    state = TrustState.provision(chain.infos[0]).accept(chain.infos[1])
    assert (state.current.generation, state.prepared and state.prepared.generation) == (1, 2)
    hub_on_2 = chain.cas[1].issue(Role.HUB)
    node, slot, after = state.verify_node(hub_on_2.cert, hub_on_2.identifier)
    assert slot is Slot.PREPARED and node.identifier == hub_on_2.identifier
    assert after.current.generation == 2 and after.prepared is None


def test_current_verifies_without_promotion() -> None:
    chain = Chain(2)
    state = TrustState.provision(chain.infos[0]).accept(chain.infos[1])
    hub_on_1 = chain.cas[0].issue(Role.HUB)
    _, slot, after = state.verify_node(hub_on_1.cert)
    assert slot is Slot.CURRENT and after.prepared is not None


def test_revocation_promotes_at_once_and_drops_previous() -> None:
    chain = Chain(1)
    chain.extend(flags=Flags.REVOKES_PREVIOUS)
    state = TrustState.provision(chain.infos[0]).accept(chain.infos[1])
    assert state.current.generation == 2 and state.prepared is None
    attacker = chain.cas[0].issue(Role.HUB)  # CA 1 is compromised
    with pytest.raises(VerificationError):
        state.verify_node(attacker.cert)


def test_revocation_arriving_after_prepared_drops_both_older() -> None:
    chain = Chain(2)
    chain.extend(flags=Flags.REVOKES_PREVIOUS)
    state = TrustState.provision(chain.infos[0]).accept(chain.infos[1]).accept(chain.infos[2])
    assert state.current.generation == 3 and state.prepared is None


def test_sliding_window_walks_forward() -> None:
    chain = Chain(4)
    state = TrustState.provision(chain.infos[0])
    for info in chain.infos[1:]:
        state = state.accept(info)
    assert (state.current.generation, state.prepared and state.prepared.generation) == (3, 4)


def test_rejections_leave_state_unchanged() -> None:
    chain = Chain(3)
    state = TrustState.provision(chain.infos[0]).accept(chain.infos[1])
    for bad in (chain.infos[0], chain.infos[1]):
        with pytest.raises(VerificationError):
            state.accept(bad)
    skipped = Chain(1)
    with pytest.raises(VerificationError):
        TrustState.provision(chain.infos[0]).accept(chain.infos[2])
    with pytest.raises(VerificationError):
        state.accept(skipped.infos[0])
    assert state.prepared is not None and state.prepared.generation == 2


def test_dl_key_set_rotation_three_to_new_three() -> None:
    chain = Chain(1)
    new_keys = [dl_key(f"rotated-{i}") for i in range(3)]
    ca2, ca3 = TestCA(2), TestCA(3)
    gen2 = build(2, ca2, chain.infos[0], new_keys, chain.keys[:2] + new_keys[:2])
    gen3 = build(3, ca3, gen2, new_keys, new_keys[1:])
    state = TrustState.provision(chain.infos[0]).accept(gen2).accept(gen3)
    assert state.current.generation == 2 and state.newest.generation == 3
    # The retired keys alone can no longer sign generation 4.
    gen4_old = build(4, TestCA(4), gen3, chain.keys, chain.keys[:2])
    with pytest.raises(VerificationError):
        state.accept(gen4_old)


def test_self_made_ca_rejected() -> None:
    chain = Chain(1)
    state = TrustState.provision(chain.infos[0])
    rogue = TestCA(1).issue(Role.HUB)
    with pytest.raises(VerificationError) as exc:
        state.verify_node(rogue.cert)
    assert exc.value.reason == "chain"


def test_expected_identifier_enforced() -> None:
    chain = Chain(1)
    state = TrustState.provision(chain.infos[0])
    hub = chain.cas[0].issue(Role.HUB)
    other = chain.cas[0].issue(Role.HUB)
    with pytest.raises(VerificationError) as exc:
        state.verify_node(hub.cert, other.identifier)
    assert exc.value.reason == "wrong-id"


def test_clockless_floor_enforces_expiry_not_not_yet_valid() -> None:
    chain = Chain(1)
    state = TrustState.provision(chain.infos[0], build_time=EPOCH)
    # Issued "in the future" relative to the floor: accepted (a clockless device cannot know).
    future = chain.cas[0].issue(Role.HUB, not_before=EPOCH + 400 * DAY, days=30)
    _, _, after = state.verify_node(future.cert)
    assert after.time_floor == EPOCH + 400 * DAY
    # Expired relative to the floor the device has since learned: rejected.
    short = chain.cas[0].issue(Role.HUB, not_before=EPOCH, days=10)
    with pytest.raises(VerificationError):
        after.verify_node(short.cert)
    # The floor never moves back.
    _, _, again = after.verify_node(future.cert)
    assert again.time_floor == after.time_floor


def test_retired_generations_bridge_download_tls_but_never_revoked_ones() -> None:
    chain = Chain(3)
    chain.extend(flags=Flags.REVOKES_PREVIOUS)  # generation 4 revokes 3
    state = TrustState.provision(chain.infos[0]).accept(chain.infos[1])
    promoted = state.promote()
    assert promoted.retired == (chain.infos[0].body.ca_cert_der,)
    assert chain.cas[0].cert in promoted.transport_anchors
    assert chain.cas[0].cert not in promoted.anchors
    slid = promoted.accept(chain.infos[2]).accept(chain.infos[3])
    assert slid.current.generation == 4 and slid.prepared is None
    assert chain.infos[2].body.ca_cert_der not in slid.retired  # the compromised one
    assert chain.infos[1].body.ca_cert_der in slid.retired
