"""Which certificates are a broker's on the node link between broker processes
(`pki.verify.verify_broker_peer`, PROTOCOL.md section 1 table, docs/broker-scale.md)."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from roost.errors import VerificationError
from roost.pki.certs import Role
from roost.pki.verify import verify_broker_peer
from tests.helpers.pki import EPOCH, TestCA


def _reason(ca: TestCA, leaf: x509.Certificate) -> str:
    try:
        verify_broker_peer(leaf, [ca.cert], EPOCH)
    except VerificationError as caught:
        return caught.reason
    return "ok"


def test_a_broker_of_the_ca_is_one_and_carries_both_usages() -> None:
    ca = TestCA()
    broker = ca.issue(Role.BROKER, dns=("broker.example",))
    assert verify_broker_peer(broker.cert, [ca.cert], EPOCH) == ca.cert
    usages = set(broker.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages


@pytest.mark.parametrize("role", [Role.HUB, Role.DEVICE, Role.DOWNLOAD], ids=lambda r: r.value)
def test_other_roles_of_the_same_ca_are_not_brokers(role: Role) -> None:
    # Hubs and devices chain to the CA and carry clientAuth too, but a node identifier; a
    # download server carries serverAuth only.
    ca = TestCA()
    assert _reason(ca, ca.issue(role).cert) == "not-broker"


def test_a_broker_of_another_ca_or_an_expired_one_does_not_verify() -> None:
    ca, other = TestCA(), TestCA()
    assert _reason(ca, other.issue(Role.BROKER).cert) == "chain"
    expired = ca.issue(Role.BROKER, days=1)
    far = EPOCH.replace(year=EPOCH.year + 1)
    with pytest.raises(VerificationError) as caught:
        verify_broker_peer(expired.cert, [ca.cert], far)
    assert caught.value.reason == "chain"
