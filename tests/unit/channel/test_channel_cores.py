"""The device-channel cores, paired in memory under a fake clock (PROTOCOL.md section 4).

``ChannelPair`` connects a ``HubChannelCore`` and a ``DeviceChannelCore`` by feeding each
one's ``data_to_send()`` into the other (like h11's ConnectionPair): no sockets, no sleeps,
``now`` is a plain float the test moves.
"""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.channel import (
    DEVICE_TRANSITIONS,
    HUB_TRANSITIONS,
    AckReceived,
    ChannelClosed,
    ChannelCoreConfig,
    ChannelEvent,
    ChannelInput,
    DeviceChannelCore,
    DeviceState,
    DocumentIgnored,
    DrainComplete,
    FramesReceived,
    HelloReceived,
    HubChannelCore,
    HubState,
    RedirectReceived,
    WelcomeReceived,
    refusal_reason,
)
from roost.errors import (
    ConfigError,
    LocalProtocolError,
    RefusedError,
    RemoteProtocolError,
    RoostError,
    TransportError,
    VerificationError,
)
from roost.framing import encode_record
from roost.hcsp.channel import (
    MAX_CHANNEL_MESSAGE,
    AckMessage,
    ChannelMessage,
    DocumentMessage,
    FrameMessage,
    encode_message,
)
from roost.hcsp.documents import (
    Endpoint,
    Hello,
    HubAddress,
    Redirect,
    Welcome,
    encode_document,
)
from roost.reasons import Reason

HUB = "hcsp:" + "H" * 22
OTHER_HUB = "hcsp:" + "O" * 22
DEVICE = "ab:" + "D" * 22
OTHER_DEVICE = "ab:" + "E" * 22
FEATURES = ("hcsp", "webs")
TARGET = HubAddress(OTHER_HUB, Endpoint("127.0.0.1", 7001))
_VECTORS = json.loads(
    (Path(__file__).parents[2] / "vectors" / "channel" / "channel_vectors.json").read_text()
)


def _wire(message: ChannelMessage) -> bytes:
    return encode_message(message)


def _document(document: Hello | Welcome | Redirect) -> bytes:
    return _wire(DocumentMessage(encode_document(document)))


def _events(core: HubChannelCore | DeviceChannelCore) -> list[ChannelEvent]:
    taken: list[ChannelEvent] = []
    while (event := core.next_event()) is not None:
        taken.append(event)
    return taken


def _closed(events: list[ChannelEvent]) -> ChannelClosed:
    assert events and isinstance(events[-1], ChannelClosed), events
    return events[-1]


class ChannelPair:
    """A hub core and a device core joined back to back, under one fake clock."""

    def __init__(
        self, config: ChannelCoreConfig | None = None, *, last_acked: int = 0, now: float = 100.0
    ) -> None:
        self.config = config or ChannelCoreConfig()
        self.now = now
        self.hub = HubChannelCore(self.config, hub_id=HUB, device_id=DEVICE, now=now)
        self.device = DeviceChannelCore(
            self.config, device_id=DEVICE, hub_id=HUB, last_acked=last_acked, now=now
        )

    def _carry(
        self,
        sender: HubChannelCore | DeviceChannelCore,
        receiver: HubChannelCore | DeviceChannelCore,
        chunk: int | None,
    ) -> list[ChannelEvent]:
        data = sender.data_to_send()
        if chunk is None:
            receiver.receive_data(data, self.now)
        else:
            for start in range(0, len(data), chunk):
                receiver.receive_data(data[start : start + chunk], self.now)
        return _events(receiver)

    def to_hub(self, chunk: int | None = None) -> list[ChannelEvent]:
        """Deliver what the device queued; return the hub's events."""
        return self._carry(self.device, self.hub, chunk)

    def to_device(self, chunk: int | None = None) -> list[ChannelEvent]:
        """Deliver what the hub queued; return the device's events."""
        return self._carry(self.hub, self.device, chunk)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for core in (self.hub, self.device):
            timer = core.get_timer()
            if timer is not None and timer <= self.now:
                core.handle_timer(self.now)

    def open(self) -> None:
        assert self.to_hub() == [HelloReceived(DEVICE, "camera", self.device.acked)]
        self.hub.accept(FEATURES, 16)
        assert self.to_device() == [WelcomeReceived(FEATURES, 16)]


