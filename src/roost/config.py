"""Hub and device configuration files (TOML), read with `tomllib`, written by `roost init`.

Relative paths in a file are relative to the file's own directory, so a home directory can
be moved as a whole.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost.errors import StateError
from roost.hcsp.aio import DEFAULT_GROUP, DEFAULT_PORT, UdpConfig

__all__ = [
    "DeviceConfig",
    "HubConfig",
    "load_device_config",
    "load_hub_config",
    "parse_hostport",
    "to_toml",
]


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise StateError(f"{text!r} is not HOST:PORT", reason="bad-config")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class AnnounceSettings:
    udp: UdpConfig
    interval: float = 1.0
    hold_down: float = 3.0
    freshness_ms: int = 10_000


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
    redirect_batch: int = 8
    redirect_spacing: float = 0.25
    # Where the owner's remote (guard) sessions arrive; None: no remote entrance.
    remote: tuple[str, int] | None = None
    source: Path | None = None

    @property
    def trust_dir(self) -> Path:
        return self.state_dir / "trust"


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
    min_dwell: float = 2.0
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    drain_timeout: float = 2.0
    hubs: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    source: Path | None = None

    @property
    def trust_dir(self) -> Path:
        return self.state_dir / "trust"

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise StateError(f"no configuration at {path}", reason="missing") from exc
    except tomllib.TOMLDecodeError as exc:
        raise StateError(f"{path} is not valid TOML: {exc}", reason="bad-config") from exc


def _path(base: Path, value: object, key: str) -> Path:
    if not isinstance(value, str):
        raise StateError(f"{key} must be a path string", reason="bad-config")
    path = Path(value)
    return path if path.is_absolute() else (base / path)


def _announce(section: Mapping[str, Any]) -> AnnounceSettings:
    peers = tuple(parse_hostport(p) for p in section.get("peers", []))
    udp = UdpConfig(
        bind_host=str(section.get("bind", "0.0.0.0")),
        port=int(section.get("port", DEFAULT_PORT)),
        multicast=bool(section.get("multicast", True)),
        group=str(section.get("group", DEFAULT_GROUP)),
        interfaces=tuple(str(i) for i in section.get("interfaces", [])),
        peers=peers,
    )
    return AnnounceSettings(
        udp,
        float(section.get("interval", 1.0)),
        float(section.get("hold_down", 3.0)),
        int(section.get("freshness_ms", 10_000)),
    )


def load_hub_config(path: Path) -> HubConfig:
    doc = _read(path)
    base = path.parent
    try:
        listen = parse_hostport(doc["listen"])
        return HubConfig(
            name=str(doc.get("name", path.stem)),
            state_dir=_path(base, doc["state_dir"], "state_dir"),
            cert=_path(base, doc["cert"], "cert"),
            key=_path(base, doc["key"], "key"),
            listen=listen,
            advertise=parse_hostport(doc["advertise"]) if "advertise" in doc else listen,
            api=parse_hostport(doc.get("api", "127.0.0.1:8080")),
            features=tuple(str(f) for f in doc.get("features", ["hcsp"])),
            max_devices=int(doc.get("max_devices", 16)),
            retention_bytes=int(float(doc.get("retention_mb", 1024)) * 1024 * 1024),
            announce=_announce(doc.get("announce", {})),
            redirect_batch=int(doc.get("redirect", {}).get("batch_size", 8)),
            redirect_spacing=float(doc.get("redirect", {}).get("spacing", 0.25)),
            remote=parse_hostport(doc["remote"]) if "remote" in doc else None,
            source=path,
        )
    except KeyError as exc:
        raise StateError(f"{path} lacks {exc.args[0]!r}", reason="bad-config") from exc
    except (TypeError, ValueError) as exc:
        raise StateError(f"{path}: {exc}", reason="bad-config") from exc


def load_device_config(path: Path) -> DeviceConfig:
    doc = _read(path)
    base = path.parent
    conn = doc.get("connection", {})
    try:
        return DeviceConfig(
            name=str(doc.get("name", path.stem)),
            state_dir=_path(base, doc["state_dir"], "state_dir"),
            cert=_path(base, doc["cert"], "cert"),
            key=_path(base, doc["key"], "key"),
            fps=float(doc.get("fps", 5.0)),
            width=int(doc.get("width", 320)),
            height=int(doc.get("height", 240)),
            max_buffer_frames=int(doc.get("max_buffer_frames", 10_000)),
            max_buffer_bytes=int(float(doc.get("max_buffer_mb", 256)) * 1024 * 1024),
            announce=_announce(doc.get("announce", {})),
            min_dwell=float(conn.get("min_dwell", 2.0)),
            backoff_initial=float(conn.get("backoff_initial", 0.2)),
            backoff_max=float(conn.get("backoff_max", 5.0)),
            drain_timeout=float(conn.get("drain_timeout", 2.0)),
            hubs=tuple(parse_hostport(h) for h in doc.get("hubs", [])),
            source=path,
        )
    except KeyError as exc:
        raise StateError(f"{path} lacks {exc.args[0]!r}", reason="bad-config") from exc
    except (TypeError, ValueError) as exc:
        raise StateError(f"{path}: {exc}", reason="bad-config") from exc


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
