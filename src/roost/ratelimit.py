"""Per-source token buckets in a bounded table (PROTOCOL.md section 3 receive order, step 3), pure.

Shared by the announcement receiver, the remote entrance and the broker.

The limit runs before any parsing of the document or any public-key work, so a flood from
one address is shed for the price of a dictionary lookup (research/handover.md §3 item 9).
The table is bounded like python-zeroconf's caches: when it is full, the least recently
used bucket is evicted only if it has refilled completely, because a full bucket behaves
exactly like an absent one. Otherwise the new source is refused, so a spoofed-source flood
cannot push out the buckets of sources that are actually busy.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from roost.errors import RefusedError

__all__ = ["SourceRateLimiter", "source_key"]


def source_key(host: str, ipv6_prefix: int = 64) -> str:
    """The source a per-source limit counts: an IPv4 address as it is, an IPv6 address by
    its /64 network (one host or one home holds a whole /64), an IPv4-mapped IPv6 address
    as its IPv4 address. Every port of one source is the same source."""
    if ":" not in host:
        return host  # IPv4 (or a name): the fast path of a datagram flood
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class SourceRateLimiter:
    """Token bucket per source host: ``rate`` tokens per second, at most ``burst`` banked."""

    __slots__ = ("_buckets", "_burst", "_max_sources", "_rate")

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate limit needs rate > 0, burst >= 1 and room for one source")
        self._rate = rate
        self._burst = burst
        self._max_sources = max_sources
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = max(bucket.updated, now)

    def take(self, source: str, now: float) -> None:
        """Spend one token for ``source``; raises RefusedError when none is left.

        Reasons: ``rate-limited`` (this source is flooding) and ``source-table-full``
        (too many distinct sources are active at once).
        """
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._admit(source, now)
        else:
            self._buckets.move_to_end(source)
            self._refill(bucket, now)
        if bucket.tokens < 1:
            raise RefusedError(f"{source} exceeds its rate limit", reason="rate-limited")
        bucket.tokens -= 1

    def _admit(self, source: str, now: float) -> _Bucket:
        if len(self._buckets) >= self._max_sources:
            oldest_source, oldest = next(iter(self._buckets.items()))
            self._refill(oldest, now)
            if oldest.tokens < self._burst:
                raise RefusedError("too many active sources", reason="source-table-full")
            del self._buckets[oldest_source]
        bucket = _Bucket(self._burst, now)
        self._buckets[source] = bucket
        return bucket
