"""A NAT lab in network namespaces the test builds and removes (issue 9, the NAT matrix).

Topology, per `NatLab` (names carry a random tag, so parallel runs never collide)::

    inet namespace: bridge br0, 198.18.0.0/24 (RFC 2544 benchmark addresses)
        198.18.0.1  broker       198.18.0.2  second reflector       198.18.0.3  third party
      |-- side A router namespace: WAN 198.18.0.11, LAN 10.77.1.1/24, iptables, ip_forward
      |       `-- side A host namespace: 10.77.1.2, default route via the router
      `-- side B router namespace: WAN 198.18.0.12, LAN 10.77.2.1/24 ...
    A PUBLIC side has no router: its host sits on the bridge at the WAN address.

The NAT types and their RFC 4787 behaviour are declared in `tools/nat_matrix.py`; the
routers here implement them with iptables (see `_nat_rules`). Every router drops unsolicited
inbound UDP addressed to itself unless built with ``router_accepts_inbound=True``: Linux
otherwise confirms a conntrack entry for that packet, and the host's next packet to the same
peer gets a new source port (tests/integration/test_natlab.py demonstrates it).

Code reaches a namespace three ways: `NatLab.inside(ns)` switches the calling thread into
it for the length of a ``with`` block (sockets made there stay in that namespace);
`NatLab.spawn(ns, factory)` runs a coroutine on its own event loop in a thread that lives
in the namespace; `NatLab.run(ns, argv)` starts a subprocess under ``ip netns exec``.
Everything made is removed on exit, also when the test fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tests.helpers.waits import scaled
from tools.nat_matrix import NatType

__all__ = [
    "BROKER_IP",
    "INET_PREFIX",
    "REFLECTOR_IP",
    "THIRD_PARTY_IP",
    "NamespaceTask",
    "NatLab",
    "NatType",
    "Side",
    "natlab_available",
]

INET_PREFIX = "198.18.0"
BROKER_IP = f"{INET_PREFIX}.1"
REFLECTOR_IP = f"{INET_PREFIX}.2"
THIRD_PARTY_IP = f"{INET_PREFIX}.3"
_WAN_IPS = {"A": f"{INET_PREFIX}.11", "B": f"{INET_PREFIX}.12"}
_LAN_PREFIXES = {"A": "10.77.1", "B": "10.77.2"}
_UDP_TIMEOUT_SYSCTLS = (
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
)
_CLONE_NEWNET = 0x40000000
_ROOT = Path(__file__).resolve().parents[2]
_libc = ctypes.CDLL(None, use_errno=True)
_T = TypeVar("_T")


def natlab_available() -> str | None:
    """None when the lab can be built here, else the reason it cannot."""
    # Imported here so a collection that never builds a lab does not pay for the probe.
    from tests.helpers.netns import netns_available

    reason = netns_available()
    if reason is None and shutil.which("iptables") is None:
        reason = "iptables is not installed (make system-deps)"
    return reason


def _command(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=scaled(10))
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class Side:
    """One side of the lab: a host namespace, behind a router namespace unless PUBLIC."""

    name: str
    nat: NatType
    host: str
    router: str | None
    # The host's own address: on the LAN behind a router, on the bridge when public.
    host_ip: str
    # The address the internet sees for this side (the router's WAN, or the public host).
    wan_ip: str


class NamespaceTask:
    """A coroutine running on its own event loop in a thread inside a namespace."""

    def __init__(self, ns: str, factory: Callable[[], Awaitable[Any]]) -> None:
        self._future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(ns, factory), name=f"netns-{ns}", daemon=True
        )
        self._thread.start()
        if not self._started.wait(scaled(10)):
            raise RuntimeError(f"the event loop in {ns} did not start")

    def _main(self, ns: str, factory: Callable[[], Awaitable[Any]]) -> None:
        async def run() -> Any:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._started.set()
            return await factory()

        try:
            # The thread never leaves the namespace: it ends when the coroutine does.
            _enter(ns)
            self._future.set_result(asyncio.run(run()))
        except BaseException as failed:  # handed to whoever waits for it
            self._future.set_exception(failed)
        finally:
            self._started.set()

    def result(self, timeout: float) -> Any:
        """Wait for the coroutine's result (`timeout` in seconds); its exception re-raises."""
        return self._future.result(timeout)

    def done(self) -> bool:
        """Whether the coroutine has finished."""
        return self._future.done()

    def cancel(self, timeout: float = 5.0) -> None:
        """Cancel the coroutine and wait (bounded) for its thread to end."""
        if self._loop is not None and self._task is not None and not self._future.done():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(scaled(timeout))


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns into {what}: {os.strerror(errno)}")


