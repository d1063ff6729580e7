"""Segments a member fetched for a query but does not own: held in memory, for answers only.

With ``--replicas R`` a member stores only the segments it owns (:mod:`hp2p.apps.iot.placement`).
A query about time it does not own makes the mesh fetch those segments on demand; their
readings go here, not into the history file, so the file holds the member's share only and a
query never changes what it stores. The cache is bounded (bytes of readings, segments), least
recently used out; a segment evicted before its answer was made is a gap of that answer.

An answer merges the file's readings with the cached ones (:func:`merge`): time order, each
reading once by its identity ``(gateway, epoch, number)``, up to the limit.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["SegmentCache", "merge"]

#: ``(ts, gateway, epoch, number, doc)``: one reading of an answer.
Row = tuple[float, str, int, int, bytes]


@dataclass(slots=True)
class _Entry:
    topic: str
    rows: list[Row]
    size: int


class SegmentCache:
    """Readings of fetched segments by object number, bounded, least recently used out."""

    def __init__(self, max_bytes: int = 64 << 20, max_segments: int = 4096) -> None:
        self.max_bytes = max_bytes
        self.max_segments = max_segments
        self.bytes = 0
        self.evicted = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()

    def __contains__(self, obj: object) -> bool:
        return obj in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def objects(self) -> set[int]:
        return set(self._entries)

    def add(self, obj: int, rows: list[tuple[Any, ...]]) -> None:
        """The rows of a segment (``HistoryStore`` reading rows: topic, ts, gateway, epoch,
        number, obj, doc); one segment is one topic."""
        self.discard(obj)
        kept: list[Row] = [(r[1], r[2], r[3], r[4], r[6]) for r in rows]
        kept.sort()
        topic = str(rows[0][0]) if rows else ""
        size = sum(len(r[4]) + 64 for r in kept)
        self._entries[obj] = _Entry(topic, kept, size)
        self.bytes += size
        while len(self._entries) > 1 and (
            self.bytes > self.max_bytes or len(self._entries) > self.max_segments
        ):
            _, entry = self._entries.popitem(last=False)
            self.bytes -= entry.size
            self.evicted += 1

    def discard(self, obj: int) -> None:
        entry = self._entries.pop(obj, None)
        if entry is not None:
            self.bytes -= entry.size

    def rows(self, topic: str, lo: float, hi: float) -> list[list[Row]]:
        """Per cached segment of ``topic``, its readings with ``lo <= ts < hi`` (each sorted)."""
        found: list[list[Row]] = []
        for obj, entry in list(self._entries.items()):
            if entry.topic != topic:
                continue
            rows = [r for r in entry.rows if lo <= r[0] < hi]
            if rows:
                self._entries.move_to_end(obj)
                found.append(rows)
        return found


def merge(stored: list[Row], cached: list[list[Row]], limit: int) -> list[bytes]:
    """The answer's readings: time order (ties by identity), each identity once, ``limit``."""
    out: list[bytes] = []
    seen: set[tuple[str, int, int]] = set()
    for _ts, gateway, epoch, number, doc in heapq.merge(stored, *cached):
        identity = (gateway, epoch, number)
        if identity in seen:
            continue
        seen.add(identity)
        out.append(doc)
        if len(out) >= limit:
            break
    return out
