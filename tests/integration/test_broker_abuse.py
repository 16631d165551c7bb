"""Spoofing and abuse against the real daemons on loopback (issue 9, "Must be shown by
tests"): the broker (a `BrokerDaemon` on the home's configured ports, in a thread so the
test can read its registry), `roost hub run` with its agent, and `roost connect`.

A second hub of the same home (hub-2) is played by the test: it enrolls with its own
certificate and so holds a genuine registration key, which is what an attacker inside the
home would have. One home serves the whole module; the floods run last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from roost.cli.exitcodes import ExitCode
from roost.clock import wall_ms_now
from roost.config import load_broker_config
from roost.framing import RECORD_HEADER_SIZE, encode_record
from roost.pki.certs import certs_from_pem, key_from_pem
from roost.pki.tls import client_context
from roost.pki.updater import TrustUpdater
from roost.reasons import Reason
from roost.rendezvous import control, stun
from roost.rendezvous.broker import BrokerCore
from roost.rendezvous.broker_aio import BrokerDaemon
from roost.rendezvous.messages import (
    Candidate,
    Registration,
    Wake,
    decode_ack,
    encode_registration,
    encode_wake,
)
from roost.rendezvous.registry import RegistryEntry
from roost.rendezvous.seal import seal_request
from tests.helpers.home import LoopbackHome
from tests.helpers.processes import roost_succeeds
from tests.helpers.waits import scaled, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LOOPBACK = "127.0.0.1"
PASSWORD = "owner password"
GUEST_PASSWORD = "guest password"
T = TypeVar("T")


class TamperingCore(BrokerCore):
    """A broker core that, while ``tamper`` names a mode, alters every forwarded `request`:
    "candidates" puts an address of its choosing first, "sealed" flips one ciphertext bit.
    It is the broker a hub must not trust: the seal binds both (docs/broker.md)."""

    tamper: str | None = None

    def records_to_send(self) -> list[tuple[int, bytes]]:
        out = []
        for channel, body in super().records_to_send():
            message = control.decode_channel_body(body)
            if self.tamper is not None and isinstance(message, control.Request):
                if self.tamper == "candidates":
                    altered = (Candidate.of(LOOPBACK, 9), *message.candidates)
                    message = dataclasses.replace(message, candidates=altered)
                else:
                    sealed = bytearray(message.sealed)
                    sealed[-1] ^= 1
                    message = dataclasses.replace(message, sealed=bytes(sealed))
                body = control.encode_control_message(message)
            out.append((channel, body))
        return out


class TamperingBroker(BrokerDaemon):
    """The real daemon (sockets, TLS, API) over a `TamperingCore`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Wall microseconds, as the daemon's own core starts its RWAK counters.
        self.core = TamperingCore(self.config.core, wake_counter_start=wall_ms_now() * 1000)

    @property
    def tampering(self) -> TamperingCore:
        assert isinstance(self.core, TamperingCore)
        return self.core


