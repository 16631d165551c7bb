"""The shared registry's Redis/Valkey side (adapter, docs/broker-scale.md).

One ``SharedRegistry`` per broker process. It owns the asyncio Redis client and three tasks:

- the writer: presence values (``SET key value PX ttl``, one command per entry due), the
  process's node-link address (``PREFIX l:NODE``, docs/broker-scale.md "Node link") and
  node-to-node messages (``PUBLISH``) go out in ONE pipeline per loop turn, in the order
  they were queued, over one connection, so the messages of a forwarded channel keep their
  order;
- the listener: the process's own pub/sub channel (``PREFIX n:NODE``), each message handed
  to ``on_message``;
- the watchdog, while Redis is unreachable: it retries every ``retry_s``; when Redis
  answers again it subscribes again and calls ``on_resync`` so the daemon rewrites every
  entry it owns (Redis may have restarted empty).

An outage is counted and logged once when it starts and once when it ends; meanwhile writes
are dropped (the resync rewrites what is live), reads answer None and publishes 0 (nobody
heard it), so the daemon serves the equipment it owns from memory.

URLs: ``redis://[user:pass@]host:port/db``, ``rediss://…`` (TLS; ``?ssl_ca_certs=PATH``),
``unix:///path/redis.sock``, and Sentinel
``redis+sentinel://[:password@]host:port[,host:port…]/SERVICE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from roost.errors import ConfigError, RoostError
from roost.reasons import Reason
from roost.rendezvous.presence import (
    PeerRecord,
    PresenceConfig,
    PresenceRecord,
    decode_peer,
    decode_presence,
)

__all__ = ["SharedCounters", "SharedRegistry", "connect_redis"]

log = logging.getLogger("roost.broker.shared")
_TIMEOUT_S = 1.0
# Connection-level errors (Redis gone, refused, reset, timed out).
_DOWN = (RedisError, OSError, TimeoutError)


def connect_redis(url: str) -> aioredis.Redis:
    """An asyncio client for ``url`` (see the module docstring); no connection yet.

    Raises ConfigError for a URL that names no Redis.
    """
    parsed = urllib.parse.urlsplit(url)
    common: dict[str, Any] = {
        "socket_timeout": _TIMEOUT_S,
        "socket_connect_timeout": _TIMEOUT_S,
        # No silent retries: an outage must be seen at once (the watchdog retries).
        "retry": Retry(NoBackoff(), 0),
    }
    if parsed.scheme == "redis+sentinel":
        hosts = []
        for part in parsed.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = part.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"bad sentinel address {part!r}", reason=Reason.BAD_CONFIG)
            hosts.append((host.strip("[]"), int(port)))
        service = parsed.path.strip("/").split("/")[0]
        if not service:
            raise ConfigError("a sentinel URL names its service", reason=Reason.BAD_CONFIG)
        sentinel = Sentinel(hosts, **common)  # type: ignore[no-untyped-call]
        # A password in the URL is the data server's (the sentinels are asked without).
        options: dict[str, Any] = dict(common)
        if parsed.password:
            options["password"] = parsed.password
        master: aioredis.Redis = sentinel.master_for(service, **options)
        return master
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"registry must be 'memory' or a redis://, rediss://, unix:// or "
            f"redis+sentinel:// URL, not {url!r}",
            reason=Reason.BAD_CONFIG,
        )
    client: aioredis.Redis = aioredis.Redis.from_url(url, **common)
    return client


@dataclass(slots=True)
class SharedCounters:
    """The shared registry's totals (the broker status's ``shared`` object)."""

    writes: int = 0
    reads: int = 0
    published: int = 0
    received: int = 0
    pipelines: int = 0
    outages: int = 0
    outage_s: float = 0.0
    resyncs: int = 0
    dropped_writes: int = 0


class SharedRegistry:
    """The Redis side of one broker process (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        config: PresenceConfig,
        node: str,
        epoch: int,
        *,
        on_message: Callable[[bytes], None],
        on_resync: Callable[[], None],
    ) -> None:
        self.client = client
        self.config = config
        self.node = node
        self.epoch = epoch
        self.counters = SharedCounters()
        self._on_message = on_message
        self._on_resync = on_resync
        self._writes: dict[str, tuple[bytes, int]] = {}
        self._publishes: list[tuple[str, bytes, asyncio.Future[int] | None]] = []
        self._wakeup = asyncio.Event()
        self._up = False
        self._down_since: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pubsub: Any = None
        self._listening: asyncio.Task[Any] | None = None
        self._closing = False

    @property
    def up(self) -> bool:
        return self._up

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect and subscribe; an unreachable Redis is an outage, not a failure (the
        process serves from memory and the watchdog keeps trying)."""
        self._tasks.append(asyncio.ensure_future(self._writer()))
        try:
            await self._subscribe()
            self._up = True
        except _DOWN as exc:
            self._outage(exc)

    async def stop(self) -> None:
        self._closing = True
        for task in [*self._tasks, self._listening]:
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in [*self._tasks, self._listening] if t is not None), return_exceptions=True
        )
        if self._pubsub is not None:
            with contextlib.suppress(*_DOWN):
                await self._pubsub.aclose()
        with contextlib.suppress(*_DOWN):
            await self.client.aclose()

    async def _subscribe(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(*_DOWN):
                await self._pubsub.aclose()
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.config.node_channel(self.node))
        self._pubsub = pubsub
        if self._listening is not None:
            self._listening.cancel()
        self._listening = asyncio.ensure_future(self._listen(pubsub))

    # ------------------------------------------------------------------ outage

    def _outage(self, exc: BaseException) -> None:
        if self._closing:
            return
        if self._up or self._down_since is None:
            self.counters.outages += 1
            self._down_since = time.monotonic()
            log.warning("shared registry unreachable (%s): serving from memory", exc)
            self._tasks = [task for task in self._tasks if not task.done()]
            self._tasks.append(asyncio.ensure_future(self._watchdog()))
        self._up = False
        self.counters.dropped_writes += len(self._writes)
        self._writes.clear()
        for _, _, future in self._publishes:
            if future is not None and not future.done():
                future.set_result(0)
        self._publishes.clear()

    async def _watchdog(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.config.retry_s)
            try:
                await asyncio.wait_for(self.client.ping(), _TIMEOUT_S)
                await self._subscribe()
            except _DOWN:
                continue
            since = self._down_since or time.monotonic()
            self.counters.outage_s += time.monotonic() - since
            self._down_since = None
            self._up = True
            self.counters.resyncs += 1
            log.warning(
                "shared registry back after %.1f s: resynchronising", time.monotonic() - since
            )
            self._on_resync()
            self._wakeup.set()
            return

    def outage_seconds(self) -> float:
        """Seconds spent unreachable so far, the running outage included."""
        running = 0.0 if self._down_since is None else time.monotonic() - self._down_since
        return self.counters.outage_s + running

    # ------------------------------------------------------------------ writer

    def write(self, identifier: str, record: PresenceRecord, ttl_ms: int) -> None:
        """Queue one entry's presence (the latest queued value of an entry wins)."""
        self._write(self.config.presence_key(identifier), record.encode(), ttl_ms)

    def write_peer(self, record: PeerRecord, ttl_ms: int) -> None:
        """Queue this process's node-link address (docs/broker-scale.md, "Node link")."""
        self._write(self.config.peer_key(self.node), record.encode(), ttl_ms)

    def _write(self, key: str, value: bytes, ttl_ms: int) -> None:
        if not self._up:
            self.counters.dropped_writes += 1
            return
        self._writes[key] = (value, ttl_ms)
        self._wakeup.set()

    def publish(
        self, node: str, payload: bytes, *, wait: bool = False
    ) -> asyncio.Future[int] | None:
        """Queue a message to ``node``; with ``wait`` a future of how many processes
        received it (0: nobody, the node is gone or Redis is down)."""
        future: asyncio.Future[int] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
        if not self._up:
            if future is not None:
                future.set_result(0)
            return future
        self._publishes.append((self.config.node_channel(node), payload, future))
        self._wakeup.set()
        return future

    async def _writer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._up or not (self._writes or self._publishes):
                continue
            publishes, self._publishes = self._publishes, []
            writes, self._writes = self._writes, {}
            pipe = self.client.pipeline(transaction=False)
            for channel, payload, _ in publishes:
                pipe.publish(channel, payload)
            for key, (value, ttl_ms) in writes.items():
                pipe.set(key, value, px=ttl_ms)
            try:
                results = await pipe.execute()
            except _DOWN as exc:
                self._publishes = publishes + self._publishes
                self._outage(exc)
                continue
            self.counters.pipelines += 1
            self.counters.writes += len(writes)
            self.counters.published += len(publishes)
            for (_, _, future), result in zip(publishes, results, strict=False):
                if future is not None and not future.done():
                    future.set_result(int(result))

    # ------------------------------------------------------------------ reads

    async def read(self, identifier: str) -> PresenceRecord | None:
        """The entry's shared presence, None when absent, malformed or Redis is down."""
        value = await self._read(self.config.presence_key(identifier))
        try:
            return None if value is None else decode_presence(value)
        except RoostError:  # A foreign value under our prefix is ignored.
            return None

    async def read_peer(self, node: str) -> PeerRecord | None:
        """``node``'s node-link address, None when it advertises none (or Redis is down)."""
        value = await self._read(self.config.peer_key(node))
        try:
            return None if value is None else decode_peer(value)
        except RoostError:
            return None

    async def _read(self, key: str) -> bytes | None:
        if not self._up:
            return None
        try:
            value = await self.client.get(key)
        except _DOWN as exc:
            self._outage(exc)
            return None
        self.counters.reads += 1
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    # ------------------------------------------------------------------ listener

    async def _listen(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                self.counters.received += 1
                self._on_message(bytes(message["data"]))
        except asyncio.CancelledError:
            raise
        except _DOWN as exc:
            self._outage(exc)
