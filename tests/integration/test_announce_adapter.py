"""The announce adapter on real UDP over loopback: refused datagrams are counted by the
core and logged by the adapter at most once per source host per interval (PROTOCOL.md
preamble), and the daemons never see the log events."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from cryptography import x509

from roost.hcsp.aio import AnnounceTransport, UdpConfig
from roost.hcsp.core import AnnounceConfig, AnnounceCore
from roost.hcsp.events import HcspEvent
from tests.helpers.net import time_unit

pytestmark = pytest.mark.timeout(30)
FLOOD = 50


async def test_a_datagram_flood_is_counted_in_full_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_certificate_check(leaf: x509.Certificate) -> str:
        raise AssertionError("a malformed datagram never reaches certificate checks")

    core = AnnounceCore(AnnounceConfig(refusal_log_interval=600.0), None, no_certificate_check)
    delivered: list[HcspEvent] = []
    transport = AnnounceTransport(
        core, UdpConfig(bind_host="127.0.0.1", port=0, multicast=False), delivered.append
    )
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.INFO, logger="roost.hcsp"):
        await transport.start()
        try:
            senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
            try:
                # Four sockets of one host: one source for logging.
                for index in range(FLOOD):
                    senders[index % 4].sendto(b"junk", ("127.0.0.1", transport.local_port))
                deadline = loop.time() + 10.0 * time_unit()
                while sum(core.counters.rejected.values()) < FLOOD and loop.time() < deadline:
                    await asyncio.sleep(0.02)
            finally:
                for sender in senders:
                    sender.close()
        finally:
            transport.close()
    assert sum(core.counters.rejected.values()) == FLOOD
    lines = [r.getMessage() for r in caplog.records if r.name == "roost.hcsp"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("announcement refused from 127.0.0.1:")
    assert delivered == []
