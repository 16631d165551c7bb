"""The NAT matrix's expected paths hold in the lab before any broker exists (issue 9).

For each of the 25 cells two hosts register with a reflector on the broker address (which
records their reflexive addresses, as the broker will), then punch the way the broker flow
does (BROKER.md step 7): three probes to each of the other side's candidates from the one
socket, an answer to every probe that arrives, and a triggered probe back to a
peer-reflexive address. A cell is direct when both sides had a probe answered; the result
must be `tools.nat_matrix.expected_path` for the cell. The real matrix test, with the
broker, QUIC and live frames, replaces this probe but keeps the expectations."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from dataclasses import dataclass, field

import pytest

from tests.helpers.natlab import BROKER_IP, NatLab, NatType, Side, natlab_available
from tests.helpers.waits import scaled
from tools.nat_matrix import CELLS, expected_path

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

Address = tuple[str, int]
ATTEMPTS = 3
SPACING = 0.1
DEADLINE = 0.6


@dataclass
class _Puncher:
    name: str
    sock: socket.socket
    candidates: list[Address]
    confirmed: set[Address] = field(default_factory=set)
    learned: set[Address] = field(default_factory=set)

    def send(self, data: bytes, address: Address) -> None:
        # A candidate this host has no route to (another LAN's address) is skipped, as a
        # puncher must.
        with contextlib.suppress(OSError):
            self.sock.sendto(data, address)

    def probe_all(self) -> None:
        for address in self.candidates:
            self.send(f"probe {self.name}".encode(), address)

    def handle(self, data: bytes, source: Address) -> None:
        if data.startswith(b"probe"):
            self.send(f"answer {self.name}".encode(), source)
            if source not in self.candidates:
                # A peer-reflexive address: learn it and check it from this side too.
                self.learned.add(source)
                self.candidates.append(source)
                self.send(f"probe {self.name}".encode(), source)
        elif data.startswith(b"answer"):
            self.confirmed.add(source)


def _register(lab: NatLab, side: Side, broker: socket.socket) -> tuple[socket.socket, Address]:
    sock = lab.udp_socket(side.host)
    sock.sendto(b"register", broker.getsockname())
    readable, _, _ = select.select([broker], [], [], scaled(0.3))
    if not readable:
        return sock, ("0.0.0.0", 0)  # UDP blocked: the broker never saw this side.
    _, source = broker.recvfrom(2048)
    return sock, (source[0], source[1])


def _punch(lab: NatLab) -> tuple[str, _Puncher, _Puncher]:
    broker = lab.udp_socket(lab.inet, (BROKER_IP, 3478))
    sock_a, reflexive_a = _register(lab, lab.a, broker)
    sock_b, reflexive_b = _register(lab, lab.b, broker)
    local_a = (lab.a.host_ip, sock_a.getsockname()[1])
    local_b = (lab.b.host_ip, sock_b.getsockname()[1])
    # Candidates as the broker's start message gives them: reflexive (when seen) + local.
    a = _Puncher("A", sock_a, [c for c in (reflexive_b, local_b) if c[1] != 0])
    b = _Puncher("B", sock_b, [c for c in (reflexive_a, local_a) if c[1] != 0])
    punchers = {sock_a: a, sock_b: b}
    start = time.monotonic()
    deadline = start + scaled(DEADLINE)
    sent = 0
    while time.monotonic() < deadline and not (a.confirmed and b.confirmed):
        if sent < ATTEMPTS and time.monotonic() >= start + sent * SPACING:
            a.probe_all()
            b.probe_all()
            sent += 1
        readable, _, _ = select.select(list(punchers), [], [], 0.01)
        for sock in readable:
            data, source = sock.recvfrom(2048)
            punchers[sock].handle(data, (source[0], source[1]))
    return ("direct" if a.confirmed and b.confirmed else "relay"), a, b


def _require_lab() -> None:
    reason = natlab_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.slow
def test_every_cell_punches_as_expected() -> None:
    _require_lab()
    outcomes: dict[tuple[NatType, NatType], str] = {}
    learned: dict[tuple[NatType, NatType], bool] = {}
    for a, b in CELLS:
        with NatLab(a, b) as lab:
            path, side_a, side_b = _punch(lab)
        outcomes[(a, b)] = path
        learned[(a, b)] = bool(side_a.learned or side_b.learned)
    wrong = {
        f"{a.value} x {b.value}": (outcomes[(a, b)], expected_path(a, b))
        for a, b in CELLS
        if outcomes[(a, b)] != expected_path(a, b)
    }
    print({f"{a.value} x {b.value}": outcomes[(a, b)] for a, b in CELLS})
    assert not wrong, f"cells that did not take the expected path (got, expected): {wrong}"
    # A symmetric side facing an open one is reached only through a peer-reflexive address.
    assert learned[(NatType.SYMMETRIC, NatType.FULL_CONE)]
    assert learned[(NatType.PUBLIC, NatType.SYMMETRIC)]


def test_port_restricted_pair_punches_through_routers_that_drop_inbound() -> None:
    _require_lab()
    with NatLab(NatType.PORT_RESTRICTED, NatType.PORT_RESTRICTED) as lab:
        path, a, b = _punch(lab)
    assert path == "direct"
    assert not a.learned and not b.learned


def test_port_restricted_pair_fails_when_routers_accept_inbound() -> None:
    # The caveat in tools/nat_matrix.py: A's first probe reaches B's router before B has
    # sent, the router accepts it for itself and conntrack keeps the entry; B's probes to
    # A then leave from a remapped port A's filter was not opened for, and A's later probes
    # land in B's router's own entry.
    _require_lab()
    with NatLab(
        NatType.PORT_RESTRICTED, NatType.PORT_RESTRICTED, router_accepts_inbound=True
    ) as lab:
        path, a, b = _punch(lab)
    assert path == "relay"
    assert not a.confirmed and not b.confirmed
