"""Test hosts in network namespaces the test creates and removes itself.

A private bridge lives in its own namespace, so nothing touches the machine's own network;
each host namespace gets a veth into it, an address in 10.231.77.0/24 and a multicast
route. Only these namespaces ever carry the test's traffic.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

SUBNET = "10.231.77"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"roost-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", probe)
    return None


@contextmanager
def bridged_hosts(count: int) -> Iterator[list[tuple[str, str]]]:
    """`count` namespaces on one bridge; yields (namespace, address) pairs."""
    tag = f"{os.getpid() % 100000}"
    bridge_ns = f"rbr{tag}"
    hosts = [(f"rh{tag}-{i}", f"{SUBNET}.{i + 1}") for i in range(count)]
    made: list[str] = []
    try:
        _ip("netns", "add", bridge_ns)
        made.append(bridge_ns)
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        for i, (ns, address) in enumerate(hosts):
            _ip("netns", "add", ns)
            made.append(ns)
            host_end, bridge_end = f"rv{tag}h{i}", f"rv{tag}b{i}"
            _ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
            _ip("link", "set", host_end, "netns", ns)
            _ip("link", "set", bridge_end, "netns", bridge_ns)
            _ip("-n", bridge_ns, "link", "set", bridge_end, "master", "br0")
            _ip("-n", bridge_ns, "link", "set", bridge_end, "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", host_end)
            _ip("-n", ns, "link", "set", host_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", host_end)
        yield hosts
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
