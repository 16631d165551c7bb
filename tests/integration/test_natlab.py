"""The NAT lab behaves as declared: every NAT type's RFC 4787 mapping and filtering,
measured with UDP reflectors on the lab's internet; conntrack timeouts per namespace and
mapping expiry; the port remap that makes a peer see a port the broker never saw; and the
delay forwarder (issue 9). All traffic stays inside the namespaces each test builds."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import cast

import pytest

from tests.helpers.natlab import (
    BROKER_IP,
    REFLECTOR_IP,
    THIRD_PARTY_IP,
    NatLab,
    NatType,
    Side,
    natlab_available,
)
from tests.helpers.waits import scaled
from tools.nat_matrix import Filtering, Mapping

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

Address = tuple[str, int]
# How long a datagram that should be dropped is waited for; inside one machine's namespaces
# a delivered one arrives within a millisecond, so this is generous.
DROP_WAIT = 0.3


def _require_lab() -> None:
    reason = natlab_available()
    if reason is not None:
        pytest.skip(reason)


def _receive(sock: socket.socket, wait: float) -> tuple[bytes, Address] | None:
    """One datagram within `wait` time units, or None."""
    return _receive_until(sock, time.monotonic() + scaled(wait))


def _receive_until(sock: socket.socket, deadline: float) -> tuple[bytes, Address] | None:
    readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
    if not readable:
        return None
    data, source = sock.recvfrom(2048)
    return data, (source[0], source[1])


def _drain(sock: socket.socket) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(64):
        received = _receive(sock, 0)
        if received is None:
            break
        got.append(received[0])
    return got


@dataclass(frozen=True, slots=True)
class NatFacts:
    """What one side's router did to UDP, as measured."""

    udp_passes: bool
    mapping: Mapping | None
    filtering: Filtering | None
    # Mapped addresses seen by each reflector, and what the host had bound.
    seen: dict[str, Address]
    host_port: int
    delivered_from: list[str]


def _measure(lab: NatLab, side: Side) -> NatFacts:
    """Probe `side`'s mapping (three destinations) and filtering (three senders)."""
    reflectors = {
        "broker:3478": lab.udp_socket(lab.inet, (BROKER_IP, 3478)),
        "broker:3479": lab.udp_socket(lab.inet, (BROKER_IP, 3479)),
        "reflector:3478": lab.udp_socket(lab.inet, (REFLECTOR_IP, 3478)),
    }
    third_party = lab.udp_socket(lab.inet, (THIRD_PARTY_IP, 4000))
    host = lab.udp_socket(side.host)
    host_port = host.getsockname()[1]
    seen: dict[str, Address] = {}
    for reflector in reflectors.values():
        host.sendto(b"map", reflector.getsockname())
    # One shared wait: a blocked router costs it once, not once per reflector.
    deadline = time.monotonic() + scaled(1.0)
    for name, reflector in reflectors.items():
        received = _receive_until(reflector, deadline)
        if received is not None:
            seen[name] = received[1]
    if not seen:
        # Nothing left the router; an unsolicited datagram toward the host's port must not
        # come in either.
        third_party.sendto(b"in", (side.wan_ip, host_port))
        assert _receive(host, DROP_WAIT) is None, "UDP came in through a router that blocks it"
        return NatFacts(False, None, None, seen, host_port, [])
    assert len(seen) == len(reflectors), f"some reflectors were not reached: {seen}"
    first, other_port, other_address = seen.values()
    if first == other_port == other_address:
        mapping = Mapping.ENDPOINT_INDEPENDENT
    elif first == other_port:
        mapping = Mapping.ADDRESS_DEPENDENT
    else:
        mapping = Mapping.ADDRESS_AND_PORT_DEPENDENT

    # Filtering, on a fresh socket that has sent to one reflector endpoint only.
    fresh = lab.udp_socket(side.host)
    opener = reflectors["broker:3478"]
    fresh.sendto(b"open", opener.getsockname())
    received = _receive(opener, 1.0)
    assert received is not None, "the filtering probe's mapping did not reach the reflector"
    mapped = received[1]
    reflectors["broker:3479"].sendto(b"other-port", mapped)
    third_party.sendto(b"other-address", mapped)
    opener.sendto(b"control", mapped)
    delivered: list[str] = []
    for _ in range(4):
        got = _receive(fresh, DROP_WAIT)
        if got is None:
            break
        delivered.append(got[0].decode())
    assert "control" in delivered, f"the reflector's own answer was dropped: {delivered}"
    if "other-address" in delivered:
        filtering = Filtering.ENDPOINT_INDEPENDENT
    elif "other-port" in delivered:
        filtering = Filtering.ADDRESS_DEPENDENT
    else:
        filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT
    return NatFacts(True, mapping, filtering, seen, host_port, delivered)


