"""The whole home as one hub's dashboard sees it (adapter): hubs, cameras, trust, events.

A ticker takes the daemon's status snapshot a few times a second, turns the differences
into timeline events (``roost.hub.events``, kept by ``roost.hub.eventlog``), and asks each
other live hub for its cameras over the peer link (``roost.hub.peers``). From that it keeps
one camera register for the home: where each camera streams now, and when it was last
seen, so a camera that stops stays on the page as an offline tile and a camera that moved
to another hub is still shown (and streamed through the peer link) on a page bookmarked
here. Browsers subscribe to the result over Server-Sent Events; each subscriber has a
bounded queue, and one that falls behind is sent a fresh snapshot instead of the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from roost.clock import wall_ms_now
from roost.errors import RoostError
from roost.hcsp.documents import name_problem
from roost.hub.eventlog import EventLog, EventQuery
from roost.hub.events import EventKind, HomeEvent, TrustFetchView, status_events
from roost.hub.peers import PeerClient
from roost.hub.recorder import Recorder
from roost.hub.status import HubStatus
from roost.pki.certs import load_certificate
from roost.pki.updater import TrustUpdater

__all__ = ["CameraSeen", "HomeSource", "HomeView", "Subscriber"]

log = logging.getLogger("roost.hub.dashboard")

# A rollover is called stuck when the current CA expires within this many days and no
# successor has been prepared (docs/trust.md: successors are published well before).
_STUCK_DAYS = 30
_SUBSCRIBER_QUEUE = 64


class HomeSource(Protocol):
    """What the home view reads from the hub daemon."""

    identifier: str
    trust: TrustUpdater
    recorder: Recorder

    def status(self) -> HubStatus: ...

    @property
    def sessions(self) -> Any: ...


@dataclass
class CameraSeen:
    """One camera of the home: where it streams now (None: nowhere) and when last seen."""

    device_id: str
    hub: str | None
    last_seen_ms: int
    last_hub: str | None = None
    # The last name a hello gave it, here or on another hub (PROTOCOL.md section 4); kept
    # while it is offline so its tile still says which camera it is.
    name: str | None = None


@dataclass(eq=False)
class Subscriber:
    """One browser's push stream: ``(event name, JSON text)`` items, bounded."""

    queue: asyncio.Queue[tuple[str, str]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=_SUBSCRIBER_QUEUE)
    )
    overflowed: bool = False

    def offer(self, name: str, data: str) -> None:
        if self.queue.full():
            self.overflowed = True
            return
        self.queue.put_nowait((name, data))


@dataclass
class _PeerReport:
    name: str
    cameras: dict[str, dict[str, Any]]
    fetched_ms: int
    reachable: bool


def _peer_name(row: dict[str, Any]) -> str | None:
    """A camera's name as another hub reported it, if it is one a hello could carry.

    The peer is a verified hub, but its rows are still input: a name that breaks the
    section 4 rule is dropped rather than shown.
    """
    name = row.get("name")
    if not isinstance(name, str) or name_problem(name) is not None:
        return None
    return name


