"""The fuzz targets: one function per decoder, each asserting the decoder's contract.

The contract (docs/testing.md, "Fuzzing") is the same for every decoder: for any input it
either returns a value or raises one of the project's typed errors (a ``RoostError``
subclass with a catalogued reason). Peer input must never be blamed on us, so a wire
decoder raising ``LocalProtocolError`` is a failure too. Any other exception is a crash.
Where an encoder exists, whatever decodes re-encodes to something that decodes to the same
value (the encoders are canonical, so usually to the same bytes).

A target is a plain function of ``bytes``: ``tests/fuzz/runner.py`` drives it under atheris
(coverage-guided), ``tests/fuzz/test_corpus.py`` replays every committed corpus file
through it without atheris, so a crash once found stays fixed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.channel import (
    ChannelClosed,
    ChannelCoreConfig,
    ChannelEvent,
    DeviceChannelCore,
    FramesReceived,
    HelloReceived,
    HubChannelCore,
    WelcomeReceived,
)
from roost.config import load_broker_config, load_device_config, load_hub_config
from roost.errors import ConfigError, LocalProtocolError, RoostError
from roost.framing import RecordFramer
from roost.guard.log import (
    decode_checkpoint,
    decode_checkpoint_document,
    decode_receipt,
    encode_checkpoint,
    encode_receipt,
)
from roost.guard.messages import (
    decode_accept,
    decode_challenge,
    decode_hello,
    decode_proof,
    decode_reject,
    encode_accept,
    encode_challenge,
    encode_hello,
    encode_proof,
    encode_reject,
)
from roost.guard.ratchet import decode_frame, encode_frame
from roost.guard.session import decode_fields, encode_fields
from roost.hcsp.announce import decode_announcement
from roost.hcsp.channel import ChannelDecoder, decode_message, encode_message_body
from roost.hcsp.documents import decode_document, encode_document
from roost.pki.cainfo import decode_cainfo, encode_body
from roost.reasons import Reason
from roost.rendezvous.control import (
    RelayRecord,
    decode_channel_body,
    encode_control_message,
    encode_relay,
)
from roost.rendezvous.messages import (
    decode_ack,
    decode_candidates,
    decode_registration,
    decode_wake,
    encode_ack,
    encode_candidates,
    encode_registration,
    encode_wake,
    verify_registration,
    verify_wake,
)
from roost.rendezvous.presence import decode_node_message, decode_peer, decode_presence
from roost.rendezvous.seal import open_request
from roost.rendezvous.stun import (
    decode_stun,
    encode_stun,
    parse_binding_request,
    parse_binding_response,
)
from tests.fuzz.guides import GUIDES
from tests.vectors.rendezvous.make_vectors import (
    ISSUER_CANDIDATES,
    REGISTRATION_KEY,
    TARGET_ID,
    TARGET_KEY,
    TRANSACTION_ID,
)

__all__ = ["CORPUS", "TARGETS", "ContractViolation", "Target", "target"]

CORPUS = Path(__file__).resolve().parent / "corpus"
_CATALOGUE = frozenset(reason.value for reason in Reason)

# Identifiers of the channel pair every channel-core target opens (PROTOCOL.md section 4).
HUB_ID = "hcsp:" + "H" * 22
DEVICE_ID = "ab:" + "D" * 22
FEATURES = ("hcsp", "webs")


class ContractViolation(AssertionError):
    """A decoder broke its contract on some input (a crash of the fuzz target)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One fuzz target: a name (its corpus folder), the function, and what it covers."""

    name: str
    run: Callable[[bytes], None]
    covers: str
    # The roost modules whose branches guide this target (tests/fuzz/guides.py).
    modules: tuple[str, ...]


TARGETS: dict[str, Target] = {}


def target(name: str, covers: str) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    """Register ``function`` as the fuzz target ``name`` (its guiding modules: GUIDES)."""

    def register(function: Callable[[bytes], None]) -> Callable[[bytes], None]:
        TARGETS[name] = Target(name, function, covers, GUIDES[name])
        return function

    return register


def _typed(error: BaseException, *, peer_input: bool = True) -> None:
    """Check that ``error`` is one the contract allows; raise ``ContractViolation`` if not."""
    if not isinstance(error, RoostError):
        raise ContractViolation(f"untyped {type(error).__name__}: {error}") from error
    if peer_input and isinstance(error, LocalProtocolError):
        raise ContractViolation(f"peer input blamed on us: {error!r}") from error
    if error.reason not in _CATALOGUE:
        raise ContractViolation(f"reason {error.reason!r} is not catalogued") from error


def _decode(decode: Callable[[bytes], Any], data: bytes) -> Any:
    """``decode(data)``, or ``None`` after checking that what it raised is allowed."""
    try:
        return decode(data)
    except Exception as error:
        _typed(error)
        return None


def _same(left: Any, right: Any, what: str) -> None:
    if left != right:
        raise ContractViolation(f"{what} does not round-trip: {left!r} != {right!r}")


# ------------------------------------------------------------------------------ pki


@target("cainfo", "pki.cainfo.decode_cainfo, re-encoding the signed body (PROTOCOL.md section 2)")
def fuzz_cainfo(data: bytes) -> None:
    info = _decode(decode_cainfo, data)
    if info is not None:
        _same(encode_body(info.body), info.signed_bytes, "CA information body")


# ----------------------------------------------------------------------------- hcsp


@target("hcsp-datagram", "hcsp.announce.decode_announcement, then the document it carries")
def fuzz_hcsp_datagram(data: bytes) -> None:
    announcement = _decode(decode_announcement, data)
    if announcement is None:
        return
    framed = (
        announcement.signed_bytes + bytes([len(announcement.signature)]) + announcement.signature
    )
    _same(framed, data, "announcement framing")
    fuzz_hcsp_document(announcement.document)


@target("hcsp-document", "hcsp.documents.decode_document (subscribe, hello, welcome, redirect)")
def fuzz_hcsp_document(data: bytes) -> None:
    document = _decode(decode_document, data)
    if document is not None:
        _same(decode_document(encode_document(document)), document, "document")


@target("channel-codec", "hcsp.channel.decode_message and the stream decoder, cut at every split")
def fuzz_channel_codec(data: bytes) -> None:
    message = _decode(decode_message, data)
    if message is not None:
        _same(decode_message(encode_message_body(message)), message, "channel message")
    # The same bytes as a stream, cut where the first byte says: a message split across
    # reads must decode exactly as in one read (section 4, framing).
    if not data:
        return
    cut = data[0] % 8 + 1
    stream = data[1:]
    whole: list[Any] = []
    pieces: list[Any] = []
    try:
        whole = ChannelDecoder().feed(stream)
    except Exception as error:
        _typed(error)
        whole = []
    decoder = ChannelDecoder()
    try:
        for start in range(0, len(stream), cut):
            pieces += decoder.feed(stream[start : start + cut])
    except Exception as error:
        _typed(error)
        return
    _same(pieces[: len(whole)], whole, "split stream")


# --------------------------------------------------------------------------- channel


def _drain(core: HubChannelCore | DeviceChannelCore) -> list[ChannelEvent]:
    events: list[ChannelEvent] = []
    while (event := core.next_event()) is not None:
        if not isinstance(event, ChannelEvent):
            raise ContractViolation(f"not a channel event: {event!r}")
        events.append(event)
    return events


def _check_closes(events: list[ChannelEvent]) -> None:
    closes = [event for event in events if isinstance(event, ChannelClosed)]
    if len(closes) != 1 or events[-1] is not closes[0]:
        raise ContractViolation(f"a core must end with exactly one ChannelClosed: {events!r}")
    if closes[0].error is not None:
        _typed(closes[0].error)


def _handshake() -> tuple[bytes, bytes]:
    """The real hello and welcome bytes of the pair, made once by the cores themselves."""
    if not _HANDSHAKE:
        config = ChannelCoreConfig()
        hub = HubChannelCore(config, hub_id=HUB_ID, device_id=DEVICE_ID, now=0.0)
        device = DeviceChannelCore(
            config, device_id=DEVICE_ID, hub_id=HUB_ID, last_acked=0, now=0.0
        )
        hello = device.data_to_send()
        hub.receive_data(hello, 0.0)
        _drain(hub)
        hub.accept(FEATURES, 16)
        _HANDSHAKE.extend((hello, hub.data_to_send()))
    return _HANDSHAKE[0], _HANDSHAKE[1]


_HANDSHAKE: list[bytes] = []


def _opened_hub() -> HubChannelCore:
    hub = HubChannelCore(ChannelCoreConfig(), hub_id=HUB_ID, device_id=DEVICE_ID, now=0.0)
    hub.receive_data(_handshake()[0], 0.0)
    if not any(isinstance(event, HelloReceived) for event in _drain(hub)):
        raise ContractViolation("the real hello did not open the hub side")
    hub.accept(FEATURES, 16)
    hub.data_to_send()
    return hub


def _opened_device() -> DeviceChannelCore:
    device = DeviceChannelCore(
        ChannelCoreConfig(), device_id=DEVICE_ID, hub_id=HUB_ID, last_acked=0, now=0.0
    )
    device.data_to_send()
    device.receive_data(_handshake()[1], 0.0)
    if not any(isinstance(event, WelcomeReceived) for event in _drain(device)):
        raise ContractViolation("the real welcome did not open the device side")
    return device


def _chunks(data: bytes) -> tuple[int, bool, list[bytes]]:
    """The first byte: bit 0 opens the channel first, bits 1-3 the read size (1..8, or the
    whole input at 0), the rest is the peer's byte stream."""
    if not data:
        return 0, False, []
    control, stream = data[0], data[1:]
    size = (control >> 1) & 0x07
    step = len(stream) if size == 0 else size * 7
    chunks = [stream[i : i + step] for i in range(0, len(stream), max(step, 1))]
    return control, bool(control & 1), chunks


