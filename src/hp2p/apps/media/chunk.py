"""The media wire format: segment chunks on the tree, whole segments on the SubMesh.

A *segment* is 1–2 s of MPEG-TS cut by ffmpeg (:mod:`hp2p.apps.media.ffmpeg`). On the
CoreTree (and a SubTree fed by the bridge) it travels as *chunks*, one broadcast each, so that
no message exceeds what a link carries (WebRTC data channels take 256 KiB) and a lost piece is
recovered alone by the tree's data recovery. Every chunk repeats the segment's header (stream,
sequence, duration, capture time, size, SHA-256), so a receiver can place any chunk without
having seen the others and check the reassembled bytes against the hash.

A chunk with ``count == 0`` is the *end marker*: the stream ended before ``sequence``.

On a SubMesh a segment is one object (:class:`MediaSegment`), packed by the bridge
(:mod:`hp2p.apps.media.packer`). Decoders bound every field: data from the network is
checked before anything is stored or served (streams name files and URLs).
"""

from __future__ import annotations

import hashlib
import math
import re

import msgspec

__all__ = [
    "APP_ID",
    "CHUNK_PAYLOAD_TYPE",
    "DEFAULT_CHUNK",
    "MAX_CHUNK",
    "MAX_CHUNKS",
    "MAX_DURATION",
    "MAX_SEGMENT",
    "SEGMENT_APP_ID",
    "ChunkError",
    "MediaChunk",
    "MediaSegment",
    "check_stream_name",
    "decode_chunk",
    "decode_segment",
    "encode_chunk",
    "encode_segment",
    "end_marker",
    "split_segment",
]

#: The app-id of media chunks on the CoreTree and the SubTree.
APP_ID = "hp2p-media"
#: The app-id of whole segments (objects) on the SubMesh.
SEGMENT_APP_ID = "hp2p-media-segment"
CHUNK_PAYLOAD_TYPE = "application/x-hp2p-media-chunk"
#: Largest segment accepted (a 2 s segment at 20 Mbit/s is 5 MB).
MAX_SEGMENT = 16 * 1024 * 1024
#: Largest chunk payload accepted; the source's default is :data:`DEFAULT_CHUNK`.
MAX_CHUNK = 1024 * 1024
#: Default chunk payload: under WebRTC's 256 KiB message with room for the headers.
DEFAULT_CHUNK = 192 * 1024
#: Most chunks one segment may be cut into.
MAX_CHUNKS = 1024
#: Longest segment duration accepted (seconds).
MAX_DURATION = 30.0
#: Highest sequence accepted (JSON-safe integers; a 1 s segment a day for millions of years).
MAX_SEQUENCE = 2**53
_HEADER_ROOM = 512  # encoded chunk bytes besides the payload, generously
_STREAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ChunkError(ValueError):
    """Media bytes that cannot be accepted; ``str(err)`` says why."""


class MediaChunk(msgspec.Struct, array_like=True, frozen=True):
    """Chunk ``index`` of ``count`` of segment ``sequence`` of ``stream``.

    ``captured``: wall-clock unix time of the segment's first frame at the source;
    ``init_sha256``: hash of the initialisation segment for fMP4/CMAF (empty for MPEG-TS,
    which needs none: the only container the source produces today).
    """

    stream: str
    sequence: int
    duration: float
    captured: float
    size: int
    sha256: bytes
    index: int
    count: int
    data: bytes
    init_sha256: bytes = b""


class MediaSegment(msgspec.Struct, array_like=True, frozen=True):
    """One whole segment (a SubMesh object); ``end``: the stream ended before ``sequence``."""

    stream: str
    sequence: int
    duration: float
    captured: float
    sha256: bytes
    data: bytes
    end: bool = False
    init_sha256: bytes = b""


