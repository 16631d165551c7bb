"""Soak and footprint: many cameras against two hubs for a long time, with handovers.

Two real hub processes on loopback; ``--devices`` cameras (default 1,000) driven by a few
worker processes, each camera a real device channel (``roost.device.channel``: the
device's TLS adapter over ``DeviceChannelCore``) with its own certificate, streaming small
frames at ``--fps``; every ``--handover-every`` seconds a share of the cameras drains its
channel and moves to the other hub, and a hub's redirect is followed the same way. Next to
them one real device agent (``roost device run``) streams with its synthetic camera, for
the agent's own footprint.

Sampled every ``--sample-every`` seconds: each hub's RSS and open descriptors, the agent's
RSS. "Flat" compares the mean of the last fifth of the run with the first sample after
warm-up (``--warmup`` seconds). At the end every camera drains, and its frames are looked
up in both hubs' recordings: everything acknowledged must be stored (``lost`` is 0).

    PYTHONPATH=src .venv/bin/python bench/soak.py --duration 180
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.table import Table

from _common import HubProcesses, bound_addresses, machine_facts, print_result, state_dir
from roost.channel import ChannelCoreConfig
from roost.cli.home import make_home
from roost.config import load_device_config
from roost.device.channel import HubChannel, open_hub_channel
from roost.hub.recorder import Recorder
from roost.pki.certs import certs_from_pem, identifier_of
from roost.pki.tls import client_context
from roost.pki.updater import TrustUpdater

# The payload every simulated frame carries: a JPEG's first and last bytes around filler,
# about the size of a small 320x240 frame.
_PAYLOAD_SIZE = 4096


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="load-generator processes")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of streaming")
    parser.add_argument("--fps", type=float, default=0.5, help="frames/s per simulated camera")
    parser.add_argument("--agent-fps", type=float, default=10.0, help="the real agent's fps")
    parser.add_argument("--handover-every", type=float, default=30.0)
    parser.add_argument("--handover-share", type=float, default=0.1)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--ramp", type=float, default=20.0, help="seconds over which cameras start")
    parser.add_argument(
        "--keep-logs",
        type=Path,
        default=None,
        help="copy the hubs' and the agent's logs here before the run's directory is removed",
    )
    parser.add_argument(
        "--smaps-every",
        type=float,
        default=0.0,
        help="with --keep-logs: copy the agent's /proc/PID/smaps and its sockets (ss -tnp)"
        " into DIR/smaps/ every this many seconds, to see which mapping a step comes from",
    )
    parser.add_argument(
        "--retention-mb",
        type=int,
        default=0,
        help="each hub's retention (default: room for every frame of the run, so that a frame"
        " missing from the recordings is a loss, not an eviction)",
    )
    # Internal: one load-generator worker.
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hubs", default="", help=argparse.SUPPRESS)
    return parser.parse_args()


# ------------------------------------------------------------------------- the worker


class _Camera:
    """One simulated camera: a real device channel, frames at a fixed rate, handovers."""

    def __init__(self, home: Path, index: int, hubs: list[tuple[str, int]]) -> None:
        config = load_device_config(home / f"device-{index}.toml")
        self.index = index
        self.anchors = TrustUpdater(config.trust_dir).state.anchors
        self.context = client_context(self.anchors, config.cert, config.key)
        self.identifier = identifier_of(certs_from_pem(config.cert.read_bytes())[0])
        self.hubs = hubs
        self.hub = index % len(hubs)
        self.next_seq = 1
        self.acked = 0
        self.handovers = 0
        self.reconnects = 0
        self.errors: Counter[str] = Counter()
        self.move = asyncio.Event()

    async def _open(self) -> HubChannel:
        host, port = self.hubs[self.hub]

        async def verify(leaf: Any) -> str:
            return identifier_of(leaf)

        def on_ack(seq: int) -> None:
            self.acked = max(self.acked, seq)

        return await open_hub_channel(
            host,
            port,
            ssl_context=self.context,
            verify=verify,
            device_id=self.identifier,
            last_acked=self.acked,
            config=ChannelCoreConfig(),
            on_ack=on_ack,
            on_ignored=lambda reason: None,
            connect_timeout=15.0,
        )

    async def run(self, fps: float, until: float, payload: bytes, ramp: float) -> None:
        loop = asyncio.get_running_loop()
        # Cameras power up over ``ramp`` seconds, not in one instant.
        await asyncio.sleep(random.random() * ramp)
        backoff = 0.5
        while loop.time() < until:
            try:
                channel = await self._open()
            except Exception as exc:
                self.errors[type(exc).__name__] += 1
                self.hub = (self.hub + 1) % len(self.hubs)
                # Jittered exponential back-off, as the device's connection manager does.
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 8.0)
                continue
            backoff = 0.5
            # Whatever the last hub did not acknowledge is sent again, in order.
            for seq in range(self.acked + 1, self.next_seq):
                channel.send_frame(seq, int(time.time() * 1000), "image/jpeg", payload)
            self.move.clear()
            while loop.time() < until and channel.sending and not self.move.is_set():
                if not channel.redirects.empty():
                    break
                channel.send_frame(self.next_seq, int(time.time() * 1000), "image/jpeg", payload)
                self.next_seq += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.move.wait(), 1.0 / fps)
            moving = self.move.is_set() or not channel.redirects.empty()
            await channel.drain_and_close()
            if moving:
                self.handovers += 1
            else:
                self.reconnects += 1
            if moving or loop.time() < until:
                self.hub = (self.hub + 1) % len(self.hubs)
        # The run is over: one last channel for anything still unacknowledged.
        for _ in range(10):
            if self.acked >= self.next_seq - 1:
                break
            try:
                channel = await self._open()
                for seq in range(self.acked + 1, self.next_seq):
                    channel.send_frame(seq, int(time.time() * 1000), "image/jpeg", payload)
                await channel.drain_and_close()
            except Exception as exc:
                self.errors[type(exc).__name__] += 1
                self.hub = (self.hub + 1) % len(self.hubs)
                await asyncio.sleep(0.5)


async def _worker(args: argparse.Namespace) -> None:
    hubs = [(host, int(port)) for host, port in (a.rsplit(":", 1) for a in args.hubs.split(","))]
    cameras = [_Camera(args.worker, i, hubs) for i in range(args.first, args.first + args.count)]
    payload = b"\xff\xd8" + bytes(_PAYLOAD_SIZE - 4) + b"\xff\xd9"
    loop = asyncio.get_running_loop()
    until = loop.time() + args.duration

    async def handovers() -> None:
        while loop.time() < until - args.handover_every:
            await asyncio.sleep(args.handover_every)
            for camera in random.sample(cameras, int(len(cameras) * args.handover_share)):
                camera.move.set()

    mover = asyncio.create_task(handovers())
    await asyncio.gather(*(camera.run(args.fps, until, payload, args.ramp) for camera in cameras))
    mover.cancel()
    result = {
        camera.identifier: {
            "sent": camera.next_seq - 1,
            "acked": camera.acked,
            "handovers": camera.handovers,
            "reconnects": camera.reconnects,
            "errors": dict(camera.errors),
        }
        for camera in cameras
    }
    sys.stdout.write(json.dumps(result) + "\n")


# ---------------------------------------------------------------------- the conductor


def _status_fields(pid: int, names: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/PID/status (kB for the memory ones, a count for ``Threads``)."""
    found: dict[str, int] = dict.fromkeys(names, 0)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in found:
                found[name] = int(value.split()[0])
    return found


