"""What the simulator records while it runs: publishes, deliveries, attachments, repairs.

Recording is on the hot path (one call per effect), so it appends to flat ``array``s and
computes nothing; :mod:`hp2p.sim.metrics` turns the records into figures afterwards. With
10,000 peers and hundreds of messages that is millions of deliveries: three arrays of machine
numbers instead of millions of tuples.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

from hp2p.peer.effects import Deliver, Effect, Joined
from hp2p.sim.network import SimPeer


@dataclass(slots=True)
class Observer:
    """Flat records of one run; indexes are dense integers for messages and peers."""

    peer_index: dict[str, int] = field(default_factory=dict)
    attached_at: list[float] = field(default_factory=list)  # first Joined, inf if never
    died_at: list[float] = field(default_factory=list)  # crash/leave time, inf if alive
    repaired_at: list[list[float]] = field(default_factory=list)  # Joined(repaired) times
    message_index: dict[tuple[str, int], int] = field(default_factory=dict)
    published_at: array[float] = field(default_factory=lambda: array("d"))
    from_root: bytearray = field(default_factory=bytearray)
    source_of: list[int] = field(default_factory=list)
    d_message: array[int] = field(default_factory=lambda: array("i"))
    d_peer: array[int] = field(default_factory=lambda: array("i"))
    d_time: array[float] = field(default_factory=lambda: array("d"))
    d_depth: array[int] = field(default_factory=lambda: array("h"))
    unknown_deliveries: int = 0  # deliveries of a message the observer never saw published

    def index_of(self, peer_id: str) -> int:
        index = self.peer_index.get(peer_id)
        if index is None:
            index = len(self.attached_at)
            self.peer_index[peer_id] = index
            self.attached_at.append(math.inf)
            self.died_at.append(math.inf)
            self.repaired_at.append([])
        return index

    def published(self, source: str, sequence: int, now: float, root: bool) -> None:
        self.message_index[(source, sequence)] = len(self.published_at)
        self.published_at.append(now)
        self.from_root.append(1 if root else 0)
        self.source_of.append(self.index_of(source))

    def died(self, peer_id: str, now: float) -> None:
        index = self.index_of(peer_id)
        if self.died_at[index] == math.inf:
            self.died_at[index] = now

    def on_effect(self, peer: SimPeer, effect: Effect, now: float) -> None:
        """The ``Network.on_effect`` hook: keeps deliveries and attachments, ignores the rest."""
        kind = type(effect)
        if kind is Deliver:
            message = self.message_index.get((effect.source, effect.sequence))  # type: ignore[union-attr]
            if message is None:
                self.unknown_deliveries += 1
                return
            index = self.peer_index.get(peer.peer_id)
            self.d_message.append(message)
            self.d_peer.append(self.index_of(peer.peer_id) if index is None else index)
            self.d_time.append(now)
            depth = peer.core.depth
            self.d_depth.append(-1 if depth is None else min(depth, 32_000))
        elif kind is Joined:
            assert isinstance(effect, Joined)
            index = self.index_of(peer.peer_id)
            if effect.repaired:
                self.repaired_at[index].append(now)
            elif self.attached_at[index] == math.inf:
                self.attached_at[index] = now