@target("channel-hub", "channel.HubChannelCore fed a device's byte stream (section 4)")
def fuzz_channel_hub(data: bytes) -> None:
    control, opened, chunks = _chunks(data)
    if opened:
        hub = _opened_hub()
    else:
        hub = HubChannelCore(ChannelCoreConfig(), hub_id=HUB_ID, device_id=DEVICE_ID, now=0.0)
    events: list[ChannelEvent] = []
    now = 0.0
    for chunk in chunks:
        hub.receive_data(chunk, now)
        taken = _drain(hub)
        events += taken
        for event in taken:
            # Store-then-ACK like the daemon: acknowledge the newest frame of each batch.
            if isinstance(event, FramesReceived) and event.frames:
                hub.send_ack(max(frame.seq for frame in event.frames))
            elif isinstance(event, HelloReceived):
                hub.accept(FEATURES, 16)
        hub.data_to_send()
        now += 0.5
    if control & 0x10:
        timer = hub.get_timer()
        if timer is not None:
            hub.handle_timer(timer)
    hub.receive_eof(now)
    _check_closes(events + _drain(hub))


@target("channel-device", "channel.DeviceChannelCore fed a hub's byte stream (section 4)")
def fuzz_channel_device(data: bytes) -> None:
    control, opened, chunks = _chunks(data)
    if opened:
        device = _opened_device()
        # Frames in flight, so that the hub's ACKs and redirects have something to act on.
        for seq in range(1, 4):
            device.send_frame(seq, 1000 * seq, "image/jpeg", b"frame")
        device.data_to_send()
    else:
        device = DeviceChannelCore(
            ChannelCoreConfig(), device_id=DEVICE_ID, hub_id=HUB_ID, last_acked=0, now=0.0
        )
    events: list[ChannelEvent] = []
    now = 0.0
    for index, chunk in enumerate(chunks):
        device.receive_data(chunk, now)
        events += _drain(device)
        if control & 0x20 and index == 0 and device.can_send:
            device.start_drain(now)
        device.data_to_send()
        now += 0.5
    if control & 0x10:
        timer = device.get_timer()
        if timer is not None:
            device.handle_timer(timer)
    device.receive_eof(now)
    _check_closes(events + _drain(device))


