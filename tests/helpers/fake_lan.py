"""A fake LAN for HCSP announce cores: multicast among N cores under a fake clock.

Every datagram a core sends is delivered to every attached core, its sender included (as
multicast loopback does), after a base delay. A link script decides per delivery whether
the copy is lost, duplicated or delayed (which reorders it); the default script draws those
from seeded probabilities. Nothing sleeps: ``run_until`` jumps the clock from one deadline
(a core timer or a delivery) to the next.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from roost.hcsp.core import AnnounceCore
from roost.hcsp.events import HcspEvent

__all__ = ["FakeClock", "FakeLan", "LanNode", "LinkScript"]

# Unix milliseconds at fake time 0: 2026-09-21, inside the test certificates' validity.
WALL_BASE_MS = 1_790_000_000_000
PORT = 17320
# (sender name, receiver name, datagram number) -> delays of each delivered copy; an empty
# list loses the datagram, two entries duplicate it.
LinkScript = Callable[[str, str, int], list[float]]


@dataclass
class FakeClock:
    """Monotonic seconds from 0, and a wall clock derived from it."""

    now: float = 0.0

    def wall_ms(self, offset_ms: int = 0) -> int:
        return WALL_BASE_MS + round(self.now * 1000) + offset_ms


@dataclass
class LanNode:
    """One core on the LAN, with the events it emitted so far."""

    name: str
    host: str
    core: AnnounceCore
    clock_offset_ms: int = 0
    crashed: bool = False
    events: list[HcspEvent] = field(default_factory=list)


@dataclass(order=True)
class _Delivery:
    deliver_at: float
    order: int
    receiver: str = field(compare=False)
    source_host: str = field(compare=False)
    data: bytes = field(compare=False)


class FakeLan:
    """Deliver datagrams among cores; see the module docstring."""

    def __init__(
        self,
        *,
        seed: int = 0,
        base_delay: float = 0.001,
        loss: float = 0.0,
        duplicate: float = 0.0,
        max_extra_delay: float = 0.0,
        link: LinkScript | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.nodes: dict[str, LanNode] = {}
        self._rng = random.Random(seed)
        self._base_delay = base_delay
        self._loss = loss
        self._duplicate = duplicate
        self._max_extra_delay = max_extra_delay
        self._link = link or self._random_link
        self._queue: list[_Delivery] = []
        self._order = 0
        self.sent: dict[str, int] = {}

    def add(self, name: str, host: str, core: AnnounceCore, clock_offset_ms: int = 0) -> LanNode:
        node = LanNode(name, host, core, clock_offset_ms)
        self.nodes[name] = node
        self.sent[name] = 0
        return node

    def _random_link(self, sender: str, receiver: str, number: int) -> list[float]:
        del sender, receiver, number
        if self._rng.random() < self._loss:
            return []
        copies = 2 if self._rng.random() < self._duplicate else 1
        return [self._rng.uniform(0, self._max_extra_delay) for _ in range(copies)]

    def inject(self, data: bytes, source_host: str, receiver: str, delay: float = 0.0) -> None:
        """Deliver a crafted datagram (an attacker's) to one node."""
        self._enqueue(receiver, source_host, data, self.clock.now + delay)

    def _enqueue(self, receiver: str, source_host: str, data: bytes, at: float) -> None:
        self._order += 1
        heapq.heappush(self._queue, _Delivery(at, self._order, receiver, source_host, data))

    def _wall(self, node: LanNode) -> int:
        return self.clock.wall_ms(node.clock_offset_ms)

    def _flush(self) -> None:
        now = self.clock.now
        for node in self.nodes.values():
            if node.crashed:
                continue
            for datagram in node.core.datagrams_to_send(now, self._wall(node)):
                number = self.sent[node.name]
                self.sent[node.name] += 1
                for receiver in self.nodes:
                    for extra in self._link(node.name, receiver, number):
                        at = now + self._base_delay + extra
                        self._enqueue(receiver, node.host, datagram, at)
            while (event := node.core.next_event()) is not None:
                node.events.append(event)

    def run_until(self, end: float) -> None:
        """Advance the clock to ``end``, delivering and firing timers on the way."""
        for _ in range(1_000_000):
            self._flush()
            deadlines = [end]
            if self._queue:
                deadlines.append(self._queue[0].deliver_at)
            for node in self.nodes.values():
                timer = node.core.get_timer()
                if timer is not None and not node.crashed:
                    deadlines.append(timer)
            upcoming = min(deadlines)
            if upcoming >= end and self.clock.now >= end:
                return
            self.clock.now = max(self.clock.now, min(upcoming, end))
            now = self.clock.now
            while self._queue and self._queue[0].deliver_at <= now:
                delivery = heapq.heappop(self._queue)
                node = self.nodes[delivery.receiver]
                if not node.crashed:
                    source = (delivery.source_host, PORT)
                    node.core.receive_datagram(delivery.data, source, now, self._wall(node))
            for node in self.nodes.values():
                timer = node.core.get_timer()
                if not node.crashed and timer is not None and timer <= now:
                    node.core.handle_timer(now, self._wall(node))
        raise AssertionError("fake LAN did not settle: a core keeps an expired timer")

    def winners(self) -> dict[str, str | None]:
        """Each running node's current winner identifier."""
        now = self.clock.now
        result: dict[str, str | None] = {}
        for name, node in self.nodes.items():
            if not node.crashed:
                winner = node.core.winner(now)
                result[name] = winner.identifier if winner else None
        return result
