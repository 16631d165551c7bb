"""The demo's network for its remote viewer: two namespaces behind a NAT router (act 3).

Topology, built only when run as root with ``ip`` and ``iptables`` (names carry a random
tag, so two demos never collide)::

    this machine's namespace: veth ``rdemo<tag>``, 198.19.N.1/24 (the "internet" side;
    198.18.0.0/15 is the RFC 2544 benchmark range, so no real network uses it)
      `-- roost-demo-<tag>-r (router): WAN 198.19.N.2, LAN 10.79.N.1/24, MASQUERADE
            `-- roost-demo-<tag>-v (viewer): 10.79.N.2, default route via the router

The router is a port-restricted cone (RFC 4787: endpoint-independent mapping, because
MASQUERADE keeps the source port; address-and-port-dependent filtering, because only
conntrack's replies come back in), and it drops unsolicited UDP to itself so conntrack
never confirms an entry that would make it remap the viewer's port. The broker and hub A
listen on 198.19.N.1; the viewer reaches them through the router, as from another home.

`DemoNet` is a context manager: whatever ends the block (a failure, or Ctrl-C and SIGTERM,
which the demo turns into cancelling its act), both namespaces are deleted on exit, and the
veth with the router's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from types import TracebackType

__all__ = ["DemoNet", "demo_net_unavailable"]

_PREFIX = "roost-demo-"
_COMMAND_TIMEOUT_S = 20.0


def demo_net_unavailable() -> str | None:
    """None when the namespaces can be built here, else why not (said on the console)."""
    if os.geteuid() != 0:
        return "not running as root"
    for tool in ("ip", "iptables", "sysctl"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _free_subnet() -> int:
    """A third octet N such that 198.19.N.0/24 is on no interface of this namespace."""
    used = _run(["ip", "-4", "-o", "addr", "show"])
    for _ in range(64):
        octet = 1 + secrets.randbelow(254)
        if f" 198.19.{octet}." not in used:
            return octet
    raise RuntimeError("no free 198.19.N.0/24 subnet for the demo's network")


class DemoNet:
    """Router and viewer namespaces (module docstring); use as a context manager."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.router = f"{_PREFIX}{self.tag}-r"
        self.viewer = f"{_PREFIX}{self.tag}-v"
        self._veth = f"rdemo{self.tag}"
        octet = _free_subnet()
        self.public_ip = f"198.19.{octet}.1"
        self.router_wan_ip = f"198.19.{octet}.2"
        self._lan = f"10.79.{octet}"
        self.viewer_ip = f"{self._lan}.2"
        self._made: list[str] = []
        self._veth_made = False

    def __enter__(self) -> DemoNet:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _add_namespace(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._made.append(ns)
        self._ip(ns, "link", "set", "lo", "up")

    def _ip(self, ns: str | None, *args: str) -> str:
        return _run(["ip", *(("-n", ns) if ns else ()), *args])

    def _in(self, ns: str, argv: list[str]) -> str:
        return _run(["ip", "netns", "exec", ns, *argv])

    def _build(self) -> None:
        self._add_namespace(self.router)
        self._add_namespace(self.viewer)
        # The veth's outer end is made in this namespace and its inner end moved into the
        # router at once; deleting the router namespace later destroys both.
        self._ip(
            None, "link", "add", self._veth, "type", "veth", "peer", "name", "wan", "netns",
            self.router,
        )  # fmt: skip
        self._veth_made = True
        self._ip(None, "addr", "add", f"{self.public_ip}/24", "dev", self._veth)
        self._ip(None, "link", "set", self._veth, "up")
        self._ip(self.router, "addr", "add", f"{self.router_wan_ip}/24", "dev", "wan")
        self._ip(self.router, "link", "set", "wan", "up")
        self._ip(
            self.router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns",
            self.viewer,
        )  # fmt: skip
        self._ip(self.router, "addr", "add", f"{self._lan}.1/24", "dev", "lan")
        self._ip(self.router, "link", "set", "lan", "up")
        self._ip(self.viewer, "addr", "add", f"{self.viewer_ip}/24", "dev", "eth0")
        self._ip(self.viewer, "link", "set", "eth0", "up")
        self._ip(self.viewer, "route", "add", "default", "via", f"{self._lan}.1")
        self._in(self.router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        new_udp = ["-i", "wan", "-p", "udp", "-m", "conntrack", "--ctstate", "NEW"]
        self._in(self.router, ["iptables", "-w", "-A", "INPUT", *new_udp, "-j", "DROP"])
        masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
        self._in(self.router, ["iptables", "-w", *masquerade])

    def viewer_command(self, argv: list[str]) -> list[str]:
        """`argv` as run inside the viewer's namespace."""
        return ["ip", "netns", "exec", self.viewer, *argv]

    def namespaces(self) -> list[str]:
        """The namespaces made and not yet removed."""
        return list(self._made)

    def close(self) -> None:
        """Delete the namespaces (idempotent)."""
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self._made.clear()
        # The veth is gone with the router; deleting it again covers a half-built net
        # (only ours: a name that already existed made the build fail before this was set).
        if self._veth_made:
            subprocess.run(["ip", "link", "del", self._veth], capture_output=True, timeout=20)
            self._veth_made = False
