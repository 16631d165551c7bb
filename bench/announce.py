"""Benchmark of hub announcements: verification cost, and a join under a datagram flood.

Run as `.venv/bin/python bench/announce.py`. It prints a table, then one JSON line.

What is measured, on loopback (127.0.0.1) only:

- (a) Verified announcements per second through `AnnounceCore.receive_datagram` (a hub's
  core, the receive order of PROTOCOL.md section 3: size, magic, rate limit, lengths, XML,
  freshness, replay, source, certificate, signature), fed real signed datagrams of 8 hubs
  with valid certificates and increasing seq/ts, next to raw ECDSA P-256 verifications of
  the same signed bytes (cryptography), interleaved in the same run. The core reads no
  clock, so `now` is advanced 60 ms per datagram: all datagrams come from 127.0.0.1, whose
  token bucket (20/s) then refills between datagrams and every one is verified rather than
  shed. Certificate verdicts are cached as in a running hub (60 s of that clock).
- (b) A flood of forged and stale datagrams, sent at `--flood-pps` (default 50,000/s) for
  `--flood-seconds` (default 10 s) from a separate process at the announce port of a real
  hub process (the victim), while a real second hub B starts and announces itself. The
  mix cycles through random bytes, oversized datagrams, valid-looking announcements with a
  bad signature, stale `ts`, and a replayed `seq` (one announcement of a third hub sent
  once, then repeated). Reported: whether B appears in the victim's `/api/status` hubs
  list and is elected after the hold-down, the achieved flood rate, how many datagrams the
  victim processed (its rejection counters), and its CPU use over the flood window from
  /proc/<pid>/stat (utime + stime). It runs twice: with only the kinds that fail before
  the per-source rate limit (random bytes, oversized), and with the full mix.

Everything is bounded in count and time, and hub processes are always terminated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from rich.table import Table

from _common import (
    HubProcesses,
    bound_addresses,
    cpu_seconds,
    machine_facts,
    print_result,
    state_dir,
    stop_process,
)
from roost.cli.common import now_utc
from roost.cli.home import free_loopback_ports
from roost.config import to_toml
from roost.errors import VerificationError
from roost.files import atomic_write
from roost.hcsp.announce import SignedAnnouncement, decode_announcement, encode_announcement
from roost.hcsp.core import AnnounceConfig, AnnounceCore, OwnHub
from roost.hcsp.documents import Endpoint, HubAddress, Subscribe, encode_document
from roost.hub.api import fetch_status
from roost.pki.authority import Authority, IssuedLeaf
from roost.pki.certs import Role, cert_to_pem, key_to_pem
from roost.pki.trust import TrustState
from roost.pki.truststore import save_state

_HOST = "127.0.0.1"
_HUBS = 8
_STEP = 0.06
_HOLD_DOWN = 3.0
_PROCESSES = HubProcesses()


@dataclass(frozen=True, slots=True)
class Identity:
    """An issued hub identity with the pieces an announcement needs."""

    leaf: IssuedLeaf
    der: bytes

    @property
    def identifier(self) -> str:
        return self.leaf.identifier or ""


def _signed(identity: Identity, port: int, seq: int, ts: int, features: tuple[str, ...]) -> bytes:
    document = Subscribe(
        HubAddress(identity.identifier, Endpoint(_HOST, port)), features, 0, 16, seq, ts
    )
    return encode_announcement(encode_document(document), identity.der, identity.leaf.key)


# ------------------------------------------------------------------ (a) verification rate


def _verifier(state: TrustState) -> Any:
    """The hub daemon's certificate check: chain to a trusted generation, hub identifiers only."""

    def verify(leaf: x509.Certificate) -> str:
        node, _, _ = state.verify_node(leaf)
        if not node.identifier.startswith("hcsp:"):
            raise VerificationError("not a hub", reason="not-hub")
        return node.identifier

    return verify


