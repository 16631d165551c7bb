"""Several broker processes sharing a real Redis (or Valkey) registry, as real processes on
loopback (docs/broker-scale.md): a connection request that enters on a process other than
the target's owner (over the node link, and over Redis pub/sub when the link cannot be
opened), a node-link peer that is not a broker, Redis restarted and stopped under a running
home, the owner restarted (the routers reconnect) and killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives.serialization import Encoding

from roost.cli.exitcodes import ExitCode
from roost.framing import RecordFramer, encode_record
from roost.pki.certs import certs_from_pem
from roost.pki.tls import client_context
from roost.rendezvous import control
from roost.rendezvous.presence import (
    Hop,
    NodeMessage,
    PeerRecord,
    PresenceConfig,
    decode_peer,
    decode_presence,
    hello,
)
from tests.helpers.brokers import BrokerFleet, free_port
from tests.helpers.home import LoopbackHome
from tests.helpers.redisserver import RedisServer, server_binaries
from tests.helpers.waits import scaled, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]
PASSWORD = "owner password"
INTERVAL_S = 1.0
TTL_S = 3 * INTERVAL_S


def roost(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roost", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


class Cluster:
    """A loopback home (one hub, one camera), three brokers, one Redis."""

    def __init__(self, base: Path, binary: str) -> None:
        self.base = base
        self.redis = RedisServer(binary, base / "redis")
        self.home = LoopbackHome(base / "home", hubs=1, devices=1, fps=5.0)
        # The routing of the base flow (RWAK from the owner's socket), without the held
        # connection (docs/broker.md, "Held connections").
        self.home.hold_connection(1, False)
        self.fleet = BrokerFleet(self.home.path, 3, self.redis.url, interval_s=INTERVAL_S)
        self.hub = self.home.hub_id(1)

    def setup(self) -> None:
        added = roost(
            "user", "add", str(self.home.path / "hub-1"), "owner",
            "--card-file", str(self.base / "owner.card"),
            "--password-cost", "10", "--code-cost", "8",
            stdin=f"{PASSWORD}\n{PASSWORD}\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        trusted = roost(
            "trust", "init", str(self.base / "trust"),
            "--ca-info", str(self.home.path / "device-1" / "ca-info.bin"),
        )  # fmt: skip
        assert trusted.returncode == 0, trusted.stderr
        (self.base / "password").write_text(PASSWORD + "\n")
        self.redis.start()
        for index in (1, 2, 3):
            self.fleet.start(index)
        self.home.start("hub-1")
        self.home.start("device-1")
        self.home.wait_for("camera streaming", lambda: self.home.devices_on(1), 30)
        self.wait_owner(1)

    def owner_record(self) -> tuple[str, int] | None:
        client = redis.Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            value = client.get(PresenceConfig().presence_key(self.hub))
        except redis.RedisError:
            return None
        finally:
            client.close()
        if value is None:
            return None
        record = decode_presence(value)
        return record.owner, record.epoch

    def owner(self) -> str | None:
        found = self.owner_record()
        return None if found is None else found[0]

    def wait_owner(self, index: int, seconds: float = 20) -> None:
        try:
            wait_until(lambda: self.owner() == f"b{index}", seconds, what=f"owner b{index}")
        except AssertionError as failed:
            raise AssertionError(f"{failed}; {self.fleet.logs()}") from None

    def connect(self, via: int, *extra: str) -> subprocess.CompletedProcess[str]:
        done = self._connect(via, *extra)
        if done.returncode != 0:
            hub = (self.home.hub_status(1) or {}).get("broker")
            shared = {i: self.fleet.shared(i) if self.fleet.status(i) else None for i in (1, 2, 3)}
            hub_log = (self.home.path / "hub-1.log").read_text(errors="replace")[-3000:]
            done.stderr += (
                f"owner record {self.owner_record()}; hub agent {hub}; shared {shared}; "
                f"{self.fleet.logs()}; hub log {hub_log}"
            )
        return done

    def _connect(self, via: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return roost(
            "connect", self.hub,
            "--broker", self.fleet.tls(via), "--broker-udp", self.fleet.udp(via),
            "--trust", str(self.base / "trust"), "--user", "owner",
            "--password-file", str(self.base / "password"),
            "--card-file", str(self.base / "owner.card"),
            "--json", "--out", str(self.base / f"out-{via}"), *extra,
        )  # fmt: skip

    def close(self) -> None:
        self.home.close()
        self.fleet.close()
        self.redis.stop()


@pytest.fixture(scope="module", params=server_binaries())
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    built = Cluster(tmp_path_factory.mktemp("scale"), str(request.param))
    try:
        built.setup()
        yield built
    finally:
        built.close()


def _summary(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_a_request_entering_on_a_non_owner_is_routed_and_carries_frames(cluster: Cluster) -> None:
    # The hub registers with broker 1 (the first of its list): broker 2 forwards the
    # issuer's channel to broker 1 over Redis pub/sub, broker 1 wakes the hub.
    before = cluster.fleet.status(1) or {}
    summary = _summary(cluster.connect(2, "--frames", "3"))
    assert summary["frames"] == 3 and summary["path"] == "direct"
    assert cluster.fleet.shared(2)["forwarded"] >= 1
    owner = cluster.fleet.status(1) or {}
    assert owner["shared"]["hosted"] >= 1
    assert owner["counters"]["wakes_sent"] > before["counters"]["wakes_sent"]
    assert (cluster.fleet.status(2) or {})["counters"]["wakes_sent"] == 0


def _lookup(cluster: Cluster, via: int) -> control.ControlMessage:
    """One ``lookup`` for the hub on a fresh issuer connection to broker ``via``."""
    host, port = cluster.fleet.tls(via).rsplit(":", 1)
    framer = RecordFramer(1 << 20)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        client_context(_anchors(cluster)).wrap_socket(raw) as tls,
    ):
        tls.sendall(encode_record(control.encode_control_message(control.Lookup(cluster.hub))))
        while True:
            data = tls.recv(65536)
            assert data, "the broker closed before answering the lookup"
            bodies = framer.feed(data)
            if bodies:
                return control.decode_control(bodies[0])


def test_a_repeated_lookup_on_a_non_owner_is_answered_from_its_presence_cache(
    cluster: Cluster,
) -> None:
    # presence_cache_s (5 s, docs/broker-scale.md "Routing"): broker 2 answers a lookup
    # for a target whose presence it read within that time without reading Redis first
    # (the read for the connect that would follow runs alongside).
    first = _lookup(cluster, 2)
    before = cluster.fleet.shared(2)
    second = _lookup(cluster, 2)
    after = cluster.fleet.shared(2)
    certificate = (cluster.home.path / "hub-1" / "cert.pem").read_bytes()
    leaf = certs_from_pem(certificate)[0].public_bytes(Encoding.DER)
    for answer in (first, second):
        assert isinstance(answer, control.LookupResult) and answer.certificate == leaf
    assert after["lookups_cached"] == before["lookups_cached"] + 1
    wait_until(lambda: cluster.fleet.shared(2)["reads"] > before["reads"], 5, what="read")


def test_three_processes_a_relayed_session_through_the_third(cluster: Cluster) -> None:
    # --no-punch: the session's relay records go issuer → broker 3 → broker 1 → hub.
    before = (cluster.fleet.status(1) or {})["counters"]["relayed_sessions"]
    summary = _summary(cluster.connect(3, "--frames", "2", "--no-punch"))
    assert summary["path"] == "relay" and summary["frames"] == 2
    assert (cluster.fleet.status(1) or {})["counters"]["relayed_sessions"] == before + 1
    assert (cluster.fleet.status(3) or {})["counters"]["relayed_sessions"] == 0
    assert cluster.fleet.shared(3)["forwarded"] >= 1


def test_routed_requests_take_the_node_link_not_redis(cluster: Cluster) -> None:
    # Broker 2 holds a node link to broker 1 once a request was routed there (the first
    # may go over pub/sub while the link opens): then a routed request crosses no Redis
    # pub/sub channel at all, its messages go over the link both ways.
    _summary(cluster.connect(2, "--frames", "1"))
    wait_until(lambda: cluster.fleet.shared(2)["links_up"] >= 1, 10, what="link up")
    before = {i: cluster.fleet.shared(i) for i in (1, 2)}
    summary = _summary(cluster.connect(2, "--frames", "2"))
    assert summary["frames"] == 2
    after = {i: cluster.fleet.shared(i) for i in (1, 2)}
    assert after[2]["forwarded"] == before[2]["forwarded"] + 1
    assert after[2]["link_sent"] > before[2]["link_sent"]
    assert after[1]["link_received"] > before[1]["link_received"]
    assert after[1]["link_sent"] > before[1]["link_sent"]  # the answers came back over it
    assert after[2]["link_fallbacks"] == before[2]["link_fallbacks"]
    for index in (1, 2):
        assert after[index]["published"] == before[index]["published"]
    assert after[1]["node_link"].startswith("127.0.0.1:")
    # On one host and in one network namespace the link is the local socket (the default,
    # node_link_local = true); the TLS address stays advertised for the other hosts.
    advert = _advert(cluster, "b1")
    assert after[2]["link_opened_local"] >= 1 and advert.local and advert.port > 0
    # A relayed session too: its relay records go issuer → broker 2 → link → broker 1.
    relayed = (cluster.fleet.status(1) or {})["counters"]["relayed_sessions"]
    summary = _summary(cluster.connect(2, "--frames", "2", "--no-punch"))
    assert summary["path"] == "relay" and summary["frames"] == 2
    assert (cluster.fleet.status(1) or {})["counters"]["relayed_sessions"] == relayed + 1
    last = cluster.fleet.shared(2)
    assert last["link_sent"] > after[2]["link_sent"] and last["published"] == after[2]["published"]


def _advert(cluster: Cluster, node: str) -> PeerRecord:
    client = redis.Redis.from_url(cluster.redis.url, socket_timeout=2)
    try:
        return decode_peer(client.get(PresenceConfig().peer_key(node)))
    finally:
        client.close()


def _connect_as_nobody(name: str, frame: bytes) -> int:
    """A client of the local node-link socket that runs as another user (nobody): a forked
    child (the interpreter under /root is not nobody's to run) that connects, sends a
    well-formed hello and reads until the broker closes; its exit status is 0 then, 1 when
    it could not connect."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect("\0" + name)
                # Closed by the broker: an end of stream, or a reset (it closed with our
                # hello unread), whichever comes first.
                with contextlib.suppress(ConnectionError):
                    sock.sendall(frame)
                    while sock.recv(4096):
                        pass
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _anchors(cluster: Cluster) -> list[Any]:
    return certs_from_pem((cluster.home.path / "ca" / "gen-1" / "ca-cert.pem").read_bytes())


def _rejected(cluster: Cluster, index: int, reason: str) -> int:
    counters = (cluster.fleet.status(index) or {})["counters"]
    return int(counters["connections_rejected"].get(reason, 0))


def test_a_node_link_peer_without_a_broker_certificate_is_refused(cluster: Cluster) -> None:
    # A hub's certificate chains to the same CA and carries clientAuth, so TLS completes;
    # the broker then refuses it (not-broker) before reading a frame. Without any client
    # certificate TLS itself refuses (client-cert-required). Both counted.
    shared = cluster.fleet.shared(1)
    host, port = shared["node_link"].rsplit(":", 1)
    hub = cluster.home.path / "hub-1"
    context = client_context(_anchors(cluster), hub / "cert.pem", hub / "key.pem")
    not_broker = _rejected(cluster, 1, "not-broker")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(encode_record(hello("intruder", 1, "b1", shared["epoch"]).encode()))
        with contextlib.suppress(ssl.SSLError, OSError):
            assert tls.recv(4096) == b""
    wait_until(lambda: _rejected(cluster, 1, "not-broker") == not_broker + 1, 5, what="not-broker")
    required = _rejected(cluster, 1, "client-cert-required")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        contextlib.suppress(ssl.SSLError, OSError),
        client_context(_anchors(cluster)).wrap_socket(raw) as tls,
    ):
        tls.recv(4096)
    wait_until(
        lambda: _rejected(cluster, 1, "client-cert-required") == required + 1,
        5,
        what="client-cert-required",
    )
    assert cluster.fleet.shared(1)["link_accepted"] == shared["link_accepted"]


