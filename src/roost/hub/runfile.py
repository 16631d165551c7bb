"""``STATE_DIR/run.json``: a running hub's pid and the addresses it is bound to.

A hub configured with port 0 learns its ports only when it binds, so whoever must reach
it (``roost hub status``, the tests, the benchmarks) reads them here (docs/testing.md).
The hub writes the file atomically once every listener is bound and removes it when it
stops cleanly; a file left by a killed hub names a pid that is gone and ports nobody
answers on.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.config import parse_hostport
from roost.errors import ConfigError, StateError
from roost.files import atomic_write
from roost.reasons import Reason

__all__ = ["HubRunState", "read_run_file", "remove_run_file", "write_run_file"]

HostPort = tuple[str, int]


def _format(address: HostPort) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse(doc: dict[str, Any], key: str) -> HostPort:
    value = doc.get(key)
    if not isinstance(value, str):
        raise StateError(f"run file: {key} is not an address", reason=Reason.CORRUPT)
    try:
        return parse_hostport(value)
    except ConfigError as exc:
        raise StateError(f"run file: {key}: {exc}", reason=Reason.CORRUPT) from exc


@dataclass(frozen=True, slots=True)
class HubRunState:
    """What ``run.json`` says: the pid and every bound address (``remote`` may be None)."""

    pid: int
    listen: HostPort
    advertise: HostPort
    api: HostPort
    remote: HostPort | None = None
    # The dashboard's bound address and scheme (``https`` or ``http``), when it has one.
    dashboard: HostPort | None = None
    dashboard_scheme: str = "https"

    def to_json(self) -> bytes:
        """The file's bytes: one JSON object, addresses as ``host:port`` text."""
        doc = {
            "pid": self.pid,
            "listen": _format(self.listen),
            "advertise": _format(self.advertise),
            "api": _format(self.api),
            "remote": _format(self.remote) if self.remote is not None else None,
            "dashboard": (
                f"{self.dashboard_scheme}://{_format(self.dashboard)}/"
                if self.dashboard is not None
                else None
            ),
        }
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> HubRunState:
        """Parse the file's bytes; anything else than what ``to_json`` writes is corrupt."""
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise StateError(f"run file is not JSON: {exc}", reason=Reason.CORRUPT) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int):
            raise StateError("run file is not a hub's run state", reason=Reason.CORRUPT)
        return cls(
            pid=doc["pid"],
            listen=_parse(doc, "listen"),
            advertise=_parse(doc, "advertise"),
            api=_parse(doc, "api"),
            remote=_parse(doc, "remote") if doc.get("remote") is not None else None,
            **_parse_dashboard(doc),
        )


def _parse_dashboard(doc: dict[str, Any]) -> dict[str, Any]:
    url = doc.get("dashboard")
    if url is None:
        return {}
    if not isinstance(url, str) or "://" not in url:
        raise StateError("run file: dashboard is not a URL", reason=Reason.CORRUPT)
    scheme, _, rest = url.partition("://")
    try:
        return {"dashboard": parse_hostport(rest.rstrip("/")), "dashboard_scheme": scheme}
    except ConfigError as exc:
        raise StateError(f"run file: dashboard: {exc}", reason=Reason.CORRUPT) from exc


def write_run_file(path: Path, state: HubRunState) -> None:
    """Write ``run.json`` atomically, so a reader sees all of it or nothing."""
    atomic_write(path, state.to_json())


def read_run_file(path: Path) -> HubRunState:
    """Read ``run.json``; a missing file means the hub is not running (or not yet bound)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise StateError(f"{path} does not exist", reason=Reason.NOT_RUNNING) from exc
    return HubRunState.from_json(data)


def remove_run_file(path: Path) -> None:
    """Remove ``run.json`` at a clean stop (a missing file is already removed)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
