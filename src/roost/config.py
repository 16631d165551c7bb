"""Hub and device configuration files (TOML), read with `tomllib`, written by `roost init`.

Relative paths in a file are relative to the file's own directory, so a home directory can
be moved as a whole. Every invalid or missing value is a :class:`roost.errors.ConfigError`
naming the file and the key (reason ``missing`` when the file itself is absent).
"""

from __future__ import annotations

import math
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from roost.admission import AdmissionConfig
from roost.config_schema import (
    BROKER_LIMIT_KEYS,
    BROKER_SCHEMA,
    DEVICE_SCHEMA,
    HUB_SCHEMA,
    REQUIRED,
    Key,
    Schema,
    check_document,
    convert,
)
from roost.device.source_health import SourceHealthConfig
from roost.device.sources import CameraSettings, SourceKind, parse_source
from roost.dnssd.records import DnsSdSettings
from roost.errors import ConfigError
from roost.hcsp import AnnounceConfig, RedirectConfig
from roost.hcsp.aio import UdpConfig
from roost.hcsp.documents import name_problem
from roost.reasons import Reason
from roost.rendezvous.broker_events import (
    HOLD_CONNECTION_DEFAULT,
    BrokerCoreConfig,
    PresenceConfig,
)

__all__ = [
    "BROKER_LOCAL_DEFAULT",
    "AnnounceSettings",
    "BrokerConfig",
    "BrokerLink",
    "CameraSettings",
    "DashboardSettings",
    "DeviceConfig",
    "DnsSdSettings",
    "HubConfig",
    "admission_table",
    "broker_limits_table",
    "camera_table",
    "connection_table",
    "load_broker_config",
    "load_device_config",
    "load_hub_config",
    "parse_hostport",
    "redirect_table",
    "to_toml",
]

# Each default has one owner, the frozen config of the component it tunes (STYLE.md); the
# dataclasses below and the files `roost init` writes take theirs from these instances.
_ANNOUNCE = AnnounceConfig()
_UDP = UdpConfig()
_REDIRECT = RedirectConfig()
_BROKER = BrokerCoreConfig()
_CAMERA = CameraSettings()
_SOURCE_HEALTH = SourceHealthConfig()
_ADMISSION = AdmissionConfig()
_PRESENCE = PresenceConfig()
# Section 5: the broker's UDP port (STUN's 3478) and its TLS port.
BROKER_UDP_PORT = 3478
BROKER_TLS_PORT = 7443


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a pair; a ConfigError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT", reason=Reason.BAD_CONFIG)
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class AnnounceSettings:
    """The ``[announce]`` table: the socket, and the announce core's timers."""

    udp: UdpConfig
    interval: float = _ANNOUNCE.advert_interval
    hold_down: float = _ANNOUNCE.hold_down
    freshness_ms: int = _ANNOUNCE.freshness_window_ms

    def core_config(
        self, refusal_log_interval: float = _ANNOUNCE.refusal_log_interval
    ) -> AnnounceConfig:
        """The announce core's config these settings choose; hubs and devices both use it."""
        return AnnounceConfig(
            advert_interval=self.interval,
            hold_down=self.hold_down,
            freshness_window_ms=self.freshness_ms,
            refusal_log_interval=refusal_log_interval,
        )


# --------------------------------------------------------------------------------------
# The hub's link to a broker (docs/broker.md, "Config": the hub config's ``[broker]`` table).
# Kept apart from the broker's own config (``broker.toml``), which has its block elsewhere.

# The agent's UDP bind when ``local`` is left out: every address, a port the system picks.
BROKER_LOCAL_DEFAULT = "0.0.0.0:0"


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """``[dashboard]``: the home's web app (docs/dashboard.md). The limits' defaults are
    ``roost.hub.websession.WebSessionConfig``'s and ``roost.hub.eventlog``'s."""

    listen: tuple[str, int]
    # Plain HTTP instead of TLS with the hub's certificate: only on a loopback address.
    plain_http: bool = False
    idle_s: float = 15 * 60.0
    absolute_s: float = 12 * 3600.0
    event_max_rows: int = 100_000
    event_max_days: float = 30.0


