"""What the application reads from a peer: deliveries and gaps, in one bounded queue.

A subscriber must never stall the tree, so the peer puts without waiting and a full queue
drops its *oldest delivery*, telling the reader how many it lost with the next one it gets.
A :class:`~hp2p.peer.effects.Gap` (messages no peer could serve any more) is a different
kind of news: dropping it would turn a reported loss into a silent one, so gaps never count
against the queue's size and are never dropped while a delivery could be dropped instead;
they reach the reader in the order the peer learned of them, relative to the deliveries.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, cast

from hp2p.peer.effects import Gap

__all__ = ["Delivery", "Gap", "Subscription"]

#: Gaps a reader that never reads may have queued; beyond, the oldest are merged per source.
MAX_QUEUED_GAPS = 4096


@dataclass(frozen=True, slots=True)
class Delivery:
    """One broadcast message for the application (exactly once per source and sequence).

    ``lost`` counts the messages this subscriber missed just before this one because it read
    too slowly (its queue was full).
    """

    source: str
    sequence: int
    data: bytes
    app_id: str | None
    payload_type: str
    recovered: bool = False
    lost: int = 0


ItemT = TypeVar("ItemT")


class Subscription(Generic[ItemT]):
    """A bounded queue of deliveries (and gaps, when asked for); iterate it with ``async for``.

    ``Subscription[Delivery]`` is what the peer's own applications (bridge, local tools) use;
    ``Subscription[Delivery | Gap]`` is what :meth:`hp2p.peer.api.Peer.messages` gives; a
    SubMesh peer's is ``Subscription[MeshDelivery]``. A delivery type is a dataclass with a
    ``lost`` field, which the queue sets on the first delivery after a drop.
    """

    def __init__(
        self,
        maxsize: int,
        on_close: Callable[[Subscription[ItemT]], None],
        *,
        gaps: bool = False,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"a subscription queue holds at least 1 message, got {maxsize}")
        self.maxsize = maxsize
        self.wants_gaps = gaps
        self.dropped = 0
        self.gaps_merged = 0
        self.gaps_dropped = 0
        self._queue: deque[Any] = deque()
        self._lost_before: deque[int] = deque()
        self._lost_pending = 0
        # Each queued gap with the count of deliveries put before it: it is due once that
        # many deliveries have left the queue (read or dropped).
        self._gaps: deque[tuple[int, Gap]] = deque()
        self._put_total = 0
        self._gone_total = 0
        self._ready = asyncio.Event()
        self._closed = False
        self._on_close: Callable[[Subscription[ItemT]], None] = on_close

    def put(self, delivery: ItemT) -> None:
        if self._closed:
            return
        if len(self._queue) >= self.maxsize:
            self._queue.popleft()
            self._gone_total += 1
            lost = self._lost_before.popleft() + 1
            self.dropped += 1
            if self._lost_before:
                self._lost_before[0] += lost
            else:
                self._lost_pending += lost
        self._queue.append(delivery)
        self._put_total += 1
        self._lost_before.append(self._lost_pending)
        self._lost_pending = 0
        self._ready.set()

    def put_gap(self, gap: Gap) -> None:
        """Queue a gap for a subscriber that asked for gaps (others ignore it)."""
        if self._closed or not self.wants_gaps:
            return
        if len(self._gaps) >= MAX_QUEUED_GAPS:
            # A reader this far behind still learns every lost range, coarser: the two
            # oldest gaps of the oldest one's source become one range.
            self._merge_oldest()
        self._gaps.append((self._put_total, gap))
        self._ready.set()

    def _merge_oldest(self) -> None:
        due, oldest = self._gaps.popleft()
        for i, (later_due, other) in enumerate(self._gaps):
            if other.source == oldest.source:
                del self._gaps[i]
                low, high = min(oldest.first, other.first), max(oldest.last, other.last)
                self._gaps.appendleft((min(due, later_due), Gap(oldest.source, low, high)))
                self.gaps_merged += 1
                return
        # Thousands of sources each with one gap and a reader that never reads: the oldest
        # is dropped, counted here (and it stays in the peer's log, status and events).
        self.gaps_dropped += 1

    def get_nowait(self) -> ItemT | None:
        if self._gaps and self._gaps[0][0] <= self._gone_total:
            _, gap = self._gaps.popleft()
            self._settle()
            news: Any = gap
            return cast(ItemT, news)
        if not self._queue:
            return None
        delivery = self._queue.popleft()
        self._gone_total += 1
        lost = self._lost_before.popleft()
        self._settle()
        item: Any = replace(delivery, lost=lost) if lost else delivery
        return cast(ItemT, item)

    def _settle(self) -> None:
        if not self._queue and not self._gaps:
            self._ready.clear()

    async def get(self) -> ItemT:
        """The next item; raises ``StopAsyncIteration`` once the subscription is closed."""
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            if self._closed:
                raise StopAsyncIteration
            await self._ready.wait()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.set()
            self._on_close(self)

    def __aiter__(self) -> Subscription[ItemT]:
        return self

    async def __anext__(self) -> ItemT:
        return await self.get()
