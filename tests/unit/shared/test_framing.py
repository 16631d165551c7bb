"""The shared u32 length | body framer (roost.framing), used by the device channel, the
guard's records and the broker's control channel."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import RemoteProtocolError
from roost.framing import RecordFramer, encode_record, record_length


def test_bodies_split_anywhere_come_out_whole() -> None:
    stream = b"".join(encode_record(body) for body in (b"a", b"", b"xyz" * 100))
    framer = RecordFramer(1000)
    out: list[bytes] = []
    for index in range(len(stream)):
        out += framer.feed(stream[index : index + 1])
    assert out == [b"a", b"", b"xyz" * 100]
    assert framer.buffered == 0 and not framer.inside_record
    framer.end_of_stream()


def test_oversized_length_is_refused_from_its_header_alone() -> None:
    framer = RecordFramer(10)
    with pytest.raises(RemoteProtocolError) as caught:
        framer.feed((11).to_bytes(4, "big"))
    assert caught.value.reason == "oversized"
    # The stream has lost its boundaries: every later call raises the same reason.
    with pytest.raises(RemoteProtocolError) as again:
        framer.feed(encode_record(b"ok"))
    assert again.value.reason == "oversized"


def test_minimum_body_refuses_empty_records() -> None:
    framer = RecordFramer(10, min_body=1)
    with pytest.raises(RemoteProtocolError) as caught:
        framer.feed(encode_record(b""))
    assert caught.value.reason == "empty"


def test_end_of_stream_inside_a_record_is_truncated() -> None:
    framer = RecordFramer(10)
    assert framer.feed(encode_record(b"hello")[:6]) == []
    assert framer.inside_record
    with pytest.raises(RemoteProtocolError) as caught:
        framer.end_of_stream()
    assert caught.value.reason == "truncated"


def test_bound_may_change_between_records() -> None:
    framer = RecordFramer(2)
    assert framer.feed(encode_record(b"ab")) == [b"ab"]
    framer.max_body = 5
    assert framer.feed(encode_record(b"abcde")) == [b"abcde"]


def test_record_length_checks_header_and_bound() -> None:
    assert record_length(encode_record(b"abc")[:4], 3) == 3
    with pytest.raises(RemoteProtocolError):
        record_length(b"\0\0", 10)
    with pytest.raises(RemoteProtocolError):
        record_length((11).to_bytes(4, "big"), 10)


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        RecordFramer(1, min_body=2)


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=64))
def test_random_bytes_decode_or_raise_our_error(data: bytes, bound: int) -> None:
    framer = RecordFramer(bound)
    try:
        bodies = framer.feed(data)
    except RemoteProtocolError:
        return
    assert all(len(body) <= bound for body in bodies)


@given(st.lists(st.binary(max_size=50), max_size=10), st.integers(min_value=1, max_value=7))
def test_round_trip_in_chunks(bodies: list[bytes], chunk: int) -> None:
    stream = b"".join(encode_record(body) for body in bodies)
    framer = RecordFramer(50)
    out: list[bytes] = []
    for start in range(0, len(stream), chunk):
        out += framer.feed(stream[start : start + chunk])
    assert out == bodies
