"""Hub and device config files: one owner per default, one error class naming file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from roost.config import (
    BROKER_LOCAL_DEFAULT,
    BrokerLink,
    DeviceConfig,
    connection_table,
    load_device_config,
    load_hub_config,
    parse_hostport,
    redirect_table,
    to_toml,
)
from roost.errors import ConfigError
from roost.hcsp import AnnounceConfig, RedirectConfig
from roost.hcsp.aio import UdpConfig

_NODE = {"state_dir": "node", "cert": "node/cert.pem", "key": "node/key.pem"}


def _write(tmp_path: Path, doc: dict[str, object], name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(doc))
    return path


def _hub(tmp_path: Path, **extra: object) -> Path:
    return _write(tmp_path, {**_NODE, "listen": "127.0.0.1:4000", **extra})


def test_left_out_keys_take_the_component_configs_defaults(tmp_path: Path) -> None:
    hub = load_hub_config(_hub(tmp_path))
    announce, redirect, udp = AnnounceConfig(), RedirectConfig(), UdpConfig()
    assert hub.announce.interval == announce.advert_interval
    assert hub.announce.hold_down == announce.hold_down
    assert hub.announce.freshness_ms == announce.freshness_window_ms
    assert (hub.redirect_batch, hub.redirect_spacing) == (
        redirect.batch_size,
        redirect.batch_spacing,
    )
    assert dataclasses.replace(hub.announce.udp, peers=()) == udp
    assert hub.advertise == hub.listen and hub.state_dir == tmp_path / "node"

    device = load_device_config(_write(tmp_path, dict(_NODE), "device.toml"))
    for field in dataclasses.fields(DeviceConfig):
        if field.name in connection_table():
            assert getattr(device, field.name) == field.default


def test_the_tables_roost_init_writes_load_back_to_the_same_defaults(tmp_path: Path) -> None:
    hub = load_hub_config(_hub(tmp_path, redirect=redirect_table()))
    assert hub.redirect_spacing == RedirectConfig().batch_spacing == 0.25
    device = load_device_config(
        _write(tmp_path, {**_NODE, "connection": connection_table()}, "device.toml")
    )
    assert {k: getattr(device, k) for k in connection_table()} == connection_table()


def test_written_values_are_read(tmp_path: Path) -> None:
    path = _hub(
        tmp_path,
        announce={"multicast": False, "peers": ["127.0.0.1:9", "[::1]:10"], "hold_down": 1},
        redirect={"batch_size": 64, "spacing": 0.02},
        remote="127.0.0.1:5000",
    )
    hub = load_hub_config(path)
    assert hub.announce.udp.multicast is False
    assert hub.announce.udp.peers == (("127.0.0.1", 9), ("::1", 10))
    assert hub.announce.hold_down == 1.0 and hub.redirect_spacing == 0.02
    assert hub.redirect_batch == 64 and hub.remote == ("127.0.0.1", 5000)


def test_a_missing_file_is_a_config_error_with_reason_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_hub_config(tmp_path / "nowhere.toml")
    assert caught.value.reason == "missing" and "nowhere.toml" in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"announce": {"hold_down": "soon"}}, "announce.hold_down"),
        ({"announce": {"hold_down": -1.0}}, "announce.hold_down"),
        ({"announce": {"multicast": "false"}}, "announce.multicast"),
        ({"announce": {"peers": ["nowhere"]}}, "announce.peers"),
        ({"announce": {"port": 70000}}, "announce.port"),
        ({"announce": {"freshness_ms": 0}}, "announce.freshness_ms"),
        ({"announce": "loud"}, "announce"),
        ({"redirect": {"batch_size": 0}}, "redirect.batch_size"),
        ({"redirect": {"spacing": "fast"}}, "redirect.spacing"),
        ({"max_devices": 2.5}, "max_devices"),
        ({"max_devices": True}, "max_devices"),
        ({"features": "hcsp"}, "features"),
        ({"api": "8080"}, "api"),
        ({"cert": 7}, "cert"),
    ],
)
def test_every_invalid_hub_value_is_a_config_error_naming_file_and_key(
    tmp_path: Path, extra: dict[str, object], named: str
) -> None:
    path = _hub(tmp_path, **extra)
    with pytest.raises(ConfigError) as caught:
        load_hub_config(path)
    assert caught.value.reason == "bad-config"
    assert str(path) in str(caught.value) and named in str(caught.value)


def test_a_missing_key_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    without_listen = _write(tmp_path, dict(_NODE))
    with pytest.raises(ConfigError, match="listen is missing"):
        load_hub_config(without_listen)
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = [")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_device_config(broken)
    assert caught.value.reason == "bad-config"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"connection": {"min_dwell": "long"}}, "connection.min_dwell"),
        ({"connection": {"backoff_max": -5}}, "connection.backoff_max"),
        ({"hubs": ["127.0.0.1"]}, "hubs"),
        ({"width": 0}, "width"),
        ({"fps": "fast"}, "fps"),
    ],
)
def test_every_invalid_device_value_is_a_config_error_naming_file_and_key(
    tmp_path: Path, extra: dict[str, object], named: str
) -> None:
    path = _write(tmp_path, {**_NODE, **extra})
    with pytest.raises(ConfigError) as caught:
        load_device_config(path)
    assert str(path) in str(caught.value) and named in str(caught.value)


@pytest.mark.parametrize("text", ["host", ":80", "host:", "host:port", "host:65536"])
def test_parse_hostport_refuses_what_is_not_host_port(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(text)
    assert parse_hostport("[::1]:80") == ("::1", 80)


# ---------------------------------------------------------------- the hub's [broker] table


def test_the_broker_table_is_read_with_local_defaulting_to_any_address(tmp_path: Path) -> None:
    assert load_hub_config(_hub(tmp_path)).broker is None
    hub = load_hub_config(_hub(tmp_path, broker={"address": "127.0.0.1:7443", "udp": "[::1]:3478"}))
    assert hub.broker == BrokerLink(("127.0.0.1", 7443), ("::1", 3478), ("0.0.0.0", 0))
    assert parse_hostport(BROKER_LOCAL_DEFAULT) == hub.broker.local
    hub = load_hub_config(
        _hub(
            tmp_path,
            broker={"address": "192.0.2.5:7443", "udp": "192.0.2.5:3478", "local": "0.0.0.0:41000"},
        )
    )
    assert hub.broker is not None and hub.broker.local == ("0.0.0.0", 41000)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"udp": "127.0.0.1:3478"}, "broker.address is missing"),
        ({"address": "127.0.0.1:7443"}, "broker.udp is missing"),
        ({"address": "localhost", "udp": "127.0.0.1:3478"}, "broker.address holds"),
        ({"address": "127.0.0.1:7443", "udp": "127.0.0.1:99999"}, "broker.udp holds"),
        ({"address": "127.0.0.1:0", "udp": "127.0.0.1:3478"}, "broker.address must name"),
        ({"address": "127.0.0.1:7443", "udp": "0.0.0.0:3478"}, "broker.udp must name"),
        ({"address": "127.0.0.1:7443", "udp": "127.0.0.1:3478", "local": 5}, "broker.local must"),
        ({"address": 7443, "udp": "127.0.0.1:3478"}, "broker.address must be a string"),
    ],
)
def test_a_bad_broker_table_is_a_config_error_naming_the_key(
    tmp_path: Path, table: dict[str, object], words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_hub_config(_hub(tmp_path, broker=table))
    assert words in str(caught.value) and caught.value.reason == "bad-config"


def test_a_broker_key_that_is_not_a_table_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_hub_config(_hub(tmp_path, broker="127.0.0.1:7443"))
    assert "broker must be a table" in str(caught.value)