def _enter(ns: str) -> None:
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target, ns)
    finally:
        os.close(target)


class NatLab:
    """The whole lab; use as a context manager. `a` and `b` are the two sides' NAT types."""

    def __init__(
        self,
        a: NatType = NatType.PUBLIC,
        b: NatType = NatType.PUBLIC,
        *,
        router_accepts_inbound: bool = False,
    ) -> None:
        self.tag = secrets.token_hex(3)
        self.inet = f"nx{self.tag}i"
        self.router_accepts_inbound = router_accepts_inbound
        self.sides = {
            name: Side(
                name=name,
                nat=nat,
                host=f"nx{self.tag}{name.lower()}h",
                router=None if nat is NatType.PUBLIC else f"nx{self.tag}{name.lower()}r",
                host_ip=_WAN_IPS[name] if nat is NatType.PUBLIC else f"{_LAN_PREFIXES[name]}.2",
                wan_ip=_WAN_IPS[name],
            )
            for name, nat in (("A", a), ("B", b))
        }
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._sockets: list[socket.socket] = []
        self._tasks: list[NamespaceTask] = []

    @property
    def a(self) -> Side:
        """Side A."""
        return self.sides["A"]

    @property
    def b(self) -> Side:
        """Side B."""
        return self.sides["B"]

    # Building and removing.

    def __enter__(self) -> NatLab:
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
        _command(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self.ip(ns, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_namespace(self.inet)
        self.ip(self.inet, "link", "add", "br0", "type", "bridge")
        for address in (BROKER_IP, REFLECTOR_IP, THIRD_PARTY_IP):
            self.ip(self.inet, "addr", "add", f"{address}/24", "dev", "br0")
        self.ip(self.inet, "link", "set", "br0", "up")
        for side in self.sides.values():
            self._build_side(side)

    def _veth(self, ns: str, name: str, peer_ns: str, peer: str) -> None:
        # Both ends are created inside the lab's namespaces, so no name ever appears in the
        # machine's own namespace (where a parallel run could collide with it).
        self.ip(ns, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_ns)

    def _attach(self, port: str) -> None:
        self.ip(self.inet, "link", "set", port, "master", "br0")
        self.ip(self.inet, "link", "set", port, "up")

    def _build_side(self, side: Side) -> None:
        lower = side.name.lower()
        self._add_namespace(side.host)
        if side.router is None:
            self._veth(side.host, "wan", self.inet, f"p{lower}")
            self._attach(f"p{lower}")
            self.ip(side.host, "addr", "add", f"{side.host_ip}/24", "dev", "wan")
            self.ip(side.host, "link", "set", "wan", "up")
            # Like any internet host it has a default route; a private address sent to is
            # looked up on the bridge, finds no one and is lost (no "network unreachable").
            self.ip(side.host, "route", "add", "default", "dev", "wan")
            return
        router = side.router
        self._add_namespace(router)
        self._veth(router, "wan", self.inet, f"p{lower}")
        self._attach(f"p{lower}")
        self.ip(router, "addr", "add", f"{side.wan_ip}/24", "dev", "wan")
        self.ip(router, "link", "set", "wan", "up")
        self.ip(router, "route", "add", "default", "dev", "wan")
        lan_prefix = _LAN_PREFIXES[side.name]
        self._veth(router, "lan", side.host, "eth0")
        self.ip(router, "addr", "add", f"{lan_prefix}.1/24", "dev", "lan")
        self.ip(router, "link", "set", "lan", "up")
        self.ip(side.host, "addr", "add", f"{side.host_ip}/24", "dev", "eth0")
        self.ip(side.host, "link", "set", "eth0", "up")
        self.ip(side.host, "route", "add", "default", "via", f"{lan_prefix}.1")
        self.sysctl(router, "net.ipv4.ip_forward", "1")
        for rule in _nat_rules(side, accept_inbound=self.router_accepts_inbound):
            self.exec(router, ["iptables", "-w", *rule])

    def add_public_host(self, name: str, address: str) -> str:
        """One more public host on the bridge (its own namespace at ``address``, a
        198.18.0.x of the lab), e.g. a second broker host; returns the namespace."""
        ns = f"nx{self.tag}{name}"
        self._add_namespace(ns)
        port = f"p{name}"
        self._veth(ns, "wan", self.inet, port)
        self._attach(port)
        self.ip(ns, "addr", "add", f"{address}/24", "dev", "wan")
        self.ip(ns, "link", "set", "wan", "up")
        self.ip(ns, "route", "add", "default", "dev", "wan")
        return ns

    def close(self) -> None:
        """Stop everything started in the lab and remove its namespaces (idempotent)."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=scaled(5))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=scaled(5))
        self._processes.clear()
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        # Deleting a namespace destroys the veth ends inside it, and with them their peers.
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=scaled(10))
        self._namespaces.clear()

    def namespaces(self) -> list[str]:
        """The namespaces this lab made and has not removed yet."""
        return list(self._namespaces)

    # Commands inside namespaces.

    def ip(self, ns: str, *args: str) -> str:
        """Run ``ip -n NS ARGS``; raises with stderr on failure."""
        return _command(["ip", "-n", ns, *args])

    def exec(self, ns: str, argv: list[str]) -> str:
        """Run a short command inside `ns` and return its stdout; raises on failure."""
        return _command(["ip", "netns", "exec", ns, *argv])

    def sysctl(self, ns: str, name: str, value: str | None = None) -> str:
        """Read (or set, then read back) a sysctl as seen inside `ns`."""
        if value is not None:
            self.exec(ns, ["sysctl", "-q", "-w", f"{name}={value}"])
        return self.exec(ns, ["sysctl", "-n", name]).strip()

    def set_udp_timeouts(self, ns: str, seconds: int) -> None:
        """Shorten (or lengthen) conntrack's UDP timeouts in one namespace.

        Both sysctls are set: the unreplied one covers a flow until it has seen replies for
        a while, after which the kernel switches it to the stream timeout.
        """
        for name in _UDP_TIMEOUT_SYSCTLS:
            self.sysctl(ns, name, str(seconds))

    def udp_timeouts(self, ns: str) -> tuple[int, int]:
        """(unreplied, stream) conntrack UDP timeouts in `ns`, in seconds."""
        unreplied, stream = (int(self.sysctl(ns, name)) for name in _UDP_TIMEOUT_SYSCTLS)
        return unreplied, stream

    def run(
        self, ns: str, argv: list[str], env: dict[str, str] | None = None, **popen: Any
    ) -> subprocess.Popen[bytes]:
        """Start `argv` inside `ns`; it is terminated (then killed) when the lab closes.

        The environment is the test's own plus `env`, with the checkout's ``src`` and root
        on PYTHONPATH so ``python -m roost ...`` and ``python -m tests.helpers...`` work.
        """
        path = os.pathsep.join([str(_ROOT / "src"), str(_ROOT)])
        full_env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **(env or {})}
        popen.setdefault("cwd", str(_ROOT))
        process = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=full_env, **popen)
        self._processes.append(process)
        return process

    def python(self, ns: str, module: str, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
        """`run` of ``python -m MODULE ARGS`` with the test's interpreter."""
        return self.run(ns, [sys.executable, "-m", module, *args], **popen)

    def delay(self, side: Side, delay_ms: float, queue: int = 0) -> subprocess.Popen[bytes]:
        """Delay every UDP datagram the side's host sends or receives by `delay_ms`.

        An NFQUEUE delayer (`tests.helpers.nfqdelay`) runs in the host namespace and holds
        each datagram before accepting it, so addresses, NAT and conntrack are untouched and
        a round trip from the host gains twice the delay. The rules are added only once the
        delayer has bound its queue, and bypass it if the delayer is gone.
        """
        delayer = self.python(
            side.host,
            "tests.helpers.nfqdelay",
            "--queue",
            str(queue),
            "--delay-ms",
            str(delay_ms),
            stdout=subprocess.PIPE,
        )
        assert delayer.stdout is not None
        ready = delayer.stdout.readline().decode().strip()
        if ready != f"ready queue {queue}":
            raise RuntimeError(f"the NFQUEUE delayer did not start: {ready!r}")
        queue_args = ["-p", "udp", "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
        self.exec(
            side.host,
            ["iptables", "-w", "-t", "mangle", "-A", "OUTPUT", "!", "-o", "lo", *queue_args],
        )
        self.exec(
            side.host,
            ["iptables", "-w", "-t", "mangle", "-A", "INPUT", "!", "-i", "lo", *queue_args],
        )
        return delayer

    @contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        """Switch the calling thread into `ns` for the block, then back.

        Only this thread moves (setns affects the calling thread); a socket created in the
        block belongs to `ns` for its whole life.
        """
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _enter(ns)
            try:
                yield
            finally:
                _setns(own, "the test's own namespace")
        finally:
            os.close(own)

    def udp_socket(self, ns: str, bind: tuple[str, int] = ("0.0.0.0", 0)) -> socket.socket:
        """A UDP socket made and bound inside `ns`; closed when the lab closes."""
        with self.inside(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sockets.append(sock)
        sock.bind(bind)
        return sock

    def spawn(self, ns: str, factory: Callable[[], Awaitable[_T]]) -> NamespaceTask:
        """Run ``await factory()`` on a fresh event loop in a thread inside `ns`."""
        task = NamespaceTask(ns, factory)
        self._tasks.append(task)
        return task


def _nat_rules(side: Side, *, accept_inbound: bool) -> list[list[str]]:
    """iptables argument lists that make `side.router` behave as `side.nat` declares."""
    masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
    rules: list[list[str]] = []
    if not accept_inbound:
        # A home router does not answer unsolicited UDP to itself. Dropping in INPUT also
        # keeps conntrack from confirming an entry for it (see the module docstring).
        new_udp = ["-i", "wan", "-p", "udp", "-m", "conntrack", "--ctstate", "NEW"]
        rules.append(["-A", "INPUT", *new_udp, "-j", "DROP"])
    if side.nat is NatType.FULL_CONE:
        # Endpoint-independent filtering: any inbound UDP to the WAN goes to the host, to
        # the same port, which MASQUERADE kept when the host sent out (RFC 4787 section 5).
        rules.append(masquerade)
        inbound = ["-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp"]
        rules.append([*inbound, "-j", "DNAT", "--to-destination", side.host_ip])
    elif side.nat is NatType.PORT_RESTRICTED:
        rules.append(masquerade)
    elif side.nat is NatType.SYMMETRIC:
        rules.append([*masquerade, "--random"])
    elif side.nat is NatType.UDP_BLOCKED:
        rules.append(masquerade)
        rules.append(["-A", "FORWARD", "-p", "udp", "-j", "DROP"])
    else:
        raise ValueError(f"{side.nat} needs no router")
    return rules