def _open_pair(**kwargs: Any) -> ChannelPair:
    pair = ChannelPair(**kwargs)
    pair.open()
    return pair


# --------------------------------------------------------------------------- handshake


def test_the_hello_carries_the_device_name_to_the_hub_event() -> None:
    # Section 4: the name is a label the hub shows; the parties are still the certificates'.
    config = ChannelCoreConfig()
    hub = HubChannelCore(config, hub_id=HUB, device_id=DEVICE, now=0.0)
    device = DeviceChannelCore(
        config, device_id=DEVICE, hub_id=HUB, last_acked=3, now=0.0, name="Front porch"
    )
    hello = device.data_to_send()
    assert hello == _document(Hello(DEVICE, HUB, "camera", 3, "Front porch"))
    hub.receive_data(hello, 0.0)
    assert _events(hub) == [HelloReceived(DEVICE, "camera", 3, "Front porch")]
    assert hub.hello is not None and hub.hello.name == "Front porch"


def test_a_hello_with_a_bad_name_ends_the_channel_as_bad_name() -> None:
    hub = HubChannelCore(ChannelCoreConfig(), hub_id=HUB, device_id=DEVICE, now=0.0)
    xml = encode_document(Hello(DEVICE, HUB, "camera", 0)).replace(
        b'last-acked="0"', b'last-acked="0" name="' + b"x" * 65 + b'"'
    )
    hub.receive_data(_wire(DocumentMessage(xml)), 0.0)
    assert _closed(_events(hub)).reason == "bad-name"


def test_hello_and_welcome_open_both_sides() -> None:
    pair = ChannelPair(last_acked=41)
    hello = pair.device.data_to_send()
    assert hello == _document(Hello(DEVICE, HUB, "camera", 41))
    pair.hub.receive_data(hello, pair.now)
    assert _events(pair.hub) == [HelloReceived(DEVICE, "camera", 41)]
    assert pair.hub.state is HubState.AWAIT_ADMISSION
    assert pair.hub.get_timer() is None
    pair.hub.accept(FEATURES, 16)
    welcome = pair.hub.data_to_send()
    assert welcome == _document(Welcome(HUB, DEVICE, FEATURES, 16))
    pair.device.receive_data(welcome, pair.now)
    assert _events(pair.device) == [WelcomeReceived(FEATURES, 16)]
    assert pair.hub.state is HubState.OPEN
    assert pair.device.state is DeviceState.STREAMING
    assert pair.device.get_timer() is None
    assert pair.device.can_send


def test_refused_device_sees_the_channel_close_before_welcome() -> None:
    pair = ChannelPair()
    pair.to_hub()
    pair.hub.refuse(Reason.FULL)
    closed = _closed(_events(pair.hub))
    assert closed.reason == "full" and isinstance(closed.error, RefusedError)
    assert pair.hub.data_to_send() == b""
    pair.device.receive_data(b"", pair.now)
    closed = _closed(_events(pair.device))
    assert closed.reason == "refused" and isinstance(closed.error, TransportError)


# ---------------------------------------------------------------------- frames and ACKs


def test_frames_flow_and_acks_advance_the_device() -> None:
    pair = _open_pair()
    for seq in (1, 2, 3):
        pair.device.send_frame(seq, 1000 + seq, "image/jpeg", bytes([seq]) * 10)
    events = pair.to_hub()
    assert len(events) == 1 and isinstance(events[0], FramesReceived)
    assert [f.seq for f in events[0].frames] == [1, 2, 3]
    assert events[0].frames[2] == FrameMessage(3, 1003, "image/jpeg", b"\x03" * 10)
    pair.hub.send_ack(3)
    assert pair.to_device() == [AckReceived(3)]
    assert pair.device.acked == 3 and pair.device.last_sent == 3


