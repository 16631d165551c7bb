"""Shared presence for several broker processes (docs/broker-scale.md), pure.

When several broker processes share one Redis or Valkey server, each registry entry is also
written there as one value under ``PREFIX + "p:" + identifier`` with a TTL. The value names
the OWNER process (the one whose UDP socket received the registration, so the equipment's
NAT mapping points at that socket: only it can send the wake-up, PROTOCOL.md section 5) and
that process's EPOCH (its start time in wall milliseconds, so a restarted process with the
same node name is told apart), with the registration key, the last counter written and the
enrolled certificate: any process can then accept the equipment's registrations (re-homing)
and answer ``lookup``.

This module decides, without sockets or clocks:

- ``PresencePolicy``: when an entry is due to be written (on a change of key, owner or
  address, and on every k-th registration or keepalive, never per datagram), and how long
  the value lives in Redis (long enough to outlast k registrations with their jitter);
- ``PresenceRecord``: the value's layout (``encode`` / ``decode_presence``);
- ``route_target``: whether a ``lookup``/``connect`` is served here or by its owner;
- ``choose_via``: whether a forwarded channel goes over the node link to its owner or over
  Redis pub/sub, and whether a link to the owner should be (re)opened;
- ``PeerRecord``: the node-link address a process advertises (``decode_peer``), the hello
  that opens a link (``check_hello``) and the link's reconnect back-off (``link_backoff``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from roost.errors import RemoteProtocolError
from roost.reasons import Reason
from roost.rendezvous.broker_events import PresenceConfig
from roost.rendezvous.messages import REGISTRATION_KEY_SIZE

__all__ = [
    "LINK_VERSION",
    "PEER_VERSION",
    "PRESENCE_VERSION",
    "Hop",
    "NodeMessage",
    "PeerRecord",
    "PresenceConfig",
    "PresencePolicy",
    "PresenceRecord",
    "Route",
    "Via",
    "check_hello",
    "choose_via",
    "decode_node_message",
    "decode_peer",
    "decode_presence",
    "hello",
    "link_backoff",
    "route_target",
]

PRESENCE_VERSION = 1
PEER_VERSION = 2
# The node link's own version, carried in the hello's rtt_ms field.
LINK_VERSION = 1
_HEADER = 1 + 8 + 8 + REGISTRATION_KEY_SIZE + 1
_MAX_NODE = 64
_MAX_CERTIFICATE = 4096


class PresencePolicy:
    """Decides when an entry's presence is due (the core calls it after it accepted a
    registration or a keepalive); ``ttl_ms`` is how long a written value lives."""

    __slots__ = ("_keepalives", "config", "ttl_ms")

    def __init__(self, config: PresenceConfig, interval_s: float, ttl_s: float) -> None:
        self.config = config
        self.ttl_ms = round((config.every * interval_s * config.jitter_allowance + ttl_s) * 1000)
        self._keepalives: dict[str, int] = {}

    def registration_due(self, counter: int, changed: bool) -> bool:
        """A registration with ``counter`` was accepted; ``changed``: its key, owner or
        addresses differ from what was last written. Agents count up by one per
        registration, so ``counter % k`` is every k-th without state per entry."""
        return changed or counter % self.config.every == 0

    def keepalive_due(self, identifier: str) -> bool:
        """A held connection's keepalive: every k-th per identifier is due."""
        seen = self._keepalives.get(identifier, 0) + 1
        if seen >= self.config.every:
            self._keepalives.pop(identifier, None)
            return True
        self._keepalives[identifier] = seen
        return False

    def forget(self, identifier: str) -> None:
        """The identifier's held connection ended."""
        self._keepalives.pop(identifier, None)


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    """One entry as stored in Redis."""

    owner: str
    epoch: int
    counter: int
    key: bytes
    certificate: bytes | None
    # The owner could wake it: a fresh registration or a held connection.
    reachable: bool = True

    def encode(self) -> bytes:
        """``u8 version | u64 epoch | u64 counter | key (32) | u8 flags | u8 node_len |
        node | certificate``."""
        node = self.owner.encode()
        if not 1 <= len(node) <= _MAX_NODE or len(self.key) != REGISTRATION_KEY_SIZE:
            raise ValueError("a presence record needs a node name and a 32-byte key")
        certificate = self.certificate or b""
        return b"".join(
            (
                bytes((PRESENCE_VERSION,)),
                self.epoch.to_bytes(8, "big"),
                self.counter.to_bytes(8, "big"),
                self.key,
                bytes((1 if self.reachable else 0,)),
                bytes((len(node),)),
                node,
                certificate,
            )
        )


