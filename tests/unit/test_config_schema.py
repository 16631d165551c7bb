"""The config schema: declared once, every key read is declared, the reference page is the
schema's, and the loaders never raise anything but ConfigError on TOML-shaped input."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import roost.config as config_module
from roost.cli.exitcodes import ExitCode, exit_code_for
from roost.cli.logsetup import JsonFormatter
from roost.cli.preflight import check_identity, check_listeners
from roost.config import load_broker_config, load_device_config, load_hub_config, to_toml
from roost.config_schema import SCHEMAS, detect_role, reference_markdown, suggest
from roost.errors import ConfigError, StateError, TransportError, listening
from roost.pki.certs import Role, cert_to_pem, key_to_pem
from roost.statelock import LOCK_NAME, StateLock
from tests.helpers.pki import TestCA

_ROOT = Path(__file__).resolve().parents[2]
_NODE = {"state_dir": "node", "cert": "node/cert.pem", "key": "node/key.pem"}
_LOADERS = {"hub": load_hub_config, "device": load_device_config, "broker": load_broker_config}


def _write(tmp_path: Path, doc: dict[str, object], name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(doc))
    return path


def test_the_committed_reference_page_is_the_schemas() -> None:
    committed = (_ROOT / "docs" / "config-reference.md").read_text()
    assert committed == reference_markdown(), (
        "docs/config-reference.md is stale: regenerate it with python -m roost.config_schema"
    )


def _full_home(tmp_path: Path) -> Path:
    from roost.cli.home import make_home

    make_home(tmp_path / "home", 1, 1, True)
    return tmp_path / "home"


def test_every_key_the_loaders_read_is_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key read with the older typed accessors but not declared would be missing from
    the reference page: declare it in roost.config_schema (one line)."""
    home = _full_home(tmp_path)
    seen: dict[str, set[str]] = {}
    original = config_module._finish

    def spy(doc: Any) -> None:
        seen[doc._schema.role] = set(doc.read)
        original(doc)

    monkeypatch.setattr(config_module, "_finish", spy)
    load_hub_config(home / "hub-1.toml")
    load_device_config(home / "device-1.toml")
    load_broker_config(home / "broker.toml")
    for role, read in seen.items():
        declared = {
            f"{t.name}.{k.name}" if t.name else k.name for t in SCHEMAS[role].tables for k in t.keys
        } | {t.name for t in SCHEMAS[role].tables}
        assert read <= declared, f"{role}: read but not declared: {sorted(read - declared)}"


def test_the_files_roost_init_writes_are_valid_and_detected(tmp_path: Path) -> None:
    home = _full_home(tmp_path)
    import tomllib

    for name, role in (
        ("hub-1.toml", "hub"),
        ("device-1.toml", "device"),
        ("broker.toml", "broker"),
    ):
        doc = tomllib.loads((home / name).read_text())
        assert detect_role(doc) == role
        _LOADERS[role](home / name)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"listen": 59449}, "listen must be a string"),
        ({"max_devices": "eight"}, "max_devices must be an integer >= 1"),
        ({"features": "hcsp,webs"}, 'write ["hcsp", "webs"]'),
        ({"features": ["hcsp", "we bs"]}, "short token"),
        ({"max_device": 8}, "max_device is not a known key (did you mean 'max_devices'?)"),
        ({"announce": {"intervall": 2}}, "did you mean 'interval'?"),
        ({"anounce": {"interval": 2}}, "anounce is not a known table (did you mean 'announce'?)"),
        ({"retention_mb": 0}, "retention_mb must be a number > 0"),
        ({"api": "127.0.0.1:70000"}, "port above 65535"),
    ],
)
def test_hub_mistakes_name_the_file_the_key_and_what_is_expected(
    tmp_path: Path, extra: dict[str, object], words: str
) -> None:
    path = _write(tmp_path, {**_NODE, "listen": "127.0.0.1:0", **extra})
    with pytest.raises(ConfigError) as caught:
        load_hub_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"width": -1}, "width must be an integer >= 1"),
        ({"fps": 0}, "fps must be a number > 0"),
        ({"fps": -3.5}, "fps must be a number > 0"),
        ({"fps": float("inf")}, "fps must be a number"),
        ({"height": 2.5}, "height must be an integer"),
        ({"connection": {"backoff_initial": 0}}, "connection.backoff_initial must be a number > 0"),
    ],
)
def test_device_mistakes_name_the_key(tmp_path: Path, extra: dict[str, object], words: str) -> None:
    path = _write(tmp_path, {**_NODE, **extra})
    with pytest.raises(ConfigError, match=None) as caught:
        load_device_config(path)
    assert words in str(caught.value), caught.value


