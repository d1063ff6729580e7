"""Cache management (CM FE, Q.4100 §7.2.3.1): recent broadcast messages kept for recovery.

The cache is what lets a repaired peer, or a peer that noticed a gap on the live path, pull what
it missed (BUFFERMAP / GET_DATA, issue #5). It is bounded three ways at once, because any one
bound alone fails somebody: a count per source (the overlay's ``mN_Cache``) keeps one chatty
source from evicting the others; a byte bound over all sources keeps memory flat when payloads
are large (the reference has none, §9.2); an age bound (``mD_Cache``) stops serving data nobody
can still be missing.

Messages are stored as the received ``BroadcastData`` objects themselves: no payload copy.
Eviction is oldest-arrival first; every operation is O(1) amortised.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hp2p.peer.paths import PATH_ROLES, Link
from hp2p.peer.recovery import summarise
from hp2p.wire.r2.messages import (
    GET_DATA_MISSING,
    BroadcastData,
    Buffermap,
    BuffermapEntry,
    BuffermapResponse,
    GetData,
    GetDataResponse,
    OriginExt,
)

if TYPE_CHECKING:
    from hp2p.peer.core import PeerCore


@dataclass(slots=True)
class CacheCounters:
    stored: int = 0
    evicted_count: int = 0
    evicted_bytes: int = 0
    evicted_age: int = 0
    too_large: int = 0


_UNSIGNED = OriginExt()


class MessageCache:
    """Per-source message cache bounded by count, bytes and age; answers buffermaps."""

    __slots__ = (
        "_next_expiry",
        "_order",
        "_sources",
        "bytes",
        "counters",
        "max_age",
        "max_bytes",
        "max_count",
    )

    def __init__(self, max_count: int, max_bytes: int, max_age: float) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.bytes = 0
        self.counters = CacheCounters()
        # (source, sequence) -> (arrival time, size), in arrival order: the eviction queue.
        self._order: OrderedDict[tuple[str, int], tuple[float, int]] = OrderedDict()
        self._sources: dict[str, OrderedDict[int, BroadcastData]] = {}
        self._next_expiry = 0.0  # no message can expire before this instant

    def __len__(self) -> int:
        return len(self._order)

    def put(self, message: BroadcastData, now: float) -> bool:
        """Cache ``message``; False when it is larger than the whole byte budget."""
        size = len(message.data)
        if self.max_count <= 0 or size > self.max_bytes:
            self.counters.too_large += 1
            return False
        source = message.source
        per_source = self._sources.get(source)
        if per_source is None:
            per_source = self._sources[source] = OrderedDict()
        sequence = message.sequence
        if sequence in per_source:
            return True
        per_source[sequence] = message
        self._order[(source, sequence)] = (now, size)
        self.bytes += size
        self.counters.stored += 1
        if len(per_source) > self.max_count:
            old_seq, _ = per_source.popitem(last=False)
            _, old_size = self._order.pop((source, old_seq))
            self.bytes -= old_size
            self.counters.evicted_count += 1
        while self.bytes > self.max_bytes:
            self._evict_oldest()
            self.counters.evicted_bytes += 1
        if now >= self._next_expiry:
            self.expire(now)
        return True

    def _evict_oldest(self) -> None:
        (source, sequence), (_, size) = self._order.popitem(last=False)
        per_source = self._sources[source]
        del per_source[sequence]
        if not per_source:
            del self._sources[source]
        self.bytes -= size

    def expire(self, now: float) -> None:
        """Drop messages that arrived more than ``max_age`` ago."""
        if self.max_age <= 0:
            self._next_expiry = float("inf")
            return
        limit = now - self.max_age
        order = self._order
        while order:
            arrived, _ = next(iter(order.values()))
            if arrived >= limit:
                self._next_expiry = arrived + self.max_age
                return
            self._evict_oldest()
            self.counters.evicted_age += 1
        self._next_expiry = now + self.max_age

    def get(self, source: str, sequence: int, now: float) -> BroadcastData | None:
        """The cached message, for a GET_DATA answer; None when not (or no longer) held."""
        self.expire(now)
        per_source = self._sources.get(source)
        return None if per_source is None else per_source.get(sequence)

    def buffermap(self, now: float) -> list[BuffermapEntry]:
        """Which sequences this peer can serve, per source (BUFFERMAP answer)."""
        self.expire(now)
        return [
            BuffermapEntry(source_peer_id=source, sequences=sorted(per_source))
            for source, per_source in self._sources.items()
        ]

    def sequences(self, source: str) -> list[int]:
        """The cached sequences of ``source``, in arrival order."""
        per_source = self._sources.get(source)
        return [] if per_source is None else list(per_source)

    def message(self, source: str, sequence: int) -> BroadcastData | None:
        """The cached message without expiring anything (the caller already did)."""
        per_source = self._sources.get(source)
        return None if per_source is None else per_source.get(sequence)

    def arrived_since(self, since: float) -> list[BroadcastData]:
        """Messages that arrived at or after ``since``, oldest first.

        After a repair these are what the peer may hold that the rest of the tree lacks: what
        its detached subtree published, or what reached it just before the failure.
        """
        out: list[BroadcastData] = []
        for (source, sequence), (arrived, _) in reversed(self._order.items()):
            if arrived < since:
                break
            out.append(self._sources[source][sequence])
        out.reverse()
        return out


class CacheServer:
    """The CM FE's answers to neighbours: my buffermap (BUFFERMAP) and cached data (GET_DATA).

    Only paths are served: a connection that is not a path has no business pulling.
    """

    def __init__(self, core: PeerCore) -> None:
        self.core = core

    def buffermap(self, now: float) -> list[BuffermapEntry]:
        """My buffermap, cut to the newest sequences that fit an R2 header."""
        return summarise(self.core.cache.buffermap(now), self.core.config.buffermap_bytes)

    def on_buffermap(self, link: Link, msg: Buffermap, now: float) -> None:
        core = self.core
        if link.role not in PATH_ROLES:
            core.error(link.conn, "BUFFERMAP on a connection that is not a path")
            return
        response = BuffermapResponse(overlay_id=core.overlay_id, buffermap=self.buffermap(now))
        core.send((link.conn,), response)

    def on_get_data(self, link: Link, msg: GetData, now: float) -> None:
        core = self.core
        if link.role not in PATH_ROLES:
            core.error(link.conn, "GET_DATA on a connection that is not a path")
            return
        cached = core.cache.get(msg.source_id, msg.sequence, now)
        if not link.hp2p:
            # A reference peer panics on the correct 11200 (its recvGetDataResponse reads an
            # operation it never got; go-peer-2023 README, r2 207): push the message instead,
            # as BROADCAST_DATA, which it takes like a late one. A miss gets no answer, which
            # it survives (r2 213-221).
            if cached is not None:
                core.dr.push_one(link, cached)
            return
        if cached is None:
            response = GetDataResponse(
                source=msg.source_id, sequence=msg.sequence, data=b"", code=GET_DATA_MISSING
            )
        else:
            signed = cached.hp2p
            response = GetDataResponse(
                source=cached.source,
                sequence=cached.sequence,
                data=cached.data,
                ext_header=cached.ext_header,
                payload_type=cached.payload_type,
                hp2p=(
                    _UNSIGNED
                    if signed.sig is None
                    else OriginExt(
                        sig=signed.sig,
                        idx=signed.idx,
                        path=signed.path,
                        cred=core.db.credential_for(cached.source, link.conn),
                    )
                ),
            )
        core.send((link.conn,), response)