# ---------------------------------------------------------------------------- guard


_LOGIN: list[tuple[str, Callable[[bytes], Any], Callable[[Any], bytes]]] = [
    ("hello", decode_hello, encode_hello),
    ("challenge", decode_challenge, encode_challenge),
    ("proof", decode_proof, encode_proof),
    ("accept", decode_accept, encode_accept),
    ("reject", decode_reject, encode_reject),
    ("checkpoint", decode_checkpoint, encode_checkpoint),
    ("receipt", decode_receipt, encode_receipt),
]


@target("guard-login", "guard login messages (hello … reject) and log checkpoints, receipts")
def fuzz_guard_login(data: bytes) -> None:
    for name, decode, encode in _LOGIN:
        value = _decode(decode, data)
        if value is not None:
            _same(decode(encode(value)), value, name)
    _decode(decode_checkpoint_document, data)


@target("guard-records", "the record framer, guard frames and session fields (section 6)")
def fuzz_guard_records(data: bytes) -> None:
    frame = _decode(lambda d: decode_frame(d, 1 << 16), data)
    if frame is not None:
        _same(decode_frame(encode_frame(frame), 1 << 16), frame, "guard frame")
    fields = _decode(decode_fields, data)
    if fields is not None:
        _same(decode_fields(encode_fields(fields)), fields, "session fields")
    if not data:
        return
    framer = RecordFramer(1 << 12, min_body=data[0] & 0x03, what="guard record")
    step = data[0] % 16 + 1
    try:
        for start in range(1, len(data), step):
            for body in framer.feed(data[start : start + step]):
                _decode(lambda d: decode_frame(d, 1 << 12), body)
        framer.end_of_stream()
    except Exception as error:
        _typed(error)