def check_stream_name(name: str) -> str:
    """``name`` if it may name a stream (1–64 of ``A-Za-z0-9._-``, not starting with . - _):
    it becomes a URL path segment and a directory name."""
    if not isinstance(name, str) or not _STREAM.fullmatch(name):
        raise ChunkError(
            f"stream name {name[:80]!r} must be 1-64 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


def _check_common(stream: str, sequence: int, duration: float, captured: float) -> None:
    check_stream_name(stream)
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ChunkError(f"sequence {sequence} is not in 0..2^53")
    if not (math.isfinite(duration) and 0 <= duration <= MAX_DURATION):
        raise ChunkError(f"duration {duration!r} is not in 0..{MAX_DURATION:g} s")
    if not (math.isfinite(captured) and 0 <= captured < 1e11):
        raise ChunkError(f"capture time {captured!r} is not a unix time")


def check_chunk(chunk: MediaChunk) -> None:
    """Raise :class:`ChunkError` unless every field is in bounds and consistent."""
    _check_common(chunk.stream, chunk.sequence, chunk.duration, chunk.captured)
    if len(chunk.sha256) != 32 or (chunk.init_sha256 and len(chunk.init_sha256) != 32):
        raise ChunkError("sha256 fields must be 32 bytes")
    if chunk.count == 0:  # end marker
        if chunk.index or chunk.size or chunk.data:
            raise ChunkError("an end marker carries no data")
        return
    if not 1 <= chunk.count <= MAX_CHUNKS or not 0 <= chunk.index < chunk.count:
        raise ChunkError(f"chunk {chunk.index} of {chunk.count} is not in 1..{MAX_CHUNKS} chunks")
    if not 1 <= chunk.size <= MAX_SEGMENT:
        raise ChunkError(f"segment size {chunk.size} is not in 1..{MAX_SEGMENT}")
    if not 1 <= len(chunk.data) <= min(MAX_CHUNK, chunk.size):
        raise ChunkError(f"chunk of {len(chunk.data)} bytes is not in 1..{MAX_CHUNK}")


def check_segment(segment: MediaSegment) -> None:
    """Raise :class:`ChunkError` unless the segment is in bounds and its bytes match the hash."""
    _check_common(segment.stream, segment.sequence, segment.duration, segment.captured)
    if segment.end:
        if segment.data:
            raise ChunkError("an end marker carries no data")
        return
    if not 1 <= len(segment.data) <= MAX_SEGMENT:
        raise ChunkError(f"segment of {len(segment.data)} bytes is not in 1..{MAX_SEGMENT}")
    if hashlib.sha256(segment.data).digest() != segment.sha256:
        raise ChunkError("segment bytes do not match their sha256")


_encoder = msgspec.msgpack.Encoder()
_chunk_decoder = msgspec.msgpack.Decoder(MediaChunk)
_segment_decoder = msgspec.msgpack.Decoder(MediaSegment)


def encode_chunk(chunk: MediaChunk) -> bytes:
    return _encoder.encode(chunk)


def encode_segment(segment: MediaSegment) -> bytes:
    return _encoder.encode(segment)


def decode_chunk(data: bytes) -> MediaChunk:
    """The chunk in ``data``, every field checked (:class:`ChunkError`); the size is checked
    before decoding, so an oversized message costs no allocation."""
    if len(data) > MAX_CHUNK + _HEADER_ROOM:
        raise ChunkError(f"chunk message of {len(data)} bytes exceeds {MAX_CHUNK + _HEADER_ROOM}")
    try:
        chunk = _chunk_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ChunkError(f"not a media chunk: {exc}") from None
    check_chunk(chunk)
    return chunk


def decode_segment(data: bytes) -> MediaSegment:
    """The segment object in ``data``, checked and its hash verified (:class:`ChunkError`)."""
    if len(data) > MAX_SEGMENT + _HEADER_ROOM:
        raise ChunkError(f"segment object of {len(data)} bytes exceeds the limit")
    try:
        segment = _segment_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ChunkError(f"not a media segment: {exc}") from None
    check_segment(segment)
    return segment


def split_segment(
    stream: str,
    sequence: int,
    duration: float,
    captured: float,
    data: bytes,
    chunk_size: int = DEFAULT_CHUNK,
) -> list[MediaChunk]:
    """The chunks of one segment, each at most ``chunk_size`` payload bytes."""
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ChunkError(f"chunk size must be 1..{MAX_CHUNK} bytes")
    if not 1 <= len(data) <= MAX_SEGMENT:
        raise ChunkError(f"segment of {len(data)} bytes is not in 1..{MAX_SEGMENT}")
    count = -(-len(data) // chunk_size)
    if count > MAX_CHUNKS:
        raise ChunkError(f"a {len(data)}-byte segment needs more than {MAX_CHUNKS} chunks")
    digest = hashlib.sha256(data).digest()
    chunks = [
        MediaChunk(
            stream,
            sequence,
            duration,
            captured,
            len(data),
            digest,
            i,
            count,
            data[i * chunk_size : (i + 1) * chunk_size],
        )
        for i in range(count)
    ]
    check_chunk(chunks[0])
    return chunks


def end_marker(stream: str, sequence: int, now: float) -> MediaChunk:
    """The chunk that says the stream ended before ``sequence``."""
    chunk = MediaChunk(stream, sequence, 0.0, now, 0, bytes(32), 0, 0, b"")
    check_chunk(chunk)
    return chunk