_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _dashboard(doc: _Table) -> DashboardSettings | None:
    if not doc.has("dashboard"):
        return None
    section = doc.table("dashboard")
    listen = section.hostport("listen", "127.0.0.1:8443")
    plain = section.boolean("plain_http", False)
    if plain and listen[0] not in _LOOPBACK_HOSTS:
        raise section.error("plain_http", "is allowed only when listen is a loopback address")
    return DashboardSettings(
        listen=listen,
        plain_http=plain,
        idle_s=section.number("idle_minutes", 15.0, minimum=0.1) * 60.0,
        absolute_s=section.number("absolute_hours", 12.0, minimum=0.01) * 3600.0,
        event_max_rows=section.integer("event_max_rows", 100_000, minimum=100),
        event_max_days=section.number("event_max_days", 30.0, minimum=0.01),
    )


@dataclass(frozen=True, slots=True)
class BrokerLink:
    """The ``[broker]`` table of a hub config: where the hub's agent reaches the broker.

    ``address`` and ``udp`` may each be a list of the same length (docs/broker-scale.md):
    the agent uses the first pair and moves to the next when its broker fails.
    """

    # The broker's TLS control port (enrollment, held connection, present).
    address: tuple[str, int]
    # The broker's UDP port (registrations, wake-ups, STUN).
    udp: tuple[str, int]
    # The agent's one UDP socket (registrations, wake-ups, probes, QUIC) binds here.
    local: tuple[str, int] = ("0.0.0.0", 0)
    # Further (TLS, UDP) pairs, in order, after the first.
    more: tuple[tuple[tuple[str, int], tuple[str, int]], ...] = ()
    # Keep the mutual-TLS connection to the broker open at all times, so connection
    # requests come straight over it (docs/broker.md, "Held connections").
    hold_connection: bool = HOLD_CONNECTION_DEFAULT

    @property
    def endpoints(self) -> tuple[tuple[tuple[str, int], tuple[str, int]], ...]:
        """Every (TLS, UDP) pair, the first one first."""
        return ((self.address, self.udp), *self.more)


def _broker_link(doc: _Table) -> BrokerLink | None:
    if not doc.has("broker"):
        return None
    section = doc.table("broker")
    addresses = _remote_endpoints(section, "address")
    udps = _remote_endpoints(section, "udp")
    if len(addresses) != len(udps):
        raise section.error("udp", "must list as many entries as address")
    return BrokerLink(
        address=addresses[0],
        udp=udps[0],
        local=section.hostport("local", BROKER_LOCAL_DEFAULT),
        more=tuple(zip(addresses[1:], udps[1:], strict=True)),
        hold_connection=section.value("hold_connection"),
    )


def _remote_endpoints(section: _Table, key: str) -> tuple[tuple[str, int], ...]:
    # One HOST:PORT or a list of them (the schema's ENDPOINTS kind gives a tuple either way).
    found: tuple[tuple[str, int], ...] = section.value(key)
    if not found:
        raise section.error(key, "must name at least one HOST:PORT")
    # A broker is dialled: port 0 and the unspecified address name nothing to reach.
    for host, port in found:
        if port == 0 or host in ("", "0.0.0.0", "::"):
            raise section.error(key, f"must name a reachable HOST:PORT, not {host}:{port}")
    return found


# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubConfig:
    name: str
    state_dir: Path
    cert: Path
    key: Path
    listen: tuple[str, int]
    advertise: tuple[str, int]
    api: tuple[str, int]
    features: tuple[str, ...]
    max_devices: int
    retention_bytes: int
    announce: AnnounceSettings
    redirect_batch: int = _REDIRECT.batch_size
    redirect_spacing: float = _REDIRECT.batch_spacing
    # Where the owner's remote (guard) sessions arrive; None: no remote entrance.
    remote: tuple[str, int] | None = None
    # The agent's link to a broker (``[broker]``); None: the hub is not reachable that way.
    broker: BrokerLink | None = None
    # DNS-SD (``[dns_sd]``): publish this hub as ``_roost._tcp`` and browse for others.
    dns_sd: DnsSdSettings = field(default_factory=DnsSdSettings)
    source: Path | None = None
    # The home's web app (``[dashboard]``); None: no dashboard on this hub.
    dashboard: DashboardSettings | None = None
    # A file holding the bearer token ``/api/status`` and ``/metrics`` then require on the
    # admin address (``api``); None: the admin address answers anyone who can reach it, so
    # it belongs on loopback (the default).
    api_token_file: Path | None = None
    # Refused channels and announcements are logged at most once per source host per
    # this many seconds (PROTOCOL.md preamble); every one is still counted.
    refusal_log_interval: float = _ANNOUNCE.refusal_log_interval
    # Caps, deadlines and HTTP limits of every listener (``[admission]``, docs/limits.md).
    admission: AdmissionConfig = _ADMISSION

    @property
    def trust_dir(self) -> Path:
        return self.state_dir / "trust"

    @property
    def run_file(self) -> Path:
        """Where a running hub reports its pid and bound addresses (docs/testing.md)."""
        return self.state_dir / "run.json"


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    name: str
    state_dir: Path
    cert: Path
    key: Path
    fps: float
    width: int
    height: int
    max_buffer_frames: int
    max_buffer_bytes: int
    announce: AnnounceSettings
    # The connection timers are owned here until the device has a connection core of its
    # own: how long to stay on a hub before following a better one, the reconnect back-off,
    # and how long a redirect may take to flush the spool.
    min_dwell: float = 2.0
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    drain_timeout: float = 2.0
    hubs: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    # Where frames come from (``[camera]``); ``source`` below is the config file itself.
    camera: CameraSettings = field(default_factory=CameraSettings)
    # DNS-SD (``[dns_sd]``): browse for hubs, as candidates besides announcements.
    dns_sd: DnsSdSettings = field(default_factory=DnsSdSettings)
    source: Path | None = None
    # Refused redirects and failed connections are logged at most once per hub host per
    # this many seconds (PROTOCOL.md preamble); every one is still counted.
    refusal_log_interval: float = _ANNOUNCE.refusal_log_interval

    @property
    def trust_dir(self) -> Path:
        return self.state_dir / "trust"

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"


def _field_default(cls: type[Any], name: str) -> Any:
    """The default of dataclass field ``name``: read where it is defined, never repeated."""
    default = next(f.default for f in fields(cls) if f.name == name)
    if default is MISSING:
        raise LookupError(f"{cls.__name__}.{name} has no default")
    return default


_CONNECTION_KEYS = ("min_dwell", "backoff_initial", "backoff_max", "drain_timeout")


def connection_table() -> dict[str, object]:
    """The ``[connection]`` table of a device config, at its defaults (for `roost init`)."""
    return {key: _field_default(DeviceConfig, key) for key in _CONNECTION_KEYS}


def camera_table() -> dict[str, object]:
    """The ``[camera]`` table of a device config, at its defaults (for `roost init`)."""
    return {
        "source": _CAMERA.source,
        "quality": _CAMERA.quality,
        "loop": _CAMERA.loop,
        "rtsp_transport": _CAMERA.rtsp_transport,
        "open_timeout": _CAMERA.open_timeout,
        "retry_initial": _SOURCE_HEALTH.retry_initial,
        "retry_max": _SOURCE_HEALTH.retry_max,
        "stall_timeout": _SOURCE_HEALTH.stall_timeout,
        "stable_after": _SOURCE_HEALTH.stable_after,
    }


def redirect_table() -> dict[str, object]:
    """The ``[redirect]`` table of a hub config, at its defaults (for `roost init`)."""
    return {"batch_size": _REDIRECT.batch_size, "spacing": _REDIRECT.batch_spacing}


