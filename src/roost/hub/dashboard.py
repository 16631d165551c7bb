"""The home's web app (adapter, aiohttp): login, the home view, live push, events.

Served over TLS with the hub's own certificate (plain HTTP only on loopback, when the
config asks for it). Every route but the login form needs a session opened by a complete
guard login (``roost.hub.weblogin``, PROTOCOL.md section 6); without one, the page answers
401 with the login form and every other URL 401 with a fixed JSON body, so nothing about
the home (no frame, no identifier) is shown to a stranger. State-changing requests also
need the session's CSRF token, in the ``X-CSRF-Token`` header or a ``csrf`` form field, and
an ``Origin``, when the browser sends one, that is this site.

Media (live streams, recordings, the peer app other hubs call) is in
``roost.hub.dashboard_media``; the home's state in ``roost.hub.homeview``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from roost.errors import ConfigError, RoostError, VerificationError
from roost.guard.userstore import SqliteUserStore
from roost.httpapi import NO_STORE, ApiRunner
from roost.hub.eventlog import EventLog, EventQuery, EventRetention
from roost.hub.events import EventKind
from roost.hub.homeview import HomeSource, HomeView
from roost.hub.live import LiveFeed
from roost.hub.peers import PeerClient
from roost.hub.weblogin import WebLogin
from roost.hub.websession import SessionTable, WebSession, WebSessionConfig

__all__ = [
    "Dashboard",
    "DashboardOptions",
    "attach",
    "build_app",
    "check_origin",
    "dashboard_of",
    "session_of_request",
    "start_dashboard",
]

log = logging.getLogger("roost.hub.dashboard")

_NONCE = "__ROOST_CSP_NONCE__"
_LOGIN_COOKIE = "roost_login"
_UNAUTHORIZED = {"error": "login required"}
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, slots=True)
class DashboardOptions:
    """How the web app is served (``[dashboard]`` in the hub config)."""

    listen: tuple[str, int] = ("127.0.0.1", 8443)
    # Plain HTTP is refused unless the listener is on loopback and this is set.
    plain_http: bool = False
    sessions: WebSessionConfig = field(default_factory=WebSessionConfig)
    retention: EventRetention = field(default_factory=EventRetention)
    # Live streams open at once, over all viewers, and per session.
    max_viewers: int = 256
    max_streams_per_session: int = 24


# A template line ``/* {{> _name}} */`` stands for the partial ``templates/_name``: the two
# pages share their theme this way and still carry it inline under the page's CSP nonce.
_PARTIAL = re.compile(r"^[ \t]*/\* \{\{> (_[\w.-]+)\}\} \*/\n", re.MULTILINE)


def _template_text(name: str) -> str:
    return resources.files("roost.hub").joinpath("templates", name).read_text(encoding="utf-8")


def _template(name: str) -> str:
    return _PARTIAL.sub(lambda match: _template_text(match.group(1)), _template_text(name))


class Dashboard:
    """The web app of one hub: its sessions, login, home view, live feed and peer link."""

    def __init__(
        self,
        daemon: HomeSource,
        options: DashboardOptions,
        *,
        state_dir: Path,
        cert_file: Path,
        key_file: Path,
        users: Any = None,
    ) -> None:
        self.daemon = daemon
        self.options = options
        self.tls = not options.plain_http
        self.sessions = SessionTable(options.sessions)
        open_users = (
            users if users is not None else (lambda: SqliteUserStore.in_state_dir(state_dir))
        )
        self.login = WebLogin(open_users)
        self.events = EventLog(state_dir / EventLog.FILENAME, options.retention)
        self.peers = PeerClient(cert_file, key_file)
        self.view = HomeView(daemon, self.events, self.peers)
        self.cert_file, self.key_file = cert_file, key_file
        self.state_dir = state_dir
        self.live: LiveFeed | None = None
        self.runner: ApiRunner | None = None
        self.peer_runner: web.AppRunner | None = None
        self.peer_socket: Path | None = None
        self._peer_dir: Any = None
        self.streams_by_session: dict[str, int] = {}
        self._login_page = _template("login.html")
        self._home_page = _template("home.html")

    @property
    def bound_port(self) -> int:
        if self.runner is None:
            raise RuntimeError("the dashboard is not listening")
        return self.runner.bound_port

    @property
    def url(self) -> str:
        host = self.options.listen[0]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.bound_port}/"

    async def start(self) -> None:
        """Open the user store, start the view and the feed, then bind the listener."""
        from roost.hub import dashboard_media, livesocket

        host, port = self.options.listen
        if self.options.plain_http and host not in _LOOPBACK:
            raise ConfigError("plain HTTP is allowed only on loopback")
        await self.login.start()
        self.live = LiveFeed(self.daemon.recorder, self.options.max_viewers)
        await self.view.start()
        app = build_app(self)
        dashboard_media.add_routes(app, self)
        livesocket.add_routes(app)
        # Live streams and pushes never end by themselves: at stop they get a second to
        # finish their current write, then they are cut.
        self.runner = ApiRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        context = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.cert_file, self.key_file)
        try:
            await web.TCPSite(self.runner, host, port, ssl_context=context).start()
            await dashboard_media.start_peer_app(self)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close everything the dashboard opened."""
        from roost.hub import dashboard_media

        await self.view.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await dashboard_media.stop_peer_app(self)
        if self.live is not None:
            self.live.close()
        await self.peers.close()
        self.login.stop()
        self.events.close()

    # ----------------------------------------------------------------------- sessions

    def session_of(self, request: web.Request) -> WebSession:
        """The request's session; raises VerificationError without a valid one."""
        token = request.cookies.get(self.options.sessions.cookie_name)
        return self.sessions.check(token, asyncio.get_running_loop().time())

    def cookie_flags(self) -> dict[str, Any]:
        return {"httponly": True, "samesite": "Strict", "secure": self.tls, "path": "/"}

    def page(self, template: str, values: dict[str, str], status: int = 200) -> web.Response:
        """A page from a template: ``{{name}}`` filled with escaped text, a fresh CSP nonce."""
        nonce = secrets.token_urlsafe(16)
        text = template.replace(_NONCE, nonce)
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
        policy = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src 'self' blob:; media-src 'self'; connect-src 'self'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'"
        )
        headers = {
            **NO_STORE,
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        }
        return web.Response(text=text, content_type="text/html", status=status, headers=headers)


