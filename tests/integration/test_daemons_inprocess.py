"""Hub and device daemons in one event loop on loopback: what must be refused is refused,
counted, and moves no camera."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from roost.cli.demo_home import rogue_hub_config
from roost.cli.home import make_home
from roost.cli.run import build_hub_daemon
from roost.config import HubConfig, load_device_config, load_hub_config
from roost.device.daemon import DeviceDaemon, read_own_certificate
from roost.device.spool import FrameSpool
from roost.device.status import DeviceStatus
from roost.errors import StateError
from roost.hcsp.documents import Endpoint, HubAddress
from roost.hub.api import start_api
from roost.hub.daemon import HubDaemon
from roost.hub.recorder import Recorder
from roost.hub.status import HubStatus
from roost.pki.updater import TrustUpdater, UpdateConfig
from roost.reasons import Reason
from tests.helpers.net import free_port
from tests.helpers.waits import async_wait_until, scaled

pytestmark = pytest.mark.timeout(60)
NO_FETCH = UpdateConfig(fetch_timeout=0.5)


def _hub(config: HubConfig) -> HubDaemon:
    trust = TrustUpdater(config.trust_dir, config=NO_FETCH)
    return build_hub_daemon(config, trust, Recorder(config.state_dir / "recordings", 1 << 30))


async def _until(what: str, condition: Callable[[], object], seconds: float = 15.0) -> None:
    await async_wait_until(condition, seconds, what=what)


@dataclasses.dataclass
class Scene:
    path: Path
    hub: HubDaemon
    device: DeviceDaemon


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    make_home(tmp_path, hubs=2, devices=1, loopback=True, fps=5.0)
    hub = _hub(load_hub_config(tmp_path / "hub-1.toml"))
    device_config = load_device_config(tmp_path / "device-1.toml")
    device = DeviceDaemon(
        device_config,
        TrustUpdater(device_config.trust_dir, config=NO_FETCH),
        FrameSpool(None, 1000, 1 << 26),
        read_own_certificate(device_config),
    )
    await hub.start()
    await device.start()
    try:
        await _until("camera on hub-1", lambda: device.channel is not None)
        yield Scene(tmp_path, hub, device)
    finally:
        await device.stop()
        await hub.stop()


async def test_a_hub_configured_with_port_0_announces_the_port_it_bound(scene: Scene) -> None:
    # `roost init --loopback` leaves every hub TCP port to the kernel.
    assert scene.hub.config.listen[1] == scene.hub.config.advertise[1] == 0
    port = scene.hub.bound_port
    assert port > 0 and scene.hub.bound_address == ("127.0.0.1", port)
    assert scene.hub.advertised == Endpoint("127.0.0.1", port)
    assert scene.hub.status().endpoint == f"127.0.0.1:{port}"
    # The camera knew no hub port: it dialled the one the verified announcement named.
    now = asyncio.get_running_loop().time()
    heard = {hub.identifier: hub.endpoint for hub in scene.device.core.live_hubs(now)}
    assert heard == {scene.hub.identifier: Endpoint("127.0.0.1", port)}

    # A fixed advertise port (one forwarded to this hub, say) is announced as configured,
    # whatever the listener bound. Fewer features keep hub-1 the winner, so nobody dials it.
    config = load_hub_config(scene.path / "hub-2.toml")
    forwarded = dataclasses.replace(config, advertise=("127.0.0.1", 40000), features=("hcsp",))
    other = _hub(forwarded)
    await other.start()
    try:
        assert other.bound_port not in (0, 40000)
        assert other.status().endpoint == "127.0.0.1:40000"
        await _until(
            "hub-1 hears hub-2",
            lambda: len(scene.hub.status().hubs) == 2,
        )
        entries = {hub.identifier: hub.endpoint for hub in scene.hub.status().hubs}
        assert entries[other.identifier] == "127.0.0.1:40000"
        assert entries[scene.hub.identifier] == f"127.0.0.1:{port}"
    finally:
        await other.stop()


async def test_a_hub_that_has_not_started_has_no_announce_core(tmp_path: Path) -> None:
    make_home(tmp_path, hubs=1, devices=0, loopback=True)
    hub = _hub(load_hub_config(tmp_path / "hub-1.toml"))
    with pytest.raises(StateError) as raised:
        hub.status()
    assert raised.value.reason == Reason.NOT_RUNNING
    await hub.stop()  # stopping a hub that never started is harmless


@pytest.mark.slow
async def test_rogue_hub_from_another_ca_is_ignored(scene: Scene) -> None:
    rogue = _hub(
        rogue_hub_config(scene.path, scene.hub.config, [scene.device.config.announce.udp.port])
    )
    await rogue.start()
    try:
        await _until(
            "rejections counted",
            lambda: (
                scene.hub.core.counters.rejected["chain"] >= 3
                and scene.device.core.counters.rejected["chain"] >= 3
            ),
        )
        # Waiting past the hold-down is the point: the rogue would have won by now.
        await asyncio.sleep(scene.hub.config.announce.hold_down + scaled(1.0))
        assert scene.device.channel is not None
        assert scene.device.channel.hub_id == scene.hub.identifier
        assert [h.identifier for h in scene.hub.status().hubs] == [scene.hub.identifier]
        assert scene.hub.counters.redirects_sent == 0
    finally:
        await rogue.stop()


async def test_redirect_to_endpoint_with_another_identifier_is_refused(scene: Scene) -> None:
    other = _hub(load_hub_config(scene.path / "hub-2.toml"))
    await other.start()
    try:
        session = scene.hub.sessions[scene.device.identifier]
        impostor = HubAddress(
            scene.hub.identifier.replace("hcsp:", "hcsp:")[:-1] + "A",
            Endpoint("127.0.0.1", other.bound_port),
        )
        if impostor.identifier == scene.hub.identifier:
            impostor = HubAddress(scene.hub.identifier[:-1] + "B", impostor.endpoint)
        session.send_redirect(impostor, ("hcsp",))
        await _until(
            "redirect refused",
            lambda: sum(scene.device.counters.redirects_refused.values()) == 1,
        )
        assert scene.device.counters.redirects_refused["wrong-id"] == 1
        assert scene.device.channel is not None
        assert scene.device.channel.hub_id == scene.hub.identifier
        assert scene.device.counters.redirects_followed == 0
    finally:
        await other.stop()


async def test_genuine_redirect_is_followed_and_nothing_is_lost(scene: Scene) -> None:
    other = _hub(load_hub_config(scene.path / "hub-2.toml"))
    await other.start()
    try:
        target = HubAddress(other.identifier, Endpoint("127.0.0.1", other.bound_port))
        scene.hub.sessions[scene.device.identifier].send_redirect(target, ("hcsp",))
        await _until(
            "camera on hub-2",
            lambda: (
                scene.device.channel is not None and scene.device.channel.hub_id == other.identifier
            ),
        )
        await _until("frames stored on hub-2", lambda: other.counters.frames_stored >= 3)
        await _until("flushed", lambda: scene.device.spool.buffered == 0)
        device_id = scene.device.identifier
        on_one = set(scene.hub.recorder.seqs(device_id))
        on_two = set(other.recorder.seqs(device_id))
        assert on_one and on_two and not on_one & on_two
        assert len(on_one | on_two) == scene.device.spool.added
    finally:
        await other.stop()


async def test_status_documents_of_running_daemons_read_back(scene: Scene) -> None:
    await _until("frames stored", lambda: scene.hub.status().counters.frames_stored > 0)
    snapshot = scene.hub.status()
    assert snapshot.connected == (scene.device.identifier,)
    # The hello carried the device config's name (PROTOCOL.md section 4); the hub lists it.
    assert scene.device.config.name == "device-1"
    assert snapshot.connected_names == {scene.device.identifier: "device-1"}
    # It is kept with the recordings too, so the name outlives the channel and a restart.
    assert scene.hub.recorder.names() == {scene.device.identifier: "device-1"}
    assert HubStatus.from_json(json.loads(json.dumps(snapshot.to_json()))) == snapshot
    scene.device.write_status()
    on_disk = DeviceStatus.from_json(json.loads(scene.device.config.status_file.read_bytes()))
    assert (on_disk.identifier, on_disk.hub) == (scene.device.identifier, scene.hub.identifier)
    assert on_disk.state == "streaming" and on_disk.counters.connects >= 1
    runner = await start_api(scene.hub, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{runner.bound_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/api/status") as response:
                served = HubStatus.from_json(await response.json())
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
    finally:
        await runner.cleanup()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert served.identifier == scene.hub.identifier and served.remote is None
    assert served.connected_names == {scene.device.identifier: "device-1"}
    assert samples[("roost_hub_connected_devices", ())] == 1
    device_info = (("device", scene.device.identifier), ("name", "device-1"))
    assert samples[("roost_hub_device_info", device_info)] == 1
    stored = samples[("roost_hub_frames_stored_total", ())]
    assert snapshot.counters.frames_stored <= served.counters.frames_stored <= stored
    assert not [name for name, _ in samples if name.startswith("roost_hub_remote_")]


async def test_a_channel_that_ends_fails_over_and_reconnects(scene: Scene) -> None:
    device = scene.device
    assert device.channel is not None and device.state == "streaming"
    assert device.counters.connects == 1 and device.counters.failovers == 0
    device.channel.close()
    await _until(
        "camera back on hub-1",
        lambda: device.counters.connects == 2 and device.state == "streaming",
    )
    assert device.counters.failovers == 1
    assert device.channel is not None and device.channel.hub_id == scene.hub.identifier
    await _until("flushed", lambda: device.spool.buffered == 0)
    assert set(scene.hub.recorder.seqs(device.identifier)) == set(range(1, device.spool.added + 1))


async def test_failed_connects_are_counted_each_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PROTOCOL.md preamble: every failed attempt is counted, one line per hub host per
    interval, however fast the back-off retries."""
    make_home(tmp_path, hubs=1, devices=1, loopback=True, fps=5.0)
    config = dataclasses.replace(
        load_device_config(tmp_path / "device-1.toml"),
        # Nothing listens there: every attempt is refused by the kernel at once.
        hubs=(("127.0.0.1", free_port()),),
        backoff_initial=0.02,
        backoff_max=0.05,
        refusal_log_interval=600.0,
    )
    device = DeviceDaemon(
        config,
        TrustUpdater(config.trust_dir, config=NO_FETCH),
        FrameSpool(None, 1000, 1 << 26),
        read_own_certificate(config),
    )
    with caplog.at_level(logging.INFO, logger="roost.device"):
        await device.start()
        try:
            await _until(
                "five failed attempts", lambda: sum(device.counters.connect_failures.values()) >= 5
            )
        finally:
            await device.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "roost.device"]
    failed = [line for line in lines if line.startswith("connect failed to 127.0.0.1")]
    assert len(failed) == 1, lines
