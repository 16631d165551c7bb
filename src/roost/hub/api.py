"""The hub's admin API: status JSON and Prometheus metrics, on the loopback admin address.

A thin adapter (STYLE.md): every handler reads what the daemon already keeps, through the
small `StatusSource` protocol, and formats it. Nothing here counts or decides anything, so
the API can never disagree with the daemon: the status JSON is `HubStatus.to_json()`, and
metrics are read from the same `status()` snapshot at scrape time by the table-driven
collector of `roost.metrics` rather than mirrored into separate counters that could drift
or be counted twice.

This address is for the machine's operator, scrapers and tools (``roost hub status``): it
listens on loopback by default and, with a token configured, answers only requests that
carry it as a bearer token. It serves no page and no frame; the home's web app, behind the
owner's login, is ``roost.hub.dashboard`` on its own TLS address (docs/dashboard.md).

Routes:

    GET /api/status                          the daemon's status as JSON
    GET /metrics                             Prometheus text exposition
"""

from __future__ import annotations

import asyncio
import hmac
import json
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from roost.httpapi import NO_STORE, ApiRunner, add_metrics, serve_app
from roost.hub.recorder import StoredFrame
from roost.hub.status import HubStatus
from roost.metrics import HUB_METRICS

__all__ = [
    "DeviceView",
    "FrameSource",
    "StatusSource",
    "build_app",
    "fetch_status",
    "start_api",
]


class DeviceView(Protocol):
    """What the API reads from one connected device's session."""

    @property
    def frames_stored(self) -> int: ...

    @property
    def last_seq(self) -> int: ...

    @property
    def connected_at(self) -> float: ...


class FrameSource(Protocol):
    """What the API reads from the recorder."""

    def latest(self, device_id: str) -> StoredFrame | None: ...


class StatusSource(Protocol):
    """What the API needs from the hub daemon; tests pass a fake with the same shape."""

    def status(self) -> HubStatus: ...

    @property
    def recorder(self) -> FrameSource: ...

    @property
    def sessions(self) -> Mapping[str, DeviceView]: ...


_SOURCE_KEY = web.AppKey("roost_status_source", StatusSource)


def build_app(daemon: StatusSource, token: str | None = None) -> web.Application:
    """Build the API application; serve it with `start_api` or any aiohttp runner.

    With ``token``, every request must carry ``Authorization: Bearer <token>``.
    """
    middlewares = [] if token is None else [_bearer(token)]
    app = web.Application(middlewares=middlewares)
    app[_SOURCE_KEY] = daemon
    app.router.add_get("/api/status", _status)
    add_metrics(app, daemon.status, HUB_METRICS)
    return app


async def start_api(
    daemon: StatusSource, host: str, port: int, token: str | None = None
) -> ApiRunner:
    """Serve the API on host:port (0 picks a free port); call `runner.cleanup()` to stop."""
    return await serve_app(build_app(daemon, token), host, port)


def _bearer(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        offered = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(offered, expected):
            return web.json_response(
                {"error": "bearer token required"},
                status=401,
                headers={**NO_STORE, "WWW-Authenticate": "Bearer"},
            )
        response: web.StreamResponse = await handler(request)
        return response

    return check


# ------------------------------------------------------------------------------ handlers


async def _status(request: web.Request) -> web.Response:
    daemon = request.app[_SOURCE_KEY]
    body = daemon.status().to_json()
    # The dashboard also wants each device's progress, which lives in the sessions rather
    # than in status(); it is added under its own key so the daemon's keys pass unchanged.
    body["devices"] = _device_rows(daemon.sessions)
    return web.json_response(body, headers=NO_STORE)


def _device_rows(sessions: Mapping[str, DeviceView]) -> list[dict[str, Any]]:
    # Sessions record connected_at on the event loop's clock, so the age is measured on it.
    now = asyncio.get_running_loop().time()
    return [
        {
            "id": device_id,
            "frames_stored": session.frames_stored,
            "last_seq": session.last_seq,
            "connected_s": round(max(0.0, now - session.connected_at), 1),
        }
        for device_id, session in sorted(sessions.items())
    ]


def fetch_status(
    host: str, port: int, timeout: float = 5.0, token: str | None = None
) -> dict[str, Any]:
    """`GET /api/status` of a running hub (blocking; for the CLI, tests and benchmarks).

    Raises OSError when the hub does not answer.
    """
    request = urllib.request.Request(f"http://{host}:{port}/api/status")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        doc: dict[str, Any] = json.loads(response.read())
    return doc