def test_a_broker_peer_must_name_this_instance_and_speak_only_for_itself(
    cluster: Cluster,
) -> None:
    # With a broker's certificate: a hello for another epoch of broker 1 (an address read
    # before a restart) is refused wrong-node; a link whose hello was right, then a message
    # from another sender than the hello named, is ended wrong-node too.
    shared = cluster.fleet.shared(1)
    host, port = shared["node_link"].rsplit(":", 1)
    broker = cluster.home.path / "broker"
    context = client_context(_anchors(cluster), broker / "cert.pem", broker / "key.pem")
    before = _rejected(cluster, 1, "wrong-node")
    stale = hello("tester", 5, "b1", shared["epoch"] - 1)
    good = hello("tester", 5, "b1", shared["epoch"])
    forged = NodeMessage(Hop.OPEN, "b2", 5, 1, 1, b"127.0.0.1")
    for frames in ([stale], [good, forged]):
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(b"".join(encode_record(frame.encode()) for frame in frames))
            with contextlib.suppress(ssl.SSLError, OSError):
                while tls.recv(4096):
                    pass
    wait_until(lambda: _rejected(cluster, 1, "wrong-node") == before + 2, 5, what="wrong-node")
    after = cluster.fleet.shared(1)
    assert after["link_accepted"] == shared["link_accepted"] + 1
    assert after["hosted"] == shared["hosted"]


