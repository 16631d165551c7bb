"""Fetching CA information and keeping the two-slot store current (PROTOCOL.md section 2).

The updater only fetches bytes and persists them atomically; every trust decision is made
by `TrustState.accept` (STYLE.md, "Trust changes"). When to fetch is a pure schedule:
periodic polls with jitter, plus a fetch when a peer fails verification, rate-limited by a
doubling back-off so a stream of bad certificates cannot turn into a stream of fetches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import enum
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from cryptography import x509

from roost.errors import RemoteProtocolError, RoostError, TransportError, VerificationError
from roost.pki.cainfo import MAX_CAINFO_SIZE, MEDIA_TYPE, decode_cainfo
from roost.pki.tls import client_context, peer_certificate
from roost.pki.trust import MAX_CATCH_UP, Slot, TrustState
from roost.pki.truststore import load_state, save_state
from roost.pki.verify import VerifiedNode, verify_server_name

__all__ = [
    "FetchOutcome",
    "FetchRecord",
    "Fetcher",
    "HttpsFetcher",
    "TrustUpdater",
    "UpdateConfig",
    "UpdateSchedule",
]

log = logging.getLogger("roost.trust")


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    poll_interval: float = 6 * 3600.0
    poll_jitter: float = 0.2
    failure_backoff_initial: float = 60.0
    failure_backoff_max: float = 3600.0
    fetch_timeout: float = 10.0
    max_size: int = MAX_CAINFO_SIZE
    max_catch_up: int = MAX_CATCH_UP


class FetchOutcome(enum.Enum):
    STORED = "stored"
    NOT_PUBLISHED = "not-published"


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """How the last fetch of CA information went (the dashboard's trust panel reads it).

    ``at`` is the event loop's clock; ``outcome`` is a `FetchOutcome` value or, for a
    fetch that failed, the error's reason; ``reachable`` says whether the download server
    answered at all (a refused or malformed answer still means it is reachable).
    """

    at: float
    url: str
    outcome: str
    reachable: bool


@dataclass
class UpdateSchedule:
    """When to poll and when a failure may trigger a fetch; `now` is monotonic seconds."""

    config: UpdateConfig
    rng: random.Random = field(default_factory=random.Random)
    next_poll: float = 0.0
    _next_failure_fetch: float = 0.0
    _backoff: float = 0.0

    def schedule_poll(self, now: float) -> float:
        spread = self.config.poll_interval * self.config.poll_jitter
        self.next_poll = now + self.config.poll_interval + self.rng.uniform(-spread, spread)
        return self.next_poll

    def poll_due(self, now: float) -> bool:
        return now >= self.next_poll

    def failure_fetch_allowed(self, now: float) -> bool:
        return now >= self._next_failure_fetch

    def failure_fetched(self, now: float, found_new: bool) -> None:
        """Back off after a failure-triggered fetch that found nothing; reset when it did."""
        if found_new:
            self._backoff = 0.0
            self._next_failure_fetch = now
            return
        initial, cap = self.config.failure_backoff_initial, self.config.failure_backoff_max
        self._backoff = min(cap, self._backoff * 2 if self._backoff else initial)
        self._next_failure_fetch = now + self._backoff * self.rng.uniform(0.8, 1.2)


# (url, transport anchors, time floor) -> body, or None when not published yet.
Fetcher = Callable[[str, Sequence[x509.Certificate], dt.datetime], Awaitable[bytes | None]]


class HttpsFetcher:
    """One HTTPS/1.1 GET on its own connection, with the checks section 2 asks for.

    A plain stream client rather than aiohttp's: the server certificate must be checked
    against the trust store *before* the request is sent (aiohttp releases the connection,
    and with it the certificate, as soon as a small body is read), and the body must be
    capped before it is buffered.
    """

    _MAX_HEADER = 8 * 1024

    def __init__(self, config: UpdateConfig = UpdateConfig()) -> None:
        self.config = config

    async def __call__(
        self, url: str, anchors: Sequence[x509.Certificate], time_floor: dt.datetime
    ) -> bytes | None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise RemoteProtocolError(f"{url!r} is not an https URL", reason="bad-url")
        try:
            return await asyncio.wait_for(
                self._get(parts.hostname, parts.port or 443, parts, anchors, time_floor),
                self.config.fetch_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise VerificationError(
                "download server certificate chains to no trusted generation", reason="chain"
            ) from exc
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            raise TransportError(f"fetching {url} failed: {exc!r}", reason="fetch") from exc

    async def _get(
        self,
        host: str,
        port: int,
        parts: SplitResult,
        anchors: Sequence[x509.Certificate],
        time_floor: dt.datetime,
    ) -> bytes | None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=client_context(anchors), server_hostname=host
        )
        try:
            leaf = peer_certificate(writer.get_extra_info("ssl_object"))
            verify_server_name(leaf, anchors, time_floor, host)
            target = parts.path or "/"
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Accept: {MEDIA_TYPE}\r\nConnection: close\r\n\r\n".encode("ascii")
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > self._MAX_HEADER:
                raise RemoteProtocolError("response header too large", reason="oversized")
            status, length = _parse_head(head)
            if status == 404:
                return None
            if status != 200:
                raise TransportError(f"download server answered {status}", reason="status")
            if length is not None and length > self.config.max_size:
                raise RemoteProtocolError("CA information too large", reason="oversized")
            body = await reader.read(self.config.max_size + 1)
            while len(body) <= self.config.max_size:
                more = await reader.read(self.config.max_size + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > self.config.max_size:
                raise RemoteProtocolError("CA information too large", reason="oversized")
            if length is not None and len(body) != length:
                raise TransportError("response body truncated", reason="truncated")
            return body
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, int | None]:
    """Status code and Content-Length of an HTTP/1.1 response head."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        version, code, *_ = lines[0].split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        length: int | None = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() == "transfer-encoding":
                raise ValueError("chunked responses are not expected")
        return int(code), length
    except ValueError as exc:
        raise RemoteProtocolError("malformed HTTP response", reason="bad-http") from exc


def _log_change(before: TrustState, after: TrustState) -> None:
    """One line per trust change a node makes: a generation stored, or one promoted."""
    if after.newest.generation > before.newest.generation:
        log.info(
            "trust: stored CA information %s (current %s)",
            after.newest.generation,
            after.current.generation,
            extra={"event": "trust-fetched", "generation": after.newest.generation},
        )
    if after.current.generation > before.current.generation:
        log.info(
            "trust: generation %s is now current",
            after.current.generation,
            extra={"event": "trust-promoted", "generation": after.current.generation},
        )


class TrustUpdater:
    """Owns a persisted trust store: fetch, accept, persist, and count what was rejected."""

    def __init__(
        self,
        directory: Path,
        fetcher: Fetcher | None = None,
        config: UpdateConfig = UpdateConfig(),
        rng: random.Random | None = None,
    ) -> None:
        self.directory = directory
        self.config = config
        self.fetcher: Fetcher = fetcher or HttpsFetcher(config)
        self.schedule = UpdateSchedule(config, rng or random.Random())
        self.state = load_state(directory)
        self.rejected: collections.Counter[str] = collections.Counter()
        self.last_fetch: FetchRecord | None = None
        self.fetches = 0
        self._lock = asyncio.Lock()

    def authenticate(
        self, leaf: x509.Certificate, expected: str | None = None
    ) -> tuple[VerifiedNode, Slot]:
        """Verify a hub or device like `TrustState.verify_node` and keep the result.

        A promotion (seed claims 4–6) or a raised time floor is persisted at once; raises
        VerificationError, leaving the store untouched, when neither slot verifies.
        """
        node, slot, state = self.state.verify_node(leaf, expected)
        self.commit(state)
        return node, slot

    def commit(self, state: TrustState) -> None:
        """Persist a new state (promotion, raised floor) and make it the one in use."""
        if state != self.state:
            before = self.state
            save_state(self.directory, state)
            self.state = state
            _log_change(before, state)

    async def update_once(self) -> FetchOutcome:
        """Fetch the successor of the newest slot once; raise on anything wrong."""
        async with self._lock:
            url = self.state.newest.body.next_url
            self.fetches += 1
            loop = asyncio.get_running_loop()
            try:
                anchors = self.state.transport_anchors
                try:
                    data = await self.fetcher(url, anchors, self.state.time_floor)
                except RoostError as exc:
                    self.last_fetch = FetchRecord(
                        loop.time(), url, exc.reason, exc.reason != "fetch"
                    )
                    raise
                if data is None:
                    self.last_fetch = FetchRecord(
                        loop.time(), url, FetchOutcome.NOT_PUBLISHED.value, True
                    )
                    return FetchOutcome.NOT_PUBLISHED
                try:
                    candidate = decode_cainfo(data, self.config.max_size)
                    new_state = self.state.accept(candidate)
                except RoostError as exc:
                    self.last_fetch = FetchRecord(loop.time(), url, exc.reason, True)
                    raise
            except RoostError as exc:
                self.rejected[exc.reason] += 1
                # Fetches are paced by the schedule (a poll a minute at most, failures
                # backed off), so each refusal gets its line.
                log.info(
                    "trust fetch from %s refused: %s",
                    url,
                    exc.reason,
                    extra={"event": "refused", "reason": str(exc.reason)},
                )
                raise
            self.commit(new_state)
            self.last_fetch = FetchRecord(loop.time(), url, FetchOutcome.STORED.value, True)
            return FetchOutcome.STORED

    async def catch_up(self, satisfied: Callable[[TrustState], bool]) -> bool:
        """Walk forward up to `max_catch_up` generations until `satisfied(state)` holds.

        Used when a peer fails under both slots: a device several generations behind
        slides its window until the peer verifies or nothing newer is published.
        """
        for _ in range(self.config.max_catch_up):
            if satisfied(self.state):
                return True
            if await self.update_once() is FetchOutcome.NOT_PUBLISHED:
                break
        return satisfied(self.state)

    async def on_verification_failure(
        self, now: float, leaf: x509.Certificate | None, expected: str | None = None
    ) -> bool:
        """A peer failed verification: fetch (unless backing off); True if it now passes.

        `leaf` is the peer's certificate, or None when TLS itself refused the chain (then
        the walk goes as far as anything is published). Seed claims 4–6, made bounded.
        """
        if not self.schedule.failure_fetch_allowed(now):
            self.rejected["backoff"] += 1
            return False

        def passes(state: TrustState) -> bool:
            if leaf is None:
                return False
            try:
                state.verify_node(leaf, expected)
            except VerificationError:
                return False
            return True

        before = self.state
        try:
            ok = await self.catch_up(passes)
        except RoostError:
            ok = passes(self.state)
        self.schedule.failure_fetched(now, found_new=self.state != before)
        return ok

    async def follow_own_certificate(self, leaf: x509.Certificate, now: float) -> None:
        """Before a node starts: when its own certificate verifies under neither slot (an
        emergency roll gave it one of a generation the store does not hold yet), walk
        towards it as after any failed verification (section 2). Raises nothing; the
        node's own check of its certificate decides what happens next."""
        try:
            self.state.verify_node(leaf)
        except VerificationError:
            await self.on_verification_failure(now, leaf)

    async def poll(self, now: float) -> bool | None:
        """The periodic poll: when due, walk to the newest published generation.

        Returns None when no poll was due, else whether anything new was stored; the next
        poll is scheduled with jitter either way. Errors are counted, not raised.
        """
        if not self.schedule.poll_due(now):
            return None
        self.schedule.schedule_poll(now)
        before = self.state
        with contextlib.suppress(RoostError):
            await self.catch_up(lambda _state: False)
        return self.state != before
