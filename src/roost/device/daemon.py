"""The device daemon: camera, durable outbox, and the connection manager (section 4).

The connection manager keeps exactly one authenticated channel to a hub. It picks the best
live hub it has verified itself (it listens to the same announcements as the hubs), follows
a redirect only when it arrives over that channel and only to a hub whose certificate
carries the named identifier (seed FIG. 8B), drains the old channel before closing it so
no frame is stored twice, and fails over with jittered back-off when its hub goes away.
Every frame stays in the spool until a hub acknowledges it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from roost.channel import ChannelCoreConfig
from roost.config import DeviceConfig
from roost.device.camera import SyntheticCamera
from roost.device.channel import HubChannel, open_hub_channel
from roost.device.spool import FrameSpool
from roost.device.status import DeviceCountersView, DeviceStatus
from roost.errors import RoostError, VerificationError
from roost.files import atomic_write
from roost.hcsp.aio import AnnounceTransport
from roost.hcsp.core import AnnounceConfig, AnnounceCore
from roost.hcsp.documents import Redirect
from roost.hcsp.events import HcspEvent, HubDown, LiveHub
from roost.pki.certs import certs_from_pem
from roost.pki.tls import client_context
from roost.pki.updater import TrustUpdater
from roost.status import TrustSummary

__all__ = ["DeviceDaemon", "HubChannel"]

log = logging.getLogger("roost.device")
_SEND_BATCH = 64


@dataclass
class DeviceCounters:
    captured: int = 0
    connects: int = 0
    connect_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    redirects_followed: int = 0
    redirects_refused: collections.Counter[str] = field(default_factory=collections.Counter)
    failovers: int = 0
    frames_sent: int = 0
    frames_resent: int = 0


class DeviceDaemon:
    """Runs one camera; `start()` begins capturing and connecting, `stop()` ends both."""

    def __init__(
        self,
        config: DeviceConfig,
        trust: TrustUpdater,
        spool: FrameSpool,
        camera: SyntheticCamera | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.trust = trust
        self.spool = spool
        self.camera = camera or SyntheticCamera(config.name, config.width, config.height)
        self.rng = rng or random.Random()
        self.counters = DeviceCounters()
        cert = certs_from_pem(config.cert.read_bytes())[0]
        node, _, _ = trust.state.verify_node(cert)
        self.identifier = node.identifier
        announce = config.announce
        self.core = AnnounceCore(
            AnnounceConfig(
                advert_interval=announce.interval,
                hold_down=announce.hold_down,
                freshness_window_ms=announce.freshness_ms,
            ),
            None,
            self._verify_hub_certificate,
        )
        self.listener = AnnounceTransport(self.core, announce.udp, self._on_event)
        self.channel: HubChannel | None = None
        self.state = "starting"
        self._new_frames = asyncio.Event()
        self._hub_lost = asyncio.Event()
        self._hubs_changed = asyncio.Event()
        self._failed_until: dict[str, float] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._tls_cache: tuple[tuple[bytes, bytes], ssl.SSLContext] | None = None

    # ------------------------------------------------------------------------- lifecycle

    async def start(self, capture: bool = True) -> None:
        await self.listener.start()
        if capture and self.config.fps > 0:
            self._tasks.append(asyncio.create_task(self._capture_loop()))
        self._tasks.append(asyncio.create_task(self._connection_loop()))
        self._tasks.append(asyncio.create_task(self._status_loop()))

    async def stop(self) -> None:
        self._stopping = True
        self.listener.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.channel is not None:
            self.channel.close()
        self.write_status()

    # --------------------------------------------------------------------------- frames

    def capture_one(self) -> int:
        """Capture and spool one frame; returns its sequence number."""
        seq = self.spool.next_seq()
        now_ms = time.time_ns() // 1_000_000
        self.spool.add(seq, now_ms, self.camera.mime, self.camera.capture(seq, now_ms))
        self.counters.captured += 1
        self._new_frames.set()
        return seq

    async def _capture_loop(self) -> None:
        period = 1.0 / self.config.fps
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.capture_one()
            next_at = max(next_at + period, loop.time())
            await asyncio.sleep(next_at - loop.time())

    # ---------------------------------------------------------------------------- trust

    def _verify(self, leaf: x509.Certificate, expected: str | None) -> str:
        before = self.trust.state
        node, _ = self.trust.authenticate(leaf, expected)
        if self.trust.state != before:
            self.core.clear_certificate_cache()
        return node.identifier

    def _verify_hub_certificate(self, leaf: x509.Certificate) -> str:
        identifier = self._verify(leaf, None)
        if not identifier.startswith("hcsp:"):
            raise VerificationError("announcement certificate is not a hub's", reason="not-hub")
        return identifier

    async def _verify_with_update(self, leaf: x509.Certificate, expected: str | None) -> str:
        """Current, then prepared; on failure fetch newer CA information and retry once."""
        try:
            return self._verify(leaf, expected)
        except VerificationError:
            loop = asyncio.get_running_loop()
            if await self.trust.on_verification_failure(loop.time(), leaf, expected):
                self.core.clear_certificate_cache()
            return self._verify(leaf, expected)

    # ---------------------------------------------------------------- announcements (§3)

    def _on_event(self, event: HcspEvent) -> None:
        self._hubs_changed.set()
        channel = self.channel
        if isinstance(event, HubDown) and channel and event.hub.identifier == channel.hub_id:
            self._hub_lost.set()

    def _candidates(self, now: float) -> list[LiveHub]:
        """Verified live hubs, best first, skipping those that just failed us."""
        return [
            hub
            for hub in self.core.live_hubs(now)
            if self._failed_until.get(hub.identifier, 0.0) <= now and hub.free_capacity > 0
        ]

    # ------------------------------------------------------------------ channel (§4)

    async def open_channel(self, host: str, port: int, expected: str | None) -> HubChannel:
        """TLS to a hub, verify its identifier, hello/welcome; raises on any failure."""

        def ignored(reason: str) -> None:
            self.counters.redirects_refused[reason] += 1

        return await open_hub_channel(
            host,
            port,
            ssl_context=self._client_context(),
            verify=lambda leaf: self._verify_with_update(leaf, expected),
            device_id=self.identifier,
            last_acked=self.spool.last_acked,
            config=ChannelCoreConfig(drain_timeout=self.config.drain_timeout),
            on_ack=self.spool.ack,
            on_ignored=ignored,
        )

    def _client_context(self) -> ssl.SSLContext:
        """The TLS client context for the current trust generations, built once per change.

        Building one costs about a millisecond (loading the key and anchors); a redirect
        storm would otherwise pay it for every connection.
        """
        key = (self.trust.state.current.digest, self.trust.state.newest.digest)
        if self._tls_cache is None or self._tls_cache[0] != key:
            ctx = client_context(self.trust.state.anchors, self.config.cert, self.config.key)
            self._tls_cache = (key, ctx)
        return self._tls_cache[1]

    async def _receive(self, channel: HubChannel) -> None:
        """Until the channel ends: its reader advances the spool on every ACK and queues
        redirects for the connection loop."""
        await channel.closed.wait()

    async def _send(self, channel: HubChannel) -> None:
        """Everything unacknowledged goes out in order, then each new frame as it comes."""
        resend_up_to = self.spool.last_acked
        try:
            while channel.sending and not channel.closed.is_set():
                self._new_frames.clear()
                frames = self.spool.unacked(after=channel.last_sent, limit=_SEND_BATCH)
                if not frames:
                    await self._new_frames.wait()
                    continue
                for frame in frames:
                    if not channel.sending:
                        break
                    channel.send_frame(frame.seq, frame.captured_at_ms, frame.mime, frame.payload)
                    self.counters.frames_sent += 1
                    if frame.seq <= resend_up_to:
                        self.counters.frames_resent += 1
                await channel.writer.drain()
        except (RoostError, OSError, ConnectionError) as exc:
            log.info("sending to %s stopped: %s", channel.hub_id, exc)
            channel.close()

    async def _drain_and_close(self, channel: HubChannel) -> None:
        """Stop sending, wait until the hub acknowledged what it got, then close.

        Closing before the last ACK would make the next hub store those frames again.
        """
        self._new_frames.set()
        await channel.drain_and_close()

    # ------------------------------------------------------------- connection manager

    async def _connection_loop(self) -> None:
        backoff = self.config.backoff_initial
        loop = asyncio.get_running_loop()
        while not self._stopping:
            channel = await self._connect_best(loop.time())
            if channel is None:
                self.state = "searching"
                self._hubs_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hubs_changed.wait(), backoff)
                backoff = min(self.config.backoff_max, backoff * 2) * self.rng.uniform(0.8, 1.2)
                continue
            backoff = self.config.backoff_initial
            await self._run_channel(channel)

    async def _connect_best(self, now: float) -> HubChannel | None:
        targets: list[tuple[str, int, str | None]] = [
            (hub.endpoint.host, hub.endpoint.port, hub.identifier) for hub in self._candidates(now)
        ]
        targets += [(host, port, None) for host, port in self.config.hubs]
        for host, port, expected in targets:
            try:
                channel = await self.open_channel(host, port, expected)
            except (RoostError, OSError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", type(exc).__name__)
                self.counters.connect_failures[str(reason)] += 1
                if expected is not None:
                    self._failed_until[expected] = now + self.config.backoff_max
                continue
            self.counters.connects += 1
            return channel
        return None

    async def _run_channel(self, channel: HubChannel) -> None:
        """Stream on `channel` until it ends, following redirects; then return."""
        loop = asyncio.get_running_loop()
        self._hub_lost.clear()
        tasks = self._start_channel(channel)
        while True:
            redirect_wait = asyncio.create_task(channel.redirects.get())
            lost = asyncio.create_task(self._hub_lost.wait())
            done, _ = await asyncio.wait(
                {tasks[0], redirect_wait, lost}, return_when=asyncio.FIRST_COMPLETED
            )
            lost.cancel()
            if redirect_wait not in done:
                # The hub went away: it closed the channel, or its announcements stopped.
                redirect_wait.cancel()
                channel.close()
                for task in tasks:
                    task.cancel()
                self.counters.failovers += 1
                self._failed_until[channel.hub_id] = loop.time() + self.config.backoff_initial
                self.channel = None
                self.state = "failing-over"
                await asyncio.sleep(self.config.backoff_initial * self.rng.uniform(0.5, 1.5))
                return
            new = await self._follow(channel, redirect_wait.result())
            if new is None:
                continue  # refused: stay on the old hub, its tasks keep running
            # Drain while the old receiver still collects ACKs, then let it go.
            await self._drain_and_close(channel)
            for task in tasks:
                task.cancel()
            self.counters.redirects_followed += 1
            channel = new
            self._hub_lost.clear()
            tasks = self._start_channel(channel)

    def _start_channel(self, channel: HubChannel) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        self.channel = channel
        self.state = "streaming"
        return (
            asyncio.create_task(self._receive(channel)),
            asyncio.create_task(self._send(channel)),
        )

    async def _follow(self, channel: HubChannel, redirect: Redirect) -> HubChannel | None:
        """Open the redirect target; only a hub proving the named identifier is accepted."""
        loop = asyncio.get_running_loop()
        dwell = channel.opened_at + self.config.min_dwell - loop.time()
        if dwell > 0:
            # Minimum dwell time: a device never bounces between hubs faster than this.
            await asyncio.sleep(dwell)
        target = redirect.target
        try:
            return await self.open_channel(
                target.endpoint.host, target.endpoint.port, target.identifier
            )
        except (RoostError, OSError, TimeoutError, ConnectionError) as exc:
            self.counters.redirects_refused[str(getattr(exc, "reason", "connect"))] += 1
            return None

    # ------------------------------------------------------------------------- status

    def status(self) -> DeviceStatus:
        """A snapshot of the connection, the spool and the counters."""
        channel = self.channel
        return DeviceStatus(
            identifier=self.identifier,
            name=self.config.name,
            state=self.state,
            hub=channel.hub_id if channel else None,
            hub_endpoint=f"{channel.endpoint[0]}:{channel.endpoint[1]}" if channel else None,
            last_acked_seq=self.spool.last_acked,
            buffered=self.spool.buffered,
            buffered_bytes=self.spool.buffered_bytes,
            dropped=self.spool.dropped,
            captured=self.counters.captured,
            frames_total=self.spool.added,
            trust=TrustSummary.from_json(self.trust.state.summary()),
            counters=DeviceCountersView(
                connects=self.counters.connects,
                connect_failures=dict(self.counters.connect_failures),
                redirects_followed=self.counters.redirects_followed,
                redirects_refused=dict(self.counters.redirects_refused),
                failovers=self.counters.failovers,
                frames_sent=self.counters.frames_sent,
                frames_resent=self.counters.frames_resent,
                announcements_accepted=self.core.counters.accepted,
                announcements_rejected=dict(self.core.counters.rejected),
            ),
            written_at=time.time(),
        )

    def write_status(self) -> None:
        """Replace ``status.json`` with the current snapshot (docs/hub-and-device.md)."""
        document = json.dumps(self.status().to_json()).encode("utf-8")
        atomic_write(self.config.status_file, document)

    async def _status_loop(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(1.0)