async def start_dashboard(
    daemon: HomeSource,
    options: DashboardOptions,
    *,
    state_dir: Path,
    cert_file: Path,
    key_file: Path,
    users: Any = None,
) -> Dashboard:
    """Build and start a hub's dashboard; ``await dashboard.stop()`` ends it."""
    dashboard = Dashboard(
        daemon, options, state_dir=state_dir, cert_file=cert_file, key_file=key_file, users=users
    )
    await dashboard.start()
    return dashboard


# --------------------------------------------------------------------------------- app

_DASHBOARD_KEY = web.AppKey("roost_dashboard", Dashboard)
_SESSION_KEY = web.RequestKey("roost_session", WebSession)
# Routes a stranger may use: the login form and its two steps.
_PUBLIC = frozenset({("GET", "/login"), ("POST", "/login"), ("POST", "/login/codes")})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def attach(app: web.Application, dashboard: Dashboard) -> None:
    """Make ``dashboard`` the one ``dashboard_of`` finds for requests to ``app``."""
    app[_DASHBOARD_KEY] = dashboard


def dashboard_of(request: web.Request) -> Dashboard:
    """The dashboard serving ``request``."""
    return request.app[_DASHBOARD_KEY]


def session_of_request(request: web.Request) -> WebSession:
    """The session the auth middleware found for ``request``."""
    session: WebSession = request[_SESSION_KEY]
    return session


