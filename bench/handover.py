"""Benchmark of a hub handover: N devices move from hub A to a better hub B.

Run as `.venv/bin/python bench/handover.py [--devices 1000]`. It prints a table, then one
JSON line.

What is measured, on loopback (127.0.0.1) only:

- Hub A and hub B run as real, separate processes (`python -m roost hub run --config …`)
  with configs written here: B announces more features, so it wins the election (PROTOCOL.md
  section 3) once A has heard it for the hold-down (3 s by default). Redirects go out in
  batches of 64 spaced 20 ms apart (plus up to 20 ms of jitter), so the handover is bound
  by how fast B accepts channels rather than by the redirect pacing.
- The N devices are real `DeviceDaemon`s in this process, on one uvloop event loop: each
  has its own certificate, trust store, in-memory `FrameSpool`, `SyntheticCamera` (64x48
  JPEG) and connection manager, so redirects are followed by the real code (redirect over
  the authenticated channel, TLS to the named endpoint, identifier check, drain, close).
  They start with `capture=False` and this script calls `capture_one()` for each at `--fps`,
  spread evenly, so capturing can be stopped before the final drain. One process is used
  on purpose: with 2 cores, hub B takes one and the whole fleet the other, and the raw TLS
  measurement below runs from the same loop, so both sides of the comparison share the
  same client-side limits.
- `handover_s`: from the moment this script's UDP listener (one of the hubs' unicast
  announce peers) receives B's first announcement, until every device's channel is to B.
  `handover_after_holddown_s` subtracts the protocol's hold-down.
- `tls_capacity_s`: right after the handover, while the devices keep streaming to B, N
  mutual TLS 1.3 handshakes with the devices' certificates against B's own listening port,
  as fast as possible with the same concurrency as a redirect batch (64), each connection
  closed right after its handshake (B then counts a `bad-hello` rejection). The client
  contexts are built beforehand, so only handshakes are timed.
- Frames: captured sequence numbers are recorded per device; after capture stops and
  every device reports `buffered == 0` (all acknowledged), the devices stop, the hubs stop,
  and both hubs' recorders are read: a seq stored by both hubs is a duplicate, a captured
  seq stored by neither is lost.

All state lives in a temporary directory on /dev/shm when it exists, so that fsyncs of the
recorders, spools and status files cost memory speed and the measurement is of the
protocol and the hub's code, not of a disk. Everything is bounded by `--timeout`, and the
hub processes are always terminated (killed if they do not stop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from roost.config import AnnounceSettings, DeviceConfig, to_toml
from roost.device.daemon import DeviceDaemon, read_own_certificate
from roost.device.spool import FrameSpool
from roost.errors import RoostError
from roost.files import atomic_write
from roost.hcsp.aio import UdpConfig
from roost.hcsp.announce import decode_announcement
from roost.hcsp.documents import Subscribe, decode_document
from roost.hub.api import fetch_status
from roost.hub.recorder import Recorder
from roost.hub.runfile import HubRunState
from roost.pki.authority import Authority
from roost.pki.certs import Role, cert_to_pem, key_to_pem
from roost.pki.tls import client_context
from roost.pki.trust import TrustState
from roost.pki.truststore import save_state
from roost.pki.updater import TrustUpdater

_HOST = "127.0.0.1"
_HOLD_DOWN = 3.0
_START_CHUNK = 64
# Every hub process started, so that the last `finally` can kill any left behind.
_PROCESSES = HubProcesses()


@dataclass
class Hub:
    """One hub process, its announce port and the TCP ports it reports having bound."""

    name: str
    config: Path
    udp_port: int
    identifier: str
    state_dir: Path
    process: subprocess.Popen[bytes] | None = None
    _bound: HubRunState | None = field(default=None, init=False, repr=False)

    def bound(self) -> HubRunState | None:
        """What the running process wrote to run.json, or None before it has bound."""
        if self.process is None:
            return None
        if self._bound is None or self._bound.pid != self.process.pid:
            self._bound = bound_addresses(self.config, self.process)
        return self._bound

    @property
    def listen_port(self) -> int:
        state = self.bound()
        if state is None:
            raise RuntimeError(f"{self.name} has not reported its bound ports")
        return state.listen[1]

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        state = self.bound()
        if state is None:
            # Not bound yet answers like a listener that is not up yet.
            raise ConnectionRefusedError(f"{self.name} has not reported its API port")
        return fetch_status(*state.api, timeout)


@dataclass
class Fleet:
    """The devices and what this script observed of them."""

    daemons: list[DeviceDaemon] = field(default_factory=list)
    spools: list[FrameSpool] = field(default_factory=list)
    captured: list[list[int]] = field(default_factory=list)
    contexts: list[ssl.SSLContext] = field(default_factory=list)


class _AnnounceWatch(asyncio.DatagramProtocol):
    """Notes when each hub's first announcement arrives (this script is one of the peers)."""

    def __init__(self) -> None:
        self.first_heard: dict[str, float] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        now = time.monotonic()
        try:
            document = decode_document(decode_announcement(data).document)
        except RoostError:
            return
        if isinstance(document, Subscribe):
            self.first_heard.setdefault(document.sender.identifier, now)


