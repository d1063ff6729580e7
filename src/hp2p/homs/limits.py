"""Rate limits of the HOMS: admin-key guessing and overlay creation (issue #11).

Admin keys are hashed with scrypt, which makes one guess expensive for the attacker *and* for
the HOMS; without a limit a client can both guess at will and keep the HOMS's CPU busy. Overlay
creation costs a scrypt hash and a row each, so it is limited too.

Token buckets, one per key, in bounded LRU tables: client addresses are attacker-chosen (with
IPv6 a client has billions), so a table that grew with every new address would be the next
attack. When a table is full the least recently used bucket is forgotten, which at worst gives
that key a fresh burst: the bound on memory matters more than a perfect memory of old keys.

Pure and clock-injected (no asyncio): the routes call it with ``time.monotonic()``, the tests
with a fake clock.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from hp2p.homs.errors import HompError

#: Entries per table by default: ~100 bytes each, so a few MB at most.
DEFAULT_TABLE_SIZE = 10_000


class RateLimitedError(HompError):
    """429 with ``Retry-After``: the caller must wait ``retry_after`` seconds."""

    def __init__(self, message: str, field: str | None, retry_after: float) -> None:
        super().__init__(429, message, field)
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1 (RFC 9110 ``Retry-After: delay-seconds``)."""
        return str(max(1, math.ceil(self.retry_after)))


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets keyed by string, refilled at ``rate`` per second up to ``burst``.

    At most ``max_entries`` buckets are kept (LRU); a full bucket carries no information, so
    buckets are also dropped once they have refilled.
    """

    def __init__(self, rate: float, burst: int, max_entries: int = DEFAULT_TABLE_SIZE) -> None:
        if rate <= 0 or burst < 1 or max_entries < 1:
            raise ValueError("a token bucket needs rate > 0, burst >= 1 and max_entries >= 1")
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _current(self, key: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= self.burst:
            del self._buckets[key]  # full again: forget it
            return None
        self._buckets.move_to_end(key)
        return bucket

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token (0: it has one now). Does not take it."""
        bucket = self._current(key, now)
        if bucket is None or bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def take(self, key: str, now: float) -> None:
        """Use one token of ``key`` (it may go negative no lower than 0)."""
        bucket = self._current(key, now)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_entries:
                self._buckets.popitem(last=False)
        bucket.tokens = max(0.0, bucket.tokens - 1)


class HomsLimits:
    """The HOMS's limits, one object on ``app.state.limits``.

    * wrong admin keys: per client address (``admin_rate`` per second, ``admin_burst``) and per
      overlay (four times both: several honest clients share an overlay, and an attacker
      rotating addresses still meets the overlay's bucket);
    * overlay creation: per client address (``create_rate``, ``create_burst``).

    A client that is over a limit gets 429 *before* its key is checked, so a guess costs the
    HOMS nothing then.
    """

    def __init__(
        self,
        *,
        admin_rate: float = 0.1,
        admin_burst: int = 10,
        create_rate: float = 1.0,
        create_burst: int = 60,
        max_entries: int = DEFAULT_TABLE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.admin_by_address = TokenBuckets(admin_rate, admin_burst, max_entries)
        self.admin_by_overlay = TokenBuckets(admin_rate * 4, admin_burst * 4, max_entries)
        self.create_by_address = TokenBuckets(create_rate, create_burst, max_entries)

    def check_admin(self, address: str, overlay_id: str, field: str) -> None:
        """Refuse (429) an admin-key attempt from ``address`` on ``overlay_id`` if over limit."""
        now = self.clock()
        wait = max(
            self.admin_by_address.wait(address, now), self.admin_by_overlay.wait(overlay_id, now)
        )
        if wait > 0:
            raise RateLimitedError(
                f"too many wrong admin keys from this address or for overlay {overlay_id!r}; "
                f"retry in {math.ceil(wait)} s",
                field,
                wait,
            )

    def admin_failed(self, address: str, overlay_id: str) -> None:
        """A wrong admin key from ``address`` for ``overlay_id``: use a token of both."""
        now = self.clock()
        self.admin_by_address.take(address, now)
        self.admin_by_overlay.take(overlay_id, now)

    def check_create(self, address: str) -> None:
        """Count an overlay creation from ``address``; 429 if it is over its limit."""
        now = self.clock()
        wait = self.create_by_address.wait(address, now)
        if wait > 0:
            raise RateLimitedError(
                f"too many overlays created from this address; retry in {math.ceil(wait)} s",
                "$.overlay",
                wait,
            )
        self.create_by_address.take(address, now)
