"""The device daemon: camera, durable outbox, and the connection manager (section 4).

The connection manager keeps exactly one authenticated channel to a hub. It picks the best
live hub it has verified itself (it listens to the same announcements as the hubs), follows
a redirect only when it arrives over that channel and only to a hub whose certificate
carries the named identifier (seed FIG. 8B), drains the old channel before closing it so
no frame is stored twice, and fails over with jittered back-off when its hub goes away.
Every frame stays in the spool until a hub acknowledges it. The manager's decisions are
made by the pure core in `roost.device.manager`; this module performs them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509

from roost.channel import ChannelCoreConfig
from roost.clock import SYSTEM_CLOCK, Clock
from roost.config import DeviceConfig
from roost.device.camera import SyntheticCamera
from roost.device.channel import HubChannel, open_hub_channel
from roost.device.manager import (
    Close,
    Connect,
    ConnectionManager,
    Drain,
    FollowRedirect,
    Idle,
    ManagerConfig,
    Stream,
    Wait,
)
from roost.device.sources import CameraSource, TestPatternSource, open_camera_source
from roost.device.spool import FrameSpool
from roost.device.status import DeviceCountersView, DeviceStatus
from roost.dnssd.records import HubRecord
from roost.errors import RoostError, VerificationError
from roost.files import atomic_write
from roost.hcsp.aio import AnnounceTransport, UdpConfig
from roost.hcsp.core import AnnounceCore
from roost.hcsp.events import HcspEvent, HubDown, WinnerChanged
from roost.pki.certs import certs_from_pem
from roost.pki.tls import client_context
from roost.pki.updater import TrustUpdater
from roost.reasons import RejectionCounter, log_rejection
from roost.status import TrustSummary

if TYPE_CHECKING:
    from roost.dnssd.aio import DnsSdNode

__all__ = [
    "AnnounceTransportFactory",
    "DeviceCounters",
    "DeviceDaemon",
    "HubChannel",
    "manager_config",
    "read_own_certificate",
]

log = logging.getLogger("roost.device")
_SEND_BATCH = 64
# The errors a failed connection attempt raises; each is counted by its reason.
_CONNECT_ERRORS = (RoostError, OSError, TimeoutError, ConnectionError)

AnnounceTransportFactory = Callable[
    [AnnounceCore, UdpConfig, Callable[[HcspEvent], None]], AnnounceTransport
]
"""Builds the announcement listener; ``AnnounceTransport`` itself is the default."""


def read_own_certificate(config: DeviceConfig) -> x509.Certificate:
    """This device's leaf certificate: the first one in ``config.cert``."""
    return certs_from_pem(config.cert.read_bytes())[0]