class Site:
    """The home, its broker on a loop thread, hub-1 running, the owner's trust store."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = LoopbackHome(base / "home", hubs=2, devices=0)
        # The abuse here is of registrations, RWAK and present: the flow without the held
        # connection (docs/broker.md, "Held connections").
        self.home.hold_connection(1, False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = load_broker_config(self.home.path / "broker.toml")
        # Every actor here (hub, issuers, the test) is 127.0.0.1, one source to the
        # broker's per-source TLS bucket; a per-target burst of 8 lets the lock-out run
        # its six attempts without the broker's rate limit deciding them.
        core = dataclasses.replace(config.core, tls_source_burst=500.0, target_burst=8.0)
        self.config = dataclasses.replace(config, core=core)
        trust = TrustUpdater(self.config.trust_dir)
        self.broker = TamperingBroker(
            self.config,
            trust,
            certs_from_pem(self.config.cert.read_bytes())[0],
            key_from_pem(self.config.key.read_bytes()),
        )
        self.run(self.broker.start())
        self.hub_1 = self.home.hub_id(1)
        self.hub_2 = self.home.hub_id(2)

    def run(self, coro: Coroutine[Any, Any, T], seconds: float = 20.0) -> T:
        """Run ``coro`` on the broker's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(scaled(seconds))

    def on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.run(call())

    def entry(self, identifier: str) -> RegistryEntry | None:
        return self.on_loop(lambda: self.broker.core.registry.get(identifier))

    def refusals(self, reason: str) -> int:
        return self.on_loop(lambda: self.broker.core.rejections[reason])

    def counters(self) -> dict[str, Any]:
        return self.on_loop(lambda: dataclasses.asdict(self.broker.core.counters))

    def hub(self) -> dict[str, Any]:
        status = self.home.hub_status(1)
        assert status is not None and status.get("broker") is not None
        broker: dict[str, Any] = status["broker"]
        return broker

    def connect(self, user: str, password: str) -> subprocess.CompletedProcess[str]:
        (self.base / "password").write_text(password + "\n")
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "roost",
                "connect",
                self.hub_1,
                "--broker",
                f"{LOOPBACK}:{self.config.tls[1]}",
                "--broker-udp",
                f"{LOOPBACK}:{self.config.udp[1]}",
                "--trust",
                str(self.base / "owner-trust"),
                "--user",
                user,
                "--password-file",
                str(self.base / "password"),
                "--card-file",
                str(self.base / f"{user}.card"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=scaled(60.0),
            cwd=self.base,
        )

    def close(self) -> None:
        self.home.close()
        with_loop = asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop)
        try:
            with_loop.result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("abuse")
    built = Site(base)
    try:
        for user, password in (("owner", PASSWORD), ("guest", GUEST_PASSWORD)):
            roost_succeeds(
                "user",
                "add",
                str(built.home.path / "hub-1"),
                user,
                "--card-file",
                str(base / f"{user}.card"),
                "--password-cost",
                "10",
                "--code-cost",
                "8",
                stdin=f"{password}\n{password}\n",
                timeout=120,
            )
        ca_info = built.home.path / "hub-1" / "ca-info.bin"
        roost_succeeds(
            "trust", "init", str(base / "owner-trust"), "--ca-info", str(ca_info), timeout=120
        )
        built.home.start("hub-1")
        wait_until(
            lambda: (built.home.hub_status(1) or {}).get("broker", {}).get("acks", 0) >= 1,
            30,
            what="hub-1 registered with the broker",
        )
        yield built
    finally:
        built.close()


# ---------------------------------------------------------------------------- actors


class Channel:
    """One framed TLS connection to the broker, as hub-2 (mutual TLS) or an issuer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, site: Site, node: str | None) -> Channel:
        anchors = certs_from_pem((site.home.path / "ca" / "gen-1" / "ca-cert.pem").read_bytes())
        if node is None:
            context = client_context(anchors)
        else:
            node_dir = site.home.path / node
            context = client_context(anchors, node_dir / "cert.pem", node_dir / "key.pem")
        opened = asyncio.open_connection(LOOPBACK, site.config.tls[1], ssl=context)
        reader, writer = await asyncio.wait_for(opened, scaled(5.0))
        return cls(reader, writer)

    async def send(self, op: str, **fields: Any) -> None:
        self.writer.write(encode_record(control.encode_control(op, **fields)))
        await self.writer.drain()

    async def read(self, seconds: float = 5.0) -> control.ControlMessage | control.RelayRecord:
        header = await asyncio.wait_for(
            self.reader.readexactly(RECORD_HEADER_SIZE), scaled(seconds)
        )
        body = await self.reader.readexactly(int.from_bytes(header, "big"))
        return control.decode_channel_body(body)

    async def call(self, op: str, **fields: Any) -> control.ControlMessage | control.RelayRecord:
        await self.send(op, **fields)
        return await self.read()

    def close(self) -> None:
        self.writer.close()


class Udp:
    """A UDP socket on loopback; ``drain`` reads everything sent back to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))

    def ask(self, data: bytes, port: int, wait: float = 1.0) -> bytes | None:
        self.sock.sendto(data, (LOOPBACK, port))
        answers = self.drain(wait, most=1)
        return answers[0] if answers else None

    def drain(self, wait: float, most: int = 10_000) -> list[bytes]:
        self.sock.settimeout(scaled(wait))
        answers: list[bytes] = []
        try:
            while len(answers) < most:
                answers.append(self.sock.recv(2048))
        except TimeoutError:
            pass
        return answers

    def close(self) -> None:
        self.sock.close()