@web.middleware
async def _auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    dashboard = dashboard_of(request)
    if (request.method, request.path) in _PUBLIC:
        check_origin(request)
        return await handler(request)
    try:
        session = dashboard.session_of(request)
    except VerificationError:
        if request.method == "GET" and request.path == "/":
            return _login_form(dashboard, "", status=401)
        return web.json_response(_UNAUTHORIZED, status=401, headers=NO_STORE)
    if request.method not in _SAFE_METHODS:
        check_origin(request)
        offered = request.headers.get("X-CSRF-Token")
        if offered is None and request.content_type == "application/x-www-form-urlencoded":
            offered = str((await request.post()).get("csrf", ""))
        try:
            dashboard.sessions.check_csrf(session, offered)
        except VerificationError:
            return web.json_response({"error": "CSRF token missing or wrong"}, status=403)
    request[_SESSION_KEY] = session
    return await handler(request)


def check_origin(request: web.Request) -> None:
    """Refuse (403) a request whose Origin names another site."""
    # A browser names the page that sent a cross-site request in Origin; anything but this
    # site is refused even before the CSRF token is looked at.
    origin = request.headers.get("Origin")
    # Some browsers send "null" for a form posted after a redirect; the login steps are
    # also protected by their double-submit token, so "null" is accepted there only.
    if origin is None or (origin == "null" and request.path.startswith("/login")):
        return
    expected = f"{request.scheme}://{request.host}"
    if origin != expected:
        raise web.HTTPForbidden(text="cross-site request refused")


def build_app(dashboard: Dashboard) -> web.Application:
    """The application: login, page, home, events and push routes (media are added too)."""
    app = web.Application(middlewares=[_auth], client_max_size=64 * 1024)
    app[_DASHBOARD_KEY] = dashboard
    app.router.add_get("/login", _login_get)
    app.router.add_post("/login", _login_password)
    app.router.add_post("/login/codes", _login_codes)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/", _home)
    app.router.add_get("/api/home", _api_home)
    app.router.add_get("/api/events", _api_events)
    app.router.add_get("/api/live", _api_live)
    return app


# ------------------------------------------------------------------------------ login


def _login_form(
    dashboard: Dashboard, message: str, status: int = 200, response: web.Response | None = None
) -> web.Response:
    token = secrets.token_urlsafe(24)
    page = dashboard.page(
        dashboard._login_page,
        {
            "login_csrf": token,
            "message": message,
            "step": "password",
            "attempt": "",
            "labels": "",
        },
        status,
    )
    page.set_cookie(_LOGIN_COOKIE, token, max_age=600, **dashboard.cookie_flags())
    return page


async def _login_get(request: web.Request) -> web.Response:
    return _login_form(dashboard_of(request), "")


def _login_csrf_ok(request: web.Request, form: Any) -> bool:
    cookie = request.cookies.get(_LOGIN_COOKIE, "")
    offered = str(form.get("login_csrf", ""))
    return bool(cookie) and secrets.compare_digest(cookie.encode(), offered.encode())


def _source(request: web.Request) -> str:
    return request.remote or "?"


async def _login_password(request: web.Request) -> web.Response:
    dashboard = dashboard_of(request)
    form = await request.post()
    if not _login_csrf_ok(request, form):
        return _login_form(dashboard, "The login form expired; please try again.", 403)
    user = str(form.get("user", ""))[:128]
    password = str(form.get("password", ""))[:1024]
    try:
        attempt = await dashboard.login.begin(user, password)
    except RoostError as exc:
        dashboard.view.web_login(False, user, _source(request), exc.reason)
        return _login_form(dashboard, _REFUSED, 401)
    labels = "|".join(attempt.labels)
    token = request.cookies.get(_LOGIN_COOKIE, "")
    return dashboard.page(
        dashboard._login_page,
        {
            "login_csrf": token,
            "message": "",
            "step": "codes",
            "attempt": attempt.attempt_id,
            "labels": labels,
        },
    )


