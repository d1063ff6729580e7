"""The live window of a viewer: which segments its HLS playlist lists, and when to skip one.

Pure: time comes in as ``now`` (monotonic seconds for deadlines) and ``wall`` (unix seconds,
for the latency from capture); the viewer's shell feeds it whole segments and serves what it
renders.

A live HLS playlist may only grow at its end, so segments are *published* in sequence order:
segment ``n`` is listed only after ``n-1``. When ``n`` is missing while a later segment is
already here, the tree's data recovery is pulling it; the window waits ``patience`` seconds
(default: one target duration, the slack a player at the live edge has before it needs ``n``),
then gives ``n`` (and any run of missing ones up to the next held segment) up: counted,
reported, and the next listed segment carries ``EXT-X-DISCONTINUITY``. A segment arriving
after it was given up is counted *late* and not listed. The playlist never waits for ever.

A viewer that joins mid-stream starts from the newest segment it gets (the live edge), not
from older ones a neighbour's cache might push to it.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from hp2p.apps.media.chunk import MediaSegment

__all__ = ["LiveEntry", "LivePolicy", "LiveStream", "LiveWindow"]

Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class LivePolicy:
    #: Segments listed in the playlist.
    playlist_size: int = 6
    #: Segments kept for serving (listed ones and those that just slid out).
    keep: int = 12
    #: Seconds a missing segment is waited for once a later one is here (None: target duration).
    patience: float | None = None
    #: Segments accepted ahead of the next one to list (further: refused as forged).
    max_ahead: int = 64
    #: Streams followed at once (each is a source); beyond, the longest idle one goes.
    max_streams: int = 16
    #: Latencies remembered per stream for the status.
    samples: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.playlist_size <= self.keep:
            raise ValueError("playlist_size must be 1..keep")
        if self.patience is not None and self.patience < 0:
            raise ValueError("patience must be 0 or more seconds")
        if self.max_ahead < 1 or self.max_streams < 1 or self.samples < 1:
            raise ValueError("max_ahead, max_streams and samples must be at least 1")


@dataclass(frozen=True, slots=True)
class LiveEntry:
    sequence: int
    duration: float
    discontinuity: bool


@dataclass
class LiveStats:
    published: int = 0
    missing: int = 0
    late: int = 0
    ahead: int = 0
    duplicates: int = 0
    foreign: int = 0  # segments of this stream's name from another tree source
    first_published: float | None = None  # monotonic
    latencies: deque[float] = field(default_factory=deque)


class LiveStream:
    """One stream's window; see the module docstring."""

    def __init__(self, name: str, policy: LivePolicy, now: float, origin: str = "") -> None:
        self.name = name
        self.origin = origin  # the tree source the stream belongs to (its first publisher)
        self.policy = policy
        self.stats = LiveStats()
        self.created = now
        self.touched = now
        self.entries: deque[LiveEntry] = deque()
        self.removed = 0  # entries slid out of the playlist: the media sequence
        self.discontinuities_removed = 0
        self.ended = False
        self.end_sequence: int | None = None
        self.next_sequence: int | None = None
        self.target = 1
        self._held: dict[int, MediaSegment] = {}  # received, not listed yet
        self._served: OrderedDict[int, MediaSegment] = OrderedDict()
        self._later_since: float | None = None
        self._gap_pending = False

    # --- input -----------------------------------------------------------------------------
    def add(self, segment: MediaSegment, now: float, wall: float, origin: str = "") -> list[Event]:
        seq = segment.sequence
        if origin != self.origin:
            self.stats.foreign += 1
            reason = f"stream {self.name!r} belongs to source {self.origin!r}, not {origin!r}"
            return [("refused", {"stream": self.name, "sequence": seq, "reason": reason})]
        self.touched = now
        if segment.end:
            if self.end_sequence is None or seq < self.end_sequence:
                self.end_sequence = seq
            if self.next_sequence is None and not self.ended:  # joined after the last segment
                self.ended = True
                return [("ended", {"stream": self.name, "sequence": seq})]
            return self.advance(now, wall)
        nxt = self.next_sequence
        if seq in self._held or seq in self._served:
            self.stats.duplicates += 1
            return []
        if nxt is not None and seq < nxt:
            self.stats.late += 1
            return [("late", {"stream": self.name, "sequence": seq})]
        if nxt is not None and seq > nxt + self.policy.max_ahead:
            self.stats.ahead += 1
            return [("refused", {"stream": self.name, "sequence": seq, "reason": "too far ahead"})]
        self._held[seq] = segment
        if nxt is None:  # the first segment: start at the live edge
            self.next_sequence = seq
        return self.advance(now, wall)

    def advance(self, now: float, wall: float) -> list[Event]:
        """List what can be listed; give up missing segments past their patience."""
        events: list[Event] = []
        nxt = self.next_sequence
        if nxt is None:
            return events
        while True:  # bounded: each round lists, skips or stops; held is bounded by max_ahead
            if nxt in self._held:
                events.append(self._publish(self._held.pop(nxt), now, wall))
                nxt += 1
                self._later_since = None
                continue
            if self.end_sequence is not None and nxt >= self.end_sequence:
                if not self.ended:
                    self.ended = True
                    events.append(("ended", {"stream": self.name, "sequence": nxt}))
                break
            later = [s for s in self._held if s > nxt]
            if not later and self.end_sequence is None:
                self._later_since = None
                break
            if self._later_since is None:
                self._later_since = now
            if now - self._later_since < self.patience():
                break
            upto = min(later) if later else (self.end_sequence or nxt)
            count = upto - nxt
            self.stats.missing += count
            events.append(("missing", {"stream": self.name, "first": nxt, "last": upto - 1}))
            nxt = upto
            self._gap_pending = True
            self._later_since = None
        self.next_sequence = nxt
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`advance` may give a missing segment up (None: nothing waits)."""
        if self._later_since is None:
            return None
        return self._later_since + self.patience()

    def patience(self) -> float:
        p = self.policy.patience
        return float(self.target) if p is None else p

    def _publish(self, segment: MediaSegment, now: float, wall: float) -> Event:
        entry = LiveEntry(segment.sequence, segment.duration, self._gap_pending)
        self._gap_pending = False
        self.entries.append(entry)
        self.target = max(self.target, math.ceil(segment.duration))
        while len(self.entries) > self.policy.playlist_size:
            gone = self.entries.popleft()
            self.removed += 1
            self.discontinuities_removed += gone.discontinuity
        self._served[segment.sequence] = segment
        while len(self._served) > self.policy.keep:
            self._served.popitem(last=False)
        stats = self.stats
        stats.published += 1
        if stats.first_published is None:
            stats.first_published = now
        latency = max(0.0, wall - segment.captured)
        stats.latencies.append(latency)
        while len(stats.latencies) > self.policy.samples:
            stats.latencies.popleft()
        fields = {
            "stream": self.name,
            "sequence": segment.sequence,
            "discontinuity": entry.discontinuity,
            "latency": round(latency, 3),
        }
        return ("listed", fields)

    # --- output ----------------------------------------------------------------------------
    def segment(self, sequence: int) -> MediaSegment | None:
        return self._served.get(sequence)

    def playlist(self) -> str:
        """The live HLS media playlist (RFC 8216) of the listed segments."""
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{self.target}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.removed}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuities_removed}",
        ]
        for entry in self.entries:
            if entry.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(f"#EXTINF:{entry.duration:.3f},")
            lines.append(f"{entry.sequence}.ts")
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def status(self) -> dict[str, Any]:
        s = self.stats
        lat = sorted(s.latencies)
        return {
            "stream": self.name,
            "published": s.published,
            "missing": s.missing,
            "late": s.late,
            "refused_ahead": s.ahead,
            "duplicates": s.duplicates,
            "refused_foreign": s.foreign,
            "next_sequence": self.next_sequence,
            "listed": [e.sequence for e in self.entries],
            "ended": self.ended,
            "continuity": s.published / (s.published + s.missing) if s.published else None,
            "latency_p50_s": lat[len(lat) // 2] if lat else None,
            "latency_max_s": lat[-1] if lat else None,
        }


class LiveWindow:
    """The live streams of one viewer, bounded by ``policy.max_streams``."""

    def __init__(self, policy: LivePolicy | None = None) -> None:
        self.policy = policy or LivePolicy()
        self.streams: dict[str, LiveStream] = {}
        self.evicted = 0

    def add(self, segment: MediaSegment, now: float, wall: float, origin: str = "") -> list[Event]:
        """``origin``: the tree source that published it; the first one owns the name."""
        stream = self.streams.get(segment.stream)
        if stream is None:
            if len(self.streams) >= self.policy.max_streams:
                idle = min(self.streams.values(), key=lambda s: (not s.ended, s.touched))
                del self.streams[idle.name]
                self.evicted += 1
            stream = LiveStream(segment.stream, self.policy, now, origin)
            self.streams[segment.stream] = stream
        return stream.add(segment, now, wall, origin)

    def advance(self, now: float, wall: float) -> list[Event]:
        events: list[Event] = []
        for stream in self.streams.values():
            events += stream.advance(now, wall)
        return events

    def next_deadline(self) -> float | None:
        times = [t for s in self.streams.values() if (t := s.next_deadline()) is not None]
        return min(times) if times else None