def _verification(
    authority: Authority, state: TrustState, count: int, rounds: int
) -> dict[str, Any]:
    at = now_utc()
    identities = [_identity(authority, at) for _ in range(_HUBS + 1)]
    own_identity, senders = identities[0], identities[1:]
    own = OwnHub(
        HubAddress(own_identity.identifier, Endpoint(_HOST, 17320)),
        ("hcsp",),
        16,
        own_identity.leaf.key,
        own_identity.der,
    )
    core = AnnounceCore(AnnounceConfig(hold_down=_HOLD_DOWN), own, _verifier(state))
    wall0 = time.time_ns() // 1_000_000
    seq0 = wall0
    # Pre-signed, so the timed loop is the receiver's work only. Datagram k is delivered at
    # simulated time k*_STEP, with ts equal to the simulated wall clock at that moment.
    datagrams: list[tuple[bytes, tuple[str, int], float, int]] = []
    for k in range(count):
        sender = k % _HUBS
        wall = wall0 + int(k * _STEP * 1000)
        port = 20000 + sender
        data = _signed(senders[sender], port, seq0 + k, wall, ("hcsp", "webs"))
        datagrams.append((data, (_HOST, port), k * _STEP, wall))
    raw: list[tuple[bytes, bytes, ec.EllipticCurvePublicKey]] = []
    for data, *_ in datagrams[: min(count, 512)]:
        announcement: SignedAnnouncement = decode_announcement(data)
        key = x509.load_der_x509_certificate(announcement.certificate).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        raw.append((announcement.signature, announcement.signed_bytes, key))
    algorithm = ec.ECDSA(hashes.SHA256())
    core_seconds = raw_seconds = 0.0
    per_round = count // rounds
    raw_done = 0
    # Interleaved slices: outside load on this shared machine hits both loops alike.
    for r in range(rounds):
        chunk = datagrams[r * per_round : (r + 1) * per_round]
        start = time.perf_counter()
        for data, source, now, wall in chunk:
            core.receive_datagram(data, source, now, wall)
            while core.next_event() is not None:
                pass
        core_seconds += time.perf_counter() - start
        start = time.perf_counter()
        for i in range(per_round):
            signature, signed, key = raw[i % len(raw)]
            key.verify(signature, signed, algorithm)
        raw_seconds += time.perf_counter() - start
        raw_done += per_round
    processed = per_round * rounds
    counters = core.counters
    return {
        "verified_per_s": round(counters.accepted / core_seconds, 1),
        "ecdsa_verify_per_s": round(raw_done / raw_seconds, 1),
        "verified_vs_ecdsa": round(
            (counters.accepted / core_seconds) / (raw_done / raw_seconds), 3
        ),
        "verify_datagrams": processed,
        "verify_accepted": counters.accepted,
        "verify_rejected": dict(counters.rejected),
        "certificate_cache_hits": counters.certificate_cache_hits,
        "datagram_bytes": len(datagrams[0][0]),
    }


def _identity(authority: Authority, at: Any) -> Identity:
    leaf = authority.issue(Role.HUB, at, ips=[_HOST])
    return Identity(leaf, leaf.cert.public_bytes(Encoding.DER))


# --------------------------------------------------------------------------- (b) flood


@dataclass
class HubProcess:
    name: str
    config: Path
    udp_port: int
    identifier: str
    process: subprocess.Popen[bytes] | None = None

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        # The hub binds its API on port 0 and reports the port in run.json.
        bound = bound_addresses(self.config, self.process)
        if bound is None:
            raise ConnectionRefusedError(f"{self.name} has not reported its API port")
        return fetch_status(*bound.api, timeout)

    def start(self, log: Path) -> None:
        self.process = _PROCESSES.start(self.config, log)

    def wait_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            with contextlib.suppress(OSError):
                self.status(1.0)
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not answer within {timeout} s")

    def stop(self) -> None:
        stop_process(self.process)


def _write_hub(
    home: Path,
    authority: Authority,
    name: str,
    features: tuple[str, ...],
    udp: int,
    peer_udp: int,
) -> HubProcess:
    at = now_utc()
    node = home / name
    issued = authority.issue(Role.HUB, at, ips=[_HOST])
    atomic_write(node / "key.pem", key_to_pem(issued.key), mode=0o600)
    atomic_write(node / "cert.pem", cert_to_pem(issued.cert))
    save_state(node / "trust", TrustState.provision(authority.ca_info(1)))
    config = {
        "name": name,
        "state_dir": name,
        "cert": f"{name}/cert.pem",
        "key": f"{name}/key.pem",
        # TCP listeners bind port 0 (reported in run.json); the UDP announce ports are
        # chosen in advance because each hub must know where to send the other's.
        "listen": f"{_HOST}:0",
        "advertise": f"{_HOST}:0",
        "api": f"{_HOST}:0",
        "features": list(features),
        "max_devices": 16,
        "retention_mb": 16,
        "announce": {
            "multicast": False,
            "bind": _HOST,
            "port": udp,
            "peers": [f"{_HOST}:{peer_udp}"],
            "hold_down": _HOLD_DOWN,
        },
    }
    path = home / f"{name}.toml"
    path.write_text(to_toml(config, f"bench/announce.py {name}"))
    return HubProcess(name, path, udp, issued.identifier or "")


