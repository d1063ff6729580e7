"""Deadlines of the sans-IO core: a heap of named timers, cancelled by re-arming.

The core has no clock; it remembers *when* something must happen and the shell calls
``handle_timer(now)`` at ``next_timer()``. Each timer name holds at most one live deadline:
arming a name again supersedes the previous deadline, and ``cancel`` drops it. Superseded heap
entries are skipped lazily when they surface, which keeps arming O(log n) with no search.
"""

from __future__ import annotations

import heapq


class Timers:
    __slots__ = ("_generation", "_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, int]] = []
        self._live: dict[str, int] = {}
        self._generation = 0
        self._seq = 0

    def arm(self, name: str, when: float) -> None:
        self._generation += 1
        self._live[name] = self._generation
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, name, self._generation))

    def cancel(self, name: str) -> None:
        self._live.pop(name, None)

    def clear(self) -> None:
        """Cancel every timer (the peer released everything and starts over)."""
        self._live.clear()
        self._heap.clear()

    def armed(self, name: str) -> bool:
        return name in self._live

    def next(self) -> float | None:
        heap = self._heap
        while heap and self._live.get(heap[0][2]) != heap[0][3]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[str]:
        """Names whose deadline is ``<= now``, earliest first; each fires once."""
        due: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, name, generation = heapq.heappop(heap)
            if self._live.get(name) == generation:
                del self._live[name]
                due.append(name)
        return due