def test_with_the_node_link_refused_a_request_falls_back_to_pubsub(cluster: Cluster) -> None:
    # Broker 3 starts again (no link yet); broker 1's advertised address is then replaced
    # by a port nobody listens on, as a firewall that refuses it would leave it: broker 3
    # cannot open the link, counts that, and routes the request over Redis pub/sub.
    cluster.fleet.kill(3, signal.SIGTERM)
    cluster.fleet.start(3)
    client = redis.Redis.from_url(cluster.redis.url, socket_timeout=2)
    key = PresenceConfig().peer_key("b1")
    try:
        # Right after broker 1 rewrote its address (every 10 s of a 30 s TTL), so it is not
        # rewritten while the request runs.
        wait_until(lambda: int(client.pttl(key)) > 29_000, 15, 0.01, what="fresh advert")
        peer = decode_peer(client.get(key))
        blocked = PeerRecord(peer.epoch, peer.host, free_port())
        client.set(key, blocked.encode(), px=int(client.pttl(key)))
        summary = _summary(cluster.connect(3, "--frames", "1"))
    finally:
        client.close()
    assert summary["frames"] == 1
    shared = cluster.fleet.shared(3)
    assert shared["forwarded"] >= 1 and shared["published"] >= 2
    assert shared["link_fallbacks"] >= 1
    assert shared["link_failures"].get("link-unreachable", 0) >= 1


