"""The announce core's logging rule (PROTOCOL.md preamble): every refused datagram is
counted, and a log line (an ``AnnouncementRefused`` event) is due at most once per source
host per ``refusal_log_interval``. In memory, under a fake clock."""

from __future__ import annotations

import pytest

from roost.hcsp.core import AnnounceConfig, AnnounceCore
from roost.hcsp.events import AnnouncementRefused, HcspEvent

from .hubs import device_core, new_ca

WALL = 1_790_000_000_000
CA = new_ca()
# Too short to carry the preamble: refused at step 1 of the receive order, before the
# per-source rate limit, so every datagram of the flood is refused for the same reason.
BAD = b"not an announcement"


def _drain(core: AnnounceCore) -> list[HcspEvent]:
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events


def _flood(
    core: AnnounceCore, hosts: tuple[str, ...], count: int, seconds: float
) -> list[AnnouncementRefused]:
    """``count`` bad datagrams per host, evenly over ``seconds``, from 64 ports each."""
    refused: list[AnnouncementRefused] = []
    for i in range(count):
        now = seconds * i / count
        for host in hosts:
            core.receive_datagram(BAD, (host, 40000 + i % 64), now, WALL + int(now * 1000))
        for event in _drain(core):
            assert isinstance(event, AnnouncementRefused)
            refused.append(event)
    return refused


def _reason(core: AnnounceCore) -> str:
    (reason,) = core.counters.rejected
    return reason


def test_a_flood_from_one_host_costs_one_event_per_interval() -> None:
    interval = 2.0
    core = device_core(CA, AnnounceConfig(refusal_log_interval=interval))
    refused = _flood(core, ("192.168.1.66",), 1000, 10.0)
    # Every refusal is still counted, whatever the log rule says.
    assert core.counters.rejected[_reason(core)] == 1000
    # Datagrams arrive every 10 ms, so a line is due at 0, 2, 4, 6 and 8 s.
    per_interval = round(interval / (10.0 / 1000))
    assert len(refused) == 5
    assert [e.suppressed for e in refused] == [0] + [per_interval - 1] * 4
    assert {e.source_host for e in refused} == {"192.168.1.66"}
    assert {e.reason for e in refused} == {_reason(core)}
    # What the lines report plus what is still waiting for the next one is the whole flood.
    waiting = 1000 - (4 * per_interval + 1)  # the datagrams after the line at 8 s
    assert len(refused) + sum(e.suppressed for e in refused) + waiting == 1000


def test_the_next_line_reports_what_was_suppressed() -> None:
    core = device_core(CA, AnnounceConfig(refusal_log_interval=60.0))
    _flood(core, ("10.0.0.5",), 1000, 10.0)
    # Quiet until the interval has passed since the first line at 0 s.
    core.receive_datagram(BAD, ("10.0.0.5", 1), 59.9, WALL + 59_900)
    assert _drain(core) == []
    core.receive_datagram(BAD, ("10.0.0.5", 2), 60.0, WALL + 60_000)
    (line,) = _drain(core)
    assert isinstance(line, AnnouncementRefused)
    assert (line.source_host, line.source_port, line.suppressed) == ("10.0.0.5", 2, 1000)
    assert core.counters.rejected[_reason(core)] == 1002


def test_two_hosts_get_their_own_lines() -> None:
    core = device_core(CA, AnnounceConfig(refusal_log_interval=5.0))
    refused = _flood(core, ("192.168.1.66", "192.168.1.77"), 1000, 10.0)
    assert core.counters.rejected[_reason(core)] == 2000
    by_host = {
        host: [e.suppressed for e in refused if e.source_host == host]
        for host in ("192.168.1.66", "192.168.1.77")
    }
    # Lines at 0 and 5 s for each host; one host's flood never silences the other.
    assert by_host == {"192.168.1.66": [0, 499], "192.168.1.77": [0, 499]}


def test_a_mapped_ipv4_source_is_the_same_host() -> None:
    core = device_core(CA, AnnounceConfig(refusal_log_interval=60.0))
    core.receive_datagram(BAD, ("192.168.1.66", 1), 0.0, WALL)
    core.receive_datagram(BAD, ("::ffff:192.168.1.66", 2), 1.0, WALL + 1000)
    (line,) = _drain(core)
    assert isinstance(line, AnnouncementRefused) and line.source_host == "192.168.1.66"


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refusal_log_interval"):
        AnnounceConfig(refusal_log_interval=0.0)