def test_another_roles_file_is_refused_as_such(tmp_path: Path) -> None:
    hub = _write(tmp_path, {**_NODE, "listen": "127.0.0.1:0", "features": ["hcsp"]})
    with pytest.raises(ConfigError) as caught:
        load_device_config(hub)
    assert caught.value.reason == "wrong-role"
    assert "is a hub config" in str(caught.value) and "roost hub run" in str(caught.value)
    device = _write(tmp_path, {**_NODE, "fps": 2.0}, "cam.toml")
    with pytest.raises(ConfigError, match="is a device config"):
        load_hub_config(device)


def test_suggestions_only_for_close_names() -> None:
    assert suggest("max_device", ["max_devices", "listen"]) == " (did you mean 'max_devices'?)"
    assert suggest("zzz", ["max_devices", "listen"]) == ""


_SCHEMA_NAMES = sorted(
    {k.name for s in SCHEMAS.values() for t in s.tables for k in t.keys}
    | {t.name for s in SCHEMAS.values() for t in s.tables if t.name}
)
_scalars = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True)
    | st.booleans()
    | st.text(alphabet=string.printable, max_size=12)
    | st.sampled_from(["127.0.0.1:0", "[::1]:80", "node/cert.pem", "hcsp", ":", "a:99999"])
)
_values = _scalars | st.lists(_scalars, max_size=3)
_keys = st.sampled_from(_SCHEMA_NAMES) | st.text(alphabet="abcdefgh_", min_size=1, max_size=8)
_tables = st.dictionaries(_keys, _values, max_size=4)
_documents = st.dictionaries(_keys, _values | _tables, max_size=10)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=_documents, role=st.sampled_from(sorted(_LOADERS)))
def test_the_loaders_raise_only_config_errors_on_any_toml_shaped_document(
    tmp_path: Path, doc: dict[str, Any], role: str
) -> None:
    try:
        text = to_toml(doc)
    except TypeError:
        return
    path = tmp_path / "random.toml"
    path.write_text(text)
    # Anything but a ConfigError (a TypeError, a KeyError) fails the test.
    with contextlib.suppress(ConfigError):
        _LOADERS[role](path)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    role=st.sampled_from(sorted(_LOADERS)),
)
def test_the_loaders_raise_only_config_errors_on_any_bytes(
    tmp_path: Path, data: bytes, role: str
) -> None:
    path = tmp_path / "random.toml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        _LOADERS[role](path)


# ------------------------------------------------------- preflight, lock, bind, logs


def _identity(tmp_path: Path, cert_role: Role, key_of_other: bool = False) -> tuple[Path, Path]:
    ca = TestCA()
    node = ca.issue(cert_role)
    other = ca.issue(cert_role)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(cert_to_pem(node.cert))
    key.write_bytes(key_to_pem(other.key if key_of_other else node.key))
    return cert, key


def test_identity_checks_the_pair_and_the_role(tmp_path: Path) -> None:
    source = tmp_path / "hub.toml"
    cert, key = _identity(tmp_path, Role.HUB)
    assert check_identity(source, cert, key, Role.HUB) is not None
    with pytest.raises(ConfigError) as caught:
        check_identity(source, cert, key, Role.DEVICE)
    assert caught.value.reason == "wrong-role" and "is a hub certificate" in str(caught.value)
    with pytest.raises(ConfigError, match="not a broker's"):
        check_identity(source, cert, key, Role.BROKER)
    cert, key = _identity(tmp_path, Role.HUB, key_of_other=True)
    with pytest.raises(ConfigError) as caught:
        check_identity(source, cert, key, Role.HUB)
    assert caught.value.reason == "key-mismatch" and str(source) in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        check_identity(source, tmp_path / "nope.pem", key, Role.HUB)
    key.write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        check_identity(source, cert, key, Role.HUB)