def test_redis_restarted_mid_run_loses_no_live_registration(cluster: Cluster) -> None:
    resyncs = cluster.fleet.shared(1)["resyncs"]
    cluster.redis.restart()  # no persistence: it comes back empty
    wait_until(lambda: cluster.fleet.shared(1)["resyncs"] > resyncs, 10, what="resync")
    # The owner rewrote its entry: the hub is reachable through the others again.
    cluster.wait_owner(1, seconds=5)
    assert cluster.fleet.shared(1)["outages"] >= 1
    _summary(cluster.connect(2, "--frames", "1"))


def test_redis_stopped_for_two_intervals_then_back(cluster: Cluster) -> None:
    outages = {i: cluster.fleet.shared(i)["outages"] for i in (1, 2, 3)}
    cluster.redis.stop()
    started = time.monotonic()
    wait_until(
        lambda: all(not cluster.fleet.shared(i)["up"] for i in (1, 2, 3)), 10, what="outage seen"
    )
    # Meanwhile the owner serves the equipment it owns from memory, without routing.
    forwarded = cluster.fleet.shared(1)["forwarded"]
    _summary(cluster.connect(1, "--frames", "1"))
    assert cluster.fleet.shared(1)["forwarded"] == forwarded
    remaining = 2 * INTERVAL_S - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    cluster.redis.start()
    for index in (1, 2, 3):
        wait_until(lambda i=index: cluster.fleet.shared(i)["up"], 10, what=f"b{index} back")
        shared = cluster.fleet.shared(index)
        # Counted once per outage, however many writes failed meanwhile.
        assert shared["outages"] == outages[index] + 1
        assert shared["outage_s"] >= 1.0
    cluster.wait_owner(1, seconds=5)
    _summary(cluster.connect(3, "--frames", "1"))


