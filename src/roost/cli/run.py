"""`roost hub …` and `roost device …`: the daemons, wired to real sockets and files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from cryptography.hazmat.primitives.serialization import Encoding

from roost.cli.common import RoostGroup, echo_json, fail_cleanly
from roost.cli.daemons import follow_own_certificate, run_device, run_until_signalled
from roost.cli.logsetup import configure_logging, log_options
from roost.cli.names import home_names, label
from roost.cli.preflight import check_identity, check_listeners, lock_state_folder
from roost.config import HubConfig, load_device_config, load_hub_config
from roost.errors import ConfigError, StateError, TransportError
from roost.pki.certs import Role, certs_from_pem, key_from_pem
from roost.pki.updater import TrustUpdater
from roost.reasons import Reason

if TYPE_CHECKING:
    # The hub's modules load inside the hub's commands only: a device agent that imported
    # them would carry the guard, the recorder and the hub daemon it never runs
    # (docs/BENCHMARKS.md, "Soak and footprint").
    from roost.hub.daemon import HubDaemon
    from roost.hub.recorder import Recorder

__all__ = [
    "build_hub_daemon",
    "configure_logging",
    "device",
    "hub",
    "print_hub_status",
    "run_until_signalled",
    "start_hub_dashboard",
    "use_fast_loop",
]

if TYPE_CHECKING:
    from roost.hub.dashboard import Dashboard

log = logging.getLogger("roost.cli")


def build_hub_daemon(
    config: HubConfig, trust: TrustUpdater, recorder: Recorder, rng: random.Random | None = None
) -> HubDaemon:
    """Load the hub's certificate and key from the config's files and wire a HubDaemon.

    The daemon reads no files itself: this is where they are read (the CLI is the
    composition root).
    """
    from roost.hub.daemon import HubDaemon
    from roost.hub.peers import PEER_ALPN
    from roost.pki.tls import ReloadableServerContext

    return HubDaemon(
        config,
        trust,
        recorder,
        certificate=certs_from_pem(config.cert.read_bytes())[0],
        private_key=key_from_pem(config.key.read_bytes()),
        # ALPN lets a peer hub's dashboard reach this listener (roost.hub.peers).
        tls=ReloadableServerContext(
            config.cert, config.key, trust.state.anchors, alpn=(PEER_ALPN,)
        ),
        rng=rng,
    )


def use_fast_loop() -> None:
    """Run the daemon on uvloop where it is installed, with connection buffers returned
    to the system when connections end (``roost.admission.return_connection_buffers``)."""
    from roost.admission import return_connection_buffers

    return_connection_buffers()
    # uvloop receives UDP about ten times faster than the default loop (STYLE.md).
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@click.group(cls=RoostGroup)
def hub() -> None:
    """The home hub: records cameras, announces itself, hands devices over."""


@hub.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@log_options
@fail_cleanly
def hub_run(config_file: Path, log_level: str, log_format: str, verbose: bool) -> None:
    """Run a hub until SIGINT/SIGTERM (one per state folder)."""
    from roost.guard.aio import GuardServer
    from roost.guard.log import SqliteMerkleLog
    from roost.hub.api import start_api
    from roost.hub.recorder import Recorder
    from roost.hub.remote import build_guard_server, start_remote
    from roost.hub.runfile import HubRunState, remove_run_file, write_run_file
    from roost.rendezvous.agent_aio import BrokerAgent

    configure_logging(log_level, log_format)
    config = load_hub_config(config_file)
    check_identity(config.source, config.cert, config.key, Role.HUB)
    # Held until the process ends: a second hub on this folder is refused (docs/operating.md).
    lock_state_folder(config.state_dir, "roost hub run")
    where = config.source.name if config.source else "the config"
    check_listeners(
        [
            (f"device channel (listen in {where})", "tcp", config.listen),
            (f"status API (api in {where})", "tcp", config.api),
            *(
                [(f"remote entrance (remote in {where})", "tcp", config.remote)]
                if config.remote
                else []
            ),
        ]
    )
    trust = TrustUpdater(config.trust_dir)
    follow_own_certificate(trust, config.cert)
    recorder = Recorder(config.state_dir / "recordings", config.retention_bytes)
    daemon = build_hub_daemon(config, trust, recorder)
    runners = []
    remote: list[tuple[GuardServer, SqliteMerkleLog]] = []
    agents: list[BrokerAgent] = []
    dashboards: list[Dashboard] = []
    token = _read_token(config.api_token_file)

    async def start() -> None:
        await daemon.start()
        runners.append(
            await start_api(daemon, *config.api, token=token, admission=daemon.admission)
        )
        if config.dashboard is not None:
            dashboards.append(await start_hub_dashboard(daemon, config))
        remote_address = None
        if config.remote is not None or config.broker is not None:
            # One guard server for the TCP remote entrance and the broker's QUIC sessions:
            # the same users, calls and Merkle log (docs/broker.md, "Running it").
            remote.append(build_guard_server(daemon))
            daemon.guard = remote[0][0]
        if config.remote is not None:
            await start_remote(daemon, guard=remote[0])
            remote_address = (config.remote[0], remote[0][0].bound_port)
        if config.broker is not None:
            await remote[0][0].open()
            agent = BrokerAgent(
                config.broker,
                identifier=daemon.identifier,
                certificate=daemon.certificate,
                certificate_der=daemon.certificate.public_bytes(Encoding.DER),
                private_key=key_from_pem(config.key.read_bytes()),
                cert_file=config.cert,
                key_file=config.key,
                trust=trust,
                guard=remote[0][0],
            )
            await agent.start()
            agents.append(agent)
            daemon.broker_status = agent.status
        await daemon.start_dns_sd(api_port=runners[0].bound_port)
        # Every listener may be configured with port 0: report the ports really bound,
        # on stdout and in run.json, once all of them are (docs/testing.md).
        state = HubRunState(
            pid=os.getpid(),
            listen=daemon.bound_address,
            advertise=(daemon.advertised.host, daemon.advertised.port),
            api=(config.api[0], runners[0].bound_port),
            remote=remote_address,
            dashboard=(
                (dashboards[0].options.listen[0], dashboards[0].bound_port) if dashboards else None
            ),
            dashboard_scheme="https" if not dashboards or dashboards[0].tls else "http",
        )
        write_run_file(config.run_file, state)
        echo_json({"hub": daemon.identifier, **json.loads(state.to_json())})
        log.info(
            "hub %s (%s) ready: devices %s:%s, api %s:%s",
            config.name,
            daemon.identifier,
            *state.listen,
            *state.api,
            extra={"event": "ready"},
        )

    async def stop() -> None:
        remove_run_file(config.run_file)
        for agent in agents:
            await agent.stop()
        for dashboard in dashboards:
            await dashboard.stop()
        for runner in runners:
            await runner.cleanup()
        for server, merkle_log in remote:
            await server.stop()
            merkle_log.close()
        await daemon.stop()
        recorder.close()

    use_fast_loop()
    asyncio.run(run_until_signalled(start, stop, trust.poll))


def _read_token(path: Path | None) -> str | None:
    """The admin API's bearer token from its file (one line), or None without one."""
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read api_token_file {path}: {exc}") from exc
    if len(token) < 16:
        raise ConfigError(f"the token in {path} is shorter than 16 characters")
    return token