def _forged_pool(authority: Authority, kinds: list[str]) -> tuple[list[bytes], bytes | None]:
    """Datagrams of the requested kinds, fresh for the next ~14 s where freshness matters."""
    at = now_utc()
    rng = random.Random(7)
    forger = _identity(authority, at)
    wall = time.time_ns() // 1_000_000
    # Four seconds ahead is inside the ±10 s window for the whole flood, so these pass the
    # freshness check and reach the later, costlier checks.
    fresh = wall + 4_000
    pool: list[bytes] = []
    replayed: bytes | None = None
    for kind in kinds:
        if kind == "random":
            pool += [rng.randbytes(rng.randint(60, 1400)) for _ in range(64)]
        elif kind == "oversized":
            pool += [b"HCSP\x01" + rng.randbytes(1500) for _ in range(8)]
        elif kind == "bad-signature":
            for i in range(64):
                good = bytearray(_signed(forger, 20000, fresh + i, fresh, ("hcsp",)))
                good[-5] ^= 0x55
                pool.append(bytes(good))
        elif kind == "stale":
            pool += [
                _signed(forger, 20000, wall - 60_000 + i, wall - 60_000, ("hcsp",))
                for i in range(64)
            ]
        elif kind == "replay":
            replayed = _signed(forger, 20000, fresh - 1, fresh, ("hcsp",))
            pool += [replayed] * 64
        else:
            raise ValueError(kind)
    rng.shuffle(pool)
    return pool, replayed


def _flood_worker(spec_file: Path) -> None:
    """Send the pool round-robin at the given rate for the given time; print a JSON line."""
    spec = json.loads(spec_file.read_text())
    pool = [bytes.fromhex(h) for h in spec["pool"]]
    target = (_HOST, int(spec["port"]))
    rate = float(spec["pps"])
    seconds = float(spec["seconds"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((_HOST, 0))
    sent = errors = 0
    print(json.dumps({"started": True}), flush=True)
    start = time.monotonic()
    end = start + seconds
    burst = 250
    index = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        # Pace in bursts: send what the schedule says is due, then sleep briefly.
        due = int((now - start) * rate) - sent
        for _ in range(min(due, burst * 4)):
            try:
                sock.sendto(pool[index % len(pool)], target)
            except OSError:
                errors += 1
            index += 1
            sent += 1
        if due < burst:
            time.sleep(burst / rate)
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "seconds": elapsed, "errors": errors}), flush=True)


def _rejected_total(status: dict[str, Any]) -> int:
    return sum(status["counters"]["announcements_rejected"].values())


