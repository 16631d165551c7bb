"""The hub's remote entrance: guard sessions over TLS for the owner (docs/guard.md).

A user registered with ``roost user add STATE …`` connects to the hub's ``remote``
address, logs in with password and card codes (PROTOCOL.md §6) and calls:

    status                 → the hub status document (JSON, as ``GET /api/status``)
    latest-frame DEVICE_ID → u64 seq | u64 captured_at_ms | mime | payload
    watch DEVICE_ID [N]    → the next N frames recorded for that camera, streamed: one
                             "more" record per frame (fields as latest-frame), then "end"
    receipt INDEX          → the log receipt of one of this session's messages

Every message of every session goes to the hub's Merkle log (``STATE/guard-log.sqlite3``,
signed with ``STATE/log-key.pem``), the same files ``roost log`` reads.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.serialization import Encoding

from roost.errors import RefusedError, RemoteProtocolError, StateError
from roost.guard.aio import GuardServer, GuardServerConfig, LogReceipts
from roost.guard.log import LOG_KEY_FILENAME, SqliteMerkleLog, load_or_create_log_key
from roost.guard.remote import CallHandler, CallResult
from roost.guard.userstore import SqliteUserStore
from roost.hub.daemon import HubDaemon
from roost.hub.feed import FrameFeed
from roost.hub.recorder import StoredFrame
from roost.hub.status import HubStatus
from roost.pki.tls import server_context

__all__ = ["RemoteCallConfig", "build_guard_server", "hub_call_handler", "start_remote"]

MAX_DEVICE_ID = 256


@dataclass(frozen=True, slots=True)
class RemoteCallConfig:
    """Bounds of the hub's calls (one frozen config per component, STYLE.md)."""

    # ``watch`` streams N frames: this many when N is not given, never more than the max,
    # so one call holds a session (and a bounded queue) for a bounded time.
    watch_default_frames: int = 10
    watch_max_frames: int = 100
    # How long ``watch`` waits for each next frame before it ends with ``no-frame``.
    watch_frame_wait_s: float = 10.0


class _FrameSource(Protocol):
    def latest(self, device_id: str) -> StoredFrame | None: ...


class _HubView(Protocol):
    """What the handler reads from the hub (``HubDaemon`` has it)."""

    def status(self) -> HubStatus: ...

    @property
    def recorder(self) -> _FrameSource: ...


def _device_id(args: tuple[bytes, ...], method: str) -> str:
    if not args or not 0 < len(args[0]) <= MAX_DEVICE_ID:
        raise RemoteProtocolError(f"{method} takes a device id", reason="malformed")
    try:
        return args[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("device id is not UTF-8", reason="malformed") from None


def _frame_fields(seq: int, captured_at_ms: int, mime: str, payload: bytes) -> list[bytes]:
    return [struct.pack(">QQ", seq, captured_at_ms), mime.encode("ascii"), payload]


def _watch_count(args: tuple[bytes, ...], config: RemoteCallConfig) -> int:
    if len(args) == 1:
        return config.watch_default_frames
    if len(args) != 2 or not args[1].isdigit() or len(args[1]) > 9:
        raise RemoteProtocolError("watch takes a device id and a count", reason="malformed")
    count = int(args[1])
    if count < 1:
        raise RemoteProtocolError("watch needs at least one frame", reason="malformed")
    if count > config.watch_max_frames:
        raise RefusedError(
            f"watch streams at most {config.watch_max_frames} frames", reason="bad-args"
        )
    return count


def hub_call_handler(
    hub: _HubView,
    *,
    feed: FrameFeed | None = None,
    config: RemoteCallConfig | None = None,
) -> CallHandler:
    """The hub's methods; ``watch`` needs ``feed`` (attached to the hub's recorder)."""
    calls = config or RemoteCallConfig()

    async def latest_frame(device_id: str) -> Sequence[bytes]:
        # The recorder reads SQLite and a file: off the event loop.
        frame = await asyncio.to_thread(hub.recorder.latest, device_id)
        if frame is None:
            raise StateError(f"no frame from {device_id}", reason="no-frame")
        return _frame_fields(frame.seq, frame.captured_at_ms, frame.mime, frame.payload)

    async def watch(device_id: str, count: int) -> AsyncIterator[Sequence[bytes]]:
        assert feed is not None
        with feed.watch(device_id, count) as frames:
            for _ in range(count):
                frame = await frames.next(calls.watch_frame_wait_s)
                yield _frame_fields(frame.seq, frame.captured_at_ms, frame.mime, frame.payload)

    def handle(method: str, args: tuple[bytes, ...]) -> CallResult:
        if method == "status":
            if args:
                raise RemoteProtocolError("status takes no arguments", reason="malformed")
            return [json.dumps(hub.status().to_json()).encode("utf-8")]
        if method == "latest-frame":
            if len(args) != 1:
                raise RemoteProtocolError("latest-frame takes one device id", reason="malformed")
            return latest_frame(_device_id(args, method))
        if method == "watch" and feed is not None:
            device_id = _device_id(args, method)
            return watch(device_id, _watch_count(args, calls))
        # The peer asked for something this hub does not offer: its fault, not ours.
        raise RemoteProtocolError(f"unknown method {method!r}", reason="unknown-method")

    return handle


def build_guard_server(
    hub: HubDaemon,
    config: GuardServerConfig | None = None,
    calls: RemoteCallConfig | None = None,
) -> tuple[GuardServer, SqliteMerkleLog]:
    """The hub's guard server (user store, calls, Merkle log receipts), not yet listening:
    the TCP remote entrance and the broker's QUIC sessions (docs/broker.md) share it. The
    caller stops the server and closes the log. ``watch`` learns of new frames from the
    hub's recorder (a listener)."""
    state_dir = hub.config.state_dir
    merkle_log = SqliteMerkleLog.in_state_dir(state_dir)
    key = load_or_create_log_key(state_dir / LOG_KEY_FILENAME)
    feed = FrameFeed()
    feed.attach(hub.recorder)
    server = GuardServer(
        lambda: SqliteUserStore.in_state_dir(state_dir),
        hub_call_handler(hub, feed=feed, config=calls),
        server_certificate_der=hub.certificate.public_bytes(Encoding.DER),
        config=config,
        receipts=LogReceipts(merkle_log, key),
    )
    return server, merkle_log


async def start_remote(
    hub: HubDaemon,
    config: GuardServerConfig | None = None,
    calls: RemoteCallConfig | None = None,
    guard: tuple[GuardServer, SqliteMerkleLog] | None = None,
) -> tuple[GuardServer, SqliteMerkleLog]:
    """Listen on the hub's ``remote`` address with ``guard`` (built here when None); the
    caller stops the server and closes the log."""
    hub_config = hub.config
    if hub_config.remote is None:
        raise StateError("the hub config has no remote address", reason="bad-config")
    server, merkle_log = guard or build_guard_server(hub, config, calls)
    host, port = hub_config.remote
    # Users have no device certificate: TLS authenticates the hub, the guard the user.
    await server.start(
        host, port, server_context(hub_config.cert, hub_config.key), admission=hub.admission
    )
    return server, merkle_log
