"""Hub and device config files: one owner per default, one error class naming file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from roost.config import (
    BROKER_LOCAL_DEFAULT,
    BrokerLink,
    CameraSettings,
    DeviceConfig,
    DnsSdSettings,
    camera_table,
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
        # The name travels in the hello (PROTOCOL.md section 4), so the hub's rule applies.
        ({"name": "x" * 65}, "name"),
        ({"name": "\u202ehcrop"}, "name"),
        ({"name": " porch"}, "name"),
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


def test_plain_http_is_refused_off_loopback(tmp_path: Path) -> None:
    source = tmp_path / "hub.toml"
    base = 'state_dir = "s"\ncert = "c"\nkey = "k"\nlisten = "127.0.0.1:0"\n[announce]\n'
    source.write_text(base + '[dashboard]\nlisten = "0.0.0.0:8080"\nplain_http = true\n')
    with pytest.raises(ConfigError, match="plain_http"):
        load_hub_config(source)
    source.write_text(base + '[dashboard]\nlisten = "127.0.0.1:8080"\nplain_http = true\n')
    settings = load_hub_config(source).dashboard
    assert settings is not None and settings.plain_http
    source.write_text(base + "[dashboard]\n")
    default = load_hub_config(source).dashboard
    assert default is not None and not default.plain_http
    assert default.listen == ("127.0.0.1", 8443) and default.idle_s == 900.0
    source.write_text(base)
    assert load_hub_config(source).dashboard is None


# ----------------------------------------------------------- [camera] and [dns_sd]


def test_camera_defaults_to_the_test_pattern_and_old_configs_keep_working(tmp_path: Path) -> None:
    device = load_device_config(_write(tmp_path, dict(_NODE), "device.toml"))
    assert device.camera == CameraSettings()
    assert device.camera.source == "test-pattern"
    # The top-level `source` is still the config file itself, not the camera.
    assert device.source == tmp_path / "device.toml"


def test_the_camera_table_roost_init_writes_loads_back_to_the_defaults(tmp_path: Path) -> None:
    doc = {**_NODE, "camera": camera_table()}
    assert load_device_config(_write(tmp_path, doc, "device.toml")).camera == CameraSettings()


def test_camera_table_keys(tmp_path: Path) -> None:
    camera = {
        "source": "clips/porch.mp4",
        "quality": 50,
        "loop": False,
        "format": "mp4",
        "rtsp_transport": "udp",
        "open_timeout": 2,
        "retry_initial": 0.1,
        "retry_max": 3,
        "stall_timeout": 4,
        "stable_after": 6,
    }
    device = load_device_config(_write(tmp_path, {**_NODE, "camera": camera}, "device.toml"))
    settings = device.camera
    assert settings.source == str(tmp_path / "clips/porch.mp4")  # relative to the file
    assert (settings.quality, settings.loop, settings.input_format) == (50, False, "mp4")
    assert (settings.rtsp_transport, settings.open_timeout) == ("udp", 2.0)
    health = settings.health
    assert (health.retry_initial, health.retry_max, health.stall_timeout) == (0.1, 3.0, 4.0)
    assert health.stable_after == 6.0
    url = "rtsp://cam:secret@192.0.2.9/stream"
    device = load_device_config(_write(tmp_path, {**_NODE, "camera": {"source": url}}, "d2.toml"))
    assert (
        device.camera.source == url
        and device.camera.spec.display == "rtsp://cam:***@192.0.2.9/stream"
    )


@pytest.mark.parametrize(
    ("camera", "key"),
    [
        ({"source": 5}, "camera.source"),
        ({"source": ""}, "camera.source"),
        ({"quality": 0}, "camera.quality"),
        ({"rtsp_transport": "sctp"}, "camera.rtsp_transport"),
        ({"retry_initial": 9, "retry_max": 1}, "[camera]"),
        ({"stall_timeout": 0}, "[camera]"),
    ],
)
def test_invalid_camera_keys_name_the_key(
    tmp_path: Path, camera: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_device_config(_write(tmp_path, {**_NODE, "camera": camera}, "device.toml"))


def test_dns_sd_defaults_follow_where_the_node_is(tmp_path: Path) -> None:
    # A device listening for multicast without a bootstrap list browses, on its interfaces.
    lan = {**_NODE, "announce": {"multicast": True, "interfaces": ["10.0.0.7"]}}
    device = load_device_config(_write(tmp_path, lan, "lan.toml"))
    assert device.dns_sd == DnsSdSettings(enabled=True, interfaces=("10.0.0.7",))
    with_list = {**lan, "hubs": ["10.0.0.5:17320"]}
    assert not load_device_config(_write(tmp_path, with_list, "list.toml")).dns_sd.enabled
    unicast = {**_NODE, "announce": {"multicast": False, "peers": ["127.0.0.1:9"]}}
    assert not load_device_config(_write(tmp_path, unicast, "uni.toml")).dns_sd.enabled
    forced = {**unicast, "dns_sd": {"enabled": True, "interfaces": ["10.0.0.8"]}}
    assert load_device_config(_write(tmp_path, forced, "forced.toml")).dns_sd.interfaces == (
        "10.0.0.8",
    )
    # A hub publishes unless it announces a loopback address; on that address's interface.
    hub = load_hub_config(_hub(tmp_path, advertise="10.0.0.5:17320"))
    assert hub.dns_sd == DnsSdSettings(enabled=True, interfaces=("10.0.0.5",))
    assert not load_hub_config(_hub(tmp_path, advertise="127.0.0.1:0")).dns_sd.enabled


def test_dns_sd_interfaces_must_be_ipv4_addresses(tmp_path: Path) -> None:
    bad = {**_NODE, "dns_sd": {"interfaces": ["eth0"]}}
    with pytest.raises(ConfigError, match=r"dns_sd\.interfaces"):
        load_device_config(_write(tmp_path, bad, "device.toml"))


# Found by the config fuzz target (tests/fuzz, corpus files crash-config-*): TOML's inf and
# nan reached int() and escaped as OverflowError / ValueError, and a byte that is not UTF-8
# escaped as UnicodeDecodeError, instead of a ConfigError naming the file and the key.
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize(
    ("loader", "extra", "key"),
    [
        (load_hub_config, 'listen = "127.0.0.1:4000"\nretention_mb = {v}\n', "retention_mb"),
        (load_device_config, "max_buffer_mb = {v}\n", "max_buffer_mb"),
        (load_device_config, "fps = {v}\n", "fps"),
        (load_device_config, "[connection]\nmin_dwell = {v}\n", "connection.min_dwell"),
        (load_hub_config, 'listen = "127.0.0.1:4000"\n[announce]\ninterval = {v}\n', "interval"),
    ],
)
def test_non_finite_numbers_are_config_errors_naming_the_key(
    tmp_path: Path, value: str, loader: Any, extra: str, key: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(to_toml(_NODE) + extra.format(v=value))
    with pytest.raises(ConfigError, match=f"{key} must be a (finite )?number") as caught:
        loader(path)
    assert caught.value.reason == "bad-config"


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_bytes(to_toml(_NODE).encode() + b'name = "cam\xa4"\n')
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        load_device_config(path)
    assert caught.value.reason == "bad-config"