def _raise_fd_limit() -> int:
    # Each device holds a UDP socket and one or two TLS connections, and the hubs hold one
    # per device, so the default soft limit of 1024 would end the run long before N=1000.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _provision(
    home: Path, devices: int, batch: int, spacing: float
) -> tuple[list[Hub], list[tuple[str, Path]], int]:
    """Authority, two hub identities and configs, N device identities and trust stores."""
    at = now_utc()
    # The download URL is signed into CA information and peers must know each other's
    # unicast announce ports before any starts, so those are chosen now; the hubs' TCP
    # listeners bind port 0 and report what they bound in run.json.
    dl_port = free_loopback_ports(1, socket.SOCK_STREAM)[0]
    a_udp, b_udp, watch_udp = free_loopback_ports(3, socket.SOCK_DGRAM)
    # The download URL points at a closed loopback port: the trust updaters poll it and get
    # "not published yet", which is what a home without a rollover sees.
    authority = Authority.init(home / "ca", f"https://{_HOST}:{dl_port}/ca/", at)
    first = TrustState.provision(authority.ca_info(1))

    def provision(name: str, role: Role) -> str:
        node = home / name
        issued = authority.issue(role, at, ips=[_HOST] if role is Role.HUB else [])
        atomic_write(node / "key.pem", key_to_pem(issued.key), mode=0o600)
        atomic_write(node / "cert.pem", cert_to_pem(issued.cert))
        save_state(node / "trust", first)
        return issued.identifier or ""

    hubs = []
    specs = [
        ("hub-a", ("hcsp", "webs"), a_udp, b_udp),
        ("hub-b", ("hcsp", "webs", "db"), b_udp, a_udp),
    ]
    for name, features, udp, other_udp in specs:
        identifier = provision(name, Role.HUB)
        config = {
            "name": name,
            "state_dir": name,
            "cert": f"{name}/cert.pem",
            "key": f"{name}/key.pem",
            "listen": f"{_HOST}:0",
            "advertise": f"{_HOST}:0",
            "api": f"{_HOST}:0",
            "features": list(features),
            "max_devices": devices,
            "retention_mb": 4096,
            "announce": {
                "multicast": False,
                "bind": _HOST,
                "port": udp,
                "peers": [f"{_HOST}:{other_udp}", f"{_HOST}:{watch_udp}"],
                "hold_down": _HOLD_DOWN,
            },
            "redirect": {"batch_size": batch, "spacing": spacing},
            # Every simulated camera dials from 127.0.0.1, one source to the per-source
            # cap on unauthenticated connections; a home's cameras each have an address.
            "admission": {
                "max_unauthenticated": max(256, devices),
                "max_unauthenticated_per_source": max(256, devices),
            },
        }
        path = home / f"{name}.toml"
        path.write_text(to_toml(config, f"bench/handover.py {name} ({identifier})"))
        hubs.append(Hub(name, path, udp, identifier, home / name))
    device_dirs = []
    for index in range(devices):
        name = f"device-{index + 1}"
        device_dirs.append((provision(name, Role.DEVICE), home / name))
    return hubs, device_dirs, watch_udp


def _start_hub(hub: Hub, home: Path) -> None:
    hub.process = _PROCESSES.start(hub.config, home / f"{hub.name}.log")


