"""Chunks back into segments: the receiving half of :mod:`hp2p.apps.media.chunk`, pure.

Chunks arrive in any order (recovered ones late, duplicates after a repair). The assembler
keeps the chunks of each incomplete segment, checks that every chunk of a segment repeats the
same header, and on the last one joins them and checks the SHA-256: a segment is handed on
whole and verified, or not at all. Everything it keeps is bounded: incomplete segments (count
and bytes; the oldest goes first), their age (``expiry``), and the memory of completed ones
(to tell a duplicate from a new segment). What it refuses it counts, by reason.

Time comes in as ``now`` (any monotonic clock); nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

from hp2p.apps.media.chunk import ChunkError, MediaChunk, MediaSegment, decode_chunk

__all__ = ["AssemblerStats", "ChunkAssembler"]

Key = tuple[str, str, int]  # (tree source, stream, sequence)


@dataclass
class AssemblerStats:
    chunks: int = 0
    segments: int = 0
    ends: int = 0
    duplicates: int = 0
    refused: int = 0  # undecodable or out-of-bounds chunk messages
    inconsistent: int = 0  # a chunk whose header differs from its segment's other chunks
    corrupt: int = 0  # reassembled bytes that did not match the hash
    expired: int = 0  # incomplete segments dropped (too old, or room for newer ones)
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    first: MediaChunk
    started: float
    parts: dict[int, bytes]
    size: int = 0


class ChunkAssembler:
    """``add(bytes or chunk, now)`` → a whole :class:`MediaSegment` (or end marker), or None."""

    def __init__(
        self,
        *,
        max_pending: int = 64,
        max_pending_bytes: int = 64 * 1024 * 1024,
        expiry: float = 30.0,
        remembered: int = 4096,
    ) -> None:
        if max_pending < 1 or max_pending_bytes < 1 or expiry <= 0 or remembered < 1:
            raise ValueError("assembler bounds must be positive")
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.expiry = expiry
        self.remembered = remembered
        self.stats = AssemblerStats()
        self._pending: OrderedDict[Key, _Pending] = OrderedDict()
        self._pending_bytes = 0
        self._done: OrderedDict[Key, None] = OrderedDict()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, message: bytes | MediaChunk, now: float, origin: str = "") -> MediaSegment | None:
        """Take one chunk (raw bytes are decoded and checked here); never raises.

        ``origin`` is the tree source that published it: chunks of one segment are only put
        together from one source, so a member cannot slip its chunks into another's segment.
        """
        self.expire(now)
        if isinstance(message, MediaChunk):
            chunk = message
        else:
            try:
                chunk = decode_chunk(message)
            except ChunkError as exc:
                self._refuse("refused", str(exc))
                return None
        self.stats.chunks += 1
        key = (origin, chunk.stream, chunk.sequence)
        if key in self._done:
            self.stats.duplicates += 1
            return None
        if chunk.count == 0:
            self._finish(key)
            self.stats.ends += 1
            return MediaSegment(
                chunk.stream, chunk.sequence, 0.0, chunk.captured, chunk.sha256, b"", end=True
            )
        if chunk.count == 1:
            return self._complete(key, chunk, chunk.data)
        return self._collect(key, chunk, now)

    def _collect(self, key: Key, chunk: MediaChunk, now: float) -> MediaSegment | None:
        pending = self._pending.get(key)
        if pending is None:
            pending = _Pending(chunk, now, {})
            self._pending[key] = pending
        elif _header(pending.first) != _header(chunk):
            self._refuse("inconsistent", "a chunk's header differs from its segment's")
            return None
        if chunk.index in pending.parts:
            self.stats.duplicates += 1
            return None
        if pending.size + len(chunk.data) > chunk.size:
            self._drop(key)
            self._refuse("inconsistent", "chunks larger than their segment")
            return None
        pending.parts[chunk.index] = chunk.data
        pending.size += len(chunk.data)
        self._pending_bytes += len(chunk.data)
        self._make_room(key)
        if len(pending.parts) < chunk.count:
            return None
        data = b"".join(pending.parts[i] for i in range(chunk.count))
        self._drop(key)
        return self._complete(key, chunk, data)

    def _complete(self, key: Key, chunk: MediaChunk, data: bytes) -> MediaSegment | None:
        if len(data) != chunk.size or hashlib.sha256(data).digest() != chunk.sha256:
            self._refuse("corrupt", "reassembled segment does not match its size and sha256")
            return None
        self._finish(key)
        self.stats.segments += 1
        return MediaSegment(
            chunk.stream,
            chunk.sequence,
            chunk.duration,
            chunk.captured,
            chunk.sha256,
            data,
            init_sha256=chunk.init_sha256,
        )

    def expire(self, now: float) -> int:
        """Drop incomplete segments older than ``expiry``; how many went."""
        gone = 0
        while self._pending:
            key, oldest = next(iter(self._pending.items()))
            if now - oldest.started < self.expiry:
                break
            self._drop(key)
            self.stats.expired += 1
            gone += 1
        return gone

    def _make_room(self, keep: Key) -> None:
        while len(self._pending) > 1 and (
            len(self._pending) > self.max_pending or self._pending_bytes > self.max_pending_bytes
        ):
            key = next(iter(self._pending))
            if key == keep:
                self._pending.move_to_end(key)
                key = next(iter(self._pending))
            self._drop(key)
            self.stats.expired += 1

    def _drop(self, key: Key) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._pending_bytes -= pending.size

    def _finish(self, key: Key) -> None:
        self._drop(key)
        self._done[key] = None
        while len(self._done) > self.remembered:
            self._done.popitem(last=False)

    def _refuse(self, counter: str, reason: str) -> None:
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        short = reason.split(":")[0][:80]
        if short in self.stats.reasons or len(self.stats.reasons) < 32:
            self.stats.reasons[short] = self.stats.reasons.get(short, 0) + 1


def _header(chunk: MediaChunk) -> tuple[object, ...]:
    return (chunk.duration, chunk.captured, chunk.size, chunk.sha256, chunk.count)