def test_byte_by_byte_delivery_gives_the_same_frames() -> None:
    pair = ChannelPair(last_acked=7)
    assert pair.to_hub(chunk=1) == [HelloReceived(DEVICE, "camera", 7)]
    pair.hub.accept(FEATURES, 3)
    assert pair.to_device(chunk=1) == [WelcomeReceived(FEATURES, 3)]
    for seq in range(8, 12):
        pair.device.send_frame(seq, seq, "image/png", b"x" * seq)
    frames = [
        frame
        for event in pair.to_hub(chunk=1)
        if isinstance(event, FramesReceived)
        for frame in event.frames
    ]
    assert [f.seq for f in frames] == [8, 9, 10, 11]
    pair.hub.send_ack(11)
    pair.hub.send_ack(9)
    assert pair.to_device(chunk=1) == [AckReceived(11), AckReceived(9)]
    assert pair.device.acked == 11


def test_golden_frame_and_ack_vectors_are_what_the_cores_send() -> None:
    vectors = {vector["name"]: vector for vector in _VECTORS["messages"]}
    frame = vectors["frame-jpeg"]["message"]
    pair = _open_pair(last_acked=41)
    pair.device.send_frame(
        frame["seq"], frame["captured_at_ms"], frame["mime"], bytes.fromhex(frame["payload_hex"])
    )
    sent = pair.device.data_to_send()
    assert sent.hex() == vectors["frame-jpeg"]["wire"]
    pair.hub.receive_data(sent, pair.now)
    assert isinstance(_events(pair.hub)[0], FramesReceived)
    pair.hub.send_ack(42)
    assert pair.hub.data_to_send().hex() == vectors["ack"]["wire"]


@pytest.mark.parametrize("vector", _VECTORS["rejects"], ids=lambda v: v["name"])
def test_golden_reject_vectors_close_an_open_hub_channel(vector: dict[str, Any]) -> None:
    pair = _open_pair()
    pair.hub.receive_data(bytes.fromhex(vector["wire"]), pair.now)
    closed = _closed(_events(pair.hub))
    assert closed.reason == vector["reason"]
    assert isinstance(closed.error, RemoteProtocolError)
    assert pair.hub.is_closed


def test_hub_refuses_to_acknowledge_a_frame_it_never_had() -> None:
    pair = _open_pair()
    with pytest.raises(LocalProtocolError) as caught:
        pair.hub.send_ack(1)
    assert caught.value.reason == "ack-ahead"
    pair.device.send_frame(1, 0, "image/jpeg", b"")
    pair.to_hub()
    with pytest.raises(LocalProtocolError):
        pair.hub.send_ack(2)


def test_device_refuses_to_send_a_seq_twice() -> None:
    pair = _open_pair(last_acked=5)
    with pytest.raises(LocalProtocolError) as caught:
        pair.device.send_frame(5, 0, "image/jpeg", b"")
    assert caught.value.reason == "duplicate-seq"
    with pytest.raises(LocalProtocolError) as caught:
        pair.device.send_frame(6, 0, "bad\x01mime", b"")
    assert caught.value.reason == "bad-mime"
    assert pair.device.last_sent == 5 and pair.device.data_to_send() == b""


# ---------------------------------------------------------------------------- redirect


def test_redirect_reaches_the_device() -> None:
    pair = _open_pair()
    pair.hub.send_redirect(TARGET, ("hcsp", "ai"))
    assert pair.to_device() == [RedirectReceived(Redirect(HUB, DEVICE, TARGET, ("hcsp", "ai")))]
    assert pair.device.state is DeviceState.STREAMING


