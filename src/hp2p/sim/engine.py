"""The simulator's network: ``hp2p.sim.network.Network`` plus a link model and traffic accounting.

``Network`` already runs the real ``PeerCore``s and the HOMS model (``MemoryHoms``, which uses
``hp2p.homs.peerlist``) from one heap on a virtual clock. This subclass adds what a study of the
overlay needs and tests do not:

* per-pair latency from a :class:`~hp2p.sim.links.LinkModel` (fixed, uniform, log-normal,
  King-style geography) instead of a uniform draw;
* per-message jitter (FIFO per connection, like a stream), loss, bandwidth and partitions;
* counters of payload copies and control bytes, for RMR and control overhead;
* a mass crash in one pass over the connection table (``crash`` scans it once per peer, which
  is too slow for thousands of victims).

The hot path stays in ``Network``: with a plain link model (no jitter/loss/bandwidth/partition)
``_send`` only adds two counters to the parent's work.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from heapq import heappush
from typing import Any

from hp2p.peer.config import PeerConfig
from hp2p.peer.effects import (
    Effect,
    Send,
)
from hp2p.sim import network as _network
from hp2p.sim.links import LinkModel
from hp2p.sim.network import MemoryHoms, Network, SimPeer
from hp2p.wire.r2 import encode
from hp2p.wire.r2.messages import BroadcastData, GetDataResponse, Message

_RECV = _network._RECV


@dataclass(slots=True)
class Traffic:
    """Message counters since the start of the run (take differences for a window)."""

    payload_copies: int = 0  # BROADCAST_DATA / GET_DATA answers put on a link
    payload_bytes: int = 0  # their application data
    control_messages: int = 0
    control_bytes: int = 0  # encoded size of every other R2 message
    dropped: int = 0  # lost by the link model (loss or partition)

    def minus(self, other: Traffic) -> Traffic:
        return Traffic(
            self.payload_copies - other.payload_copies,
            self.payload_bytes - other.payload_bytes,
            self.control_messages - other.control_messages,
            self.control_bytes - other.control_bytes,
            self.dropped - other.dropped,
        )

    def copy(self) -> Traffic:
        return self.minus(Traffic())


class SimNetwork(Network):
    """A :class:`Network` whose links follow a :class:`LinkModel` and whose traffic is counted."""

    def __init__(
        self,
        seed: int = 0,
        config: PeerConfig | None = None,
        links: LinkModel | None = None,
        homs: MemoryHoms | None = None,
        codec: bool = False,
        on_effect: Callable[[SimPeer, Effect, float], None] | None = None,
    ) -> None:
        self.links = links or LinkModel(seed=seed)
        super().__init__(
            seed=seed,
            config=config,
            latency=(0.0, self._max_latency_guess()),
            homs=homs,
            codec=codec,
            record=False,
            on_effect=on_effect,
        )
        self.traffic = Traffic()
        self._sizes: dict[type[Any], tuple[int, int]] = {}  # type -> (size, uses left)
        self._drop_rng = random.Random(f"{seed}:link-model-loss")
        self._jitter_rng = random.Random(f"{seed}:jitter")
        self._last_arrival: dict[tuple[str, int], float] = {}
        self._busy_until: dict[tuple[str, int], float] = {}

    def _max_latency_guess(self) -> float:
        """Delay before a connect to an unknown address fails (the parent uses latency[1])."""
        lat = self.links.latency
        return max(lat.a, lat.b if lat.kind in ("uniform", "fixed") else 0.0, 0.01)

    # --- link model --------------------------------------------------------------------------
    def _lat(self, a: SimPeer, b: SimPeer) -> float:
        key = (a.peer_id, b.peer_id) if a.peer_id < b.peer_id else (b.peer_id, a.peer_id)
        value = self._latencies.get(key)
        if value is None:
            value = self.links.pair_latency(a.peer_id, b.peer_id)
            self._latencies[key] = value
        return value

    def _control_size(self, message: Message) -> int:
        """Encoded size of a control message; re-measured every 64 uses per type (cheap)."""
        kind = type(message)
        cached = self._sizes.get(kind)
        if cached is None or cached[1] <= 0:
            size = len(encode(message))
            self._sizes[kind] = (size, 64)
            return size
        self._sizes[kind] = (cached[0], cached[1] - 1)
        return cached[0]

    def _send(self, peer: SimPeer, effect: Send, now: float) -> None:
        """Count the copies, then schedule them: inline for plain links, else the link model.

        The plain path repeats ``Network._send``'s loop (without its BROADCAST_DATA loss, which
        the link model replaces) so that a hop costs one pass over the connections.
        """
        message = effect.message
        kind = type(message)
        payload = kind is BroadcastData or kind is GetDataResponse
        if not self.links.plain:
            copies = sum(1 for conn in effect.conns if (peer.peer_id, conn) in self._ends)
            self._count_copies(message, payload, copies)
            self._send_modelled(peer, effect, now, payload)
            return
        wire: Any = message if self._encode is None else self._encode(message)
        ends = self._ends
        name = peer.peer_id
        heap = self._heap
        seq = self._seq
        for conn in effect.conns:
            end = ends.get((name, conn))
            if end is None:
                continue  # closed locally, or never opened: the core already knows
            remote, rconn, latency = end
            seq += 1
            heappush(heap, (now + latency, seq, _RECV, remote, rconn, wire))
        self._count_copies(message, payload, seq - self._seq)
        self._seq = seq

    def _count_copies(self, message: Message, payload: bool, copies: int) -> None:
        traffic = self.traffic
        if payload:
            traffic.payload_copies += copies
            traffic.payload_bytes += copies * len(message.data)  # type: ignore[union-attr]
        elif copies:
            traffic.control_messages += copies
            traffic.control_bytes += copies * self._control_size(message)

    def _send_modelled(self, peer: SimPeer, effect: Send, now: float, payload: bool) -> None:
        """Jitter, loss, bandwidth and partitions, message by message (the slow path)."""
        links = self.links
        wire: Any = effect.message
        size = len(wire.data) + 120 if payload else 120
        if self._encode is not None:
            wire = self._encode(wire)
            size = len(wire)
        name = peer.peer_id
        message = effect.message
        live_data = type(message) is BroadcastData and not message.hp2p.recovered
        for conn in effect.conns:
            end = self._ends.get((name, conn))
            if end is None:
                continue
            remote, rconn, latency = end
            lossy = links.loss and (links.loss_all or live_data)
            if (lossy and self._drop_rng.random() < links.loss) or (
                links.partitions and links.cut(name, remote.peer_id, now)
            ):
                self.traffic.dropped += 1
                continue
            start = now
            key = (name, conn)
            if links.bandwidth:
                start = max(now, self._busy_until.get(key, 0.0)) + size / links.bandwidth
                self._busy_until[key] = start
            when = start + latency
            if links.jitter:
                when += self._jitter_rng.uniform(0.0, links.jitter)
                when = max(when, self._last_arrival.get(key, 0.0))  # a stream keeps its order
                self._last_arrival[key] = when
            self._push(when, _network._RECV, remote, rconn, wire)

    # --- faults ------------------------------------------------------------------------------
    def crash_many(self, names: Iterable[str], hang: bool = False) -> None:
        """Crash (or hang) many peers at once with one pass over the connection table."""
        victims = set(names)
        for name in victims:
            peer = self.peers[name]
            peer.alive = False
            self.homs.leave(name)
        for key in [k for k in self._ends if k[0] in victims]:
            remote, rconn, latency = self._ends.pop(key)
            if not hang:
                self._push(self.now + latency, _network._LOST, remote, rconn, None)
