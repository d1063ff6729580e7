"""The bridge's packer for media: chunks from the CoreTree, one SubMesh object per segment.

:class:`MediaPacker` is a :class:`hp2p.apps.bridge.Packer`: the bridge hands it every selected
CoreTree message; it reassembles and verifies the chunks (:class:`ChunkAssembler`) and returns
one object per whole segment (a :class:`~hp2p.apps.media.chunk.MediaSegment`, app-id
``hp2p-media-segment``, ``meta`` naming stream and sequence), and one for an end marker. A
recorder that has only pulled a manifest knows from ``meta`` which segment it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hp2p.apps.media.assembler import ChunkAssembler
from hp2p.apps.media.chunk import APP_ID, SEGMENT_APP_ID, MediaSegment, encode_segment

if TYPE_CHECKING:
    from hp2p.apps.bridge import Packed
    from hp2p.peer.node import Delivery

__all__ = ["MediaPacker", "segment_meta"]


def segment_meta(segment: MediaSegment) -> dict[str, Any]:
    return {
        "stream": segment.stream,
        "sequence": segment.sequence,
        "duration": segment.duration,
        "end": segment.end,
    }


class MediaPacker:
    """Chunks in, whole segments out (at once: a segment is due when its last chunk came)."""

    def __init__(self, assembler: ChunkAssembler | None = None) -> None:
        self.assembler = assembler or ChunkAssembler()
        self.ignored = 0
        self.segments = 0

    def add(self, delivery: Delivery, now: float) -> list[Packed]:
        if delivery.app_id != APP_ID:
            self.ignored += 1
            return []
        segment = self.assembler.add(delivery.data, now)
        if segment is None:
            return []
        self.segments += 1
        return [(encode_segment(segment), SEGMENT_APP_ID, segment_meta(segment))]

    def due(self, now: float) -> list[Packed]:
        self.assembler.expire(now)
        return []

    def next_due(self) -> float | None:
        return None

    def status(self) -> dict[str, Any]:
        return {
            "segments": self.segments,
            "ignored": self.ignored,
            "assembler": vars(self.assembler.stats),
        }