@pytest.mark.parametrize(
    "document",
    [
        Redirect(HUB, OTHER_DEVICE, TARGET, ("hcsp",)),
        Welcome(HUB, DEVICE, FEATURES, 3),
        Hello(DEVICE, HUB, "camera", 0),
    ],
    ids=["redirect-for-another-device", "second-welcome", "hello"],
)
def test_other_documents_are_counted_and_ignored_by_the_device(
    document: Hello | Welcome | Redirect,
) -> None:
    pair = _open_pair()
    pair.device.receive_data(_document(document), pair.now)
    assert _events(pair.device) == [DocumentIgnored("unexpected-document")]
    assert not pair.device.is_closed


# ------------------------------------------------------------------------------- drain


def test_drain_waits_for_the_last_ack_then_closes() -> None:
    pair = _open_pair()
    for seq in (1, 2):
        pair.device.send_frame(seq, 0, "image/jpeg", b"p")
    pair.to_hub()
    pair.device.start_drain(pair.now)
    assert pair.device.state is DeviceState.DRAINING and not pair.device.can_send
    assert pair.device.get_timer() == pair.now + pair.config.drain_timeout
    with pytest.raises(LocalProtocolError):
        pair.device.send_frame(3, 0, "image/jpeg", b"p")
    pair.hub.send_ack(1)
    assert pair.to_device() == [AckReceived(1)]
    pair.hub.send_redirect(TARGET, FEATURES)
    assert isinstance(pair.to_device()[0], RedirectReceived)
    pair.hub.send_ack(2)
    assert pair.to_device() == [
        AckReceived(2),
        DrainComplete(acked=2, last_sent=2, timed_out=False),
        ChannelClosed("closed", None),
    ]
    assert pair.device.is_closed and pair.device.get_timer() is None


def test_drain_with_nothing_outstanding_ends_at_once() -> None:
    pair = _open_pair(last_acked=9)
    pair.device.start_drain(pair.now)
    assert _events(pair.device) == [
        DrainComplete(acked=9, last_sent=9, timed_out=False),
        ChannelClosed("closed", None),
    ]


def test_drain_gives_up_at_its_deadline() -> None:
    pair = _open_pair(config=ChannelCoreConfig(drain_timeout=0.5))
    pair.device.send_frame(1, 0, "image/jpeg", b"p")
    pair.device.start_drain(pair.now)
    pair.advance(0.49)
    assert _events(pair.device) == []
    pair.advance(0.01)
    assert _events(pair.device) == [
        DrainComplete(acked=0, last_sent=1, timed_out=True),
        ChannelClosed("closed", None),
    ]


# --------------------------------------------------------------------------- deadlines


def test_hello_timeout_closes_the_hub_side() -> None:
    pair = ChannelPair()
    assert pair.hub.get_timer() == pair.now + 10.0
    pair.hub.handle_timer(pair.now + 9.99)
    assert _events(pair.hub) == []
    pair.advance(10.0)
    closed = _closed(_events(pair.hub))
    assert closed.reason == "hello-timeout" and isinstance(closed.error, TransportError)
    assert pair.hub.get_timer() is None
    pair.hub.receive_data(pair.device.data_to_send(), pair.now)
    assert _events(pair.hub) == []


def test_welcome_timeout_closes_the_device_side() -> None:
    pair = ChannelPair(config=ChannelCoreConfig(welcome_timeout=2.5))
    pair.to_hub()
    assert pair.device.get_timer() == pair.now + 2.5
    pair.advance(2.5)
    closed = _closed(_events(pair.device))
    assert closed.reason == "hello-timeout" and isinstance(closed.error, TransportError)
    assert pair.hub.get_timer() is None  # the hello arrived: the hub waits for its daemon


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError):
        ChannelCoreConfig(hello_timeout=0)
    with pytest.raises(ConfigError):
        ChannelCoreConfig(max_message=MAX_CHANNEL_MESSAGE + 1)


# ----------------------------------------------------------------- malformed and refused


def _record(body: bytes) -> bytes:
    return encode_record(body)