def test_an_owner_restart_makes_the_router_reconnect(cluster: Cluster) -> None:
    # Broker 2 holds a link to broker 1. Broker 1 restarts: a new epoch and a new
    # node-link port (port 0). The link ends; broker 2 dials again after its back-off,
    # reads the new address and reaches the new instance (a hello naming the old epoch
    # would be refused wrong-node, so an opened link is one to the new instance).
    _summary(cluster.connect(2, "--frames", "1"))
    wait_until(lambda: cluster.fleet.shared(2)["links_up"] >= 1, 10, what="link up")
    opened = cluster.fleet.shared(2)["link_opened"]
    old = cluster.fleet.shared(1)
    cluster.fleet.kill(1, signal.SIGTERM)
    cluster.fleet.start(1)
    new = cluster.fleet.shared(1)
    assert new["epoch"] != old["epoch"] and new["node_link"] != old["node_link"]
    wait_until(
        lambda: (
            cluster.fleet.shared(2)["link_opened"] > opened
            and cluster.fleet.shared(1)["link_accepted"] >= 1
        ),
        scaled(15),
        what="router reconnected",
    )
    assert cluster.fleet.shared(2)["links_up"] >= 1
    # The new instance serves the hub once its next registration made it adopt the entry.
    wait_until(
        lambda: cluster.owner_record() not in (None, ("b1", old["epoch"])),
        scaled(5),
        what="entry adopted",
    )
    _summary(cluster.connect(2, "--frames", "1"))


def test_a_request_routed_by_a_record_older_than_the_owners_restart_is_answered(
    cluster: Cluster,
) -> None:
    # Right after an owner restarts, a router may still go by a record naming the old
    # instance (read before the restart, or cached). Its link leads to the new instance,
    # so the channel goes over pub/sub, which reaches the node: the successor hosts it and
    # answers with its own epoch. The router keeps to the successor (counted) instead of
    # dropping its answers. The stale record is written here; b1 rewrites it at the next
    # due registration, so a connect that missed it is tried again (at most 3 times).
    assert cluster.owner() == "b1"
    client = redis.Redis.from_url(cluster.redis.url, socket_timeout=2)
    key = PresenceConfig().presence_key(cluster.hub)
    before = cluster.fleet.shared(2)["forwarded_to_successor"]
    try:
        for _attempt in range(3):
            # No lookup answered from b2's cache, which holds the current record.
            time.sleep(PresenceConfig().lookup_cache_s + 0.2)
            value = client.get(key)
            assert value is not None
            current = decode_presence(value)
            older = dataclasses.replace(current, epoch=current.epoch - 1)
            client.set(key, older.encode(), keepttl=True)
            summary = _summary(cluster.connect(2, "--frames", "1"))
            assert summary["frames"] == 1
            if cluster.fleet.shared(2)["forwarded_to_successor"] > before:
                break
    finally:
        client.close()
    shared = cluster.fleet.shared(2)
    assert shared["forwarded_to_successor"] == before + 1, shared


def test_owner_killed_the_hub_rehomes_within_an_interval_plus_ttl(cluster: Cluster) -> None:
    # Last in the module: broker 1 dies without a word (SIGKILL).
    cluster.fleet.kill(1)
    killed = time.monotonic()
    wait_until(
        lambda: cluster.owner() in ("b2", "b3"), scaled(INTERVAL_S + TTL_S) + 2, what="rehome"
    )
    rehomed = time.monotonic() - killed
    summary = _summary(cluster.connect(3, "--frames", "1"))
    assert summary["frames"] == 1
    hub = (cluster.home.hub_status(1) or {}).get("broker") or {}
    assert hub["rehomed"] >= 1 and hub["broker"] != cluster.fleet.tls(1)
    # The agent notices after its missed registrations (a TTL), then enrolls at the next.
    assert rehomed <= scaled(INTERVAL_S + TTL_S) + 2, rehomed


