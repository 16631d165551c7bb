"""What every daemon's HTTP API shares (adapter, aiohttp): serving on an address with the
bound port reported, and ``/metrics`` from one table-driven collector (``roost.metrics``).

The hub's API (``roost.hub.api``) and the broker's (``roost.rendezvous.broker_aio``) both
serve through here, so starting a site, cleaning up when the bind fails and answering a
scrape are written once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from roost.errors import listening
from roost.metrics import MetricRow, StatusCollector

__all__ = ["NO_STORE", "ApiRunner", "add_metrics", "serve_app"]

# Status and metrics describe this moment: no cache may answer for the daemon.
NO_STORE = {"Cache-Control": "no-store"}

_REGISTRY_KEY = web.AppKey("roost_metrics_registry", CollectorRegistry)


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


async def serve_app(app: web.Application, host: str, port: int) -> ApiRunner:
    """Serve ``app`` on host:port (0 picks a free port); call ``runner.cleanup()`` to stop."""
    # Dashboards and scrapers poll, so per-request access logs would drown the daemon's
    # own log; errors are still logged by aiohttp.
    runner = ApiRunner(app, access_log=None)
    await runner.setup()
    try:
        with listening("status API", host, port):
            await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


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