def _raw_frame(mime: bytes) -> bytes:
    return _record(b"\x02" + struct.pack(">QQB", 1, 2, len(mime)) + mime + b"payload")


_R = RemoteProtocolError
_V = VerificationError
_FRAME = _wire(FrameMessage(1, 0, "image/jpeg", b""))
_ACK0 = _wire(AckMessage(0))
_HELLO = _document(Hello(DEVICE, HUB, "camera", 0))
_HELLO_OTHER_HUB = _document(Hello(DEVICE, OTHER_HUB, "camera", 0))
_HELLO_OTHER_DEVICE = _document(Hello(OTHER_DEVICE, HUB, "camera", 0))
_WELCOME = _document(Welcome(HUB, DEVICE, (), 1))
_WELCOME_OTHER_DEVICE = _document(Welcome(HUB, OTHER_DEVICE, (), 1))
_WELCOME_OTHER_HUB = _document(Welcome(OTHER_HUB, DEVICE, (), 1))
_REDIRECT = _document(Redirect(HUB, DEVICE, TARGET, ()))

# (name, side, opened first?, bytes, reason, error class)
_MALFORMED: list[tuple[str, str, bool, bytes, str, type[RoostError]]] = [
    ("oversized-length", "hub", True, b"\xff\xff\xff\xff", "oversized", _R),
    ("oversized-to-device", "device", True, b"\x00\x40\x00\x01", "oversized", _R),
    ("zero-length", "hub", True, b"\x00\x00\x00\x00", "empty", _R),
    ("unknown-type", "hub", True, _record(b"\x09abc"), "unknown-type", _R),
    ("bad-mime", "hub", True, _raw_frame(b"image\x01jpeg"), "bad-mime", _R),
    ("empty-mime", "hub", True, _raw_frame(b""), "bad-mime", _R),
    ("bad-utf8-hello", "hub", False, _record(b"\x01\xff\xfe<"), "bad-document", _R),
    ("bad-utf8-welcome", "device", False, _record(b"\x01\xc3("), "bad-document", _R),
    ("ack-ahead", "device", True, _wire(AckMessage(1)), "ack-ahead", _R),
    ("frame-before-hello", "hub", False, _FRAME, "bad-hello", _R),
    ("ack-before-hello", "hub", False, _ACK0, "bad-hello", _R),
    ("welcome-instead-of-hello", "hub", False, _WELCOME, "bad-hello", _R),
    ("hello-for-another-hub", "hub", False, _HELLO_OTHER_HUB, "bad-hello", _R),
    ("hello-from-another-device", "hub", False, _HELLO_OTHER_DEVICE, "bad-hello", _R),
    ("second-hello", "hub", True, _HELLO, "unexpected-document", _R),
    ("ack-from-device", "hub", True, _ACK0, "unexpected-message", _R),
    ("frame-from-hub", "device", True, _FRAME, "unexpected-message", _R),
    ("welcome-for-another-device", "device", False, _WELCOME_OTHER_DEVICE, "bad-welcome", _V),
    ("welcome-from-another-hub", "device", False, _WELCOME_OTHER_HUB, "bad-welcome", _V),
    ("redirect-instead-of-welcome", "device", False, _REDIRECT, "bad-welcome", _R),
    ("ack-before-welcome", "device", False, _ACK0, "bad-welcome", _R),
    ("not-xml-document", "device", True, _record(b"\x01<hcsp"), "malformed-xml", _R),
]


@pytest.mark.parametrize(
    ("side", "opened", "data", "reason", "error_type"),
    [case[1:] for case in _MALFORMED],
    ids=[case[0] for case in _MALFORMED],
)
def test_every_malformed_or_misplaced_message_is_refused_with_its_reason(
    side: str, opened: bool, data: bytes, reason: str, error_type: type[RoostError]
) -> None:
    pair = _open_pair() if opened else ChannelPair()
    core: HubChannelCore | DeviceChannelCore = pair.hub if side == "hub" else pair.device
    core.receive_data(data, pair.now)
    events = _events(core)
    closed = _closed(events)
    assert events == [closed]
    assert closed.reason == reason
    assert type(closed.error) is error_type
    assert core.is_closed and core.close_reason == reason and core.get_timer() is None
    core.receive_data(data, pair.now)
    assert _events(core) == []  # closed for good: exactly one ChannelClosed