async def start_hub_dashboard(daemon: HubDaemon, config: HubConfig) -> Dashboard:
    """Start the home's web app of a hub from its ``[dashboard]`` table."""
    from roost.hub.dashboard import DashboardOptions, start_dashboard
    from roost.hub.eventlog import EventRetention
    from roost.hub.websession import WebSessionConfig

    settings = config.dashboard
    assert settings is not None
    options = DashboardOptions(
        listen=settings.listen,
        plain_http=settings.plain_http,
        sessions=WebSessionConfig(idle_s=settings.idle_s, absolute_s=settings.absolute_s),
        retention=EventRetention(
            max_rows=settings.event_max_rows,
            max_age_ms=int(settings.event_max_days * 86_400_000),
        ),
    )
    return await start_dashboard(
        daemon,
        options,
        state_dir=config.state_dir,
        cert_file=config.cert,
        key_file=config.key,
    )


@hub.command("status")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def hub_status(config_file: Path, as_json: bool) -> None:
    """Ask a running hub for its status (its HTTP API)."""
    config = load_hub_config(config_file)
    from roost.hub.api import fetch_status

    host, port = _api_address(config)
    try:
        doc = fetch_status(host, port, token=_read_token(config.api_token_file))
    except OSError as exc:
        # Nothing answered: unreachable (docs/exit-codes.md), whether it is down or elsewhere.
        raise TransportError(
            f"hub is not answering at {host}:{port}: {exc}", reason=Reason.NOT_RUNNING
        ) from exc
    if as_json:
        echo_json(doc)
        return
    print_hub_status(doc, home_names(config_file.resolve().parent))