async def _wait_api(hub: Hub, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert hub.process is not None
        if hub.process.poll() is not None:
            raise RuntimeError(f"{hub.name} exited with {hub.process.returncode}")
        try:
            await asyncio.to_thread(hub.status, 1.0)
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{hub.name} API did not answer within {timeout} s")


def _listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _cpu_sample(hubs: list[Hub]) -> list[float]:
    pids = [None] + [hub.process.pid if hub.process else None for hub in hubs]
    return [cpu_seconds(pid) if pid or index == 0 else 0.0 for index, pid in enumerate(pids)]


def _stop_hub(hub: Hub) -> None:
    stop_process(hub.process)


def _device_config(name: str, directory: Path, hub_a: Hub, fps: float) -> DeviceConfig:
    # Devices get hub A as their configured hub and an announce socket with no peers: a
    # device needs no announcements to follow a redirect, and 1000 devices each verifying
    # two hubs' announcements every second would load this process with work that is not
    # part of the handover.
    udp = UdpConfig(bind_host=_HOST, port=0, multicast=False, peers=())
    return DeviceConfig(
        name=name,
        state_dir=directory,
        cert=directory / "cert.pem",
        key=directory / "key.pem",
        fps=fps,
        width=64,
        height=48,
        max_buffer_frames=10_000,
        max_buffer_bytes=64 * 1024 * 1024,
        announce=AnnounceSettings(udp, hold_down=_HOLD_DOWN),
        hubs=((_HOST, hub_a.listen_port),),
    )


def _build_fleet(device_dirs: list[tuple[str, Path]], hub_a: Hub, fps: float) -> Fleet:
    fleet = Fleet()
    for index, (_identifier, directory) in enumerate(device_dirs):
        config = _device_config(f"device-{index + 1}", directory, hub_a, fps)
        trust = TrustUpdater(config.trust_dir)
        spool = FrameSpool(None, config.max_buffer_frames, config.max_buffer_bytes)
        fleet.daemons.append(DeviceDaemon(config, trust, spool, read_own_certificate(config)))
        fleet.spools.append(spool)
        fleet.captured.append([])
        # Built now so the raw TLS measurement times handshakes only.
        fleet.contexts.append(client_context(trust.state.anchors, config.cert, config.key))
    return fleet


def _on_hub(fleet: Fleet, hub_id: str) -> int:
    return sum(
        1
        for d in fleet.daemons
        if d.channel is not None and d.channel.hub_id == hub_id and d.state == "streaming"
    )


async def _capture(fleet: Fleet, fps: float, stop: asyncio.Event) -> None:
    """Capture one frame per device every 1/fps seconds, spread evenly over the period."""
    loop = asyncio.get_running_loop()
    count = len(fleet.daemons)
    tick = 0.05
    per_second = count * fps
    cursor = 0.0
    last = loop.time()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
        now = loop.time()
        # Spread the captures: the cursor walks the fleet at N*fps devices per second.
        target = cursor + per_second * (now - last)
        last = now
        while cursor + 1 <= target and not stop.is_set():
            index = int(cursor) % count
            fleet.captured[index].append(fleet.daemons[index].capture_one())
            cursor += 1


async def _start_fleet(fleet: Fleet, hub_a: Hub, deadline: float) -> float:
    """Start the devices in chunks, each chunk once the previous one streams to hub A.

    Chunks keep the initial connection storm within the listen backlog of hub A; the
    initial connections are set-up, not the measured handover.
    """
    started = time.monotonic()
    for start in range(0, len(fleet.daemons), _START_CHUNK):
        chunk = fleet.daemons[start : start + _START_CHUNK]
        for daemon in chunk:
            await daemon.start(capture=False)
        while _on_hub(fleet, hub_a.identifier) < start + len(chunk):
            if time.monotonic() > deadline:
                raise TimeoutError("devices did not all connect to hub A")
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _tls_capacity(fleet: Fleet, hub_b: Hub, concurrency: int) -> tuple[float, int]:
    """N mutual TLS handshakes to hub B, `concurrency` at a time; (seconds, failures)."""
    semaphore = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(context: ssl.SSLContext) -> None:
        nonlocal failures
        async with semaphore:
            try:
                _reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(_HOST, hub_b.listen_port, ssl=context), 10.0
                )
            except (OSError, TimeoutError):
                failures += 1
                return
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one(c) for c in fleet.contexts))
    return time.monotonic() - started, failures


async def _drain(fleet: Fleet, deadline: float) -> float:
    started = time.monotonic()
    while any(spool.buffered for spool in fleet.spools):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _count_frames(
    hubs: list[Hub], device_ids: list[str], fleet: Fleet
) -> tuple[int, int, int, list[int]]:
    """(captured, lost, duplicated, stored per hub) from both hubs' recorders."""
    recorders = [Recorder(hub.state_dir / "recordings", 4096 * 1024 * 1024) for hub in hubs]
    captured = lost = duplicated = 0
    per_hub = [0 for _ in hubs]
    try:
        for index, device_id in enumerate(device_ids):
            stored = [set(recorder.seqs(device_id)) for recorder in recorders]
            for position, seqs in enumerate(stored):
                per_hub[position] += len(seqs)
            union = set().union(*stored)
            captured += len(fleet.captured[index])
            lost += sum(1 for seq in fleet.captured[index] if seq not in union)
            duplicated += sum(len(seqs) for seqs in stored) - len(union)
    finally:
        for recorder in recorders:
            recorder.close()
    return captured, lost, duplicated, per_hub