def _hub_2_key(site: Site) -> tuple[Channel, bytes]:
    """Enroll as hub-2: its held connection and its genuine registration key."""

    async def enroll() -> tuple[Channel, bytes]:
        channel = await Channel.open(site, "hub-2")
        enrolled = await channel.call("enroll")
        assert isinstance(enrolled, control.Enrolled) and enrolled.identifier == site.hub_2
        return channel, enrolled.key

    return site.run(enroll())


def _garbage_seal(target: str) -> bytes:
    # A well-formed sealed request to a key that is not the target's: it opens nowhere.
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    return seal_request(stranger, target, (), "owner", "guess")


# ---------------------------------------------------------------------------- tests


def test_a_registration_for_another_identifier_is_a_bad_tag(site: Site) -> None:
    # hub-2 holds a real key; an RREG naming hub-1 tagged with it must not move hub-1.
    held, key = _hub_2_key(site)
    attacker = Udp()
    try:
        before = site.entry(site.hub_1)
        assert before is not None and before.reflexive is not None
        bad_tag = site.refusals("bad-tag")
        claim = encode_registration(Registration(site.hub_1, 2**62, ()), key)
        assert attacker.ask(claim, site.config.udp[1], wait=0.5) is None
        assert site.refusals("bad-tag") == bad_tag + 1
        after = site.entry(site.hub_1)
        assert after is not None
        assert (after.key, after.reflexive, after.local) == (
            before.key,
            before.reflexive,
            before.local,
        )
        assert after.reflexive != Candidate.of(LOOPBACK, attacker.sock.getsockname()[1])
        assert (after.counter or 0) < 2**62
    finally:
        attacker.close()
        held.close()


def test_replayed_and_decreasing_counters_get_no_answer(site: Site) -> None:
    held, key = _hub_2_key(site)
    client = Udp()
    try:
        port = site.config.udp[1]
        refused = site.refusals("counter-not-increasing")
        first = encode_registration(Registration(site.hub_2, 1000, ()), key)
        ack = client.ask(first, port)
        assert ack is not None and len(ack) <= len(first) and decode_ack(ack).counter == 1000
        for counter in (1000, 999, 1):
            datagram = encode_registration(Registration(site.hub_2, counter, ()), key)
            assert client.ask(datagram, port, wait=0.3) is None
        assert site.refusals("counter-not-increasing") == refused + 3
        entry = site.entry(site.hub_2)
        assert entry is not None and entry.counter == 1000
    finally:
        client.close()
        held.close()


def test_a_forged_wake_up_to_the_hub_agent_opens_nothing(site: Site) -> None:
    entry = site.entry(site.hub_1)
    assert entry is not None and entry.reflexive is not None
    agent_port = entry.reflexive.port
    before = site.hub()
    presents = site.counters()["presents"]
    forger = Udp()
    held, hub_2_key = _hub_2_key(site)
    try:
        # Tagged with a key that is not hub-1's, and with hub-2's genuine one.
        for key in (bytes(32), hub_2_key):
            forged = encode_wake(Wake(2**63, secrets.token_bytes(16)), key)
            forger.sock.sendto(forged, (LOOPBACK, agent_port))
        site.home.wait_for(
            "hub-1 counted both forged wake-ups",
            lambda: (
                site.hub()["ignored"].get("bad-tag", 0) == before["ignored"].get("bad-tag", 0) + 2
            ),
            10,
        )
        # Nothing answers a forger, and the hub opened no present connection.
        assert forger.drain(0.3) == []
        after = site.hub()
        assert after["wakes"] == before["wakes"] and after["sessions"] == 0
        assert site.counters()["presents"] == presents
    finally:
        forger.close()
        held.close()