@pytest.mark.parametrize("side", ["hub", "device"])
@pytest.mark.parametrize("eof", ["receive_eof", "empty_data"])
def test_a_stream_cut_mid_message_is_truncated(side: str, eof: str) -> None:
    pair = _open_pair()
    message = _wire(FrameMessage(1, 0, "image/jpeg", b"abc") if side == "hub" else AckMessage(0))
    core: HubChannelCore | DeviceChannelCore = pair.hub if side == "hub" else pair.device
    core.receive_data(message[:-1], pair.now)
    assert _events(core) == []
    if eof == "receive_eof":
        core.receive_eof(pair.now)
    else:
        core.receive_data(b"", pair.now)
    closed = _closed(_events(core))
    assert closed.reason == "truncated" and isinstance(closed.error, RemoteProtocolError)


def test_orderly_ends_carry_no_error() -> None:
    pair = ChannelPair()
    pair.hub.receive_eof(pair.now)
    assert _closed(_events(pair.hub)).reason == "bad-hello"  # left without a hello
    pair = _open_pair()
    pair.hub.receive_eof(pair.now)
    pair.device.receive_eof(pair.now)
    assert _events(pair.hub) == [ChannelClosed("disconnected", None)]
    assert _events(pair.device) == [ChannelClosed("disconnected", None)]
    pair = _open_pair()
    pair.hub.close()
    pair.hub.close()
    assert _events(pair.hub) == [ChannelClosed("closed", None)]


def test_a_read_that_breaks_a_rule_on_the_hub_is_dropped_whole() -> None:
    pair = ChannelPair()
    pair.hub.receive_data(pair.device.data_to_send() + _wire(AckMessage(0)), pair.now)
    closed = _closed(_events(pair.hub))
    assert closed.reason == "unexpected-message"  # no HelloReceived to admit
    pair = _open_pair()
    frames = b"".join(_wire(FrameMessage(s, 0, "image/jpeg", b"")) for s in (1, 2))
    pair.hub.receive_data(frames + _wire(AckMessage(0)), pair.now)
    events = _events(pair.hub)
    assert events == [_closed(events)]  # frames 1 and 2 are not stored: no ACK can follow
    assert events[0].reason == "unexpected-message"


def test_acks_before_a_broken_message_still_count_on_the_device() -> None:
    pair = _open_pair()
    pair.device.send_frame(1, 0, "image/jpeg", b"")
    pair.device.data_to_send()
    pair.device.receive_data(_wire(AckMessage(1)) + _wire(AckMessage(2)), pair.now)
    events = _events(pair.device)
    assert events[0] == AckReceived(1)
    assert _closed(events).reason == "ack-ahead"
    assert pair.device.acked == 1


def test_identities_are_checked_when_a_core_is_made() -> None:
    config = ChannelCoreConfig()
    with pytest.raises(VerificationError) as caught:
        HubChannelCore(config, hub_id=HUB, device_id=OTHER_HUB, now=0.0)
    assert caught.value.reason == "not-device"
    with pytest.raises(VerificationError) as caught:
        DeviceChannelCore(config, device_id=DEVICE, hub_id=OTHER_DEVICE, last_acked=0, now=0.0)
    assert caught.value.reason == "not-hub"


def test_commands_out_of_order_are_our_fault() -> None:
    pair = ChannelPair()
    with pytest.raises(LocalProtocolError):
        pair.hub.accept(FEATURES, 1)  # no hello yet
    with pytest.raises(LocalProtocolError):
        pair.hub.send_ack(0)
    with pytest.raises(LocalProtocolError):
        pair.device.send_frame(1, 0, "image/jpeg", b"")  # no welcome yet
    with pytest.raises(LocalProtocolError):
        pair.device.start_drain(pair.now)
    pair.open()
    with pytest.raises(LocalProtocolError):
        pair.hub.accept(FEATURES, 1)
    pair.hub.close()
    pair.hub.send_redirect(TARGET, FEATURES)  # a closed channel: nothing to do
    assert pair.hub.data_to_send() == b""