def decode_presence(data: bytes) -> PresenceRecord:
    """The inverse of ``PresenceRecord.encode``; raises RemoteProtocolError("malformed")."""
    if len(data) < _HEADER + 2 or data[0] != PRESENCE_VERSION:
        raise RemoteProtocolError("not a presence record", reason=Reason.MALFORMED)
    epoch = int.from_bytes(data[1:9], "big")
    counter = int.from_bytes(data[9:17], "big")
    key = data[17 : 17 + REGISTRATION_KEY_SIZE]
    flags = data[_HEADER - 1]
    node_len = data[_HEADER]
    node_end = _HEADER + 1 + node_len
    if not 1 <= node_len <= _MAX_NODE or len(data) < node_end or flags > 1:
        raise RemoteProtocolError("bad presence node", reason=Reason.MALFORMED)
    try:
        owner = data[_HEADER + 1 : node_end].decode()
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("bad presence node", reason=Reason.MALFORMED) from exc
    certificate = data[node_end:]
    if len(certificate) > _MAX_CERTIFICATE:
        raise RemoteProtocolError("presence certificate too large", reason=Reason.MALFORMED)
    return PresenceRecord(owner, epoch, counter, key, certificate or None, flags == 1)


class Route(enum.Enum):
    """Where a ``lookup``/``connect`` for a target is served."""

    LOCAL = "local"  # this process can wake the target (or nobody can)
    ASK = "ask"  # not reachable from here: read the shared presence
    FORWARD = "forward"  # another live process owns the target


def route_target(
    reachable_here: bool, record: PresenceRecord | None, node: str, epoch: int
) -> Route:
    """``reachable_here``: the local registry can wake the target (fresh registration or
    held connection). Without a record (not read yet) the answer is ASK; with one, a
    target owned by another process instance is FORWARD, anything else LOCAL (the local
    core then answers, ``unknown-target`` or ``target-offline`` included)."""
    if reachable_here:
        return Route.LOCAL
    if record is None:
        return Route.ASK
    if record.reachable and (record.owner, record.epoch) != (node, epoch):
        return Route.FORWARD
    return Route.LOCAL


class Hop(enum.IntEnum):
    """Kinds of node-to-node messages for a forwarded TLS channel (docs/broker-scale.md)."""

    OPEN = 1  # origin → owner: a channel opens there; payload: the peer's host
    RECORD = 2  # origin → owner: one record body the peer sent
    CLOSE = 3  # origin → owner: the peer's connection closed
    BACK = 4  # owner → origin: one record body to write to the peer
    SHUT = 5  # owner → origin: close the peer's connection after its records
    HELLO = 6  # node link only, first frame each way: who speaks, and to whom


@dataclass(frozen=True, slots=True)
class NodeMessage:
    """``u8 kind | u8 node_len | sender node | u64 sender epoch | u64 channel | u32 rtt_ms |
    payload``; ``channel`` is always the ORIGIN's id of the peer's connection."""

    kind: Hop
    sender: str
    epoch: int
    channel: int
    rtt_ms: int
    payload: bytes

    def encode(self) -> bytes:
        node = self.sender.encode()
        if not 1 <= len(node) <= _MAX_NODE:
            raise ValueError("a node name is 1-64 bytes")
        return b"".join(
            (
                bytes((self.kind, len(node))),
                node,
                self.epoch.to_bytes(8, "big"),
                self.channel.to_bytes(8, "big"),
                min(self.rtt_ms, 0xFFFFFFFF).to_bytes(4, "big"),
                self.payload,
            )
        )


def decode_node_message(data: bytes) -> NodeMessage:
    """The inverse of ``NodeMessage.encode``; raises RemoteProtocolError("malformed")."""
    if len(data) < 2:
        raise RemoteProtocolError("short node message", reason=Reason.MALFORMED)
    node_len = data[1]
    end = 2 + node_len
    if data[0] not in Hop._value2member_map_ or not 1 <= node_len <= _MAX_NODE:
        raise RemoteProtocolError("bad node message", reason=Reason.MALFORMED)
    if len(data) < end + 20:
        raise RemoteProtocolError("short node message", reason=Reason.MALFORMED)
    try:
        sender = data[2:end].decode()
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("bad node name", reason=Reason.MALFORMED) from exc
    return NodeMessage(
        Hop(data[0]),
        sender,
        int.from_bytes(data[end : end + 8], "big"),
        int.from_bytes(data[end + 8 : end + 16], "big"),
        int.from_bytes(data[end + 16 : end + 20], "big"),
        data[end + 20 :],
    )


# ---------------------------------------------------------------------- the node link


class Via(enum.Enum):
    """How a forwarded channel's messages travel to the owner (docs/broker-scale.md,
    "Node link")."""

    LINK = "link"  # the persistent TLS connection to the owner's instance
    PUBSUB = "pubsub"  # the owner's Redis channel (the fallback)


