"""An in-memory harness around BrokerCore: a fake clock, decoded outputs, no sockets."""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field
from typing import Any

from roost.rendezvous import control, stun
from roost.rendezvous.broker import BrokerCore
from roost.rendezvous.broker_events import BrokerCoreConfig, BrokerEvent, CloseChannel, Refused
from roost.rendezvous.messages import (
    Candidate,
    Registration,
    decode_ack,
    decode_wake,
    encode_registration,
    verify_wake,
)
from roost.rendezvous.seal import MIN_SEALED

__all__ = ["HUB", "ISSUER_ADDR", "NAT_ADDR", "Harness", "ident"]


def ident(n: int, prefix: str = "hcsp:") -> str:
    return prefix + base64.urlsafe_b64encode(n.to_bytes(16, "big")).rstrip(b"=").decode()


HUB = ident(1)
NAT_ADDR = ("203.0.113.7", 40001)
ISSUER_ADDR = ("198.51.100.9", 50000)
CERT = b"\x30\x82" + bytes(600)
SEALED = bytes(MIN_SEALED)


@dataclass
class Harness:
    config: BrokerCoreConfig = field(default_factory=BrokerCoreConfig)
    now: float = 100.0
    core: BrokerCore = field(init=False)
    records: list[tuple[int, Any]] = field(default_factory=list)
    datagrams: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    events: list[BrokerEvent] = field(default_factory=list)
    _next_channel: int = 1

    def __post_init__(self) -> None:
        self.core = BrokerCore(self.config, rng=random.Random(7), wake_counter_start=1000)

    # -- driving
    def pump(self) -> None:
        for channel, body in self.core.records_to_send():
            self.records.append((channel, control.decode_channel_body(body)))
        self.datagrams += self.core.datagrams_to_send()
        while (event := self.core.next_event()) is not None:
            self.events.append(event)

    def advance(self, seconds: float) -> None:
        """Move the fake clock, firing every due timer on the way (bounded)."""
        end = self.now + seconds
        for _ in range(10_000):
            timer = self.core.get_timer()
            if timer is None or timer > end:
                break
            self.now = max(self.now, timer)
            self.core.handle_timer(self.now)
            self.pump()
        self.now = end

    def udp(self, data: bytes, addr: tuple[str, int] = NAT_ADDR) -> list[bytes]:
        self.datagrams.clear()
        self.core.receive_datagram(data, addr, self.now)
        self.pump()
        return [d for d, a in self.datagrams if a == addr]

    def channel(self, peer: str | None, source: str = "198.51.100.9", cert: bytes = CERT) -> int:
        channel = self._next_channel
        self._next_channel += 1
        self.core.open_channel(channel, peer, source, self.now, certificate=cert if peer else None)
        self.pump()
        return channel

    def send(self, channel: int, op: str, **fields: Any) -> list[Any]:
        self.send_body(channel, control.encode_control(op, **fields))
        return self.took(channel)

    def send_body(self, channel: int, body: bytes) -> None:
        self.records.clear()
        self.core.receive_record(channel, body, self.now)
        self.pump()

    def took(self, channel: int) -> list[Any]:
        return [m for c, m in self.records if c == channel]

    def refusals(self, reason: str) -> int:
        return self.core.rejections[reason]

    def closed(self) -> list[int]:
        return [e.channel for e in self.events if isinstance(e, CloseChannel)]

    def logged(self) -> list[Refused]:
        return [e for e in self.events if isinstance(e, Refused)]

    # -- scripted parties
    def enroll(self, identifier: str = HUB) -> tuple[int, bytes]:
        channel = self.channel(identifier)
        (enrolled,) = self.send(channel, "enroll")
        assert isinstance(enrolled, control.Enrolled)
        return channel, enrolled.key

    def register(
        self,
        key: bytes,
        counter: int,
        identifier: str = HUB,
        local: tuple[Candidate, ...] = (Candidate.of("192.168.1.20", 40001),),
        addr: tuple[str, int] = NAT_ADDR,
    ) -> list[bytes]:
        return self.udp(encode_registration(Registration(identifier, counter, local), key), addr)

    def stun_request(self, transaction: bytes = bytes(range(12))) -> bytes:
        return stun.build_binding_request(transaction)

    def wakes_to(self, addr: tuple[str, int], key: bytes) -> list[tuple[int, bytes]]:
        found = []
        for data, where in self.datagrams:
            if where == addr and data[:4] == b"RWAK":
                wake = verify_wake(decode_wake(data), key)
                found.append((wake.counter, wake.token))
        return found

    @staticmethod
    def ack(data: bytes) -> tuple[int, Candidate]:
        ack = decode_ack(data)
        return ack.counter, ack.observed