class _Table:
    """One table of a config file, read key by key so that every error names the file and
    the key (``hub-1.toml: announce.hold_down must be a finite number >= 0``).

    ``value(key)`` reads a key declared in the schema (roost.config_schema): checked,
    converted, and defaulted there. The typed accessors below remain for keys read without
    a declaration; every key read either way is recorded in ``read`` (shared by the
    file's tables), so the unknown-key check never refuses a key the loader uses.
    """

    __slots__ = ("_doc", "_path", "_prefix", "_schema", "read")

    def __init__(
        self,
        path: Path,
        doc: Mapping[str, Any],
        prefix: str = "",
        schema: Schema | None = None,
        read: set[str] | None = None,
    ) -> None:
        self._path = path
        self._doc = doc
        self._prefix = prefix
        self._schema = schema
        self.read: set[str] = set() if read is None else read

    def _declared(self, key: str) -> Key | None:
        if self._schema is None:
            return None
        table = self._schema.table(self._prefix.rstrip("."))
        return table.key(key) if table is not None else None

    @property
    def document(self) -> Mapping[str, Any]:
        return self._doc

    def value(self, key: str) -> Any:
        """A declared key's value, converted (paths resolved, HOST:PORT split), or its
        schema default; the document was checked against the schema before."""
        declared = self._declared(key)
        if declared is None:
            raise LookupError(f"{self._prefix}{key} is not declared in roost.config_schema")
        self.read.add(self._prefix + key)
        raw = self._doc.get(key, declared.default)
        if raw is REQUIRED:
            raise self.error(key, f"is missing: it must be {declared.expected()}")
        return convert(declared, raw, self._path)

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._path}: {self._prefix}{key} {problem}", reason=Reason.BAD_CONFIG)

    def invalid(self, problem: str) -> ConfigError:
        where = f"[{self._prefix.rstrip('.')}]" if self._prefix else "the file"
        return ConfigError(f"{self._path}: {where} {problem}", reason=Reason.BAD_CONFIG)

    def has(self, key: str) -> bool:
        return key in self._doc

    def keys(self) -> list[str]:
        return list(self._doc)

    def _get(self, key: str, default: object) -> object:
        self.read.add(self._prefix + key)
        if key in self._doc:
            return self._doc[key]
        if default is _REQUIRED:
            raise ConfigError(f"{self._path} lacks {self._prefix}{key!r}", reason=Reason.BAD_CONFIG)
        return default

    def table(self, key: str) -> _Table:
        value = self._get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, "must be a table")
        return _Table(self._path, value, f"{self._prefix}{key}.", self._schema, self.read)

    def string(self, key: str, default: object = None) -> str:
        value = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value

    def strings(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        value = self._get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self._get(key, default)
        # TOML allows inf and nan; neither is a duration, a rate or a size (nan even passes
        # every comparison), and int(inf) would escape as OverflowError.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < minimum
        ):
            raise self.error(key, f"must be a finite number >= {minimum:g}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise self.error(key, f"must be an integer {bound}")
        return value

    def path(self, key: str) -> Path:
        value = self._get(key, _REQUIRED)
        if not isinstance(value, str):
            raise self.error(key, "must be a path string")
        # Relative to the file's own directory, so a home can be moved as a whole.
        path = Path(value)
        return path if path.is_absolute() else (self._path.parent / path)

    def hostport(self, key: str, default: object = None) -> tuple[str, int]:
        return self._as_hostport(key, self.string(key, default))

    def hostports(self, key: str) -> tuple[tuple[str, int], ...]:
        return tuple(self._as_hostport(key, text) for text in self.strings(key))

    def _as_hostport(self, key: str, text: str) -> tuple[str, int]:
        try:
            return parse_hostport(text)
        except ConfigError as exc:
            raise self.error(key, f"holds {text!r}, not HOST:PORT") from exc


_REQUIRED = object()


def _read(path: Path, schema: Schema) -> _Table:
    """Parse ``path`` and check it against ``schema`` (role, types, ranges, required keys);
    unknown keys are refused by :func:`_finish`, once the loader has said what it reads."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"no configuration at {path}", reason=Reason.MISSING) from exc
    except IsADirectoryError as exc:
        raise ConfigError(
            f"{path} is a folder, not a config file", reason=Reason.BAD_CONFIG
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}", reason=Reason.BAD_CONFIG
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text", reason=Reason.BAD_CONFIG) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", reason=Reason.BAD_CONFIG) from exc
    check_document(path, raw, schema, also_known=None)
    return _Table(path, raw, "", schema)


def _finish(doc: _Table) -> None:
    """Refuse keys neither declared nor read (a misspelt key is never silently ignored)."""
    if doc._schema is not None:
        check_document(doc._path, doc.document, doc._schema, also_known=frozenset(doc.read))


def _announce(doc: _Table) -> AnnounceSettings:
    section = doc.table("announce")
    udp = UdpConfig(
        bind_host=section.value("bind"),
        port=section.value("port"),
        multicast=section.value("multicast"),
        group=section.value("group"),
        interfaces=section.value("interfaces"),
        peers=section.value("peers"),
    )
    settings = AnnounceSettings(
        udp,
        section.value("interval"),
        section.value("hold_down"),
        section.value("freshness_ms"),
    )
    # The announce core's own checks decide what is valid (one owner of every bound).
    try:
        AnnounceConfig(
            advert_interval=settings.interval,
            hold_down=settings.hold_down,
            freshness_window_ms=settings.freshness_ms,
        )
    except ValueError as exc:
        raise section.invalid(f"is invalid: {exc}") from exc
    return settings


def _name(doc: _Table, path: Path) -> str:
    return str(doc.value("name")) or path.stem


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _dns_sd(doc: _Table, default_on: bool, interfaces: Sequence[str]) -> DnsSdSettings:
    """The ``[dns_sd]`` table; left out, DNS-SD is on where the node has a LAN to use."""
    section = doc.table("dns_sd")
    enabled = section.boolean("enabled", default_on)
    chosen = section.strings("interfaces", tuple(interfaces))
    for address in chosen:
        try:
            socket.inet_aton(address)
        except OSError as exc:
            raise section.error("interfaces", f"holds {address!r}, not an IPv4 address") from exc
    return DnsSdSettings(enabled=enabled, interfaces=chosen)


def _hub_dns_sd(
    doc: _Table, advertise: tuple[str, int], announce: AnnounceSettings
) -> DnsSdSettings:
    # A hub announcing a loopback address is reachable from this machine only: a LAN has
    # nothing to learn from it. Otherwise it publishes on its announce interfaces, or on
    # the interface of the address it announces.
    host = advertise[0]
    interfaces = announce.udp.interfaces or ((host,) if host not in ("0.0.0.0", "") else ())
    return _dns_sd(doc, not _is_loopback(host), interfaces)


def _camera(doc: _Table, width: int, height: int) -> CameraSettings:
    """The ``[camera]`` table; a relative file path is relative to the config file."""
    section = doc.table("camera")
    text = section.string("source", _CAMERA.source)
    spec = parse_source(text)
    if spec.kind is SourceKind.FILE:
        if not text:
            raise section.error("source", "must name a source")
        text = str(section.path("source"))
    if spec.kind is SourceKind.TEST_PATTERN and (width < 16 or height < 16):
        raise doc.error("width", "and height must be at least 16 for the test pattern")
    transport = section.string("rtsp_transport", _CAMERA.rtsp_transport)
    if transport not in ("tcp", "udp"):
        raise section.error("rtsp_transport", 'must be "tcp" or "udp"')
    try:
        health = SourceHealthConfig(
            retry_initial=section.number("retry_initial", _SOURCE_HEALTH.retry_initial),
            retry_max=section.number("retry_max", _SOURCE_HEALTH.retry_max),
            stall_timeout=section.number("stall_timeout", _SOURCE_HEALTH.stall_timeout),
            stable_after=section.number("stable_after", _SOURCE_HEALTH.stable_after),
        )
    except ConfigError as exc:
        raise section.invalid(f"is invalid: {exc}") from exc
    return CameraSettings(
        source=text,
        quality=section.integer("quality", _CAMERA.quality, minimum=1, maximum=95),
        loop=section.boolean("loop", _CAMERA.loop),
        input_format=section.string("format", _CAMERA.input_format),
        rtsp_transport=transport,
        open_timeout=section.number("open_timeout", _CAMERA.open_timeout),
        health=health,
    )


def load_hub_config(path: Path) -> HubConfig:
    """Read a hub's TOML config; a :class:`ConfigError` names the file and the key."""
    doc = _read(path, HUB_SCHEMA)
    listen = doc.value("listen")
    advertise = doc.value("advertise") or listen
    announce = _announce(doc)
    redirect = doc.table("redirect")
    config = HubConfig(
        name=_name(doc, path),
        state_dir=doc.value("state_dir"),
        cert=doc.value("cert"),
        key=doc.value("key"),
        listen=listen,
        advertise=advertise,
        api=doc.value("api"),
        features=doc.value("features"),
        max_devices=doc.value("max_devices"),
        retention_bytes=int(doc.value("retention_mb") * 1024 * 1024),
        announce=announce,
        redirect_batch=redirect.value("batch_size"),
        redirect_spacing=redirect.value("spacing"),
        remote=doc.value("remote"),
        broker=_broker_link(doc),
        dns_sd=_hub_dns_sd(doc, advertise, announce),
        source=path,
        dashboard=_dashboard(doc),
        api_token_file=doc.path("api_token_file") if doc.has("api_token_file") else None,
        admission=_admission(doc),
    )
    _finish(doc)
    return config


def load_device_config(path: Path) -> DeviceConfig:
    """Read a device's TOML config; a :class:`ConfigError` names the file and the key."""
    doc = _read(path, DEVICE_SCHEMA)
    conn = doc.table("connection")
    timers = {key: conn.value(key) for key in _CONNECTION_KEYS}
    width = doc.value("width")
    height = doc.value("height")
    announce = _announce(doc)
    hubs = doc.value("hubs")
    # Browsing is on by default where a bootstrap list is not given and the device
    # listens for multicast announcements: it is on a LAN, and DNS-SD may reach hubs whose
    # announcements do not arrive. A loopback home (unicast peers) does not browse.
    browse = not hubs and announce.udp.multicast
    name = _name(doc, path)
    # The name travels in the hello (PROTOCOL.md section 4): refuse here one the hub would.
    if (problem := name_problem(name)) is not None:
        raise doc.error("name", f"{problem} (a device's name travels in its hello)")
    config = DeviceConfig(
        name=name,
        state_dir=doc.value("state_dir"),
        cert=doc.value("cert"),
        key=doc.value("key"),
        fps=doc.value("fps"),
        width=width,
        height=height,
        max_buffer_frames=doc.value("max_buffer_frames"),
        max_buffer_bytes=int(doc.value("max_buffer_mb") * 1024 * 1024),
        announce=announce,
        min_dwell=timers["min_dwell"],
        backoff_initial=timers["backoff_initial"],
        backoff_max=timers["backoff_max"],
        drain_timeout=timers["drain_timeout"],
        hubs=hubs,
        camera=_camera(doc, width, height),
        dns_sd=_dns_sd(doc, browse, announce.udp.interfaces),
        source=path,
    )
    _finish(doc)
    return config


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(doc: Mapping[str, object], comment: str = "") -> str:
    """A small TOML writer for flat tables: enough for the files `roost init` writes."""
    lines = [f"# {line}" for line in comment.splitlines()]
    tables: list[tuple[str, Mapping[str, object]]] = []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the broker


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """``broker.toml`` (docs/broker.md, "Configuration"): files, addresses and the core's
    tunables (``interval_s`` at the top, the rest in ``[limits]``)."""

    name: str
    state_dir: Path
    cert: Path
    key: Path
    udp: tuple[str, int]
    tls: tuple[str, int]
    api: tuple[str, int] | None
    core: BrokerCoreConfig
    max_channels: int = 4096
    source: Path | None = None
    # Caps, deadlines and HTTP limits of the TLS port and the API (docs/limits.md).
    admission: AdmissionConfig = _ADMISSION
    # docs/broker-scale.md: "memory" (one process) or a redis://, rediss://, unix:// or
    # redis+sentinel:// URL shared by several broker processes.
    registry: str = "memory"
    # This process's name in the shared registry (default: name-host-pid).
    node: str | None = None
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    # SO_REUSEPORT worker processes on this host (`roost broker run --workers N`).
    workers: int = 1
    reuse_port: bool = False
    # The node link's listener (docs/broker-scale.md, "Node link"); None: pub/sub only.
    node_link: tuple[str, int] | None = ("127.0.0.1", 0)

    @property
    def shared(self) -> bool:
        return self.registry != "memory"

    @property
    def trust_dir(self) -> Path:
        return self.state_dir / "trust"


# Every core field but interval_s (a top-level key) may be set in [limits].
_LIMIT_KEYS = BROKER_LIMIT_KEYS


def broker_limits_table() -> dict[str, object]:
    """The ``[limits]`` table of broker.toml at its defaults (for `roost init`)."""
    return {key: getattr(_BROKER, key) for key in _LIMIT_KEYS}


def load_broker_config(path: Path) -> BrokerConfig:
    """Read ``broker.toml``; a :class:`ConfigError` names the file and the key."""
    doc = _read(path, BROKER_SCHEMA)
    limits = doc.table("limits")
    values: dict[str, Any] = {"interval_s": doc.value("interval_s")}
    for key in _LIMIT_KEYS:
        values[key] = limits.value(key)
    try:
        core = BrokerCoreConfig(**values)
    except ValueError as exc:
        raise limits.invalid(f"is invalid: {exc}") from exc
    max_channels: int = doc.value("max_channels")
    if core.max_held >= max_channels:
        # Held connections count among the TLS channels: issuers need the rest.
        raise limits.error("max_held", f"must be below max_channels ({max_channels})")
    config = BrokerConfig(
        name=_name(doc, path),
        state_dir=doc.value("state_dir"),
        cert=doc.value("cert"),
        key=doc.value("key"),
        udp=doc.value("udp"),
        tls=doc.value("tls"),
        api=doc.value("api"),
        core=core,
        max_channels=max_channels,
        source=path,
        admission=_admission(doc),
        **_shared_registry(doc),
    )
    _finish(doc)
    return config


def _shared_registry(doc: _Table) -> dict[str, Any]:
    """``registry``, ``node``, ``workers``, ``presence_every``, ``registry_prefix``,
    ``presence_cache_s``, ``node_link``, ``node_link_local``."""
    registry = doc.string("registry", "memory")
    if registry != "memory" and "://" not in registry:
        raise doc.error("registry", f"must be 'memory' or a redis URL, not {registry!r}")
    try:
        presence = PresenceConfig(
            every=doc.integer("presence_every", _PRESENCE.every, minimum=1),
            prefix=doc.string("registry_prefix", _PRESENCE.prefix),
            lookup_cache_s=doc.number("presence_cache_s", _PRESENCE.lookup_cache_s),
            local_link=doc.boolean("node_link_local", _PRESENCE.local_link),
        )
    except ValueError as exc:
        raise doc.error("registry_prefix", str(exc)) from exc
    workers = doc.integer("workers", 1, minimum=1)
    if workers > 1 and registry == "memory":
        raise doc.error("workers", "several workers need a shared registry (redis://…)")
    node = doc.string("node", "") or None
    node_link: tuple[str, int] | None = None
    if doc.string("node_link", "127.0.0.1:0") != "off":
        node_link = doc.hostport("node_link", "127.0.0.1:0")
        if node_link[0] in ("", "0.0.0.0", "::"):
            raise doc.error(
                "node_link", "is advertised to the other brokers: give this host's address"
            )
    return {
        "registry": registry,
        "node": node,
        "presence": presence,
        "workers": workers,
        "node_link": node_link,
    }


# ------------------------------------------------------------------- admission (both)

_ADMISSION_KEYS = tuple(f.name for f in fields(AdmissionConfig))


def admission_table() -> dict[str, object]:
    """The ``[admission]`` table at its defaults (hub.toml and broker.toml)."""
    return {key: getattr(_ADMISSION, key) for key in _ADMISSION_KEYS}


def _admission(doc: _Table) -> AdmissionConfig:
    """``[admission]``: every field of ``AdmissionConfig``, each optional."""
    table = doc.table("admission")
    unknown = sorted(set(table.keys()) - set(_ADMISSION_KEYS))
    if unknown:
        raise table.invalid(f"has unknown keys {unknown}")
    values: dict[str, Any] = {}
    for key in _ADMISSION_KEYS:
        default = getattr(_ADMISSION, key)
        if isinstance(default, int):
            values[key] = table.integer(key, default)
        else:
            values[key] = table.number(key, default)
    try:
        return AdmissionConfig(**values)
    except ValueError as exc:
        raise table.invalid(f"is invalid: {exc}") from exc
