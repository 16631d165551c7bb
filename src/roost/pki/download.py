"""HTTPS download server publishing CA information (PROTOCOL.md section 2, "Publication").

Every published generation N+1 is served at the path of CA information N's `next_url`
with media type `application/vnd.roost.ca-info`; anything else is 404 ("not published
yet"). The table of published generations is re-read on each request, so `roost ca tick`
and `roost ca roll` take effect without a restart.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from roost.pki.authority import Authority
from roost.pki.authority_ops import idle_download_credentials
from roost.pki.cainfo import MEDIA_TYPE
from roost.pki.tls import server_context

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["MEDIA_TYPE", "DownloadServer", "download_tls_context"]

_log = logging.getLogger("roost.pki.download")


def download_tls_context(
    authority: Authority, generation: int | None = None, at: dt.datetime | None = None
) -> ssl.SSLContext:
    """TLS with the download certificate of `generation` (issued by CA generation - 1).

    By default the oldest published generation's certificate is used: it is issued by the
    oldest CA a holder may still trust, and a holder further along trusts it through its
    current slot or is already past needing this server.
    """
    published = authority.published_generations()
    if generation is None:
        if not published:
            if at is None:
                raise ValueError("no generation is published yet (run `roost ca roll` first)")
            # A fresh home: answer "not published yet" under the active CA's certificate.
            return server_context(*idle_download_credentials(authority, at))
        generation = min(published)
    cert, key = authority.download_credentials(generation)
    return server_context(cert, key)


@dataclass
class DownloadServer:
    """The aiohttp application; `app` is what a runner serves."""

    authority: Authority

    def __post_init__(self) -> None:
        self.app = web.Application(middlewares=[self._log_request])
        self.app.router.add_get("/{tail:.*}", self._serve)
        self.served = 0
        self.not_found = 0

    @web.middleware
    async def _log_request(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """One log line per request: peer, method, path, status and what was served."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _log.info("%s %s %s -> %d", request.remote, request.method, request.path, exc.status)
            raise
        _log.info(
            "%s %s %s -> %d (%s bytes)",
            request.remote,
            request.method,
            request.path,
            response.status,
            response.content_length,
        )
        return response

    async def _serve(self, request: web.Request) -> web.Response:
        authority = Authority.load(self.authority.directory)
        for generation in authority.published_generations():
            if request.path == authority.publish_path(generation):
                self.served += 1
                return web.Response(
                    body=authority.ca_info_bytes(generation),
                    content_type=MEDIA_TYPE,
                    headers={"Cache-Control": "no-cache"},
                )
        self.not_found += 1
        raise web.HTTPNotFound(text="not published\n")
