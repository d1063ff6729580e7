"""The virtual clock both simulated networks share (tree peers and SubMesh peers).

One heap of events ``(when, insertion order, kind, peer, conn, payload)``: ordered by virtual
time, ties broken by insertion so the same seed and calls give the same trace; and one
latency per peer pair, drawn once from the seed, so a link keeps its latency all run long.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

#: The event kind of a scheduled call (:meth:`EventHeap.at`), the same in both networks.
CALL = 7


class EventHeap:
    """Mixed into :class:`hp2p.sim.network.Network` and :class:`hp2p.sim.mesh.MeshNetwork`."""

    seed: int
    latency: tuple[float, float]
    now: float

    def _init_heap(self) -> None:
        self._heap: list[tuple[Any, ...]] = []
        self._seq = 0
        self._latencies: dict[tuple[str, str], float] = {}

    def at(self, when: float, action: Callable[[], object]) -> None:
        """Run ``action`` at virtual time ``when`` (scheduled publishes, faults …)."""
        self._push(max(when, self.now), CALL, None, 0, action)

    def _push(self, when: float, kind: int, peer: Any, conn: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, peer, conn, payload))

    def _lat(self, a: Any, b: Any) -> float:
        """The one-way latency between two peers (anything with a ``peer_id``)."""
        key = (a.peer_id, b.peer_id) if a.peer_id < b.peer_id else (b.peer_id, a.peer_id)
        value = self._latencies.get(key)
        if value is None:
            value = random.Random(f"{self.seed}:{key[0]}:{key[1]}").uniform(*self.latency)
            self._latencies[key] = value
        return value