def print_hub_status(doc: dict[str, Any], names: dict[str, str]) -> None:
    """The hub's status document as a person reads it (names next to identifiers)."""
    from roost.cli.human import print_fields, print_table, relative

    elected = doc.get("winner") == doc.get("id")
    broker = doc.get("broker") or {}
    remote = doc.get("remote") or {}
    counters = doc.get("counters") or {}
    print_fields(
        f"Hub {doc.get('name')} ({doc.get('id')})",
        [
            (
                "state",
                "elected hub" if elected else f"standing by for {label(doc.get('winner'), names)}",
            ),
            ("endpoint", doc.get("endpoint")),
            ("features", doc.get("features")),
            ("up for", relative(0.0, float(doc.get("uptime_s") or 0)).removesuffix(" ago")),
            ("devices", f"{len(doc.get('connected') or [])} of {doc.get('max')}"),
            ("frames stored", counters.get("frames_stored")),
            ("trust", f"generation {(doc.get('trust') or {}).get('current')}"),
            (
                "remote entrance",
                f"{remote.get('active', 0)} open, {remote.get('logins_ok', 0)} logins"
                if remote
                else "off",
            ),
            ("broker", broker.get("state") if broker else "off"),
        ],
    )
    connected = doc.get("connected") or []
    # The names the devices' hellos gave label what the home's config files do not name
    # (a hub asked from another machine); the local files win where both name a device.
    hello_names = doc.get("connected_names")
    if isinstance(hello_names, dict):
        names = {**{k: v for k, v in hello_names.items() if isinstance(v, str)}, **names}
    if connected:
        print_table("Connected devices", ("device",), [(label(d, names),) for d in connected])
    hubs = doc.get("hubs") or []
    if hubs:
        rows = [
            (
                label(h.get("id"), names) + (" (this hub)" if h.get("self") else ""),
                h.get("rank"),
                h.get("endpoint"),
                f"{h.get('connected')} of {h.get('max')}",
                "-" if h.get("self") else relative(-float(h.get("last_seen_s_ago") or 0), 0.0),
            )
            for h in hubs
        ]
        print_table("Hubs seen", ("hub", "rank", "endpoint", "devices", "last heard"), rows)


def _api_address(config: HubConfig) -> tuple[str, int]:
    """The configured API address, or the bound one from run.json when configured as port 0."""
    from roost.hub.runfile import read_run_file

    if config.api[1] != 0:
        return config.api
    try:
        run_state = read_run_file(config.run_file)
    except StateError as exc:
        if exc.reason != Reason.NOT_RUNNING:
            raise
        # No run file: the hub never finished starting, or it stopped (docs/exit-codes.md).
        raise TransportError(
            f"hub {config.name} is not running (no {config.run_file})", reason=Reason.NOT_RUNNING
        ) from exc
    if not _alive(run_state.pid):
        # A hub killed without its clean stop leaves run.json behind (roost.hub.runfile).
        raise TransportError(
            f"hub {config.name} is not running ({config.run_file} is left by process"
            f" {run_state.pid}, which is gone)",
            reason=Reason.NOT_RUNNING,
        )
    return run_state.api


@click.group(cls=RoostGroup)
def device() -> None:
    """A camera: captures frames and streams them to the best trusted hub."""


@device.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@log_options
@fail_cleanly
def device_run(config_file: Path, log_level: str, log_format: str, verbose: bool) -> None:
    """Run a camera until SIGINT/SIGTERM (one per state folder)."""
    # The same function runs a plain `roost device run` without click (roost.cli.entry).
    run_device(config_file, log_level, log_format, verbose)


@device.command("status")
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
@fail_cleanly
def device_status(config_file: Path, as_json: bool) -> None:
    """Show what the device last reported (hub, state, last acked seq, buffered)."""
    from roost.cli.human import print_fields, relative

    config = load_device_config(config_file)
    try:
        doc = json.loads(config.status_file.read_bytes())
    except FileNotFoundError as exc:
        raise StateError(f"{config.name} has not run yet", reason=Reason.NOT_RUNNING) from exc
    except ValueError as exc:
        raise StateError(f"{config.status_file} is not JSON: {exc}", reason=Reason.CORRUPT) from exc
    if not isinstance(doc, dict):
        raise StateError(f"{config.status_file} is not a status document", reason=Reason.CORRUPT)
    written_at = float(doc.get("written_at", 0))
    doc["age_s"] = round(time.time() - written_at, 1)
    doc["running"] = bool(doc.get("running", True)) and _alive(doc.get("pid"))
    if as_json:
        echo_json(doc)
        return
    names = home_names(config_file.resolve().parent)
    title = f"Device {doc.get('name')} ({doc.get('id')})"
    if not doc["running"]:
        click.echo(
            f"{title} is not running (last status {relative(written_at, time.time())});"
            f" start it with `roost device run --config {config_file}`"
        )
        return
    print_fields(
        title,
        [
            ("state", doc.get("state")),
            ("hub", label(doc.get("hub"), names)),
            ("hub endpoint", doc.get("hub_endpoint")),
            ("last acked frame", doc.get("last_acked_seq")),
            ("buffered", f"{doc.get('buffered')} frames, {doc.get('buffered_bytes')} bytes"),
            ("dropped", doc.get("dropped")),
            ("camera", _camera_line(doc.get("camera"))),
            ("trust", f"generation {(doc.get('trust') or {}).get('current')}"),
            ("status written", relative(written_at, time.time())),
        ],
    )


def _alive(pid: object) -> bool:
    """Whether a process of that pid exists (a status file without a pid counts as alive)."""
    if not isinstance(pid, int) or isinstance(pid, bool):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _camera_line(camera: object) -> str:
    """The camera source and its health, as the status file's ``camera`` object has them."""
    if not isinstance(camera, dict):
        return "-"
    state = camera.get("state")
    if state == "failing":
        state = f"failing: {camera.get('reason')} ({camera.get('detail')})"
    return f"{camera.get('source')} {state}"