def _counter_sum(fleet: Fleet, name: str) -> int:
    total = 0
    for daemon in fleet.daemons:
        value = getattr(daemon.counters, name)
        total += sum(value.values()) if isinstance(value, dict) else int(value)
    return total


async def _run(args: argparse.Namespace, home: Path, result: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + args.timeout
    clock = time.monotonic()
    hubs, device_dirs, watch_port = _provision(home, args.devices, args.batch, args.spacing)
    hub_a, hub_b = hubs
    result["provision_s"] = round(time.monotonic() - clock, 2)
    watch = _AnnounceWatch()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: watch, local_addr=(_HOST, watch_port)
    )
    fleet = Fleet()
    stop_capture = asyncio.Event()
    capture_task: asyncio.Task[None] | None = None
    try:
        _start_hub(hub_a, home)
        await _wait_api(hub_a, 30.0)
        clock = time.monotonic()
        fleet = _build_fleet(device_dirs, hub_a, args.fps)
        result["fleet_build_s"] = round(time.monotonic() - clock, 2)
        capture_task = asyncio.create_task(_capture(fleet, args.fps, stop_capture))
        result["initial_connect_s"] = round(await _start_fleet(fleet, hub_a, deadline), 2)
        # Let every device stream to A for a while so frames are in flight at the handover.
        await asyncio.sleep(args.settle)

        overflows = _listen_overflows()
        _start_hub(hub_b, home)
        first_on_b: float | None = None
        moved_at: dict[int, float] = {}
        ripe_cpu: list[float] | None = None
        ripe_at = 0.0
        while True:
            on_b = _on_hub(fleet, hub_b.identifier)
            now = time.monotonic()
            for index, daemon in enumerate(fleet.daemons):
                channel = daemon.channel
                if index not in moved_at and channel and channel.hub_id == hub_b.identifier:
                    moved_at[index] = now
            b_heard = watch.first_heard.get(hub_b.identifier)
            if ripe_cpu is None and b_heard is not None and now >= b_heard + _HOLD_DOWN:
                # CPU use of each process from the end of the hold-down to completion
                # shows which one bounds the handover.
                ripe_cpu, ripe_at = _cpu_sample(hubs), now
            if on_b and first_on_b is None:
                first_on_b = now
            if on_b == args.devices and hub_b.identifier in watch.first_heard:
                break
            if now > deadline:
                raise TimeoutError(f"only {on_b} of {args.devices} devices reached hub B")
            assert hub_b.process is not None
            if hub_b.process.poll() is not None:
                raise RuntimeError(f"hub B exited with {hub_b.process.returncode}")
            await asyncio.sleep(0.01)
        done = time.monotonic()
        if ripe_cpu is not None and done > ripe_at:
            used = [b - a for a, b in zip(ripe_cpu, _cpu_sample(hubs), strict=True)]
            for label, seconds in zip(("bench", "hub_a", "hub_b"), used, strict=True):
                result[f"cpu_{label}_during_handover_pct"] = round(
                    100 * seconds / (done - ripe_at), 1
                )
        b_first = watch.first_heard[hub_b.identifier]
        result["handover_s"] = round(done - b_first, 3)
        result["handover_after_holddown_s"] = round(done - b_first - _HOLD_DOWN, 3)
        assert first_on_b is not None
        result["first_device_on_b_s"] = round(first_on_b - b_first, 3)
        moves = [t - b_first for t in moved_at.values()]
        for label, fraction in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
            result[f"device_on_b_{label}_s"] = round(_percentile(moves, fraction), 3)
        # Overflows are counted system-wide, but on this loopback-only run they are B's:
        # a full accept queue drops the handshake and the client retries after 1 s, 3 s…
        result["listen_overflows_during_handover"] = _listen_overflows() - overflows
        status_b = await asyncio.to_thread(hub_b.status)
        result["hub_b_connected"] = len(status_b["connected"])

        overflows = _listen_overflows()
        before = _cpu_sample(hubs)
        seconds, failures = await _tls_capacity(fleet, hub_b, args.batch)
        used = [b - a for a, b in zip(before, _cpu_sample(hubs), strict=True)]
        for label, cpu in zip(("bench", "hub_a", "hub_b"), used, strict=True):
            result[f"cpu_{label}_during_tls_pct"] = round(100 * cpu / seconds, 1)
        result["tls_capacity_s"] = round(seconds, 3)
        result["tls_failures"] = failures
        result["listen_overflows_during_tls"] = _listen_overflows() - overflows

        stop_capture.set()
        await capture_task
        result["drain_s"] = round(await _drain(fleet, deadline), 2)
        result["buffered_after_drain"] = sum(spool.buffered for spool in fleet.spools)
        for name, hub in (("a", hub_a), ("b", hub_b)):
            counters = (await asyncio.to_thread(hub.status))["counters"]
            result[f"hub_{name}_redirects_sent"] = counters["redirects_sent"]
            result[f"hub_{name}_frames_duplicate_refused"] = counters["frames_duplicate"]
            result[f"hub_{name}_rejected"] = counters["connections_rejected"]
        result["redirects_followed"] = _counter_sum(fleet, "redirects_followed")
        result["redirects_refused"] = _counter_sum(fleet, "redirects_refused")
        result["failovers"] = _counter_sum(fleet, "failovers")
        result["frames_resent"] = _counter_sum(fleet, "frames_resent")
    finally:
        stop_capture.set()
        if capture_task is not None:
            with contextlib.suppress(Exception):
                await capture_task
        await asyncio.gather(*(d.stop() for d in fleet.daemons), return_exceptions=True)
        for spool in fleet.spools:
            spool.close()
        transport.close()
        for hub in hubs:
            await asyncio.to_thread(_stop_hub, hub)
    captured, lost, duplicated, per_hub = _count_frames(
        hubs, [d.identifier for d in fleet.daemons], fleet
    )
    result["frames_captured"] = captured
    result["frames_lost"] = lost
    result["frames_duplicated"] = duplicated
    result["frames_stored_a"], result["frames_stored_b"] = per_hub