# --------------------------------------------------------------------------- config


_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="roost-fuzz-config-"))
_LOADERS: list[tuple[str, Callable[[Path], Any]]] = [
    ("hub.toml", load_hub_config),
    ("device.toml", load_device_config),
    ("broker.toml", load_broker_config),
]


@target("config", "config.load_hub_config, load_device_config, load_broker_config on any text")
def fuzz_config(data: bytes) -> None:
    if not data:
        return
    name, load = _LOADERS[data[0] % len(_LOADERS)]
    path = _CONFIG_DIR / name
    path.write_bytes(data[1:])
    try:
        load(path)
    except Exception as error:
        # The operator's file is not peer input; a ConfigError naming the key is the rule.
        _typed(error, peer_input=False)
        if not isinstance(error, ConfigError):
            raise ContractViolation(f"a config file raised {error!r}, not ConfigError") from error


# ------------------------------------------------------------------------ rendezvous


@target("broker-datagrams", "registration, ACK, wake-up and candidate list (section 5)")
def fuzz_broker_datagrams(data: bytes) -> None:
    received = _decode(decode_registration, data)
    if received is not None:
        registration = _decode(lambda _: verify_registration(received, REGISTRATION_KEY), data)
        if registration is not None:
            _same(encode_registration(registration, REGISTRATION_KEY), data, "registration")
    ack = _decode(decode_ack, data)
    if ack is not None:
        _same(decode_ack(encode_ack(ack)), ack, "ACK")
    wake = _decode(decode_wake, data)
    if wake is not None:
        verified = _decode(lambda _: verify_wake(wake, REGISTRATION_KEY), data)
        if verified is not None:
            _same(encode_wake(verified, REGISTRATION_KEY), data, "wake-up")
    candidates = _decode(decode_candidates, data)
    if candidates is not None:
        _same(decode_candidates(encode_candidates(candidates)), candidates, "candidates")


@target("stun", "STUN decoding, Binding request and response parsing (RFC 8489, RFC 5769)")
def fuzz_stun(data: bytes) -> None:
    message = _decode(decode_stun, data)
    if message is not None:
        _same(decode_stun(encode_stun(message)), message, "STUN message")
        _decode(lambda d: parse_binding_response(d, message.transaction_id), data)
    _decode(parse_binding_request, data)
    _decode(lambda d: parse_binding_response(d, TRANSACTION_ID), data)


@target("broker-control", "the broker's control channel bodies, relay records, sealed requests")
def fuzz_broker_control(data: bytes) -> None:
    body = _decode(decode_channel_body, data)
    if isinstance(body, RelayRecord):
        _same(decode_channel_body(encode_relay(body)), body, "relay record")
    elif body is not None:
        _same(decode_channel_body(encode_control_message(body)), body, "control message")
        sealed = getattr(body, "sealed", None)
        candidates = getattr(body, "candidates", None)
        if isinstance(sealed, bytes) and candidates is not None:
            _decode(lambda d: open_request(TARGET_KEY, TARGET_ID, d, candidates), sealed)
    _decode(lambda d: open_request(TARGET_KEY, TARGET_ID, d, ISSUER_CANDIDATES), data)


# The shared registry's values and the node link's frames: the first byte picks the
# decoder (0 presence record, 1 node message, 2 node-link address), the rest is its input.
_SHARED_DECODERS: tuple[Callable[[bytes], Any], ...] = (
    decode_presence,
    decode_node_message,
    decode_peer,
)


@target("broker-shared", "presence records, node messages and node-link addresses (Redis, links)")
def fuzz_broker_shared(data: bytes) -> None:
    if not data:
        return
    decode = _SHARED_DECODERS[data[0] % len(_SHARED_DECODERS)]
    value = _decode(decode, data[1:])
    if value is not None:
        _same(decode(value.encode()), value, "shared-registry value")