def _rss_kb(pid: int) -> int:
    return _status_fields(pid, ("VmRSS",))["VmRSS"]


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _snapshot_mappings(pid: int, directory: Path, at_s: float) -> None:
    """The agent's mappings and its TCP sockets at ``at_s`` seconds into the run."""
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        # Read, not copied: procfs files report size 0, which sendfile-based copies trust.
        (directory / f"{at_s:07.0f}.smaps").write_bytes(Path(f"/proc/{pid}/smaps").read_bytes())
    sockets = subprocess.run(
        ["ss", "-tnpi", "state", "all"], capture_output=True, text=True, check=False
    ).stdout
    mine = [line for line in sockets.splitlines() if f"pid={pid}," in line]
    (directory / f"{at_s:07.0f}.ss").write_text("\n".join(mine) + "\n")


def _flat(samples: list[float], warm_index: int) -> dict[str, float]:
    after = samples[warm_index:] or samples[-1:]
    tail = after[-max(1, len(after) // 5) :]
    start, end = after[0], sum(tail) / len(tail)
    return {
        "after_warmup": round(start, 1),
        "end": round(end, 1),
        "max": round(max(after), 1),
        "growth_pct": round(100.0 * (end - start) / start, 2) if start else 0.0,
    }


def main() -> None:
    args = _arguments()
    if args.worker is not None:
        asyncio.run(_worker(args))
        return
    root = Path(__file__).resolve().parents[1]
    hubs = HubProcesses()
    agent: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[str]] = []
    with state_dir("roost-soak-") as base:
        home = base / "home"
        started = time.monotonic()
        make_home(home, 2, args.devices + 1, True, args.devices + 16, args.agent_fps)
        retention_mb = args.retention_mb or _retention_for_run(args)
        for i in (1, 2):
            config = home / f"hub-{i}.toml"
            config.write_text(
                config.read_text().replace("retention_mb = 512", f"retention_mb = {retention_mb}")
            )
        made_s = time.monotonic() - started
        try:
            processes = [hubs.start(home / f"hub-{i}.toml", base / f"hub-{i}.log") for i in (1, 2)]
            addresses = []
            for i, process in enumerate(processes, start=1):
                deadline = time.monotonic() + 60
                while (state := bound_addresses(home / f"hub-{i}.toml", process)) is None:
                    if time.monotonic() > deadline:
                        raise SystemExit(
                            f"hub-{i} did not start: {(base / f'hub-{i}.log').read_text()}"
                        )
                    time.sleep(0.2)
                addresses.append(f"{state.listen[0]}:{state.listen[1]}")
            agent_name = f"device-{args.devices + 1}"
            env = {**os.environ, "PYTHONPATH": str(root / "src")}
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "roost",
                    "device",
                    "run",
                    "--config",
                    str(home / f"{agent_name}.toml"),
                ],
                stdout=(base / "agent.log").open("ab"),
                stderr=subprocess.STDOUT,
                env=env,
            )
            share = -(-args.devices // args.workers)
            for w in range(args.workers):
                first = 1 + w * share
                count = min(share, args.devices - w * share)
                if count <= 0:
                    break
                workers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--worker",
                            str(home),
                            "--first",
                            str(first),
                            "--count",
                            str(count),
                            "--hubs",
                            ",".join(addresses),
                            "--duration",
                            str(args.duration),
                            "--fps",
                            str(args.fps),
                            "--handover-every",
                            str(args.handover_every),
                            "--handover-share",
                            str(args.handover_share),
                            "--ramp",
                            str(args.ramp),
                        ],
                        stdout=subprocess.PIPE,
                        stderr=(base / f"worker-{w}.log").open("ab"),
                        text=True,
                        env=env,
                    )
                )
            samples: dict[str, list[float]] = {
                "hub_rss": [],
                "hub_fds": [],
                "fds_total": [],
                "agent_rss": [],
                "agent_anon": [],
                "agent_file": [],
                "agent_threads": [],
            }
            times: list[float] = []
            t0 = time.monotonic()
            next_snapshot = 0.0

            # With --devices 0 only the agent streams (its own hour-long footprint run):
            # sample for --duration then.
            def running() -> bool:
                if workers:
                    return any(worker.poll() is None for worker in workers)
                return time.monotonic() - t0 < args.duration

            while running():
                times.append(time.monotonic() - t0)
                samples["hub_rss"].append(max(_rss_kb(p.pid) for p in processes) / 1024)
                descriptors = [_descriptors(p.pid) for p in processes]
                samples["hub_fds"].append(max(descriptors))
                samples["fds_total"].append(sum(descriptors))
                # The agent's RSS split into anonymous and file-backed pages, and its
                # threads: a step in RSS then shows whether it is heap or a new thread.
                fields = _status_fields(agent.pid, ("VmRSS", "RssAnon", "RssFile", "Threads"))
                samples["agent_rss"].append(fields["VmRSS"] / 1024)
                samples["agent_anon"].append(fields["RssAnon"] / 1024)
                samples["agent_file"].append(fields["RssFile"] / 1024)
                samples["agent_threads"].append(fields["Threads"])
                if args.smaps_every and args.keep_logs and times[-1] >= next_snapshot:
                    _snapshot_mappings(agent.pid, args.keep_logs / "smaps", times[-1])
                    next_snapshot = times[-1] + args.smaps_every
                time.sleep(args.sample_every)
            cameras: dict[str, dict[str, Any]] = {}
            for worker in workers:
                out, _ = worker.communicate(timeout=120)
                cameras.update(json.loads(out.strip().splitlines()[-1]))
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(20)
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            hubs.kill_all()
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in base.glob("*.log"):
                    shutil.copy2(log, args.keep_logs / log.name)
        recorders = [Recorder(home / f"hub-{i}" / "recordings", 1 << 40) for i in (1, 2)]
        sent = acked = stored = lost = duplicated = evicted = 0
        try:
            for identifier, camera in cameras.items():
                seen: Counter[int] = Counter()
                for recorder in recorders:
                    seen.update(recorder.seqs(identifier))
                sent += camera["sent"]
                acked += camera["acked"]
                stored += len(seen)
                duplicated += sum(c - 1 for c in seen.values())
                # A frame retention dropped is not a loss: it is missing at or below the
                # highest seq a hub evicted for this camera (the default --retention-mb
                # leaves room for every frame, so then nothing is evicted and this is exact).
                marks = [recorder.evicted_through(identifier) or 0 for recorder in recorders]
                missing = [s for s in range(1, camera["acked"] + 1) if s not in seen]
                dropped = sum(1 for s in missing if s <= max(marks))
                evicted += dropped
                lost += len(missing) - dropped
        finally:
            for recorder in recorders:
                recorder.close()
    # Warm-up ends at --warmup seconds and once every camera has connected: the first
    # sample at which both hubs together hold 90 % of the most descriptors seen.
    peak_fds = max(samples["fds_total"] or [0])
    warm = next(
        (
            i
            for i, t in enumerate(times)
            if t >= args.warmup and samples["fds_total"][i] >= 0.9 * peak_fds
        ),
        max(0, len(times) - 1),
    )
    hub_rss, hub_fds = _flat(samples["hub_rss"], warm), _flat(samples["hub_fds"], warm)
    agent_rss = _flat(samples["agent_rss"], warm)
    handovers = sum(c["handovers"] for c in cameras.values())
    table = Table(title=f"soak: {len(cameras)} cameras, {args.duration:.0f} s, two hubs")
    for column in ("what", "after warm-up", "end", "max", "growth"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row("hub RSS (MB, larger hub)", *_row(hub_rss))
    table.add_row("hub descriptors", *_row(hub_fds))
    table.add_row("device agent RSS (MB)", *_row(agent_rss))
    table.add_row("frames sent / acked / stored", f"{sent:,}", f"{acked:,}", f"{stored:,}", "")
    table.add_row("lost / duplicated / handovers", str(lost), str(duplicated), f"{handovers:,}", "")
    table.add_row(
        "retention per hub (MB) / frames evicted",
        str(retention_mb),
        f"{evicted:,}",
        "",
        "",
    )
    print_result(
        {
            "benchmark": "soak",
            "devices": len(cameras),
            "duration_s": args.duration,
            "fps": args.fps,
            "home_setup_s": round(made_s, 1),
            "frames_sent": sent,
            "frames_acked": acked,
            "frames_stored": stored,
            "frames_lost": lost,
            "frames_duplicated": duplicated,
            "retention_mb_per_hub": retention_mb,
            "frames_evicted": evicted,
            "handovers": handovers,
            "reconnects": sum(c["reconnects"] for c in cameras.values()),
            "camera_errors": dict(sum((Counter(c["errors"]) for c in cameras.values()), Counter())),
            "hub_rss_mb": hub_rss,
            "hub_fds": hub_fds,
            "agent_rss_mb": agent_rss,
            "agent_rss_goal_mb": 48,
            "samples": len(times),
            "warmup_ended_s": round(times[warm], 1) if times else None,
            "series": {
                "t_s": [round(t) for t in times],
                "hub_rss_mb": [round(v, 1) for v in samples["hub_rss"]],
                "hub_fds": samples["hub_fds"],
                "fds_total": samples["fds_total"],
                "agent_rss_mb": [round(v, 1) for v in samples["agent_rss"]],
                "agent_rss_anon_mb": [round(v, 1) for v in samples["agent_anon"]],
                "agent_rss_file_mb": [round(v, 1) for v in samples["agent_file"]],
                "agent_threads": samples["agent_threads"],
            },
            "machine": machine_facts(),
        },
        table,
    )


def _retention_for_run(args: argparse.Namespace) -> int:
    """Room on each hub for every frame of the run (either hub may get all of them), with
    half again for the recorder's files and index."""
    frames = args.devices * args.fps * (args.duration + args.ramp)
    return max(512, int(frames * _PAYLOAD_SIZE * 1.5 / (1 << 20)) + 1)


def _row(figures: dict[str, float]) -> tuple[str, str, str, str]:
    return (
        f"{figures['after_warmup']:,}",
        f"{figures['end']:,}",
        f"{figures['max']:,}",
        f"{figures['growth_pct']:+.1f} %",
    )


if __name__ == "__main__":
    main()