def test_a_wake_up_token_is_good_once(site: Site) -> None:
    async def scenario() -> list[Any]:
        held, _key = await _enroll_hub_2(site)
        issuer = await Channel.open(site, None)
        first = await Channel.open(site, "hub-2")
        second = await Channel.open(site, "hub-2")
        try:
            connecting = await issuer.call(
                "connect", target=site.hub_2, candidates=(), sealed=_garbage_seal(site.hub_2)
            )
            push = await held.read()
            assert isinstance(connecting, control.Connecting)
            assert isinstance(push, control.WakePush)
            request = await first.call("present", token=push.token)
            again = await second.call("present", token=push.token)
            return [connecting, request, again]
        finally:
            for channel in (held, issuer, first, second):
                channel.close()

    reused = site.refusals("token-reused")
    connecting, request, again = site.run(scenario())
    assert isinstance(request, control.Request) and request.session == connecting.session
    assert again == control.Error(Reason.TOKEN_REUSED)
    assert site.refusals("token-reused") == reused + 1


async def _enroll_hub_2(site: Site) -> tuple[Channel, bytes]:
    channel = await Channel.open(site, "hub-2")
    enrolled = await channel.call("enroll")
    assert isinstance(enrolled, control.Enrolled)
    return channel, enrolled.key


@pytest.mark.parametrize("mode", ["candidates", "sealed"])
def test_a_broker_that_alters_the_request_gets_bad_seal_and_nobody_punches(
    site: Site, mode: str
) -> None:
    before_hub = site.hub()
    before = site.counters()
    site.on_loop(lambda: setattr(site.broker.tampering, "tamper", mode))
    try:
        done = site.connect("owner", PASSWORD)
    finally:
        site.on_loop(lambda: setattr(site.broker.tampering, "tamper", None))
    assert done.returncode == ExitCode.REFUSED, done.stderr
    assert "altered on the way" in done.stderr and "[bad-seal]" in done.stderr
    assert "Traceback" not in done.stderr
    after_hub = site.hub()
    after = site.counters()
    assert after_hub["rejected"].get("bad-seal", 0) == before_hub["rejected"].get("bad-seal", 0) + 1
    assert after_hub["wakes"] == before_hub["wakes"] + 1 and after_hub["sessions"] == 0
    # No accept, so no start: neither side punched nor relayed.
    assert after["accepts"] == before["accepts"] and after["rejects"] == before["rejects"] + 1
    assert (after_hub["accepted"], after_hub["direct"], after_hub["relayed"]) == (
        before_hub["accepted"],
        before_hub["direct"],
        before_hub["relayed"],
    )


