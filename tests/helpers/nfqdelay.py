"""An NFQUEUE delayer: holds every queued packet for a fixed time, then accepts it.

The lab's kernel has no netem qdisc. A userspace UDP forwarder (`tests.helpers.udpdelay`)
adds delay but changes the addresses the far end sees, which breaks hole punching; this
delayer does not. An iptables rule sends packets to an NFQUEUE queue, the kernel holds each
one until userspace gives its verdict, and this module gives ``NF_ACCEPT`` `delay_s` after
the packet arrived, so the packet continues exactly as it would have (NAT, conntrack and
addresses untouched), only later. It speaks nfnetlink_queue directly over a netlink socket
(``linux/netfilter/nfnetlink_queue.h``), so nothing beyond the kernel is needed.

`NatLab.delay(side, delay_ms)` runs it (``python -m tests.helpers.nfqdelay``) in the side's
host namespace and queues that namespace's UDP in both directions, so a round trip from the
host gains ``2 * delay``. Bounded: the kernel queue holds at most `max_held` packets (more
are dropped, as a full link would), and the delayer holds no more than that.
"""

from __future__ import annotations

import argparse
import heapq
import os
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass

__all__ = ["DelayerCounters", "NfqueueDelayer", "main"]

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_QUEUE = 3
_NFQNL_MSG_PACKET = 0
_NFQNL_MSG_VERDICT = 1
_NFQNL_MSG_CONFIG = 2
_NFQA_PACKET_HDR = 1
_NFQA_VERDICT_HDR = 2
_NFQA_CFG_CMD = 1
_NFQA_CFG_PARAMS = 2
_NFQA_CFG_QUEUE_MAXLEN = 3
_NFQNL_CFG_CMD_BIND = 1
_NFQNL_COPY_META = 1
_NF_ACCEPT = 1
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_NLMSG_ERROR = 2
_NLMSG_HEADER = struct.Struct("=IHHII")


@dataclass(slots=True)
class DelayerCounters:
    """What the delayer did."""

    accepted: int = 0
    max_held: int = 0


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _attributes(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


class NfqueueDelayer:
    """Bind NFQUEUE `queue` in the current namespace and delay each packet by `delay_s`."""

    def __init__(self, queue: int, delay_s: float, *, max_held: int = 4096) -> None:
        self.queue = queue
        self.delay_s = delay_s
        self.max_held = max_held
        self.counters = DelayerCounters()
        self._sequence = 0
        self._held: list[tuple[float, int]] = []
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        self._socket.bind((0, 0))
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._configure(_attribute(_NFQA_CFG_CMD, struct.pack(">BxH", _NFQNL_CFG_CMD_BIND, 0)))
        self._configure(_attribute(_NFQA_CFG_PARAMS, struct.pack(">IB", 0, _NFQNL_COPY_META)))
        self._configure(_attribute(_NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", max_held)))

    def _message(self, kind: int, flags: int, body: bytes) -> bytes:
        self._sequence += 1
        header = _NLMSG_HEADER.pack(
            _NLMSG_HEADER.size + 4 + len(body),
            (_NFNL_SUBSYS_QUEUE << 8) | kind,
            _NLM_F_REQUEST | flags,
            self._sequence,
            0,
        )
        # nfgenmsg: family AF_UNSPEC, version 0, the queue number big-endian.
        return (
            header + struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", self.queue) + body
        )

    def _configure(self, attributes: bytes) -> None:
        self._socket.send(self._message(_NFQNL_MSG_CONFIG, _NLM_F_ACK, attributes))
        for _ in range(16):
            data = self._socket.recv(65536)
            _, kind, _, sequence, _ = _NLMSG_HEADER.unpack_from(data)
            if kind == _NLMSG_ERROR and sequence == self._sequence:
                (error,) = struct.unpack_from("=i", data, _NLMSG_HEADER.size)
                if error != 0:
                    raise OSError(-error, f"nfqueue config: {os.strerror(-error)}")
                return
        raise OSError("nfqueue config: no acknowledgement")

    def fileno(self) -> int:
        """The netlink socket, for a caller's own select loop."""
        return self._socket.fileno()

    def _receive(self, now: float) -> None:
        data = self._socket.recv(65536)
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
            if length < _NLMSG_HEADER.size:
                break
            if kind == (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_PACKET:
                body = data[offset + _NLMSG_HEADER.size + 4 : offset + length]
                header = _attributes(body).get(_NFQA_PACKET_HDR)
                if header is not None:
                    (packet_id,) = struct.unpack_from(">I", header)
                    heapq.heappush(self._held, (now + self.delay_s, packet_id))
                    self.counters.max_held = max(self.counters.max_held, len(self._held))
            offset += (length + 3) & ~3

    def _release(self, now: float) -> None:
        while self._held and self._held[0][0] <= now:
            _, packet_id = heapq.heappop(self._held)
            verdict = _attribute(_NFQA_VERDICT_HDR, struct.pack(">II", _NF_ACCEPT, packet_id))
            self._socket.send(self._message(_NFQNL_MSG_VERDICT, 0, verdict))
            self.counters.accepted += 1

    def step(self, wait_s: float) -> None:
        """Wait at most `wait_s` (less when a held packet is due), then give due verdicts."""
        now = time.monotonic()
        if self._held:
            wait_s = min(wait_s, max(0.0, self._held[0][0] - now))
        readable, _, _ = select.select([self._socket], [], [], wait_s)
        if readable:
            self._receive(time.monotonic())
        self._release(time.monotonic())

    def close(self) -> None:
        """Close the socket; the kernel drops what is still held (the queue is gone)."""
        self._socket.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.helpers.nfqdelay --queue N --delay-ms D``: runs until SIGTERM."""
    parser = argparse.ArgumentParser(description="NFQUEUE delayer")
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args(argv)
    delayer = NfqueueDelayer(args.queue, args.delay_ms / 1000.0)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ready queue {args.queue}", flush=True)
    try:
        while not stopping:
            delayer.step(0.5)
    finally:
        delayer.close()


if __name__ == "__main__":
    main()
