"""The admission core (caps on unauthenticated connections), source keys, the TLS failure
classes and the ``[admission]`` table (docs/limits.md)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from roost.admission import AdmissionConfig, AdmissionCore, Ticket, classify_tls_failure
from roost.config import admission_table, load_broker_config, load_hub_config, to_toml
from roost.errors import ConfigError, RefusedError
from roost.ratelimit import source_key

_NODE = {"state_dir": "node", "cert": "node/cert.pem", "key": "node/key.pem"}


def test_the_core_caps_each_source_and_the_total() -> None:
    core = AdmissionCore(AdmissionConfig(max_unauthenticated=3, max_unauthenticated_per_source=2))
    core.admit("a")
    core.admit("a")
    with pytest.raises(RefusedError) as raised:
        core.admit("a")
    assert raised.value.reason == "source-unauthenticated-full"
    core.admit("b")
    with pytest.raises(RefusedError) as raised:
        core.admit("c")
    assert raised.value.reason == "unauthenticated-full"
    assert (core.unauthenticated, core.held_by("a"), core.held_by("b")) == (3, 2, 1)
    core.release("a")
    core.admit("c")
    for source in ("a", "b", "c", "c"):
        core.release(source)
    assert core.unauthenticated == 0 and core.held_by("a") == 0


def test_a_ticket_releases_once() -> None:
    core = AdmissionCore(AdmissionConfig())
    core.admit("a")
    ticket = Ticket(core, "a")
    ticket.release()
    ticket.release()
    assert core.unauthenticated == 0


def test_sources_are_hosts_and_ipv6_64s() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("2001:db8::1", 128) == "2001:db8::1/128"


def test_tls_failures_are_classified() -> None:
    def failure(reason: str) -> ssl.SSLError:
        error = ssl.SSLError(1, reason)
        error.reason = reason  # type: ignore[misc]
        return error

    assert classify_tls_failure(failure("WRONG_VERSION_NUMBER")) == "not-tls"
    assert classify_tls_failure(failure("HTTP_REQUEST")) == "not-tls"
    assert classify_tls_failure(failure("PEER_DID_NOT_RETURN_A_CERTIFICATE")) == (
        "client-cert-required"
    )
    assert classify_tls_failure(failure("CERTIFICATE_VERIFY_FAILED")) == "client-cert-untrusted"
    assert classify_tls_failure(failure("NO_SHARED_CIPHER")) == "tls-failed"
    assert classify_tls_failure(TimeoutError()) == "tls-handshake-timeout"
    assert classify_tls_failure(ConnectionResetError()) == "closed-in-handshake"


def test_the_admission_table_loads_in_hub_and_broker_configs(tmp_path: Path) -> None:
    table = {**admission_table(), "handshake_timeout_s": 1.5, "max_unauthenticated": 10}
    hub = tmp_path / "hub.toml"
    hub.write_text(to_toml({**_NODE, "listen": "127.0.0.1:0", "admission": table}))
    assert load_hub_config(hub).admission.handshake_timeout_s == 1.5
    broker = tmp_path / "broker.toml"
    broker.write_text(to_toml({**_NODE, "admission": {"max_unauthenticated": 10}}))
    assert load_broker_config(broker).admission.max_unauthenticated == 10
    # Left out: the component's defaults.
    plain = tmp_path / "plain.toml"
    plain.write_text(to_toml({**_NODE, "listen": "127.0.0.1:0"}))
    assert load_hub_config(plain).admission == AdmissionConfig()


@pytest.mark.parametrize(
    "table",
    [{"max_unauthenticated": 0}, {"handshake_timeout_s": 0}, {"no_such_limit": 1}],
)
def test_an_invalid_admission_table_is_a_config_error(
    tmp_path: Path, table: dict[str, object]
) -> None:
    hub = tmp_path / "hub.toml"
    hub.write_text(to_toml({**_NODE, "listen": "127.0.0.1:0", "admission": table}))
    with pytest.raises(ConfigError) as raised:
        load_hub_config(hub)
    assert "admission" in str(raised.value)
