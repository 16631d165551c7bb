"""The hub's HTTP API and dashboard: status JSON, latest frames, Prometheus metrics.

A thin adapter (STYLE.md): every handler reads what the daemon already keeps, through the
small `StatusSource` protocol, and formats it. Nothing here counts or decides anything, so
the API can never disagree with the daemon: the status JSON is `HubStatus.to_json()`, and
metrics are read from the same `status()` snapshot at scrape time by the table-driven
collector of `roost.metrics` rather than mirrored into separate counters that could drift
or be counted twice.

Routes:

    GET /                                    the dashboard (HTML, polls /api/status)
    GET /api/status                          the daemon's status as JSON
    GET /api/devices/{device_id}/latest.jpg  the newest stored frame of one device
    GET /metrics                             Prometheus text exposition
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import urllib.request
from collections.abc import Mapping
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from roost.admission import Admission
from roost.errors import StateError
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

# Device identifiers are "ab:" plus 22 base64url characters (PROTOCOL.md section 1); the
# route refuses anything else before it reaches the recorder.
_DEVICE_ID = re.compile(r"ab:[A-Za-z0-9_-]{22}")

# A device chooses its frames' mime type, so only image types are served inline; anything
# else is sent as an opaque download so a hostile device cannot get HTML or script run in
# the dashboard's origin.
_INLINE_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})

_TEMPLATE_PACKAGE = "roost.hub"
_TEMPLATE_NAME = "dashboard.html"
_NONCE_PLACEHOLDER = "__ROOST_CSP_NONCE__"


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
_TEMPLATE_KEY = web.AppKey("roost_dashboard_template", str)


def build_app(daemon: StatusSource) -> web.Application:
    """Build the API application; serve it with `start_api` or any aiohttp runner."""
    app = web.Application()
    app[_SOURCE_KEY] = daemon
    # The template is read once: it is package data and does not change while running.
    app[_TEMPLATE_KEY] = (
        resources.files(_TEMPLATE_PACKAGE)
        .joinpath("templates", _TEMPLATE_NAME)
        .read_text(encoding="utf-8")
    )
    app.router.add_get("/", _dashboard)
    app.router.add_get("/api/status", _status)
    app.router.add_get("/api/devices/{device_id}/latest.jpg", _latest_frame)
    add_metrics(app, daemon.status, HUB_METRICS)
    return app


async def start_api(
    daemon: StatusSource, host: str, port: int, *, admission: Admission | None = None
) -> ApiRunner:
    """Serve the API on host:port (0 picks a free port); call `runner.cleanup()` to stop.

    ``admission`` is the hub's (``HubDaemon.admission``), so the API's connections count
    toward the same caps as its TLS ports (docs/limits.md)."""
    return await serve_app(build_app(daemon), host, port, admission=admission)


# ------------------------------------------------------------------------------ handlers


async def _dashboard(request: web.Request) -> web.Response:
    # A fresh nonce per page lets the inline script and style run under a policy that
    # allows nothing else, so even a missed escape could not load or run foreign code.
    nonce = secrets.token_urlsafe(16)
    page = request.app[_TEMPLATE_KEY].replace(_NONCE_PLACEHOLDER, nonce)
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    headers = {
        **NO_STORE,
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return web.Response(text=page, content_type="text/html", headers=headers)


async def _status(request: web.Request) -> web.Response:
    daemon = request.app[_SOURCE_KEY]
    body = daemon.status().to_json()
    # The dashboard also wants each device's progress, which lives in the sessions rather
    # than in status(); it is added under its own key so the daemon's keys pass unchanged.
    body["devices"] = _device_rows(daemon.sessions)
    return web.json_response(body, headers=NO_STORE)


async def _latest_frame(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    if not _DEVICE_ID.fullmatch(device_id):
        return _error(400, "device id must be 'ab:' followed by 22 base64url characters")
    recorder = request.app[_SOURCE_KEY].recorder
    try:
        # The recorder holds its lock while a batch is fsynced, so reading it on the event
        # loop could stall every device channel; a worker thread waits instead.
        frame = await asyncio.to_thread(recorder.latest, device_id)
    except StateError:
        # The details (paths) stay in the hub's log, not in a response.
        return _error(500, "the latest frame could not be read")
    if frame is None:
        return _error(404, "no frame stored for this device")
    headers = {
        **NO_STORE,
        "X-Roost-Seq": str(frame.seq),
        "X-Roost-Captured-At": str(frame.captured_at_ms),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if frame.mime in _INLINE_IMAGE_TYPES:
        content_type = frame.mime
    else:
        content_type = "application/octet-stream"
        headers["Content-Disposition"] = "attachment"
    return web.Response(body=frame.payload, content_type=content_type, headers=headers)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=NO_STORE)


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


def fetch_status(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """`GET /api/status` of a running hub (blocking; for the CLI, tests and benchmarks).

    Raises OSError when the hub does not answer.
    """
    url = f"http://{host}:{port}/api/status"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        doc: dict[str, Any] = json.loads(response.read())
    return doc
