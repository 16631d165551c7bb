"""The device-channel adapters on real TLS over loopback (PROTOCOL.md section 4).

The hub's adapter (``HubDaemon``) is driven by a hand-written device client and the
device's adapter (``roost.device.channel``) by a hand-written hub server, so each side
meets peers that misbehave in ways the real other side never would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509

from roost.channel import ChannelCoreConfig
from roost.cli.home import make_home
from roost.config import DeviceConfig, HubConfig, load_device_config, load_hub_config
from roost.device.channel import HubChannel, open_hub_channel
from roost.errors import RemoteProtocolError, TransportError, VerificationError
from roost.hcsp.channel import (
    AckMessage,
    ChannelDecoder,
    DocumentMessage,
    FrameMessage,
    encode_message,
)
from roost.hcsp.documents import Hello, Welcome, decode_document, encode_document
from roost.hub.daemon import HubDaemon
from roost.hub.recorder import Recorder
from roost.pki.certs import certs_from_pem, identifier_of, key_from_pem
from roost.pki.tls import ReloadableServerContext, client_context, server_context
from roost.pki.updater import TrustUpdater, UpdateConfig
from tests.helpers.net import time_unit

pytestmark = pytest.mark.timeout(60)
NO_FETCH = UpdateConfig(fetch_timeout=0.5)
FAST = ChannelCoreConfig(hello_timeout=0.3, welcome_timeout=0.3, drain_timeout=1.0)


@dataclasses.dataclass
class Home:
    hub_config: HubConfig
    device_config: DeviceConfig
    hub_trust: TrustUpdater
    device_trust: TrustUpdater
    hub_id: str
    device_id: str


@pytest.fixture
def home(tmp_path: Path) -> Home:
    make_home(tmp_path, hubs=1, devices=1, loopback=True)
    hub_config = load_hub_config(tmp_path / "hub-1.toml")
    device_config = load_device_config(tmp_path / "device-1.toml")
    return Home(
        hub_config,
        device_config,
        TrustUpdater(hub_config.trust_dir, config=NO_FETCH),
        TrustUpdater(device_config.trust_dir, config=NO_FETCH),
        identifier_of(certs_from_pem(hub_config.cert.read_bytes())[0]),
        identifier_of(certs_from_pem(device_config.cert.read_bytes())[0]),
    )


async def _until(what: str, condition: Callable[[], bool], seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds * time_unit()
    while loop.time() < deadline:
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------ the hub side


@pytest.fixture
async def hub(home: Home) -> AsyncIterator[HubDaemon]:
    async with _running_hub(home, home.hub_config) as daemon:
        yield daemon


@contextlib.asynccontextmanager
async def _running_hub(home: Home, config: HubConfig) -> AsyncIterator[HubDaemon]:
    daemon = HubDaemon(
        config,
        home.hub_trust,
        Recorder(config.state_dir / "recordings", 1 << 26),
        certificate=certs_from_pem(config.cert.read_bytes())[0],
        private_key=key_from_pem(config.key.read_bytes()),
        tls=ReloadableServerContext(config.cert, config.key, home.hub_trust.state.anchors),
        channel=FAST,
    )
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()
        daemon.recorder.close()


async def _device_client(
    home: Home, hub: HubDaemon
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = client_context(
        home.device_trust.state.anchors, home.device_config.cert, home.device_config.key
    )
    return await asyncio.open_connection("127.0.0.1", hub.bound_port, ssl=ctx)


async def _hello(home: Home, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    hello = Hello(home.device_id, home.hub_id, "camera", 0)
    writer.write(encode_message(DocumentMessage(encode_document(hello))))
    decoder = ChannelDecoder()
    messages = []
    while not messages:
        data = await asyncio.wait_for(reader.read(65536), 5.0)
        assert data, "hub closed before welcome"
        messages = decoder.feed(data)
    assert isinstance(messages[0], DocumentMessage)
    assert isinstance(decode_document(messages[0].xml), Welcome)


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionError):
        while data := await asyncio.wait_for(reader.read(65536), 5.0):
            received += data
    return received


async def test_silent_client_is_cut_at_the_hello_deadline(home: Home, hub: HubDaemon) -> None:
    reader, writer = await _device_client(home, hub)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _read_to_end(reader) == b""
    assert loop.time() - started < 3.0 * time_unit()
    await _until("counted", lambda: hub.counters.channel_errors["hello-timeout"] == 1)
    assert not hub.sessions
    writer.close()


async def test_client_leaving_without_hello_is_a_bad_hello(home: Home, hub: HubDaemon) -> None:
    _, writer = await _device_client(home, hub)
    writer.close()
    await _until("counted", lambda: hub.counters.connections_rejected["bad-hello"] == 1)
    assert not hub.counters.channel_errors


async def test_frames_are_stored_and_acknowledged(home: Home, hub: HubDaemon) -> None:
    reader, writer = await _device_client(home, hub)
    await _hello(home, reader, writer)
    assert list(hub.sessions) == [home.device_id]
    for seq in (1, 2, 3):
        writer.write(encode_message(FrameMessage(seq, seq, "image/jpeg", b"\xff\xd8\xff\xd9")))
    decoder = ChannelDecoder()
    acks: list[int] = []
    while not acks or acks[-1] < 3:
        data = await asyncio.wait_for(reader.read(65536), 5.0)
        assert data
        acks += [m.seq for m in decoder.feed(data) if isinstance(m, AckMessage)]
    assert hub.recorder.seqs(home.device_id) == [1, 2, 3]
    assert hub.sessions[home.device_id].frames_stored == 3
    writer.close()
    await _until("session ended", lambda: not hub.sessions)
    assert not hub.counters.channel_errors


async def test_stream_cut_inside_a_frame_is_counted_truncated(home: Home, hub: HubDaemon) -> None:
    reader, writer = await _device_client(home, hub)
    await _hello(home, reader, writer)
    frame = encode_message(FrameMessage(1, 1, "image/jpeg", b"payload"))
    writer.write(frame[:-3])
    await writer.drain()
    writer.close()  # TLS close_notify: an orderly end of stream, inside the frame
    await _until("counted", lambda: hub.counters.channel_errors["truncated"] == 1)
    assert hub.recorder.seqs(home.device_id) == []


async def test_ack_from_a_device_ends_its_channel(home: Home, hub: HubDaemon) -> None:
    reader, writer = await _device_client(home, hub)
    await _hello(home, reader, writer)
    writer.write(encode_message(AckMessage(0)))
    assert await _read_to_end(reader) == b""
    await _until("counted", lambda: hub.counters.channel_errors["unexpected-message"] == 1)
    assert not hub.sessions
    writer.close()


async def test_a_flood_of_malformed_channels_is_logged_once_per_interval(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    """PROTOCOL.md preamble: every refusal is counted, one line per source per interval."""
    interval = 3.0 * time_unit()
    config = dataclasses.replace(home.hub_config, refusal_log_interval=interval)
    flood = 6
    loop = asyncio.get_running_loop()

    def refused() -> int:
        return sum(hub.counters.connections_rejected.values()) + sum(
            hub.counters.channel_errors.values()
        )

    def lines() -> list[str]:
        # The refusal lines only: the hub also logs its other events (its election).
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "roost.hub" and getattr(r, "event", None) == "refused"
        ]

    async def malformed() -> None:
        # A record whose body is no channel message: the hub refuses it before any hello.
        _, writer = await _device_client(home, hub)
        writer.write(b"\x00\x00\x00\x05junk!")
        await writer.drain()
        writer.close()

    with caplog.at_level(logging.INFO, logger="roost.hub"):
        async with _running_hub(home, config) as hub:
            caplog.clear()
            await malformed()
            await _until("first refusal counted", lambda: refused() == 1)
            first_seen = loop.time()
            for _ in range(flood - 1):
                await malformed()
            await _until("flood counted", lambda: refused() == flood)
            assert loop.time() - first_seen < interval, "the flood outlasted the interval"
            (line,) = lines()
            assert line.startswith("device channel from 127.0.0.1: ")
            assert "more since the last line" not in line
            # Once the interval has passed, the next refusal's line reports the silent ones.
            await asyncio.sleep(max(0.0, first_seen + interval - loop.time()) + 0.05)
            await malformed()
            await _until("last refusal counted", lambda: refused() == flood + 1)
            assert len(lines()) == 2
            assert lines()[1].endswith(f"({flood - 1} more since the last line)")


# --------------------------------------------------------------------- the device side

HubScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Home], Awaitable[None]]


@contextlib.asynccontextmanager
async def _fake_hub(home: Home, script: HubScript) -> AsyncIterator[int]:
    config = home.hub_config
    ctx = server_context(config.cert, config.key, home.hub_trust.state.anchors)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await script(reader, writer, home)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for task in tasks:
            task.cancel()
        server.close()


async def _open(home: Home, port: int, acks: list[int] | None = None) -> HubChannel:
    async def verify(leaf: x509.Certificate) -> str:
        node, _ = home.device_trust.authenticate(leaf, None)
        return node.identifier

    return await open_hub_channel(
        "127.0.0.1",
        port,
        ssl_context=client_context(
            home.device_trust.state.anchors, home.device_config.cert, home.device_config.key
        ),
        verify=verify,
        device_id=home.device_id,
        last_acked=0,
        config=FAST,
        on_ack=(acks if acks is not None else []).append,
        on_ignored=lambda reason: None,
    )


async def _read_hello(reader: asyncio.StreamReader) -> ChannelDecoder:
    decoder = ChannelDecoder()
    while not decoder.feed(await reader.read(65536)):
        pass
    return decoder


def _welcome(home: Home, device: str | None = None) -> bytes:
    welcome = Welcome(home.hub_id, device or home.device_id, ("hcsp",), 4)
    return encode_message(DocumentMessage(encode_document(welcome)))


async def test_hub_that_never_welcomes_fails_at_the_welcome_deadline(home: Home) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Home) -> None:
        await _read_hello(reader)
        await asyncio.sleep(30)

    async with _fake_hub(home, silent) as port:
        with pytest.raises(TransportError) as caught:
            await asyncio.wait_for(_open(home, port), 5.0)
    assert caught.value.reason == "hello-timeout"


async def test_welcome_for_another_device_is_refused(home: Home) -> None:
    other = "ab:" + "Z" * 22

    async def wrong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, h: Home) -> None:
        await _read_hello(reader)
        writer.write(_welcome(h, other))
        await asyncio.sleep(30)

    async with _fake_hub(home, wrong) as port:
        with pytest.raises(VerificationError) as caught:
            await asyncio.wait_for(_open(home, port), 5.0)
    assert caught.value.reason == "bad-welcome"


async def test_ack_ahead_ends_the_device_channel(home: Home) -> None:
    async def ahead(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, h: Home) -> None:
        await _read_hello(reader)
        writer.write(_welcome(h) + encode_message(AckMessage(5)))
        await asyncio.sleep(30)

    async with _fake_hub(home, ahead) as port:
        channel = await asyncio.wait_for(_open(home, port), 5.0)
        await asyncio.wait_for(channel.closed.wait(), 5.0)
    assert isinstance(channel.core.close_error, RemoteProtocolError)
    assert channel.core.close_reason == "ack-ahead"


@pytest.mark.parametrize("hub_acks", [True, False], ids=["last-ack", "drain-timeout"])
async def test_drain_waits_for_the_last_ack_or_its_deadline(home: Home, hub_acks: bool) -> None:
    async def acker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, h: Home) -> None:
        decoder = await _read_hello(reader)
        writer.write(_welcome(h))
        while data := await reader.read(65536):
            frames = [m for m in decoder.feed(data) if isinstance(m, FrameMessage)]
            if frames and hub_acks:
                await asyncio.sleep(0.1)  # the device is draining by now
                writer.write(encode_message(AckMessage(frames[-1].seq)))
        await asyncio.sleep(30)

    acks: list[int] = []
    async with _fake_hub(home, acker) as port:
        channel = await asyncio.wait_for(_open(home, port, acks), 5.0)
        channel.send_frame(1, 1, "image/jpeg", b"one")
        channel.send_frame(2, 2, "image/jpeg", b"two")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(channel.drain_and_close(), 5.0)
        took = loop.time() - started
    assert channel.closed.is_set() and not channel.sending
    if hub_acks:
        assert acks == [2] and channel.acked == 2 and took < FAST.drain_timeout
    else:
        assert acks == [] and channel.acked == 0 and took >= FAST.drain_timeout * 0.9