def choose_via(link_epoch: int | None, owner_epoch: int) -> tuple[Via, bool]:
    """``link_epoch``: the epoch of the owner's node-link peer when a link to that node is
    up, else None. Returns the path for a channel opened now, and whether a link should be
    (re)opened: none is up, or the one up leads to an older instance than the owner (the
    owner restarted). A link to a NEWER instance than the presence names is not the
    owner's: that channel goes over pub/sub, and the link stays (the presence catches up
    at the entry's next registration)."""
    if link_epoch == owner_epoch:
        return Via.LINK, False
    return Via.PUBSUB, link_epoch is None or link_epoch < owner_epoch


def link_backoff(attempt: int, jitter: float, *, first_s: float, cap_s: float) -> float:
    """Seconds before reconnect ``attempt`` (0 for the first after a link went down):
    ``first_s`` doubled per attempt up to ``cap_s``, times ``jitter`` (0.8-1.2, drawn by
    the adapter) so the routers of a restarted owner do not all dial it at once."""
    return float(min(cap_s, first_s * 2.0 ** min(attempt, 30)) * jitter)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One process's node-link address, stored under ``PREFIX l:NODE`` with a TTL: its TLS
    ``host``/``port`` and, when it also listens on a local socket, that socket's abstract
    name (``local``) and the host and network namespace it can be reached from
    (``machine``: only a process with the same one dials it)."""

    epoch: int
    host: str
    port: int
    local: str = ""
    machine: str = ""

    def encode(self) -> bytes:
        """``u8 version=2 | u64 epoch | u16 port | u8 host_len | host | u8 local_len | local
        | u8 machine_len | machine`` (version 1 ends after ``host``)."""
        host, local, machine = self.host.encode(), self.local.encode(), self.machine.encode()
        if not 1 <= len(host) <= 255 or not 0 < self.port < 65536:
            raise ValueError("a peer record needs a host and a port")
        if len(local) > 100 or len(machine) > 255 or bool(local) != bool(machine):
            raise ValueError("a local socket needs its machine (and at most 100 bytes)")
        return b"".join(
            (
                bytes((PEER_VERSION,)),
                self.epoch.to_bytes(8, "big"),
                self.port.to_bytes(2, "big"),
                bytes((len(host),)),
                host,
                bytes((len(local),)),
                local,
                bytes((len(machine),)),
                machine,
            )
        )

    def local_for(self, machine: str) -> str:
        """The local socket to dial from a process on ``machine`` ("" when there is none
        or the peer lives on another host or namespace)."""
        return self.local if self.local and self.machine == machine else ""


def _peer_field(data: bytes, at: int) -> tuple[str, int]:
    if at >= len(data) or at + 1 + data[at] > len(data):
        raise RemoteProtocolError("peer record cut short", reason=Reason.MALFORMED)
    end = at + 1 + data[at]
    try:
        return data[at + 1 : end].decode(), end
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("bad peer record text", reason=Reason.MALFORMED) from exc


def decode_peer(data: bytes) -> PeerRecord:
    """The inverse of ``PeerRecord.encode`` (also version 1, from a process that has no
    local socket); raises RemoteProtocolError("malformed")."""
    if len(data) < 13 or data[0] not in (1, PEER_VERSION):
        raise RemoteProtocolError("not a peer record", reason=Reason.MALFORMED)
    port = int.from_bytes(data[9:11], "big")
    host, at = _peer_field(data, 11)
    local = machine = ""
    if data[0] == PEER_VERSION:
        local, at = _peer_field(data, at)
        machine, at = _peer_field(data, at)
    if at != len(data):
        raise RemoteProtocolError("bytes after the peer record", reason=Reason.MALFORMED)
    if port == 0 or not host or bool(local) != bool(machine):
        raise RemoteProtocolError("bad peer address", reason=Reason.MALFORMED)
    return PeerRecord(int.from_bytes(data[1:9], "big"), host, port, local, machine)


def hello(node: str, epoch: int, peer: str, peer_epoch: int) -> NodeMessage:
    """The first frame each way on a node link: ``node``/``epoch`` speak to the instance
    ``peer``/``peer_epoch`` (its epoch in the channel field, its name as the payload, the
    link version in rtt_ms)."""
    return NodeMessage(Hop.HELLO, node, epoch, peer_epoch, LINK_VERSION, peer.encode())


def check_hello(
    message: NodeMessage, node: str, epoch: int, peer: tuple[str, int] | None = None
) -> None:
    """A received hello must be one, of our version, and name THIS instance (and, with
    ``peer``, come from that node and epoch); raises RemoteProtocolError ``bad-hello``, or
    ``wrong-node`` for a hello meant for another node or another instance of this one, or
    from another than the one dialled (an address read before a restart)."""
    if message.kind is not Hop.HELLO or message.rtt_ms != LINK_VERSION:
        raise RemoteProtocolError("the node link opens with a hello", reason=Reason.BAD_HELLO)
    wrong_peer = peer is not None and (message.sender, message.epoch) != peer
    if message.payload != node.encode() or message.channel != epoch or wrong_peer:
        raise RemoteProtocolError(
            "node-link hello for another broker instance", reason=Reason.WRONG_NODE
        )