@pytest.mark.parametrize("nat", list(NatType), ids=[t.value for t in NatType])
def test_each_nat_type_maps_and_filters_as_declared(
    nat: NatType, record_property: pytest.RecordProperty
) -> None:
    _require_lab()
    with NatLab(nat, NatType.PUBLIC) as lab:
        facts = _measure(lab, lab.a)
    record_property("nat_facts", json.dumps(asdict(facts), default=str))
    print(nat.value, facts)
    assert facts.udp_passes is nat.udp_passes
    assert facts.mapping is nat.mapping
    assert facts.filtering is nat.filtering
    for address in facts.seen.values():
        assert address[0] == lab.a.wan_ip, f"the mapping is not on the side's WAN: {facts}"
    if nat.mapping is Mapping.ENDPOINT_INDEPENDENT:
        # Linux MASQUERADE keeps the host's source port when it is free, and the public
        # host has no NAT at all: the port the broker sees is the host's own.
        assert {port for _, port in facts.seen.values()} == {facts.host_port}


def test_lab_leaves_nothing_behind() -> None:
    _require_lab()
    lab = NatLab(NatType.SYMMETRIC, NatType.FULL_CONE)
    with pytest.raises(RuntimeError, match="boom"), lab:
        made = lab.namespaces()
        assert len(made) == 5
        sleeper = lab.run(lab.b.host, ["sleep", "60"])
        task = lab.spawn(lab.a.host, lambda: asyncio.sleep(60))
        sock = lab.udp_socket(lab.inet)
        raise RuntimeError("boom")
    existing = {line.split()[0] for line in _ip_netns_list()}
    assert not existing & set(made), f"namespaces left behind: {existing & set(made)}"
    assert lab.namespaces() == []
    assert sleeper.poll() is not None
    assert task.done()
    assert sock.fileno() == -1


def test_a_coroutine_and_a_process_run_inside_their_namespace() -> None:
    _require_lab()
    with NatLab(NatType.SYMMETRIC) as lab:

        async def own_address() -> str:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.connect((BROKER_IP, 9))
            try:
                return str(probe.getsockname()[0])
            finally:
                probe.close()

        assert lab.spawn(lab.a.host, own_address).result(scaled(10)) == lab.a.host_ip
        assert lab.a.router is not None
        shown = lab.run(lab.a.router, ["ip", "-4", "-o", "addr"], stdout=subprocess.PIPE)
        out, _ = shown.communicate(timeout=scaled(10))
        assert lab.a.wan_ip in out.decode() and lab.a.host_ip not in out.decode()
        # The test's own thread is back in its own namespace after `inside`.
        with lab.inside(lab.a.host):
            pass
        assert not any(lab.a.wan_ip in line for line in _own_addresses())


def _own_addresses() -> list[str]:
    done = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=10)
    return done.stdout.splitlines()


def _ip_netns_list() -> list[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line for line in done.stdout.splitlines() if line.strip()]


def test_udp_timeouts_are_per_namespace() -> None:
    _require_lab()
    with NatLab(NatType.PORT_RESTRICTED, NatType.PORT_RESTRICTED) as lab:
        assert lab.a.router is not None and lab.b.router is not None
        before_b = lab.udp_timeouts(lab.b.router)
        before_inet = lab.udp_timeouts(lab.inet)
        lab.set_udp_timeouts(lab.a.router, 3)
        assert lab.udp_timeouts(lab.a.router) == (3, 3)
        # The other router and the internet namespace keep their own values.
        assert lab.udp_timeouts(lab.b.router) == before_b
        assert lab.udp_timeouts(lab.inet) == before_inet
        assert before_b != (3, 3)
        lab.set_udp_timeouts(lab.b.router, 7)
        assert lab.udp_timeouts(lab.b.router) == (7, 7)
        assert lab.udp_timeouts(lab.a.router) == (3, 3)


