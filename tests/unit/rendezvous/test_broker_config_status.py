"""broker.toml (load_broker_config), roost init's broker, the status document and metrics."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from roost.cli.broker import _worker_config
from roost.cli.home import make_home
from roost.config import load_broker_config, load_hub_config
from roost.errors import ConfigError, RemoteProtocolError
from roost.metrics import BROKER_METRICS, StatusCollector
from roost.pki.certs import certs_from_pem
from roost.rendezvous.broker_events import BrokerCoreConfig
from roost.rendezvous.broker_status import BrokerCountersView, BrokerStatus, SharedStatus
from roost.status import TrustSummary

MINIMAL = 'state_dir = "b"\ncert = "b/cert.pem"\nkey = "b/key.pem"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def test_left_out_keys_take_the_cores_defaults(tmp_path: Path) -> None:
    config = load_broker_config(write(tmp_path, MINIMAL))
    assert config.core == BrokerCoreConfig()
    assert config.udp == ("0.0.0.0", 3478) and config.tls == ("0.0.0.0", 7443)
    assert config.api is None and config.name == "broker"
    assert config.trust_dir == tmp_path / "b" / "trust"


def test_written_limits_are_read(tmp_path: Path) -> None:
    text = MINIMAL + 'udp = "127.0.0.1:0"\ninterval_s = 5\n[limits]\nwake_timeout_s = 2\n'
    text += "relay_sessions_per_hub = 9\n"
    config = load_broker_config(write(tmp_path, text))
    assert config.core.interval_s == 5.0 and config.core.ttl_s == 15.0
    assert config.core.wake_timeout_s == 2.0 and config.core.relay_sessions_per_hub == 9
    assert config.udp == ("127.0.0.1", 0)


@pytest.mark.parametrize(
    "extra",
    [
        'udp = "nowhere"\n',
        "interval_s = 0\n",
        'interval_s = "x"\n',
        "[limits]\nmax_sessions = 0\n",
        "[limits]\nrelay_max_bytes = 1.5\n",
        "[limits]\nno_such_limit = 1\n",
        "[limits]\nstun_amplification = -1\n",
        'registry = "localhost:6379"\n',
        "workers = 2\n",
        'registry = "redis://x"\npresence_every = 0\n',
        'registry = "redis://x"\nregistry_prefix = ""\n',
        'registry = "redis://x"\nnode_link_local = "yes"\n',
    ],
)
def test_bad_values_are_config_errors_naming_the_file(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_broker_config(write(tmp_path, MINIMAL + extra))
    assert "broker.toml" in str(caught.value) and caught.value.reason == "bad-config"


def test_roost_init_writes_the_broker_and_each_hubs_broker_table(tmp_path: Path) -> None:
    summary = make_home(tmp_path / "h", hubs=2, devices=0, loopback=True)
    home = tmp_path / "h"
    config = load_broker_config(home / "broker.toml")
    assert config.core == BrokerCoreConfig()
    assert config.udp[0] == config.tls[0] == "127.0.0.1" and config.udp[1] > 0
    assert summary["broker"] == {
        "config": "broker.toml",
        "udp": f"127.0.0.1:{config.udp[1]}",
        "tls": f"127.0.0.1:{config.tls[1]}",
        "api": f"127.0.0.1:{config.api[1] if config.api else 0}",
    }
    cert = certs_from_pem(config.cert.read_bytes())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert (home / "broker" / "trust").is_dir() and config.key.exists()
    for name in ("hub-1.toml", "hub-2.toml"):
        text = (home / name).read_text()
        assert f'address = "127.0.0.1:{config.tls[1]}"' in text
        assert f'udp = "127.0.0.1:{config.udp[1]}"' in text
        load_hub_config(home / name)  # the hub still reads its config


def _status() -> BrokerStatus:
    counters = BrokerCountersView(
        stun_answers=3,
        registrations=2,
        enrollments=1,
        lookups=1,
        connects=1,
        wakes_sent=4,
        wake_pushes=0,
        presents=1,
        accepts=1,
        rejects=0,
        relayed_sessions=1,
        relayed_bytes=900,
        relay_closes=1,
        keepalives=5,
        expired=0,
        channels_opened=3,
        equipment_channels=2,
        holds=1,
        requests_pushed=1,
        refusals={"rate-limited": 7, "bad-tag": 1},
        connections_rejected={},
    )
    return BrokerStatus(
        name="broker",
        udp="127.0.0.1:3478",
        tls="127.0.0.1:7443",
        registry_size=1,
        channels=2,
        sessions=0,
        relaying=0,
        trust=TrustSummary(1, None, "2026-01-01T00:00:00+00:00"),
        counters=counters,
        uptime_s=12.5,
        holding=1,
    )


def test_status_round_trips_and_refuses_malformed_documents() -> None:
    status = _status()
    assert BrokerStatus.from_json(status.to_json()) == status
    broken = status.to_json()
    broken["counters"] = {**broken["counters"], "registrations": "two"}
    with pytest.raises(RemoteProtocolError) as caught:
        BrokerStatus.from_json(broken)
    assert caught.value.reason == "malformed"


def test_metrics_read_the_status_snapshot() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(_status, BROKER_METRICS))
    text = generate_latest(registry).decode()
    assert "roost_broker_registrations_total 2.0" in text
    assert 'roost_broker_refusals_total{reason="rate-limited"} 7.0' in text
    assert "roost_broker_relayed_bytes_total 900.0" in text
    assert "roost_broker_registry_size 1.0" in text
    changed = dataclasses.replace(_status(), registry_size=5)
    registry2 = CollectorRegistry(auto_describe=False)
    registry2.register(StatusCollector(lambda: changed, BROKER_METRICS))
    assert "roost_broker_registry_size 5.0" in generate_latest(registry2).decode()


def test_shared_registry_keys_are_read(tmp_path: Path) -> None:
    config = load_broker_config(write(tmp_path, MINIMAL))
    assert config.registry == "memory" and not config.shared and config.workers == 1
    text = MINIMAL + 'registry = "redis://127.0.0.1:6379/0"\nnode = "east-1"\n'
    text += 'workers = 2\npresence_every = 8\nregistry_prefix = "home:"\n'
    config = load_broker_config(write(tmp_path, text))
    assert config.shared and config.node == "east-1" and config.workers == 2
    assert config.presence.every == 8 and config.presence.prefix == "home:"
    assert config.node_link == ("127.0.0.1", 0)
    # The local socket between processes of one host is on unless turned off.
    assert config.presence.local_link
    config = load_broker_config(write(tmp_path, text + "node_link_local = false\n"))
    assert not config.presence.local_link


def test_the_node_link_address_is_read_and_must_be_advertisable(tmp_path: Path) -> None:
    shared = MINIMAL + 'registry = "redis://127.0.0.1:6379/0"\n'
    config = load_broker_config(write(tmp_path, shared + 'node_link = "10.0.0.11:7444"\n'))
    assert config.node_link == ("10.0.0.11", 7444)
    # Workers: a configured port + the worker's index; port 0 stays any free port.
    assert _worker_config(config, 2, None, None).node_link == ("10.0.0.11", 7446)
    config = load_broker_config(write(tmp_path, shared))
    assert _worker_config(config, 1, None, None).node_link == ("127.0.0.1", 0)
    assert load_broker_config(write(tmp_path, shared + 'node_link = "off"\n')).node_link is None
    for bad in ('"0.0.0.0:7444"', '"[::]:0"', '"nowhere"', "7444"):
        with pytest.raises(ConfigError, match="node_link"):
            load_broker_config(write(tmp_path, shared + f"node_link = {bad}\n"))


def test_a_hub_may_list_several_brokers(tmp_path: Path) -> None:
    make_home(tmp_path / "h", 1, 1, True, 8, 5.0)
    path = tmp_path / "h" / "hub-1.toml"
    text = path.read_text()
    start = text.index("[broker]")
    end = text.find("\n[", start + 1)
    table = '[broker]\naddress = ["127.0.0.1:7443", "127.0.0.1:7444"]\n'
    table += 'udp = ["127.0.0.1:3478", "127.0.0.1:3479"]\n'
    path.write_text(text[:start] + table + (text[end + 1 :] if end > 0 else ""))
    link = load_hub_config(path).broker
    assert link is not None
    assert link.endpoints == (
        (("127.0.0.1", 7443), ("127.0.0.1", 3478)),
        (("127.0.0.1", 7444), ("127.0.0.1", 3479)),
    )
    path.write_text(text[:start] + table.replace(', "127.0.0.1:3479"', ""))
    with pytest.raises(ConfigError):
        load_hub_config(path)


def test_shared_status_round_trips_and_feeds_metrics() -> None:
    shared = SharedStatus("b1", 7, True, 3, 2, 1, 1, 4, 1, 2.5, 1, 0, 1, 2, 3)
    status = dataclasses.replace(_status(), shared=shared)
    assert BrokerStatus.from_json(status.to_json()) == status
    linked = dataclasses.replace(
        shared,
        node_link="127.0.0.1:7444",
        links_up=2,
        link_sent=9,
        link_fallbacks=1,
        link_failures={"link-unreachable": 3},
    )
    status = dataclasses.replace(_status(), shared=linked)
    assert BrokerStatus.from_json(status.to_json()) == status
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: status, BROKER_METRICS))
    text = generate_latest(registry).decode()
    assert "roost_broker_shared_up 1.0" in text
    assert "roost_broker_shared_outages_total 1.0" in text
    assert "roost_broker_shared_forwarded_total 2.0" in text
    assert "roost_broker_links_up 2.0" in text and "roost_broker_link_sent_total 9.0" in text
    assert 'roost_broker_link_failures_total{reason="link-unreachable"} 3.0' in text
    plain = CollectorRegistry(auto_describe=False)
    plain.register(StatusCollector(_status, BROKER_METRICS))
    assert "roost_broker_shared" not in generate_latest(plain).decode()