def test_password_guessing_locks_the_user_out_and_rate_limits_never_wake_the_hub(
    site: Site,
) -> None:
    before_hub = site.hub()
    before = site.counters()
    limited_at_start = site.refusals("rate-limited")
    # The guard's lock-out policy: five failures in a row lock the user (LockoutPolicy).
    # An attempt the broker refuses by its per-target rate limit never reaches the hub;
    # the guesser waits and tries again, as the message tells it to.
    refused_by_broker = 0

    def attempt(password: str) -> subprocess.CompletedProcess[str]:
        nonlocal refused_by_broker
        for _ in range(10):
            done = site.connect("guest", password)
            if "[rate-limited]" not in done.stderr:
                return done
            refused_by_broker += 1
            time.sleep(scaled(2.0))
        raise AssertionError("the broker kept refusing by rate limit")

    for _ in range(5):
        guess = attempt("not it")
        assert guess.returncode == ExitCode.REFUSED, guess.stderr
        assert "wrong password" in guess.stderr
    right = attempt(GUEST_PASSWORD)
    assert right.returncode == ExitCode.REFUSED, right.stderr
    assert "locked out" in right.stderr and "[locked-out]" in right.stderr
    after_hub = site.hub()
    rejected = after_hub["rejected"]
    assert rejected.get("bad-password", 0) == before_hub["rejected"].get("bad-password", 0) + 5
    assert rejected.get("locked-out", 0) == before_hub["rejected"].get("locked-out", 0) + 1
    after = site.counters()
    assert after["rejects"] == before["rejects"] + 6 and after["accepts"] == before["accepts"]
    # Six wake-ups for six answered requests, none for the ones refused by rate limit.
    assert after_hub["wakes"] == before_hub["wakes"] + 6
    assert after["connects"] == before["connects"] + 6

    # Now spend hub-1's bucket from issuers in a row: the broker wakes the hub only for
    # the requests it answered `connecting`; the ones refused `rate-limited` cost the hub
    # nothing. Each is answered (the hub's bad-seal reject) before the next is sent.
    async def spend() -> tuple[int, int]:
        woken = limited = 0
        for _ in range(30):
            issuer = await Channel.open(site, None)
            try:
                answer = await issuer.call(
                    "connect", target=site.hub_1, candidates=(), sealed=_garbage_seal(site.hub_1)
                )
                if isinstance(answer, control.Connecting):
                    woken += 1
                    assert isinstance(await issuer.read(10.0), control.Reject)
                else:
                    assert answer == control.Error(Reason.RATE_LIMITED)
                    limited += 1
                    if limited == 3:
                        break
            finally:
                issuer.close()
        return woken, limited

    assert site.refusals("rate-limited") >= limited_at_start + refused_by_broker
    wakes = site.hub()["wakes"]
    limited_before = site.refusals("rate-limited")
    # The guesses above may have left hub-1's bucket (1 token/s) empty; after a second and
    # a half it holds at least one token, so the first request below is answered.
    time.sleep(scaled(1.5))
    woken, limited = site.run(spend(), seconds=120.0)
    assert limited == 3 and 1 <= woken <= 12
    assert site.refusals("rate-limited") >= limited_before + 3
    assert site.hub()["wakes"] == wakes + woken


def test_stun_and_registration_floods_are_shed_and_never_amplified(site: Site) -> None:
    # Last: one source (127.0.0.1, as every actor here) sends far beyond its bucket.
    held, key = _hub_2_key(site)
    flooder = Udp()
    try:
        port = site.config.udp[1]
        limited = site.refusals("rate-limited")
        stun_request = stun.build_binding_request(b"flood-flood!")
        registrations = [
            encode_registration(Registration(site.hub_2, 10_000 + n, ()), key) for n in range(300)
        ]
        smallest = min(len(stun_request), *map(len, registrations))
        began = time.monotonic()
        for n in range(300):
            flooder.sock.sendto(stun_request, (LOOPBACK, port))
            flooder.sock.sendto(registrations[n], (LOOPBACK, port))
        sent_for = time.monotonic() - began
        answers = flooder.drain(0.5)
        # Every reply is no larger than the smallest datagram of the flood.
        assert answers and all(len(answer) <= smallest for answer in answers)
        shed = site.refusals("rate-limited") - limited
        # The source's bucket (burst 100, 50 a second) bounds the answers; what the broker
        # read beyond it was shed (the kernel may drop some of the 600 before it reads
        # them; hub-1's own registrations, from the same host, may be shed too).
        budget = site.config.core.udp_source_burst + site.config.core.udp_source_rate * (
            sent_for + 0.5
        )
        assert 100 <= len(answers) <= budget and shed >= 100
        assert len(answers) + shed <= 603
        # The bucket refills (50 a second): the source is served again, not banned.
        wait_until(
            lambda: flooder.ask(stun.build_binding_request(b"after-flood!"), port, 0.3) is not None,
            10,
            what="STUN answered again after the flood",
        )
    finally:
        flooder.close()
        held.close()
