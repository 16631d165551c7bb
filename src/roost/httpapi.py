"""What every daemon's HTTP API shares (adapter, aiohttp): serving on an address with the
bound port reported, and ``/metrics`` from one table-driven collector (``roost.metrics``).

The hub's API (``roost.hub.api``) and the broker's (``roost.rendezvous.broker_aio``) both
serve through here, so starting a site, cleaning up when the bind fails and answering a
scrape are written once.

Every connection is admitted first (``roost.admission``: the daemon's cap on
unauthenticated connections, in total and per source), must deliver its request headers
within a deadline and ends when silent; header sizes and the body's length are checked
before the body is read. Every refusal (a request that does not parse, an oversized one, a
path or method the API does not serve) is counted under its reason in the daemon's counter
and logged once per source per interval; aiohttp's own traceback per malformed request is
replaced by that one line, while an error of our own handlers is still logged in full.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from roost.admission import Admission, AdmissionConfig, Ticket
from roost.errors import listening
from roost.metrics import MetricRow, StatusCollector
from roost.reasons import Reason

__all__ = ["NO_STORE", "ApiRunner", "add_metrics", "serve_app"]

# Status and metrics describe this moment: no cache may answer for the daemon.
NO_STORE = {"Cache-Control": "no-store"}

_REGISTRY_KEY = web.AppKey("roost_metrics_registry", CollectorRegistry)
_ADMISSION_KEY = web.AppKey("roost_admission", Admission)
_WHAT_KEY = web.AppKey("roost_listener_name", str)
_log = logging.getLogger("roost.http")

# Refusals by HTTP status; any other 4xx is ``http-refused``.
_STATUS_REASONS = {
    400: Reason.BAD_REQUEST,
    404: Reason.NOT_FOUND,
    405: Reason.METHOD_NOT_ALLOWED,
    411: Reason.LENGTH_REQUIRED,
    413: Reason.BODY_TOO_LARGE,
    414: Reason.HEADER_TOO_LARGE,
    431: Reason.HEADER_TOO_LARGE,
}


class ApiRunner(web.AppRunner):
    """An `AppRunner` that reports the port its first site is bound to."""

    @property
    def bound_port(self) -> int:
        for address in self.addresses:
            # TCP addresses are (host, port) or (host, port, flowinfo, scope_id).
            if isinstance(address, tuple) and len(address) >= 2:
                port: int = address[1]
                return port
        raise RuntimeError("the API is not listening")


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    admission: Admission | None = None,
    what: str = "api",
) -> ApiRunner:
    """Serve ``app`` on host:port (0 picks a free port); call ``runner.cleanup()`` to stop.

    ``admission`` is the daemon's (its caps count this listener's connections with its
    other ports'); without one the API gets limits of its own at their defaults.
    """
    if admission is None:
        admission = Admission(AdmissionConfig(), collections.Counter(), _log)
    config = admission.config
    app[_ADMISSION_KEY] = admission
    app[_WHAT_KEY] = what
    app.middlewares.append(_refusals)
    # Dashboards and scrapers poll, so per-request access logs would drown the daemon's
    # own log; refusals are counted and logged by the middleware and the connection.
    runner = ApiRunner(
        app,
        access_log=None,
        keepalive_timeout=config.http_idle_timeout_s,
        max_line_size=config.http_max_line_size,
        max_field_size=config.http_max_field_size,
        max_headers=config.http_max_headers,
    )
    await runner.setup()
    try:
        with listening(what, host, port):
            await _AdmittedSite(runner, host, port, admission, what).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class _AdmittedSite(web.TCPSite):
    """A TCP site whose every connection runs behind :class:`_AdmittedConnection`."""

    __slots__ = ("_admission", "_what")

    def __init__(
        self, runner: ApiRunner, host: str, port: int, admission: Admission, what: str
    ) -> None:
        super().__init__(runner, host, port)
        self._admission = admission
        self._what = what

    async def start(self) -> None:
        await web.BaseSite.start(self)
        handler_factory = self._runner.server
        assert handler_factory is not None
        admission, what = self._admission, self._what
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _AdmittedConnection(admission, handler_factory(), what),
            self._host,
            self._port,
            backlog=self._backlog,
        )


class _RefusalLogger(logging.LoggerAdapter[logging.Logger]):
    """Stands in for aiohttp's logger on one connection: a request the parser refuses is
    one counted, rate-logged refusal instead of a traceback; other errors pass through."""

    def __init__(self, connection: _AdmittedConnection) -> None:
        super().__init__(_log, {})
        self._connection = connection

    def _refused(self, kwargs: Any) -> bool:
        error = kwargs.get("exc_info")
        if not isinstance(error, HttpProcessingError):
            return False
        if isinstance(error, LineTooLong) or "too many headers" in str(error).lower():
            reason = Reason.HEADER_TOO_LARGE
        elif isinstance(error, BadHttpMethod):
            reason = Reason.METHOD_NOT_ALLOWED
        else:
            reason = Reason.BAD_REQUEST
        self._connection.refuse(reason)
        return True

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._refused(kwargs):
            super().exception(msg, *args, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._refused(kwargs):
            super().debug(msg, *args, **kwargs)


class _AdmittedConnection(asyncio.Protocol):
    """One HTTP connection: admitted, held to a header deadline and an idle limit, its
    parser's refusals counted; everything else is aiohttp's ``RequestHandler``."""

    def __init__(self, admission: Admission, inner: Any, what: str) -> None:
        self._admission = admission
        self._inner = inner
        self._what = what
        self._ticket: Ticket | None = None
        self._transport: asyncio.Transport | None = None
        self._source = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._last_received = 0.0
        # When the current request's headers started (None: between requests) and the
        # last bytes seen, to find the blank line that ends them across reads.
        self._header_started: float | None = None
        self._tail = b""
        self._requests = 0
        self._bytes_seen = False
        self._refused = False

    def refuse(self, reason: str) -> None:
        """Count a refusal on this connection (once per connection)."""
        if not self._refused:
            self._refused = True
            self._admission.refuse(reason, self._source, self._what)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._source = self._admission.source_of(transport.get_extra_info("peername"))
        self._ticket = self._admission.try_admit(self._source, self._what)
        if self._ticket is None:
            self._transport.abort()
            return
        self._inner.logger = _RefusalLogger(self)
        self._inner.connection_made(transport)
        loop = asyncio.get_running_loop()
        self._last_received = loop.time()
        self._header_started = self._last_received
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        config = self._admission.config
        deadline = self._last_received + config.http_idle_timeout_s
        if self._header_started is not None:
            deadline = min(deadline, self._header_started + config.http_header_timeout_s)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._transport is None or self._transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        config = self._admission.config
        started = self._header_started
        if started is not None and now >= started + config.http_header_timeout_s:
            if not self._bytes_seen:
                self.refuse(Reason.SILENT_CONNECTION)
            elif self._requests == 0 or self._tail:
                self.refuse(Reason.HEADER_TIMEOUT)
            self._transport.abort()
            return
        if now >= self._last_received + config.http_idle_timeout_s:
            if self._transport.get_write_buffer_size() == 0:
                self._transport.abort()  # an idle keep-alive connection: not a refusal
                return
            self._last_received = now
        self._arm(loop)

    def data_received(self, data: bytes) -> None:
        if self._ticket is None:
            return
        loop = asyncio.get_running_loop()
        self._last_received = loop.time()
        self._bytes_seen = True
        self._track_headers(data)
        self._arm(loop)
        self._inner.data_received(data)

    def _track_headers(self, data: bytes) -> None:
        if self._header_started is None:
            self._header_started = self._last_received
        window = self._tail + data
        end = window.rfind(b"\r\n\r\n")
        if end >= 0:
            self._requests += 1
            rest = window[end + 4 :]
            self._header_started = self._last_received if rest else None
            self._tail = rest[-3:]
        else:
            self._tail = window[-3:]

    def eof_received(self) -> bool | None:
        if self._ticket is None:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        if self._ticket is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._ticket is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ticket is None:
            return
        self._ticket.release()
        self._inner.connection_lost(exc)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _refusals(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Refuse a body above the limit before it is read, and count every 4xx answer."""
    admission = request.app[_ADMISSION_KEY]
    limit = admission.config.http_max_body_bytes
    length = request.content_length
    refused: web.Response | None = None
    if length is not None and length > limit:
        refused = web.json_response({"error": f"body above {limit} bytes"}, status=413)
    elif length is None and request.body_exists:
        refused = web.json_response({"error": "a body needs a Content-Length"}, status=411)
    if refused is not None:
        # The unread body must not be waited for: answer and close the connection.
        refused.force_close()
        _count_status(request, refused.status)
        return refused
    try:
        response = await handler(request)
    except web.HTTPException as refusal:
        _count_status(request, refusal.status)
        raise
    _count_status(request, response.status)
    return response


def _count_status(request: web.Request, status: int) -> None:
    if not 400 <= status < 500:
        return
    admission = request.app[_ADMISSION_KEY]
    source = admission.source_of((request.remote or "?",))
    reason = _STATUS_REASONS.get(status, Reason.HTTP_REFUSED)
    admission.refuse(reason, source, request.app[_WHAT_KEY])


S = TypeVar("S")


def add_metrics(
    app: web.Application, snapshot: Callable[[], S], table: Sequence[MetricRow[S]]
) -> None:
    """Route ``/metrics`` to a collector over ``snapshot()`` walking ``table``."""
    # A registry per application keeps two daemons in one process (tests, the demo) from
    # colliding in the global registry and keeps process metrics out of the page.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot, table))
    app[_REGISTRY_KEY] = registry
    app.router.add_get("/metrics", _metrics)


async def _metrics(request: web.Request) -> web.Response:
    # Collection runs on the event loop on purpose: a daemon's status() reads the loop's
    # clock and must not be called from another thread.
    output = generate_latest(request.app[_REGISTRY_KEY])
    return web.Response(body=output, headers={**NO_STORE, "Content-Type": CONTENT_TYPE_LATEST})