_REFUSED = (
    "Login refused. Check the user, the password and the codes from your card; after "
    "repeated failures the account is locked for a while."
)


async def _login_codes(request: web.Request) -> web.Response:
    dashboard = dashboard_of(request)
    form = await request.post()
    if not _login_csrf_ok(request, form):
        return _login_form(dashboard, "The login form expired; please try again.", 403)
    attempt_id = str(form.get("attempt", ""))
    codes = [str(form.get(f"code{i}", "")).strip()[:64] for i in range(16) if f"code{i}" in form]
    user = "?"
    try:
        user = dashboard.login.pending(attempt_id).user_id
        result = await dashboard.login.finish(attempt_id, codes)
    except RoostError as exc:
        dashboard.view.web_login(False, user, _source(request), exc.reason)
        return _login_form(dashboard, _REFUSED, 401)
    token, _ = dashboard.sessions.open(result.user_id, asyncio.get_running_loop().time())
    dashboard.view.web_login(True, result.user_id, _source(request))
    response = web.HTTPSeeOther("/")
    limits = dashboard.options.sessions
    response.set_cookie(
        limits.cookie_name, token, max_age=int(limits.absolute_s), **dashboard.cookie_flags()
    )
    response.del_cookie(_LOGIN_COOKIE, path="/")
    raise response


async def _logout(request: web.Request) -> web.Response:
    dashboard = dashboard_of(request)
    name = dashboard.options.sessions.cookie_name
    dashboard.sessions.close(request.cookies.get(name))
    response = web.HTTPSeeOther("/")
    response.del_cookie(name, path="/")
    raise response


# ------------------------------------------------------------------------ page and API


async def _home(request: web.Request) -> web.Response:
    dashboard = dashboard_of(request)
    session = session_of_request(request)
    return dashboard.page(dashboard._home_page, {"csrf": session.csrf, "user": session.user_id})


async def _api_home(request: web.Request) -> web.Response:
    dashboard = dashboard_of(request)
    body = dashboard.view.snapshot()
    body["me"] = {"user": session_of_request(request).user_id}
    return web.json_response(body, headers=NO_STORE)


def _int_param(request: web.Request, name: str, default: int = 0) -> int:
    value = request.query.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None


async def _api_events(request: web.Request) -> web.Response:
    dashboard = dashboard_of(request)
    kinds = tuple(k for k in request.query.get("kind", "").split(",") if k)
    known = {kind.value for kind in EventKind}
    if any(kind not in known for kind in kinds):
        raise web.HTTPBadRequest(text="unknown event kind")
    query = EventQuery(
        kinds=kinds,
        subject=request.query.get("subject", "")[:64],
        since_ms=_int_param(request, "since"),
        until_ms=_int_param(request, "until"),
        after_id=_int_param(request, "after"),
        limit=_int_param(request, "limit", 200),
    )
    events = await asyncio.to_thread(dashboard.view.recent_events, query)
    return web.json_response({"events": events}, headers=NO_STORE)


async def _api_live(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``home`` snapshots when something changed, ``event`` lines."""
    dashboard = dashboard_of(request)
    token = request.cookies.get(dashboard.options.sessions.cookie_name)
    response = web.StreamResponse(
        headers={**NO_STORE, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    view = dashboard.view
    subscriber = view.subscribe()
    loop = asyncio.get_running_loop()
    try:
        await response.write(b"retry: 1000\n\n")
        while dashboard.sessions.alive(token, loop.time()):
            if subscriber.overflowed:
                view.resync(subscriber)
            try:
                async with asyncio.timeout(10.0):
                    name, data = await subscriber.queue.get()
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(f"event: {name}\ndata: {data}\n\n".encode())
    except ConnectionError:
        return response  # the browser went away
    finally:
        view.unsubscribe(subscriber)
    # The session ended (idle or absolute limit): the page's reconnect meets the login.
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