def test_reuseport_workers_share_the_ports_and_survive_a_killed_worker(tmp_path: Path) -> None:
    # `roost broker run --workers 2`: both workers on the home's UDP and TLS ports; the
    # kernel sends the hub's datagrams to one of them (its owner), a TLS connection to
    # either. Killing the owner sends the hub's next registration to the other, which
    # adopts the entry from Redis.
    server = RedisServer(server_binaries()[0], tmp_path / "redis")
    home = LoopbackHome(tmp_path / "home", hubs=1, devices=0)
    home.hold_connection(1, False)
    config = home.path / "broker.toml"
    text = config.read_text().replace("interval_s = 20.0", f"interval_s = {INTERVAL_S}")
    api = int(text.split('api = "127.0.0.1:')[1].split('"')[0])
    text = text.replace(f'api = "127.0.0.1:{api}"', 'api = "127.0.0.1:0"')
    text = text.replace("[limits]", f'registry = "{server.url}"\nnode_link_local = true\n[limits]')
    config.write_text(text)
    log = (home.path / "broker.log").open("w+b")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "roost", "broker", "run", "--config", str(config), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    hub = home.hub_id(1)
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        server.start()
        assert supervisor.stdout is not None
        summary = json.loads(supervisor.stdout.readline())
        workers = {w["worker"]: w for w in summary["workers"]}
        assert len(workers) == 2 and {w["udp"][1] for w in workers.values()} == {summary["udp"][1]}
        home.start("hub-1")

        def owner() -> tuple[str, int] | None:
            value = client.get(PresenceConfig().presence_key(hub))
            if value is None:
                return None
            record = decode_presence(value)
            return record.owner, record.epoch

        wait_until(
            lambda: owner() is not None and owner()[0].endswith(("-w0", "-w1")), 20, what="owner"
        )
        first = owner()
        assert first is not None
        # Each worker listens on a local node-link socket of its own, reachable from the
        # other (same host, same network namespace).
        nodes = [first[0][:-1] + str(index) for index in (0, 1)]
        adverts = [decode_peer(client.get(PresenceConfig().peer_key(node))) for node in nodes]
        assert all(advert.local for advert in adverts)
        assert adverts[0].local != adverts[1].local
        assert adverts[0].local_for(adverts[1].machine) == adverts[0].local
        # No TLS there: a peer running as another user (nobody) is refused foreign-user.
        if os.getuid() == 0 or os.environ.get("CI"):
            assert _connect_as_nobody(adverts[0].local, encode_record(b"x")) == 0
        killed = int(first[0][-1])
        subprocess.run(["kill", "-9", str(workers[killed]["pid"])], check=True)
        wait_until(
            lambda: owner() not in (None, first), scaled(INTERVAL_S + TTL_S) + 3, what="re-home"
        )
        supervisor.terminate()
        assert supervisor.wait(timeout=20) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        client.close()
        home.close()
        server.stop()


def test_a_target_whose_owner_is_gone_is_offline_not_unknown(cluster: Cluster) -> None:
    # Redis still names an owner that nobody hears (a killed process, before its
    # equipment re-homed): the lookup is answered from the presence, the connect finds no
    # owner, and the process the request entered on answers target-offline. The hub is
    # stopped first, so no registration rewrites its presence meanwhile.
    cluster.home.stop("hub-1")
    client = redis.Redis.from_url(cluster.redis.url, socket_timeout=2)
    key = PresenceConfig().presence_key(cluster.hub)
    try:
        value = client.get(key)
        assert value is not None
        current = decode_presence(value)
        via = 3 if current.owner == "b2" else 2
        ghost = dataclasses.replace(current, owner="b9")
        client.set(key, ghost.encode(), px=60_000)
    finally:
        client.close()
    # A lookup within presence_cache_s would be answered from the record read then, which
    # names a live owner (docs/broker-scale.md, "Routing"): wait that out first.
    time.sleep(PresenceConfig().lookup_cache_s + 0.2)
    before = (cluster.fleet.status(via) or {})["counters"]["refusals"].get("target-offline", 0)
    done = cluster.connect(via)
    assert done.returncode == ExitCode.HUB_OFFLINE, done.stderr
    assert "hub offline" in done.stderr
    after = (cluster.fleet.status(via) or {})["counters"]
    assert after["refusals"].get("target-offline", 0) == before + 1
    assert after["lookups"] >= 1
