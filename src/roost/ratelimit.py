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

from collections import OrderedDict

from roost.errors import RefusedError

__all__ = ["SourceRateLimiter", "TokenBucket"]


class TokenBucket:
    """One token bucket: ``rate`` tokens per second, at most ``burst`` banked (a global
    limit, or one source's entry in a :class:`SourceRateLimiter`)."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def refill(self, now: float) -> None:
        """Bank what accrued since the last update (time never runs backwards here)."""
        elapsed = now - self.updated
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.updated = now

    def spend(self, now: float) -> bool:
        """Take one token if there is one; False when the bucket is empty."""
        self.refill(now)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def take(self, now: float) -> None:
        """Take one token; raises RefusedError("rate-limited") when none is left."""
        if not self.spend(now):
            raise RefusedError("rate limit exceeded", reason="rate-limited")


class SourceRateLimiter:
    """Token bucket per source host: ``rate`` tokens per second, at most ``burst`` banked."""

    __slots__ = ("_buckets", "_burst", "_max_sources", "_rate")

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate limit needs rate > 0, burst >= 1 and room for one source")
        self._rate = rate
        self._burst = burst
        self._max_sources = max_sources
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

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
        if not bucket.spend(now):
            raise RefusedError(f"{source} exceeds its rate limit", reason="rate-limited")

    def _admit(self, source: str, now: float) -> TokenBucket:
        if len(self._buckets) >= self._max_sources:
            oldest_source, oldest = next(iter(self._buckets.items()))
            oldest.refill(now)
            if oldest.tokens < self._burst:
                raise RefusedError("too many active sources", reason="source-table-full")
            del self._buckets[oldest_source]
        bucket = TokenBucket(self._rate, self._burst, now)
        self._buckets[source] = bucket
        return bucket