class HomeView:
    """Keeps the home's view current and pushes it; ``start()`` on the serving loop."""

    def __init__(
        self,
        daemon: HomeSource,
        events: EventLog,
        peers: PeerClient | None,
        *,
        tick_s: float = 0.2,
        peer_poll_s: float = 0.5,
        offline_grace_s: float = 1.5,
    ) -> None:
        self.daemon = daemon
        self.events = events
        self.peers = peers
        self.tick_s = tick_s
        self.peer_poll_s = peer_poll_s
        self.offline_grace_ms = int(offline_grace_s * 1000)
        self.cameras: dict[str, CameraSeen] = {}
        self._reports: dict[str, _PeerReport] = {}
        self._subscribers: set[Subscriber] = set()
        self._previous: HubStatus | None = None
        self._fetch: TrustFetchView | None = None
        self._snapshot_text = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.ticks = 0

    # ------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Seed the camera register from the recordings, then tick and poll peers."""
        names = await asyncio.to_thread(self.daemon.recorder.names)
        for camera in await asyncio.to_thread(self.daemon.recorder.cameras):
            self.cameras[camera.device_id] = CameraSeen(
                camera.device_id,
                None,
                camera.last_received_ms,
                self.daemon.identifier,
                names.get(camera.device_id),
            )
        self._tick()
        self._tasks = [
            asyncio.create_task(self._every(self.tick_s, self._tick_async)),
            asyncio.create_task(self._every(self.peer_poll_s, self._poll_peers)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _every(self, interval: float, step: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except Exception:
                log.exception("dashboard update failed")

    async def _tick_async(self) -> None:
        self._tick()

    # --------------------------------------------------------------------------- events

    def record(self, events: list[HomeEvent]) -> None:
        """Store events and push them to every subscriber."""
        if not events:
            return
        ids = self.events.append(events)
        for row_id, event in zip(ids, events, strict=True):
            text = json.dumps({"id": row_id, **event.to_json()})
            for subscriber in list(self._subscribers):
                subscriber.offer("event", text)

    def _fetch_view(self) -> TrustFetchView:
        last = self.daemon.trust.last_fetch
        return TrustFetchView(
            self.daemon.trust.fetches,
            last.outcome if last else None,
            last.reachable if last else True,
        )

    def _tick(self) -> None:
        self.ticks += 1
        status = self.daemon.status()
        fetch = self._fetch_view()
        now_ms = wall_ms_now()
        if self._previous is not None:
            self.record(status_events(self._previous, status, now_ms, self._fetch, fetch))
        self._previous, self._fetch = status, fetch
        self._update_cameras(status, now_ms)
        self._push_snapshot()

    def _update_cameras(self, status: HubStatus, now_ms: int) -> None:
        here = status.identifier
        where: dict[str, tuple[str, int]] = {device: (here, now_ms) for device in status.connected}
        live = {entry.identifier for entry in status.hubs}
        for hub_id, report in self._reports.items():
            if hub_id not in live:
                continue
            for device_id, row in report.cameras.items():
                seen = int(row.get("last_seen_ms", 0))
                if row.get("online") and device_id not in where:
                    where[device_id] = (hub_id, seen)
                camera = self.cameras.setdefault(device_id, CameraSeen(device_id, None, seen))
                if seen > camera.last_seen_ms:
                    camera.last_seen_ms = seen
                name = _peer_name(row)
                if name is not None and (row.get("online") or camera.name is None):
                    camera.name = name
        for camera in self.cameras.values():
            # A camera that just left a hub is usually on its way to another: it is called
            # offline only once no hub has reported it for a grace period, so a handover
            # does not flash every tile offline.
            missing = camera.device_id not in where and camera.hub is not None
            if missing and now_ms - camera.last_seen_ms > self.offline_grace_ms:
                camera.last_hub, camera.hub = camera.hub, None
        for device_id, (hub_id, seen) in where.items():
            camera = self.cameras.setdefault(device_id, CameraSeen(device_id, hub_id, seen))
            camera.hub = camera.last_hub = hub_id
            camera.last_seen_ms = max(camera.last_seen_ms, seen)
        # The hello this hub received itself is the freshest word on the name.
        for device_id, name in status.connected_names.items():
            if device_id in self.cameras:
                self.cameras[device_id].name = name

    # ---------------------------------------------------------------------------- peers

    async def _poll_peers(self) -> None:
        if self.peers is None or self._previous is None:
            return
        status = self._previous
        others = [entry for entry in status.hubs if not entry.is_self]
        results = await asyncio.gather(
            *(self._ask(entry.identifier, entry.endpoint) for entry in others)
        )
        for entry, report in zip(others, results, strict=True):
            if report is not None:
                self._reports[entry.identifier] = report
            elif entry.identifier in self._reports:
                self._reports[entry.identifier].reachable = False
        for hub_id in set(self._reports) - {entry.identifier for entry in others}:
            del self._reports[hub_id]

    async def _ask(self, hub_id: str, endpoint: str) -> _PeerReport | None:
        assert self.peers is not None
        try:
            doc = await self.peers.get_json(self.daemon.trust.state, hub_id, endpoint, "/peer/home")
        except (RoostError, TimeoutError, ValueError):
            return None
        cameras = {
            str(row["id"]): row
            for row in doc.get("cameras", [])
            if isinstance(row, dict) and isinstance(row.get("id"), str)
        }
        return _PeerReport(str(doc.get("name", "")), cameras, wall_ms_now(), True)

    def peer_home(self) -> dict[str, Any]:
        """What this hub tells other hubs: its name and the cameras it has seen itself."""
        status = self._previous or self.daemon.status()
        now_ms = wall_ms_now()
        cameras = [
            {
                "id": device_id,
                "name": status.connected_names.get(device_id),
                "online": True,
                "last_seen_ms": now_ms,
            }
            for device_id in status.connected
        ]
        connected = set(status.connected)
        cameras += [
            {
                "id": camera.device_id,
                "name": camera.name,
                "online": False,
                "last_seen_ms": camera.last_seen_ms,
            }
            for camera in self.cameras.values()
            if camera.device_id not in connected and camera.last_hub == status.identifier
        ]
        return {"id": status.identifier, "name": status.name, "cameras": cameras}

    def endpoint_of(self, hub_id: str) -> str | None:
        """The device-channel endpoint of a live hub (the peer link's address)."""
        status = self._previous
        if status is None:
            return None
        for entry in status.hubs:
            if entry.identifier == hub_id and not entry.is_self:
                return entry.endpoint
        return None

    # ------------------------------------------------------------------------- snapshot

    def snapshot(self) -> dict[str, Any]:
        """The home as the page shows it (``/api/home`` and the ``home`` push)."""
        status = self._previous or self.daemon.status()
        now_ms = wall_ms_now()
        names = {hub_id: report.name for hub_id, report in self._reports.items()}
        names[status.identifier] = status.name
        hubs = [
            {
                "id": entry.identifier,
                "name": names.get(entry.identifier, ""),
                "endpoint": entry.endpoint,
                "rank": entry.rank,
                "elected": entry.identifier == status.winner,
                "self": entry.is_self,
                "connected": entry.connected,
                "max": entry.max_clients,
                "last_seen_s_ago": entry.last_seen_s_ago,
                "reachable": entry.is_self
                or (
                    entry.identifier in self._reports and self._reports[entry.identifier].reachable
                ),
            }
            for entry in status.hubs
        ]
        cameras = [
            {
                "id": camera.device_id,
                "name": camera.name,
                "online": camera.hub is not None,
                "hub": camera.hub,
                "hub_name": names.get(camera.hub or camera.last_hub or "", ""),
                "last_hub": camera.last_hub,
                "last_seen_ms": camera.last_seen_ms,
                "seen_s_ago": round(max(0, now_ms - camera.last_seen_ms) / 1000)
                if camera.hub is None
                else 0,
            }
            for camera in sorted(self.cameras.values(), key=lambda c: c.device_id)
        ]
        return {
            "hub": {"id": status.identifier, "name": status.name, "winner": status.winner},
            "hubs": hubs,
            "cameras": cameras,
            "trust": self.trust_panel(),
            "recordings": {
                "retention_bytes": self.daemon.recorder.retention_bytes,
            },
        }

    def trust_panel(self) -> dict[str, Any]:
        """Current and prepared generation, time floor, fetches, and plain-words warnings."""
        trust = self.daemon.trust
        state = trust.state
        loop_now = asyncio.get_running_loop().time()
        last = trust.last_fetch
        ca = load_certificate(state.current.body.ca_cert_der)
        expires = ca.not_valid_after_utc
        days_left = (expires - state.time_floor).total_seconds() / 86400
        warnings = []
        if last is not None and not last.reachable:
            warnings.append(
                f"The download server ({last.url}) did not answer the last fetch: new CA "
                "generations cannot reach this hub until it does."
            )
        elif last is not None and last.outcome not in ("stored", "not-published"):
            warnings.append(
                f"The last CA information fetched was refused ({last.outcome}); the rollover "
                "does not move until a valid successor is published."
            )
        if state.prepared is None and days_left < _STUCK_DAYS:
            warnings.append(
                f"Rollover is stuck: CA generation {state.current.generation} expires on "
                f"{expires.date().isoformat()} ({max(0, int(days_left))} days after the time "
                "floor) and no successor is prepared. Run `roost ca roll` and publish it."
            )
        return {
            "current": state.current.generation,
            "prepared": state.prepared.generation if state.prepared else None,
            "time_floor": state.time_floor.isoformat(),
            "current_expires": expires.isoformat(),
            "next_url": state.newest.body.next_url,
            "fetches": trust.fetches,
            "last_fetch": None
            if last is None
            else {
                "s_ago": round(max(0.0, loop_now - last.at), 1),
                "outcome": last.outcome,
                "reachable": last.reachable,
            },
            "next_fetch_in_s": round(max(0.0, trust.schedule.next_poll - loop_now), 1),
            "download_server": "unknown"
            if last is None
            else ("reachable" if last.reachable else "unreachable"),
            "rejected": dict(trust.rejected),
            "warnings": warnings,
            "checked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    def _push_snapshot(self) -> None:
        if not self._subscribers:
            return
        snapshot = self.snapshot()
        # Volatile fields change every tick; the page is pushed only real changes.
        stable = json.dumps(
            {
                **snapshot,
                "trust": {
                    **snapshot["trust"],
                    "checked_at": None,
                    "last_fetch": None,
                    "next_fetch_in_s": None,
                },
                "hubs": [{**h, "last_seen_s_ago": None} for h in snapshot["hubs"]],
                "cameras": [
                    {**c, "last_seen_ms": None, "seen_s_ago": c["seen_s_ago"] // 5}
                    for c in snapshot["cameras"]
                ],
            },
            sort_keys=True,
        )
        if stable == self._snapshot_text:
            return
        self._snapshot_text = stable
        text = json.dumps(snapshot)
        for subscriber in list(self._subscribers):
            subscriber.offer("home", text)

    # ------------------------------------------------------------------------ subscribe

    def subscribe(self) -> Subscriber:
        """A new push stream; the first item is the current snapshot."""
        subscriber = Subscriber()
        subscriber.offer("home", json.dumps(self.snapshot()))
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def resync(self, subscriber: Subscriber) -> None:
        """A subscriber that overflowed gets the current snapshot instead of the backlog."""
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.overflowed = False
        subscriber.offer("home", json.dumps(self.snapshot()))

    def recent_events(self, query: EventQuery) -> list[dict[str, Any]]:
        return [{"id": row_id, **event.to_json()} for row_id, event in self.events.query(query)]

    def web_login(self, ok: bool, user: str, source: str, reason: str = "") -> None:
        """Record a dashboard login (or a refused one) on the timeline."""
        kind = EventKind.WEB_LOGIN if ok else EventKind.WEB_LOGIN_FAILED
        text = (
            f"dashboard login by {user} from {source}"
            if ok
            else f"dashboard login refused for {user!r} from {source}: {reason}"
        )
        self.record([HomeEvent(wall_ms_now(), kind, self.daemon.identifier, "", reason, text)])