def manager_config(config: DeviceConfig) -> ManagerConfig:
    """The connection manager's constants for this device (section 4)."""
    return ManagerConfig(
        backoff_initial=config.backoff_initial,
        backoff_max=config.backoff_max,
        min_dwell=config.min_dwell,
        # A candidate that failed to connect waits out the longest back-off; the hub just
        # lost only the shortest, so a hub that merely restarted is soon tried again.
        failed_hold=config.backoff_max,
        lost_hold=config.backoff_initial,
        hubs=config.hubs,
    )


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
        certificate: x509.Certificate,
        camera: CameraSource | SyntheticCamera | None = None,
        rng: random.Random | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        announce_transport: AnnounceTransportFactory = AnnounceTransport,
    ) -> None:
        """``certificate`` is this device's own leaf (the one in ``config.cert``);
        ``camera`` defaults to the source ``config.camera`` names."""
        self.config = config
        self.trust = trust
        self.spool = spool
        self.rng = rng or random.Random()
        self.clock = clock
        self.camera: CameraSource
        if isinstance(camera, SyntheticCamera):
            self.camera = TestPatternSource(camera, clock)
        elif camera is None:
            self.camera = open_camera_source(
                config.camera, config.name, config.width, config.height, config.fps, clock=clock
            )
        else:
            self.camera = camera
        # DNS-SD browsing (``[dns_sd]``), started in start() when the config enables it.
        self.dns_sd: DnsSdNode | None = None
        self.counters = DeviceCounters()
        # The logging rule for refused redirects and failed connections (PROTOCOL.md
        # preamble): one line per hub host per interval; the counts status reads stay in
        # ``counters`` (the connection manager keeps them).
        self.refusals = RejectionCounter(config.refusal_log_interval)
        node, _, _ = trust.state.verify_node(certificate)
        self.identifier = node.identifier
        announce = config.announce
        self.core = AnnounceCore(
            announce.core_config(config.refusal_log_interval),
            None,
            self._verify_hub_certificate,
        )
        self.listener = announce_transport(self.core, announce.udp, self._on_event)
        self.manager = ConnectionManager(manager_config(config), self.rng, self.counters)
        self.channel: HubChannel | None = None
        self.state = self.manager.state.value
        self._new_frames = asyncio.Event()
        self._hub_lost = asyncio.Event()
        self._hubs_changed = asyncio.Event()
        self._channel_tasks: tuple[asyncio.Task[None], asyncio.Task[None]] | None = None
        # A redirect target's channel, opened and waiting for the old one to drain.
        self._redirected: HubChannel | None = None
        # The hub whose loss ended the last channel: the next connection is a failover.
        self._lost_hub: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._tls_cache: tuple[tuple[bytes, bytes], ssl.SSLContext] | None = None

    # ------------------------------------------------------------------------- lifecycle

    async def start(self, capture: bool = True) -> None:
        await self.listener.start()
        if self.config.dns_sd.enabled:
            # zeroconf loads only for a device that browses (docs/BENCHMARKS.md, "Soak and
            # footprint"): most cameras have a bootstrap list or announcements.
            from roost.dnssd.aio import start_browsing

            self.dns_sd = await start_browsing(self.config.dns_sd.interfaces, self._on_dns_sd)
        if capture and self.config.fps > 0:
            await self.camera.start()
            self._tasks.append(asyncio.create_task(self._capture_loop()))
        self._tasks.append(asyncio.create_task(self._connection_loop()))
        self._tasks.append(asyncio.create_task(self._status_loop()))

    async def stop(self) -> None:
        self._stopping = True
        self.manager.stopped()
        self.state = self.manager.state.value
        self.listener.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in (self.channel, self._redirected):
            if channel is not None:
                channel.close()
        await self.camera.stop()
        if self.dns_sd is not None:
            await self.dns_sd.close()
        self.write_status()

    # --------------------------------------------------------------------------- frames

    def capture_one(self) -> int | None:
        """Spool the camera's newest frame; its sequence number, or None when the source
        had nothing new (a stream slower than ``fps``, or one that is failing)."""
        taken = self.camera.take(self.clock.wall_ms(), self.spool.next_seq)
        if taken is None:
            return None
        seq, captured_ms, payload = taken
        self.spool.add(seq, captured_ms, self.camera.mime, payload)
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
        now = asyncio.get_running_loop().time()
        self.manager.hubs_changed(self.core.live_hubs(now), now)
        self._hubs_changed.set()
        channel = self.channel
        if isinstance(event, WinnerChanged):
            winner = event.winner
            log.info(
                "election: best hub is %s",
                winner.identifier if winner is not None else "none",
                extra={
                    "event": "election",
                    "winner": winner.identifier if winner is not None else None,
                },
            )
        if isinstance(event, HubDown) and channel and event.hub.identifier == channel.hub_id:
            self._hub_lost.set()

    def _on_dns_sd(self, records: tuple[HubRecord, ...]) -> None:
        """DNS-SD found hubs: hints for the manager, verified by TLS when dialled."""
        now = asyncio.get_running_loop().time()
        self.manager.hints_changed(((r.host, r.port, r.identifier) for r in records), now)
        self._hubs_changed.set()

    # ------------------------------------------------------------------ channel (§4)

    async def open_channel(self, host: str, port: int, expected: str | None) -> HubChannel:
        """TLS to a hub, verify its identifier, hello/welcome; raises on any failure."""

        def ignored(reason: str) -> None:
            self.counters.redirects_refused[reason] += 1
            self._log_refusal(reason, host, "document ignored from")

        return await open_hub_channel(
            host,
            port,
            ssl_context=self._client_context(),
            verify=lambda leaf: self._verify_with_update(leaf, expected),
            device_id=self.identifier,
            last_acked=self.spool.last_acked,
            config=ChannelCoreConfig(drain_timeout=self.config.drain_timeout),
            name=self.config.name,
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

    def _log_refusal(self, reason: str, host: str, what: str) -> None:
        """Log a counted refusal when the rule allows: reason and hub host only."""
        now = asyncio.get_running_loop().time()
        log_rejection(log, self.refusals, reason, source=host, now=now, what=what)

    async def _drain_and_close(self, channel: HubChannel) -> None:
        """Stop sending, wait until the hub acknowledged what it got, then close.

        Closing before the last ACK would make the next hub store those frames again.
        """
        self._new_frames.set()
        await channel.drain_and_close()

    # ------------------------------------------------------------- connection manager

    async def _connection_loop(self) -> None:
        """Performs what the connection manager decides, and tells it how each step went."""
        # The manager runs on the loop's clock: channel.opened_at and the announce core's
        # live-hub times are read from it too.
        loop = asyncio.get_running_loop()
        while not self._stopping:
            action = self.manager.next_action(loop.time())
            self.state = self.manager.state.value
            if isinstance(action, Connect):
                await self._connect_best(action)
            elif isinstance(action, Wait):
                # A search ends early when the hubs change; the manager decides whether a
                # change matters, so every change just asks it again.
                self._hubs_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._hubs_changed.wait(), max(0.0, action.until - loop.time())
                    )
            elif isinstance(action, Stream):
                await self._run_channel()
            elif isinstance(action, FollowRedirect):
                await self._follow(action)
            elif isinstance(action, Drain):
                await self._switch_to_redirected()
            elif isinstance(action, Close):
                self._close_channel()
            else:
                assert isinstance(action, Idle)
                return

    async def _connect_best(self, action: Connect) -> None:
        """One connection attempt of the manager's round; streaming starts on success."""
        loop = asyncio.get_running_loop()
        try:
            channel = await self.open_channel(action.host, action.port, action.expected_id)
        except _CONNECT_ERRORS as exc:
            reason = str(getattr(exc, "reason", type(exc).__name__))
            self.manager.connect_failed(action.expected_id, reason, loop.time())
            self._log_refusal(reason, action.host, "connect failed to")
            return
        self.manager.connect_succeeded(channel.hub_id, channel.opened_at)
        lost, self._lost_hub = self._lost_hub, None
        if lost is not None and lost != channel.hub_id:
            log.info(
                "failover: from hub %s to hub %s at %s:%s",
                lost,
                channel.hub_id,
                action.host,
                action.port,
                extra={"event": "failover", "from_hub": lost, "hub": channel.hub_id},
            )
        log.info(
            "connected to hub %s at %s:%s (%s frames to send)",
            channel.hub_id,
            action.host,
            action.port,
            self.spool.buffered,
            extra={"event": "connected", "hub": channel.hub_id},
        )
        self._hub_lost.clear()
        self._channel_tasks = self._start_channel(channel)
        self.channel = channel

    async def _run_channel(self) -> None:
        """Stream until the channel ends, its hub goes down or it brings a redirect."""
        loop = asyncio.get_running_loop()
        channel, tasks = self.channel, self._channel_tasks
        assert channel is not None and tasks is not None
        redirect_wait = asyncio.create_task(channel.redirects.get())
        lost = asyncio.create_task(self._hub_lost.wait())
        done, _ = await asyncio.wait(
            {tasks[0], redirect_wait, lost}, return_when=asyncio.FIRST_COMPLETED
        )
        lost.cancel()
        if redirect_wait in done:
            redirect = redirect_wait.result()
            log.info(
                "redirect received: hub %s sends this device to hub %s",
                channel.hub_id,
                redirect.target.identifier,
                extra={
                    "event": "redirect-received",
                    "from_hub": channel.hub_id,
                    "hub": redirect.target.identifier,
                },
            )
            self.manager.redirect_received(redirect, loop.time())
            return
        # The hub went away: it closed the channel, or its announcements stopped.
        redirect_wait.cancel()
        why = "its announcements stopped" if lost in done else "the channel closed"
        log.info(
            "hub %s lost: %s",
            channel.hub_id,
            why,
            extra={"event": "hub-lost", "hub": channel.hub_id},
        )
        self._lost_hub = channel.hub_id
        self.manager.hub_lost(channel.hub_id, loop.time())

    async def _follow(self, action: FollowRedirect) -> None:
        """Open the redirect target; only a hub proving the named identifier is accepted."""
        loop = asyncio.get_running_loop()
        dwell = action.not_before - loop.time()
        if dwell > 0:
            # Minimum dwell time: a device never bounces between hubs faster than this.
            await asyncio.sleep(dwell)
        target = action.target
        try:
            new = await self.open_channel(
                target.endpoint.host, target.endpoint.port, target.identifier
            )
        except _CONNECT_ERRORS as exc:
            reason = str(getattr(exc, "reason", "connect"))
            self.manager.redirect_failed(reason, loop.time())
            self._log_refusal(reason, target.endpoint.host, "redirect refused to")
            return  # refused: stay on the old hub, its tasks keep running
        self._redirected = new
        self.manager.redirect_completed(new.opened_at)

    async def _switch_to_redirected(self) -> None:
        """Drain the old channel while its receiver still collects ACKs, then use the new."""
        old, new, tasks = self.channel, self._redirected, self._channel_tasks
        assert old is not None and new is not None and tasks is not None
        await self._drain_and_close(old)
        for task in tasks:
            task.cancel()
        log.info(
            "redirect followed: from hub %s to hub %s",
            old.hub_id,
            new.hub_id,
            extra={"event": "redirect-followed", "from_hub": old.hub_id, "hub": new.hub_id},
        )
        self._redirected = None
        self._hub_lost.clear()
        self._channel_tasks = self._start_channel(new)
        self.channel = new

    def _close_channel(self) -> None:
        """Drop the channel whose hub went away; there is nobody left to drain to."""
        channel, tasks = self.channel, self._channel_tasks
        if channel is not None:
            channel.close()
        for task in tasks or ():
            task.cancel()
        self.channel = None
        self._channel_tasks = None

    def _start_channel(self, channel: HubChannel) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        self.channel = channel
        self.state = "streaming"
        return (
            asyncio.create_task(self._receive(channel)),
            asyncio.create_task(self._send(channel)),
        )

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
            written_at=self.clock.wall_ms() / 1000,
            camera=self.camera.status(),
            dns_sd=(
                tuple({"id": i, "endpoint": f"{h}:{p}"} for h, p, i in self.manager.hints)
                if self.dns_sd is not None
                else None
            ),
        )

    def write_status(self) -> None:
        """Replace ``status.json`` with the current snapshot (docs/hub-and-device.md)."""
        # The pid and whether the daemon is still running tell `roost device status` to say
        # "not running" rather than show a stopped or killed device's last state.
        doc = {**self.status().to_json(), "pid": os.getpid(), "running": not self._stopping}
        document = json.dumps(doc).encode("utf-8")
        atomic_write(self.config.status_file, document)

    async def _status_loop(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(1.0)