@pytest.mark.slow
def test_mapping_expires_without_keepalive_and_survives_with_one() -> None:
    _require_lab()
    timeout_s = 3
    with NatLab(NatType.PORT_RESTRICTED) as lab:
        assert lab.a.router is not None
        lab.set_udp_timeouts(lab.a.router, timeout_s)
        broker = lab.udp_socket(lab.inet, (BROKER_IP, 3478))
        idle = lab.udp_socket(lab.a.host)
        kept = lab.udp_socket(lab.a.host)
        mapped: dict[str, Address] = {}
        for name, sock in (("idle", idle), ("kept", kept)):
            sock.sendto(b"register", broker.getsockname())
            received = _receive(broker, 1.0)
            assert received is not None
            mapped[name] = received[1]
            # A wake-up right away passes: the mapping is fresh.
            broker.sendto(b"wake", received[1])
            assert _receive(sock, 1.0) is not None
        start = time.monotonic()
        idle_checked = False
        # A registration every timeout/2 (the agent's interval is well below the timeout).
        for beat in range(1, 8):
            target = start + beat * timeout_s / 2
            time.sleep(max(0.0, target - time.monotonic()))
            kept.sendto(b"register", broker.getsockname())
            assert _receive(broker, 1.0) is not None
            if not idle_checked and time.monotonic() - start >= 2 * timeout_s:
                broker.sendto(b"wake", mapped["idle"])
                assert _receive(idle, DROP_WAIT) is None, "the idle mapping outlived 2 timeouts"
                idle_checked = True
        elapsed = time.monotonic() - start
        assert idle_checked
        assert elapsed >= 3 * timeout_s
        # Several timeouts later the kept mapping still lets a wake-up in, and at the same
        # port the broker saw at the start.
        broker.sendto(b"wake", mapped["kept"])
        received = _receive(kept, 1.0)
        assert received is not None and received[0] == b"wake"
        kept.sendto(b"register", broker.getsockname())
        again = _receive(broker, 1.0)
        assert again is not None and again[1] == mapped["kept"]


@pytest.mark.slow
def test_a_replied_flow_needs_the_stream_timeout_shortened_too() -> None:
    # Why `set_udp_timeouts` sets both sysctls: once a flow has seen a reply and carries
    # another packet over 2 s later (measured: 1 s later does not), conntrack switches it
    # to the stream timeout, so
    # shortening only nf_conntrack_udp_timeout leaves a registered mapping alive for the
    # stream timeout (120 s by default).
    _require_lab()
    timeout_s = 3
    with NatLab(NatType.PORT_RESTRICTED, NatType.PORT_RESTRICTED) as lab:
        assert lab.a.router is not None and lab.b.router is not None
        lab.sysctl(lab.a.router, "net.netfilter.nf_conntrack_udp_timeout", str(timeout_s))
        lab.set_udp_timeouts(lab.b.router, timeout_s)
        assert lab.udp_timeouts(lab.a.router)[0] == timeout_s
        assert lab.udp_timeouts(lab.a.router)[1] > 2 * timeout_s
        broker = lab.udp_socket(lab.inet, (BROKER_IP, 3478))
        hosts = {side.name: lab.udp_socket(side.host) for side in (lab.a, lab.b)}
        mapped: dict[str, Address] = {}
        for name, sock in hosts.items():
            sock.sendto(b"register", broker.getsockname())
            received = _receive(broker, 1.0)
            assert received is not None
            mapped[name] = received[1]
            broker.sendto(b"ack", received[1])
            assert _receive(sock, 1.0) is not None
        # One more registration after the kernel's two-second mark makes each flow a stream.
        time.sleep(2.5)
        for sock in hosts.values():
            sock.sendto(b"register", broker.getsockname())
            assert _receive(broker, 1.0) is not None
        last = time.monotonic()
        time.sleep(max(0.0, last + 2 * timeout_s + 0.5 - time.monotonic()))
        for name in hosts:
            broker.sendto(b"wake", mapped[name])
        only_unreplied = _receive(hosts["A"], 1.0)
        both = _receive(hosts["B"], DROP_WAIT)
    assert only_unreplied is not None, "the stream timeout did not keep the flow alive"
    assert both is None, "with both timeouts shortened the flow outlived 2 timeouts"


