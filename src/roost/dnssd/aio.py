"""The zeroconf adapter of DNS-SD: publish a hub, browse for hubs (asyncio API).

Thin on purpose: python-zeroconf's `AsyncZeroconf` does mDNS (RFC 6762) and DNS-SD
(RFC 6763); `roost.dnssd.records` decides what a record says. Zeroconf is bound to the
interfaces the node uses and to IPv4 only, so nothing is sent to any other network: a hub
publishes on the interface of the address it announces, a device browses on its announce
interfaces (docs/hub-and-device.md, "Finding hubs with DNS-SD").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from roost.dnssd.records import (
    MAX_RECORDS,
    SERVICE_TYPE,
    DnsSdSettings,
    HubRecord,
    host_name,
    instance_name,
    parse_record,
    txt_properties,
)
from roost.errors import RemoteProtocolError, TransportError
from roost.reasons import Reason, RejectionCounter, log_rejection

__all__ = ["DnsSdNode", "DnsSdSettings", "discover_hubs", "start_browsing"]

log = logging.getLogger("roost.dnssd")
# How long one resolution of a found instance (SRV, TXT, A) may take.
_RESOLVE_MS = 3000
_REFUSAL_LOG_INTERVAL = 60.0


class DnsSdNode:
    """One zeroconf instance for a node: it may publish one hub and browse for others."""

    def __init__(self, interfaces: Sequence[str] = ()) -> None:
        self.interfaces = tuple(interfaces)
        self.found: dict[str, HubRecord] = {}
        self.rejected: collections.Counter[str] = collections.Counter()
        self._refusals = RejectionCounter(_REFUSAL_LOG_INTERVAL)
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._published: AsyncServiceInfo | None = None
        self._names: dict[str, str] = {}
        self._on_change: Callable[[tuple[HubRecord, ...]], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def zeroconf(self) -> AsyncZeroconf:
        if self._zeroconf is None:
            from zeroconf import InterfaceChoice

            chosen: Any = list(self.interfaces) if self.interfaces else InterfaceChoice.Default
            self._zeroconf = AsyncZeroconf(interfaces=chosen, ip_version=IPVersion.V4Only)
        return self._zeroconf

    # --------------------------------------------------------------------------- publish

    async def publish(self, record: HubRecord) -> None:
        """Register ``record``; a name taken on the LAN is changed, not fought over."""
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            instance_name(record),
            addresses=[socket.inet_aton(record.host)],
            port=record.port,
            properties=txt_properties(record),
            server=host_name(record),
        )
        await self.zeroconf.async_register_service(info, allow_name_change=True)
        self._published = info
        log.info("published %s on %s", info.name, self.interfaces or "the default interface")

    # ---------------------------------------------------------------------------- browse

    def browse(self, on_change: Callable[[tuple[HubRecord, ...]], None]) -> None:
        """Follow ``_roost._tcp`` instances; ``on_change`` gets every found hub on change."""
        self._on_change = on_change
        self._browser = AsyncServiceBrowser(
            self.zeroconf.zeroconf, SERVICE_TYPE, handlers=[self._state_changed]
        )

    def _state_changed(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            identifier = self._names.pop(name, None)
            if identifier is not None and self.found.pop(identifier, None) is not None:
                self._changed()
            return
        task = asyncio.ensure_future(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self.zeroconf.zeroconf, _RESOLVE_MS):
            return
        try:
            record = parse_record(info.properties, info.parsed_addresses(), info.port or 0)
        except RemoteProtocolError as exc:
            self.rejected[exc.reason] += 1
            now = asyncio.get_running_loop().time()
            log_rejection(log, self._refusals, exc, source=name, now=now, what="record")
            return
        if record.identifier not in self.found and len(self.found) >= MAX_RECORDS:
            self.rejected[Reason.REFUSED] += 1
            return
        previous = self._names.get(name)
        if previous is not None and previous != record.identifier:
            self.found.pop(previous, None)
        self._names[name] = record.identifier
        if self.found.get(record.identifier) != record:
            self.found[record.identifier] = record
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(tuple(sorted(self.found.values(), key=lambda r: r.identifier)))

    # ----------------------------------------------------------------------------- close

    async def close(self) -> None:
        """Withdraw the published hub (goodbye packets) and stop browsing."""
        for task in list(self._tasks):
            task.cancel()
        if self._zeroconf is None:
            return
        with contextlib.suppress(Exception):
            if self._browser is not None:
                await self._browser.async_cancel()
            if self._published is not None:
                await self._zeroconf.async_unregister_service(self._published)
        await self._zeroconf.async_close()
        self._zeroconf = None


async def start_browsing(
    interfaces: Sequence[str], on_change: Callable[[tuple[HubRecord, ...]], None]
) -> DnsSdNode | None:
    """A node browsing on ``interfaces``, or None (logged) when mDNS cannot be used here,
    for example because no such interface exists: DNS-SD is a hint beside announcements
    and bootstrap hubs, so its absence must not stop a daemon."""
    node = DnsSdNode(interfaces)
    try:
        node.browse(on_change)
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning(
            "DNS-SD unavailable on %s: %s", list(interfaces) or "the default interface", exc
        )
        await node.close()
        return None
    return node


async def discover_hubs(interfaces: Sequence[str], timeout: float) -> tuple[HubRecord, ...]:
    """Browse for ``timeout`` seconds; every hub found, by identifier (``roost discover``)."""
    node = DnsSdNode(interfaces)
    try:
        try:
            node.browse(lambda records: None)
        except OSError as exc:
            where = list(interfaces) or "the default interface"
            raise TransportError(
                f"mDNS is not available on {where}: {exc}", reason=Reason.TRANSPORT
            ) from exc
        await asyncio.sleep(timeout)
        return tuple(sorted(node.found.values(), key=lambda r: (r.name, r.identifier)))
    finally:
        await node.close()
