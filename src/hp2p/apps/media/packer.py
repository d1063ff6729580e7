"""The bridge's packer for media: chunks from the CoreTree, one SubMesh object per segment.

:class:`MediaPacker` is a :class:`hp2p.apps.bridge.Packer`: the bridge hands it every selected
CoreTree message; it reassembles and verifies the chunks (:class:`ChunkAssembler`) and returns
one object per whole segment (a :class:`~hp2p.apps.media.chunk.MediaSegment`, app-id
``hp2p-media-segment``, ``meta`` naming stream and sequence), and one for an end marker. A
recorder that has only pulled a manifest knows from ``meta`` which segment it is.

A stream name belongs to the CoreTree source that published it first (as in a viewer's
window): segments under that name from another member are refused and counted, so no member
can splice its own pictures into someone else's recording.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hp2p.apps.media.assembler import ChunkAssembler
from hp2p.apps.media.chunk import APP_ID, SEGMENT_APP_ID, MediaSegment, encode_segment

if TYPE_CHECKING:
    from hp2p.apps.bridge import Packed
    from hp2p.peer.node import Delivery

__all__ = ["MediaPacker", "segment_meta"]


def segment_meta(segment: MediaSegment, source: str) -> dict[str, Any]:
    return {
        "core-source": source,
        "stream": segment.stream,
        "sequence": segment.sequence,
        "duration": segment.duration,
        "end": segment.end,
    }


class MediaPacker:
    """Chunks in, whole segments out (at once: a segment is due when its last chunk came)."""

    def __init__(self, assembler: ChunkAssembler | None = None, max_streams: int = 1024) -> None:
        self.assembler = assembler or ChunkAssembler()
        self.ignored = 0
        self.segments = 0
        self.foreign = 0
        self.max_streams = max_streams
        #: stream name → the CoreTree source that published it first (its owner)
        self.owners: dict[str, str] = {}

    def add(self, delivery: Delivery, now: float) -> list[Packed]:
        if delivery.app_id != APP_ID:
            self.ignored += 1
            return []
        segment = self.assembler.add(delivery.data, now, delivery.source)
        if segment is None:
            return []
        owner = self.owners.get(segment.stream)
        if owner is None and len(self.owners) < self.max_streams:
            owner = self.owners[segment.stream] = delivery.source
        if owner != delivery.source:  # another member's stream name, or too many streams
            self.foreign += 1
            return []
        self.segments += 1
        return [(encode_segment(segment), SEGMENT_APP_ID, segment_meta(segment, delivery.source))]

    def due(self, now: float) -> list[Packed]:
        self.assembler.expire(now)
        return []

    def next_due(self) -> float | None:
        return None

    def status(self) -> dict[str, Any]:
        return {
            "segments": self.segments,
            "ignored": self.ignored,
            "foreign": self.foreign,
            "assembler": vars(self.assembler.stats),
        }
