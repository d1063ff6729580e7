"""The recording index of a recorder: which segments of each stream it stores, as a VOD playlist.

Pure bookkeeping; the recorder's shell stores the bytes and feeds this index. The playlist
lists every stored segment in sequence order, with ``EXT-X-DISCONTINUITY`` where a sequence
is missing (not pulled yet, or never recorded). While the stream goes on it is an ``EVENT``
playlist (a player may follow it as it grows); once the end marker is stored it is ``VOD`` with
``EXT-X-ENDLIST``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["RecordedSegment", "RecordingIndex"]


@dataclass(frozen=True, slots=True)
class RecordedSegment:
    sequence: int
    duration: float
    captured: float
    size: int
    sha256: str  # hex


class RecordingIndex:
    """Segments per stream; bounded by ``max_streams`` and ``max_segments`` per stream."""

    def __init__(self, max_streams: int = 64, max_segments: int = 1_000_000) -> None:
        self.max_streams = max_streams
        self.max_segments = max_segments
        self.segments: dict[str, dict[int, RecordedSegment]] = {}
        self.ends: dict[str, int] = {}
        self.refused = 0

    def add(self, stream: str, segment: RecordedSegment) -> bool:
        """Record ``segment``; False when it was known already or a bound refuses it."""
        held = self.segments.get(stream)
        if held is None:
            if len(self.segments) >= self.max_streams:
                self.refused += 1
                return False
            held = self.segments[stream] = {}
        if segment.sequence in held:
            return False
        if len(held) >= self.max_segments:
            self.refused += 1
            return False
        held[segment.sequence] = segment
        return True

    def end(self, stream: str, sequence: int) -> None:
        """The stream ended before ``sequence``."""
        if stream not in self.segments and len(self.segments) >= self.max_streams:
            self.refused += 1
            return
        self.segments.setdefault(stream, {})
        self.ends[stream] = min(sequence, self.ends.get(stream, sequence))

    def get(self, stream: str, sequence: int) -> RecordedSegment | None:
        return self.segments.get(stream, {}).get(sequence)

    def missing_count(self, stream: str) -> int:
        """How many sequences between the first stored and the end (or the last stored) are
        not held; counted, not listed, so a far sequence costs nothing."""
        held = self.segments.get(stream, {})
        if not held:
            return 0
        first = min(held)
        last = self.ends.get(stream, max(held) + 1)
        inside = sum(1 for s in held if s < last)
        return max(0, last - first - inside)

    def missing(self, stream: str, limit: int = 1000) -> list[int]:
        """The first ``limit`` missing sequences (see :meth:`missing_count`)."""
        held = self.segments.get(stream, {})
        if not held:
            return []
        last = self.ends.get(stream, max(held) + 1)
        out: list[int] = []
        previous = min(held) - 1
        for seq in [*sorted(held), last]:  # bounded by max_segments
            if seq > last:
                break
            out.extend(range(previous + 1, min(seq, previous + 1 + limit - len(out))))
            if len(out) >= limit:
                break
            previous = seq
        return out

    def complete(self, stream: str) -> bool:
        return (
            stream in self.ends
            and bool(self.segments.get(stream))
            and not self.missing_count(stream)
        )

    def playlist(self, stream: str) -> str | None:
        """The VOD/EVENT playlist of ``stream`` (None: nothing recorded under that name)."""
        held = self.segments.get(stream)
        if held is None:
            return None
        ended = stream in self.ends
        order = sorted(s for s in held if not ended or s < self.ends[stream])
        target = max((math.ceil(held[s].duration) for s in order), default=1)
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{max(1, target)}",
            f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
            "#EXT-X-MEDIA-SEQUENCE:0",
        ]
        previous: int | None = None
        for seq in order:
            if previous is not None and seq != previous + 1:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(f"#EXTINF:{held[seq].duration:.3f},")
            lines.append(f"{seq}.ts")
            previous = seq
        if ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "segments": len(held),
                "first": min(held) if held else None,
                "last": max(held) if held else None,
                "ended": name in self.ends,
                "missing": self.missing_count(name),
                "complete": self.complete(name),
                "bytes": sum(s.size for s in held.values()),
            }
            for name, held in self.segments.items()
        }
