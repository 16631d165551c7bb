"""The hub agent's broker list: configured pairs in order, a DNS name with several
addresses counted once per address (docs/broker-scale.md); resolves "localhost" only."""

from __future__ import annotations


def test_a_broker_name_with_several_addresses_is_one_endpoint_per_address() -> None:
    from roost.config import BrokerLink
    from roost.rendezvous.agent_aio import broker_endpoints

    link = BrokerLink(
        address=("localhost", 7443),
        udp=("localhost", 3478),
        more=((("127.0.0.2", 7444), ("127.0.0.2", 3479)),),
    )
    endpoints = broker_endpoints(link)
    named = [e for e in endpoints if e.name == "localhost"]
    assert named and all(e.tls[1] == 7443 and e.udp == (e.tls[0], 3478) for e in named)
    assert {e.tls[0] for e in named} <= {"127.0.0.1", "::1"}
    assert endpoints[-1].tls == ("127.0.0.2", 7444) and endpoints[-1].name == "127.0.0.2"