def _flood_phase(
    home: Path, authority: Authority, label: str, kinds: list[str], pps: float, seconds: float
) -> dict[str, Any]:
    phase_dir = home / label
    phase_dir.mkdir()
    victim_udp, joiner_udp = free_loopback_ports(2, socket.SOCK_DGRAM)
    victim = _write_hub(phase_dir, authority, "victim", ("hcsp", "webs"), victim_udp, joiner_udp)
    joiner = _write_hub(
        phase_dir, authority, "joiner", ("hcsp", "webs", "db"), joiner_udp, victim_udp
    )
    result: dict[str, Any] = {"kinds": kinds}
    flooder: subprocess.Popen[str] | None = None
    try:
        victim.start(phase_dir / "victim.log")
        victim.wait_api(20.0)
        pool, replayed = _forged_pool(authority, kinds)
        spec = phase_dir / "flood.json"
        spec.write_text(
            json.dumps(
                {
                    "pool": [d.hex() for d in pool],
                    "port": victim.udp_port,
                    "pps": pps,
                    "seconds": seconds,
                }
            )
        )
        if replayed is not None:
            # The replayed announcement is sent once first, so the victim accepts it and
            # every later copy is a replay of an accepted seq.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(replayed, (_HOST, victim.udp_port))
            time.sleep(0.2)
        before = victim.status()
        assert victim.process is not None
        flooder = subprocess.Popen(
            [sys.executable, __file__, "--flood-worker", str(spec)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert flooder.stdout is not None
        flooder.stdout.readline()
        cpu0, t0 = cpu_seconds(victim.process.pid), time.monotonic()
        # One second of flood before the joiner starts: it joins an already flooded LAN.
        time.sleep(1.0)
        joiner.start(phase_dir / "joiner.log")
        seen_at = won_at = None
        joiner_started = time.monotonic()
        # Polling continues past the flood for a hold-down, to show whether B recovers.
        deadline = t0 + seconds + _HOLD_DOWN + 2.0
        flood_end: float | None = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                status = victim.status()
                now = time.monotonic()
                ids = [hub["id"] for hub in status["hubs"]]
                if seen_at is None and joiner.identifier in ids:
                    seen_at = now
                if won_at is None and status["winner"] == joiner.identifier:
                    won_at = now
            if flood_end is None and flooder.poll() is not None:
                flood_end = time.monotonic()
            if flood_end is not None and won_at is not None:
                break
            time.sleep(0.1)
        report = json.loads(flooder.stdout.readline() or "{}")
        flooder.wait(10)
        cpu1, t1 = cpu_seconds(victim.process.pid), time.monotonic()
        after = victim.status()
        window = t1 - t0
        result.update(
            {
                "flood_sent": report.get("sent", 0),
                "flood_pps": round(report.get("sent", 0) / max(report.get("seconds", 1), 1e-9)),
                "victim_processed_pps": round(
                    (_rejected_total(after) - _rejected_total(before)) / window
                ),
                "victim_cpu_percent": round(100 * (cpu1 - cpu0) / window, 1),
                "join_seen_s": round(seen_at - joiner_started, 2) if seen_at else None,
                "join_won_s": round(won_at - joiner_started, 2) if won_at else None,
                "flood_end_s": round(flood_end - joiner_started, 2) if flood_end else None,
                # Completed means seen and elected while the flood was still running.
                "join_completed": won_at is not None and (flood_end is None or won_at <= flood_end),
                "victim_rejected": {
                    reason: count - before["counters"]["announcements_rejected"].get(reason, 0)
                    for reason, count in after["counters"]["announcements_rejected"].items()
                },
                "victim_accepted": after["counters"]["announcements_accepted"]
                - before["counters"]["announcements_accepted"],
            }
        )
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait(5)
        joiner.stop()
        victim.stop()
    return result


# ------------------------------------------------------------------------------- main


def _table(result: dict[str, Any]) -> Table:
    table = Table(title="Hub announcements (PROTOCOL.md section 3)")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_row("verified announcements / s (AnnounceCore)", f"{result['verified_per_s']:,.0f}")
    table.add_row("raw ECDSA P-256 verify / s", f"{result['ecdsa_verify_per_s']:,.0f}")
    table.add_row("core / raw", f"{result['verified_vs_ecdsa']:.2f}")
    for phase in ("pre_limit", "full_mix"):
        p = result[phase]
        table.add_row(f"[b]flood: {', '.join(p['kinds'])}[/b]", "")
        table.add_row("  achieved flood rate", f"{p['flood_pps']:,} datagrams/s")
        table.add_row("  processed by the victim", f"{p['victim_processed_pps']:,} /s")
        table.add_row("  victim CPU", f"{p['victim_cpu_percent']} %")
        table.add_row(
            "  B seen / elected after start", f"{p['join_seen_s']} s / {p['join_won_s']} s"
        )
        table.add_row("  join completed", str(p["join_completed"]))
    return table


def _measure(home: Path, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """(a), then (b) twice: the kinds that fail before the rate limit, then the full mix."""
    authority = Authority.init(home / "ca", f"https://{_HOST}:9/ca/", now_utc())
    state = TrustState.provision(authority.ca_info(1))
    result.update(_verification(authority, state, args.count, rounds=4))
    result["pre_limit"] = _flood_phase(
        home,
        authority,
        "pre-limit",
        ["random", "oversized"],
        args.flood_pps,
        args.flood_seconds,
    )
    result["full_mix"] = _flood_phase(
        home,
        authority,
        "full-mix",
        ["random", "oversized", "bad-signature", "stale", "replay"],
        args.flood_pps,
        args.flood_seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8000, help="datagrams verified in (a)")
    parser.add_argument("--flood-pps", type=float, default=50_000)
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument("--flood-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_worker is not None:
        _flood_worker(args.flood_worker)
        return
    if not 100 <= args.count <= 100_000 or not 0 < args.flood_seconds <= 60:
        parser.error("--count within 100..100000 and --flood-seconds within 0..60")
    started = time.monotonic()
    result: dict[str, Any] = {}
    with state_dir("roost-announce-") as home:
        try:
            _measure(home, args, result)
        finally:
            _PROCESSES.kill_all()
    full = result["full_mix"]
    result["flood_pps"] = full["flood_pps"]
    result["join_completed"] = full["join_completed"]
    result["victim_cpu_percent"] = full["victim_cpu_percent"]
    result["join_completed_pre_limit_flood"] = result["pre_limit"]["join_completed"]
    result["total_s"] = round(time.monotonic() - started, 1)
    result.update(machine_facts())
    print_result(result, _table(result))


if __name__ == "__main__":
    main()
