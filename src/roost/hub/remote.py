"""The hub's remote entrance: guard sessions over TLS for the owner (docs/guard.md).

A user registered with ``roost user add STATE …`` connects to the hub's ``remote``
address, logs in with password and card codes (PROTOCOL.md §6) and calls:

    status                 → the hub status document (JSON, as ``GET /api/status``)
    latest-frame DEVICE_ID → u64 seq | u64 captured_at_ms | mime | payload
    receipt INDEX          → the log receipt of one of this session's messages

Every message of every session goes to the hub's Merkle log (``STATE/guard-log.sqlite3``,
signed with ``STATE/log-key.pem``), the same files ``roost log`` reads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Protocol

from cryptography.hazmat.primitives.serialization import Encoding

from roost.errors import LocalProtocolError, RemoteProtocolError, StateError
from roost.guard.aio import GuardServer, GuardServerConfig, LogReceipts
from roost.guard.log import LOG_KEY_FILENAME, SqliteMerkleLog, load_or_create_log_key
from roost.guard.remote import CallHandler
from roost.guard.userstore import SqliteUserStore
from roost.hub.daemon import HubDaemon
from roost.hub.recorder import StoredFrame
from roost.hub.status import HubStatus
from roost.pki.tls import server_context

__all__ = ["hub_call_handler", "start_remote"]

MAX_DEVICE_ID = 256


class _HubView(Protocol):
    """What the handler reads from the hub (``HubDaemon`` has it)."""

    def status(self) -> HubStatus: ...

    @property
    def recorder(self) -> _FrameSource: ...


class _FrameSource(Protocol):
    def latest(self, device_id: str) -> StoredFrame | None: ...


def hub_call_handler(hub: _HubView) -> CallHandler:
    def handle(method: str, args: tuple[bytes, ...]) -> Sequence[bytes]:
        if method == "status":
            if args:
                raise RemoteProtocolError("status takes no arguments", reason="malformed")
            return [json.dumps(hub.status().to_json()).encode("utf-8")]
        if method == "latest-frame":
            if len(args) != 1 or not 0 < len(args[0]) <= MAX_DEVICE_ID:
                raise RemoteProtocolError("latest-frame takes one device id", reason="malformed")
            try:
                device_id = args[0].decode("utf-8")
            except UnicodeDecodeError:
                raise RemoteProtocolError("device id is not UTF-8", reason="malformed") from None
            frame = hub.recorder.latest(device_id)
            if frame is None:
                raise StateError(f"no frame from {device_id}", reason="no-frame")
            return [
                struct.pack(">QQ", frame.seq, frame.captured_at_ms),
                frame.mime.encode("ascii"),
                frame.payload,
            ]
        raise LocalProtocolError(f"unknown method {method!r}", reason="unknown-method")

    return handle


async def start_remote(
    hub: HubDaemon, config: GuardServerConfig | None = None
) -> tuple[GuardServer, SqliteMerkleLog]:
    """Listen on the hub's ``remote`` address; the caller stops the server and closes the
    log."""
    hub_config = hub.config
    if hub_config.remote is None:
        raise StateError("the hub config has no remote address", reason="bad-config")
    state_dir = hub_config.state_dir
    merkle_log = SqliteMerkleLog.in_state_dir(state_dir)
    key = load_or_create_log_key(state_dir / LOG_KEY_FILENAME)
    server = GuardServer(
        lambda: SqliteUserStore.in_state_dir(state_dir),
        hub_call_handler(hub),
        server_certificate_der=hub.certificate.public_bytes(Encoding.DER),
        config=config,
        receipts=LogReceipts(merkle_log, key),
    )
    host, port = hub_config.remote
    # Users have no device certificate: TLS authenticates the hub, the guard the user.
    await server.start(host, port, server_context(hub_config.cert, hub_config.key))
    return server, merkle_log