def test_one_lock_per_state_folder_names_its_holder(tmp_path: Path) -> None:
    first = StateLock.acquire(tmp_path / "state", "roost hub run")
    with pytest.raises(StateError) as caught:
        StateLock.acquire(tmp_path / "state", "roost hub run")
    assert caught.value.reason == "in-use"
    assert f"pid {__import__('os').getpid()}, roost hub run" in str(caught.value)
    first.release()
    StateLock.acquire(tmp_path / "state", "roost device run").release()
    assert (tmp_path / "state" / LOCK_NAME).exists()


def test_a_taken_address_is_one_error_with_exit_code_14() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(TransportError) as caught:
            check_listeners([("status API", "tcp", ("127.0.0.1", port))])
    assert str(caught.value) == (
        f"cannot listen on 127.0.0.1:{port} for the status API: address already in use"
    )
    assert exit_code_for(caught.value) is ExitCode.ADDRESS_IN_USE
    assert exit_code_for(OSError(errno.EADDRINUSE, "in use")) is ExitCode.ADDRESS_IN_USE
    with pytest.raises(ValueError), listening("x", "127.0.0.1", 1):
        raise ValueError("not a bind problem")


def test_json_log_lines_carry_the_event_and_fields() -> None:
    record = logging.LogRecord(
        "roost.hub", logging.INFO, __file__, 1, "device %s left", ("ab:x",), None
    )
    record.event = "device-left"
    record.device = "ab:x"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["event"] == "device-left" and doc["device"] == "ab:x"
    assert doc["message"] == "device ab:x left" and doc["level"] == "info"


def test_authority_commands_that_write_take_the_folders_lock(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from roost.cli.main import _register, cli

    _register()
    ca = tmp_path / "ca"

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    assert run("ca", "init", str(ca), "--publish-url", "https://127.0.0.1:1/ca").exit_code == 0
    # Released when the command ended: empty, and free for the next one.
    assert (ca / LOCK_NAME).read_text() == ""
    held = StateLock.acquire(ca, "roost ca roll")
    try:
        before = {p.name: p.read_bytes() for p in ca.iterdir() if p.is_file()}
        for args in (("ca", "roll", str(ca)), ("ca", "tick", str(ca)), ("ca", "activate", str(ca))):
            result = run(*args)
            assert result.exit_code == ExitCode.STATE, result.output
            assert "is in use by pid" in result.output and "roost ca roll" in result.output
        assert {p.name: p.read_bytes() for p in ca.iterdir() if p.is_file()} == before
    finally:
        held.release()
    assert run("ca", "roll", str(ca)).exit_code == 0


async def test_trust_changes_are_logged_as_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import datetime as dt

    from roost.pki.authority import Authority
    from roost.pki.trust import TrustState
    from roost.pki.truststore import save_state
    from roost.pki.updater import TrustUpdater

    at = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    authority = Authority.init(tmp_path / "ca", "https://127.0.0.1:1/ca/", at)
    save_state(tmp_path / "trust", TrustState.provision(authority.ca_info(1)))
    authority.roll(at)

    async def fetch(url: str, anchors: object, floor: object) -> bytes | None:
        return authority.ca_info_bytes(2) if url.endswith("2.rcai") else None

    updater = TrustUpdater(tmp_path / "trust", fetcher=fetch)
    with caplog.at_level(logging.INFO, logger="roost.trust"):
        await updater.update_once()
        updater.commit(updater.state.promote())
    events = [(r.event, r.generation) for r in caplog.records if hasattr(r, "event")]
    assert events == [("trust-fetched", 2), ("trust-promoted", 2)]