def _table(result: dict[str, Any]) -> Table:
    table = Table(title=f"Handover of {result['devices']} devices from hub A to hub B")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    rows = [
        ("handover (B's first announcement → all devices on B)", "handover_s", "s"),
        ("  of which protocol hold-down", "hold_down_s", "s"),
        ("handover after hold-down", "handover_after_holddown_s", "s"),
        ("first device on B (after B's first announcement)", "first_device_on_b_s", "s"),
        ("raw mutual-TLS handshakes ×N to hub B", "tls_capacity_s", "s"),
        ("ratio (after hold-down / raw TLS)", "ratio", "×"),
        ("frames captured", "frames_captured", ""),
        ("frames lost", "frames_lost", ""),
        ("frames duplicated", "frames_duplicated", ""),
        ("frames stored on A / on B", "frames_stored", ""),
        ("redirects sent by A / followed by devices", "redirects", ""),
        ("initial connect of all devices to A", "initial_connect_s", "s"),
        ("drain after capture stopped", "drain_s", "s"),
        ("total run", "total_s", "s"),
    ]
    derived = {
        "frames_stored": f"{result.get('frames_stored_a')} / {result.get('frames_stored_b')}",
        "redirects": f"{result.get('hub_a_redirects_sent')} / {result.get('redirects_followed')}",
    }
    for label, key, unit in rows:
        value = derived.get(key, result.get(key))
        table.add_row(label, f"{value}{(' ' + unit) if unit and value is not None else ''}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--fps", type=float, default=0.25, help="frames per second per device")
    parser.add_argument("--batch", type=int, default=64, help="redirect batch size")
    parser.add_argument("--spacing", type=float, default=0.02, help="redirect batch spacing")
    parser.add_argument("--settle", type=float, default=2.0, help="streaming to A before B")
    parser.add_argument("--timeout", type=float, default=240.0, help="overall bound, seconds")
    args = parser.parse_args()
    if args.devices < 1 or args.fps <= 0 or args.batch < 1 or args.spacing < 0:
        parser.error("--devices must be >= 1 and --fps > 0")
    started = time.monotonic()
    result: dict[str, Any] = {"devices": args.devices, "fps": args.fps}
    result["fd_limit"] = _raise_fd_limit()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with state_dir("roost-handover-") as home:
        try:
            asyncio.run(asyncio.wait_for(_run(args, home, result), args.timeout + 60))
        finally:
            _PROCESSES.kill_all()
    result["hold_down_s"] = _HOLD_DOWN
    result["redirect_batch"] = args.batch
    result["redirect_spacing_s"] = args.spacing
    if result.get("tls_capacity_s"):
        result["ratio"] = round(result["handover_after_holddown_s"] / result["tls_capacity_s"], 2)
        result["ratio_including_holddown"] = round(
            result["handover_s"] / result["tls_capacity_s"], 2
        )
    result["total_s"] = round(time.monotonic() - started, 1)
    result.update(machine_facts())
    print_result(result, _table(result))


if __name__ == "__main__":
    main()