def _remap_case(lab: NatLab) -> tuple[Address, Address, bool, bool]:
    """A host registers with the broker; a peer sends to that address before the host has
    sent to the peer; then the host sends to the peer. Returns (what the broker saw, what
    the peer saw, whether the peer's datagram to the broker-seen address reached the host
    after that, whether the peer's answer to the address it saw did)."""
    broker = lab.udp_socket(lab.inet, (BROKER_IP, 3478))
    peer = lab.udp_socket(lab.inet, (THIRD_PARTY_IP, 4000))
    host = lab.udp_socket(lab.a.host)
    host.sendto(b"register", broker.getsockname())
    received = _receive(broker, 1.0)
    assert received is not None
    broker_saw = received[1]
    # The peer's first punch arrives before the host has sent anything its way.
    peer.sendto(b"early-punch", broker_saw)
    assert _receive(host, DROP_WAIT) is None
    host.sendto(b"punch", peer.getsockname())
    received = _receive(peer, 1.0)
    assert received is not None
    peer_saw = received[1]
    peer.sendto(b"to-registered", broker_saw)
    via_registered = any(d == b"to-registered" for d in _collect(host))
    peer.sendto(b"answer", peer_saw)
    via_seen = any(d == b"answer" for d in _collect(host))
    return broker_saw, peer_saw, via_registered, via_seen


def _collect(sock: socket.socket) -> list[bytes]:
    first = _receive(sock, DROP_WAIT)
    return [] if first is None else [first[0], *_drain(sock)]


def test_router_accepting_inbound_remaps_the_port_a_peer_sees(
    record_property: pytest.RecordProperty,
) -> None:
    _require_lab()
    with NatLab(NatType.PORT_RESTRICTED, router_accepts_inbound=True) as lab:
        broker_saw, peer_saw, via_registered, via_seen = _remap_case(lab)
    record_property("remap", f"broker saw {broker_saw}, peer saw {peer_saw}")
    print("accepting router: broker saw", broker_saw, "peer saw", peer_saw)
    # The early punch left a conntrack entry (peer -> WAN:port, to the router itself), so
    # Linux gave the host's datagram to the peer another source port: a peer-reflexive
    # address, which the broker never saw. Answering it reaches the host; the address the
    # broker handed out does not (it belongs to the router's own entry now).
    assert peer_saw[0] == broker_saw[0]
    assert peer_saw[1] != broker_saw[1]
    assert via_seen
    assert not via_registered


def test_router_dropping_inbound_keeps_the_registered_port() -> None:
    _require_lab()
    with NatLab(NatType.PORT_RESTRICTED) as lab:
        broker_saw, peer_saw, via_registered, via_seen = _remap_case(lab)
    print("dropping router: broker saw", broker_saw, "peer saw", peer_saw)
    assert peer_saw == broker_saw
    assert via_registered and via_seen


def test_symmetric_peer_sees_a_peer_reflexive_port_and_its_answer_arrives() -> None:
    _require_lab()
    with NatLab(NatType.SYMMETRIC) as lab:
        broker_saw, peer_saw, via_registered, via_seen = _remap_case(lab)
    assert peer_saw[0] == broker_saw[0] and peer_saw[1] != broker_saw[1]
    assert via_seen and not via_registered


async def _echo(bind: Address, ready: threading.Event) -> None:
    """An echo reflector on the lab's internet, run on a loop inside the namespace."""
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # The selector loop's datagram transport does not subclass DatagramTransport.
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: Address) -> None:
            self.transport.sendto(data, addr)

    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=bind)
    ready.set()
    try:
        await asyncio.sleep(scaled(60))
    finally:
        transport.close()