# ---------------------------------------------------------------------------- the tables


@pytest.mark.parametrize(
    ("table", "states", "closed"),
    [
        (HUB_TRANSITIONS, HubState, HubState.CLOSED),
        (DEVICE_TRANSITIONS, DeviceState, DeviceState.CLOSED),
    ],
    ids=["hub", "device"],
)
def test_tables_close_from_every_state_and_closed_is_final(
    table: Any, states: Any, closed: Any
) -> None:
    for state in states:
        assert table[(state, ChannelInput.CLOSE)] is closed
        if state is not closed:
            assert table[(state, ChannelInput.FAIL)] is closed
    assert all(after is closed for (before, _), after in table.items() if before is closed)
    reachable = {closed, next(iter(states))} | set(table.values())
    assert reachable == set(states)


def test_every_missing_peer_pair_has_a_catalogued_reason() -> None:
    peer = (ChannelInput.DOCUMENT, ChannelInput.FRAME, ChannelInput.ACK)
    for table, states in ((HUB_TRANSITIONS, HubState), (DEVICE_TRANSITIONS, DeviceState)):
        for state, kind in itertools.product(states, peer):
            if (state, kind) not in table:  # type: ignore[operator]
                assert refusal_reason(state, kind) in Reason


# ---------------------------------------------------------------------------- hypothesis


def _feed_and_check(core: HubChannelCore | DeviceChannelCore, chunks: list[bytes]) -> None:
    for chunk in chunks:
        core.receive_data(chunk, 0.0)
    core.receive_eof(0.0)
    events = _events(core)
    assert all(isinstance(event, ChannelEvent) for event in events)
    closes = [event for event in events if isinstance(event, ChannelClosed)]
    assert len(closes) == 1 and events[-1] is closes[0]
    assert closes[0].error is None or isinstance(closes[0].error, RoostError)
    # Reasons raised by the channel itself are catalogued; a document's own parse reasons
    # (roost.hcsp.documents) travel on their typed error.
    assert closes[0].reason in _CATALOGUE or closes[0].error is not None


_CATALOGUE = {reason.value for reason in Reason}
_CHUNKS = st.lists(st.binary(max_size=64), max_size=8)


@settings(max_examples=300, deadline=None)
@given(chunks=_CHUNKS, opened=st.booleans(), side=st.sampled_from(["hub", "device"]))
def test_random_bytes_give_events_or_a_typed_close(
    chunks: list[bytes], opened: bool, side: str
) -> None:
    pair = _open_pair() if opened else ChannelPair()
    _feed_and_check(pair.hub if side == "hub" else pair.device, chunks)


_VALID = [
    _wire(FrameMessage(1, 0, "image/jpeg", b"x")),
    _wire(AckMessage(0)),
    _document(Hello(DEVICE, HUB, "camera", 0)),
    _document(Welcome(HUB, DEVICE, FEATURES, 4)),
    _document(Redirect(HUB, DEVICE, TARGET, FEATURES)),
    b"\x00\x00\x00\x02\x01<",
]


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(_VALID) | st.binary(max_size=12), max_size=6),
    cut=st.integers(min_value=1, max_value=7),
    side=st.sampled_from(["hub", "device"]),
)
def test_mixtures_of_real_messages_and_noise_never_escape(
    pieces: list[bytes], cut: int, side: str
) -> None:
    pair = ChannelPair()
    stream = b"".join(pieces)
    chunks = [stream[start : start + cut] for start in range(0, len(stream), cut)]
    _feed_and_check(pair.hub if side == "hub" else pair.device, chunks)