def _round_trips(sock: socket.socket, target: Address, count: int) -> list[float]:
    samples: list[float] = []
    for index in range(count):
        payload = f"ping {index}".encode()
        sent = time.monotonic()
        sock.sendto(payload, target)
        while True:
            received = _receive(sock, 2.0)
            assert received is not None, f"no echo for ping {index}"
            if received[0] == payload:
                break
        samples.append(time.monotonic() - sent)
    return samples


def test_delay_forwarder_adds_its_delay_each_way(record_property: pytest.RecordProperty) -> None:
    _require_lab()
    delay_ms = 10.0
    with NatLab(NatType.PORT_RESTRICTED) as lab:
        echo_ready = threading.Event()
        echo = lab.spawn(lab.inet, lambda: _echo((BROKER_IP, 3478), echo_ready))
        assert echo_ready.wait(scaled(10))
        forwarder_address = (REFLECTOR_IP, 3478)
        forwarder = lab.python(
            lab.inet,
            "tests.helpers.udpdelay",
            "--listen",
            f"{forwarder_address[0]}:{forwarder_address[1]}",
            "--upstream",
            f"{BROKER_IP}:3478",
            "--delay-ms",
            str(delay_ms),
            stdout=subprocess.PIPE,
        )
        assert forwarder.stdout is not None
        line = forwarder.stdout.readline().decode().strip()
        assert line == f"ready {forwarder_address[0]}:{forwarder_address[1]}", line
        assert not echo.done()
        host = lab.udp_socket(lab.a.host)
        direct = _round_trips(host, (BROKER_IP, 3478), 20)
        delayed = _round_trips(host, forwarder_address, 20)
    record_property(
        "delay",
        f"direct median {statistics.median(direct) * 1000:.2f} ms, "
        f"delayed min {min(delayed) * 1000:.2f} ms median {statistics.median(delayed) * 1000:.2f}",
    )
    print(
        f"direct median {statistics.median(direct) * 1000:.3f} ms; delayed min "
        f"{min(delayed) * 1000:.3f} median {statistics.median(delayed) * 1000:.3f} ms"
    )
    # Every round trip through the forwarder pays the delay twice, at least.
    assert min(delayed) >= 2 * delay_ms / 1000
    # And not wildly more: the forwarder holds each datagram for the delay, not longer
    # (the tolerance is for a loaded two-core machine).
    assert statistics.median(delayed) <= 2 * delay_ms / 1000 + scaled(0.05)


@pytest.mark.parametrize("nat", [NatType.PORT_RESTRICTED, NatType.PUBLIC], ids=lambda t: t.value)
def test_nfqueue_delay_keeps_addresses_and_adds_its_delay(
    nat: NatType, record_property: pytest.RecordProperty
) -> None:
    _require_lab()
    delay_ms = 10.0
    with NatLab(nat) as lab:
        echo_ready = threading.Event()
        lab.spawn(lab.inet, lambda: _echo((BROKER_IP, 3478), echo_ready))
        assert echo_ready.wait(scaled(10))
        # A plain reflector too, to see the source address the far end sees.
        reflector = lab.udp_socket(lab.inet, (REFLECTOR_IP, 3478))
        host = lab.udp_socket(lab.a.host)
        host.sendto(b"who", reflector.getsockname())
        before = _receive(reflector, 1.0)
        direct = _round_trips(host, (BROKER_IP, 3478), 20)
        lab.delay(lab.a, delay_ms)
        delayed = _round_trips(host, (BROKER_IP, 3478), 20)
        host.sendto(b"who", reflector.getsockname())
        after = _receive(reflector, 1.0)
    summary = (
        f"{nat.value}: direct median {statistics.median(direct) * 1000:.3f} ms; delayed min "
        f"{min(delayed) * 1000:.3f} median {statistics.median(delayed) * 1000:.3f} ms"
    )
    record_property("nfqueue_delay", summary)
    print(summary)
    assert before is not None and after is not None
    # Same socket, same mapping: the delay changed nothing the far end can see but time.
    assert after[1] == before[1]
    assert min(delayed) >= 2 * delay_ms / 1000
    assert statistics.median(delayed) <= 2 * delay_ms / 1000 + scaled(0.05)
