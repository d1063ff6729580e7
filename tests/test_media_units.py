"""The pure parts of the media service: the chunk codec (fuzzed), the assembler, the live
window's playlist and skipping, the recording index."""

from __future__ import annotations

import contextlib
import hashlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p.apps.media.assembler import ChunkAssembler
from hp2p.apps.media.chunk import (
    MAX_CHUNK,
    ChunkError,
    MediaChunk,
    MediaSegment,
    check_stream_name,
    decode_chunk,
    decode_segment,
    encode_chunk,
    encode_segment,
    end_marker,
    split_segment,
)
from hp2p.apps.media.live import LivePolicy, LiveStream, LiveWindow
from hp2p.apps.media.vod import RecordedSegment, RecordingIndex

T0 = 1_700_000_000.0


def seg(seq: int, data: bytes = b"x" * 100, stream: str = "cam1") -> MediaSegment:
    return MediaSegment(stream, seq, 2.0, T0 + 2 * seq, hashlib.sha256(data).digest(), data)


# --- codec ---------------------------------------------------------------------------------
@given(st.binary(max_size=2048))
def test_decode_chunk_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(ChunkError):
        decode_chunk(data)


@given(st.binary(max_size=2048))
def test_decode_segment_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(ChunkError):
        decode_segment(data)


fields = st.tuples(
    st.text(max_size=80),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.floats(allow_nan=True),
    st.integers(-1, 2**40),
    st.binary(max_size=40),
    st.integers(-1, 5000),
    st.integers(-1, 5000),
    st.binary(max_size=64),
)


@given(fields)
def test_well_typed_but_wrong_chunks_are_refused_or_consistent(values: tuple) -> None:  # type: ignore[type-arg]
    raw = msgspec.msgpack.encode(list(values))
    try:
        chunk = decode_chunk(raw)
    except ChunkError:
        return
    check_stream_name(chunk.stream)
    assert 0 <= chunk.index < max(chunk.count, 1)
    assert len(chunk.sha256) == 32
    assert len(chunk.data) <= MAX_CHUNK


@given(st.binary(min_size=1, max_size=5000), st.integers(1, 700), st.randoms())
def test_split_then_assemble_in_any_order_gives_the_segment(
    data: bytes, size: int, rnd: object
) -> None:
    chunks = split_segment("cam1", 7, 2.0, T0, data, size)
    order = list(chunks)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    assembler = ChunkAssembler()
    out = [assembler.add(encode_chunk(c) + b"", 0.0) for c in order]
    whole = [s for s in out if s is not None]
    assert len(whole) == 1
    assert whole[0].data == data
    assert whole[0].sequence == 7
    assert assembler.add(encode_chunk(chunks[0]), 0.0) is None  # a duplicate afterwards
    assert assembler.stats.duplicates == 1


def test_oversized_and_malformed_chunks_are_refused_and_counted() -> None:
    assembler = ChunkAssembler()
    assert assembler.add(b"\x00" * (MAX_CHUNK + 4096), 0.0) is None
    assert assembler.add(b"not msgpack", 0.0) is None
    bad_name = MediaChunk("../x", 0, 1.0, T0, 1, bytes(32), 0, 1, b"x")
    assert assembler.add(encode_chunk(bad_name), 0.0) is None
    assert assembler.stats.refused == 3
    wrong_hash = MediaChunk("cam1", 0, 1.0, T0, 1, bytes(32), 0, 1, b"x")
    assert assembler.add(encode_chunk(wrong_hash), 0.0) is None
    assert assembler.stats.corrupt == 1
    with pytest.raises(ChunkError):
        split_segment("cam1", 0, 1.0, T0, b"", 10)
    with pytest.raises(ChunkError):
        decode_segment(encode_segment(MediaSegment("cam1", 0, 1.0, T0, bytes(32), b"abc")))


def test_inconsistent_chunks_and_bounds_of_incomplete_segments() -> None:
    assembler = ChunkAssembler(max_pending=2, expiry=5.0)
    a = split_segment("cam1", 1, 2.0, T0, b"a" * 30, 10)
    forged = MediaChunk("cam1", 1, 2.0, T0, 31, a[1].sha256, 1, 3, b"b" * 10)
    assert assembler.add(a[0], 0.0) is None
    assert assembler.add(forged, 0.0) is None
    assert assembler.stats.inconsistent == 1
    for seq in (2, 3):  # two more incomplete segments: the oldest goes
        assembler.add(split_segment("cam1", seq, 2.0, T0, b"c" * 30, 10)[0], 0.0)
    assert assembler.pending == 2
    assert assembler.stats.expired == 1
    assert assembler.expire(10.0) == 2
    assert assembler.pending == 0


def test_end_marker_round_trip() -> None:
    marker = decode_chunk(encode_chunk(end_marker("cam1", 5, T0)))
    out = ChunkAssembler().add(marker, 0.0)
    assert out is not None
    assert out.end
    assert out.sequence == 5


# --- live window ---------------------------------------------------------------------------
def test_live_window_lists_in_order_and_skips_a_missing_segment_after_patience() -> None:
    stream = LiveStream("cam1", LivePolicy(playlist_size=3, keep=4, patience=2.0), 0.0)
    events = stream.add(seg(10), 0.0, T0 + 22)
    assert [e[1]["sequence"] for e in events if e[0] == "listed"] == [10]
    stream.add(seg(12), 1.0, T0 + 26)  # 11 is missing: waited for
    assert [e.sequence for e in stream.entries] == [10]
    assert stream.next_deadline() == 3.0
    stream.add(seg(11), 2.0, T0 + 26)  # recovered in time
    assert [e.sequence for e in stream.entries] == [10, 11, 12]
    stream.add(seg(14), 3.0, T0 + 30)
    assert stream.advance(4.9, T0 + 30) == []
    events = stream.advance(5.0, T0 + 30)
    assert ("missing", {"stream": "cam1", "first": 13, "last": 13}) in events
    text = stream.playlist()
    assert text.splitlines()[-3:] == ["#EXT-X-DISCONTINUITY", "#EXTINF:2.000,", "14.ts"]
    assert "#EXT-X-MEDIA-SEQUENCE:1" in text  # 10 slid out
    assert stream.add(seg(13), 6.0, T0 + 31)[0][0] == "late"
    assert stream.segment(10) is not None
    assert stream.segment(13) is None
    assert stream.stats.missing == 1
    assert stream.stats.late == 1


def test_live_window_refuses_far_ahead_ends_and_bounds_streams() -> None:
    window = LiveWindow(LivePolicy(max_ahead=5, max_streams=2, patience=1.0))
    window.add(seg(0), 0.0, T0)
    assert window.add(seg(100), 0.0, T0)[0][0] == "refused"
    end = MediaSegment("cam1", 1, 0.0, T0, bytes(32), b"", end=True)
    assert ("ended", {"stream": "cam1", "sequence": 1}) in window.add(end, 0.0, T0)
    assert window.streams["cam1"].playlist().endswith("#EXT-X-ENDLIST\n")
    window.add(seg(0, stream="cam2"), 1.0, T0)
    window.add(seg(0, stream="cam3"), 2.0, T0)
    assert set(window.streams) == {"cam2", "cam3"}
    assert window.evicted == 1


def test_end_marker_after_a_gap_skips_to_the_end() -> None:
    stream = LiveStream("cam1", LivePolicy(patience=1.0), 0.0)
    stream.add(seg(0), 0.0, T0)
    stream.add(MediaSegment("cam1", 3, 0.0, T0, bytes(32), b"", end=True), 0.5, T0)
    events = stream.advance(1.5, T0)
    assert ("missing", {"stream": "cam1", "first": 1, "last": 2}) in events
    assert stream.ended


# --- recording index -----------------------------------------------------------------------
def rec(seq: int) -> RecordedSegment:
    return RecordedSegment(seq, 2.0, T0, 10, "00")


def test_recording_index_playlist_gaps_and_end() -> None:
    index = RecordingIndex(max_streams=1)
    for seq in (0, 1, 3):
        assert index.add("cam1", rec(seq))
    assert not index.add("cam1", rec(1))
    assert not index.add("cam2", rec(0))
    assert index.refused == 1
    text = index.playlist("cam1")
    assert text is not None
    assert "EVENT" in text
    assert "#EXT-X-DISCONTINUITY" in text
    assert index.missing("cam1") == [2]
    assert not index.complete("cam1")
    index.add("cam1", rec(2))
    index.end("cam1", 4)
    text = index.playlist("cam1")
    assert text is not None
    assert "VOD" in text
    assert text.endswith("#EXT-X-ENDLIST\n")
    assert "DISCONTINUITY" not in text
    assert index.complete("cam1")
    assert index.playlist("nope") is None


def test_recording_index_counts_far_gaps_without_listing_them() -> None:
    index = RecordingIndex()
    index.add("cam1", rec(0))
    index.add("cam1", rec(2**50))
    assert index.missing_count("cam1") == 2**50 - 1
    assert len(index.missing("cam1", limit=10)) == 10


def test_a_stream_name_belongs_to_its_first_source() -> None:
    window = LiveWindow()
    window.add(seg(0), 0.0, T0, "cam")
    events = window.add(seg(1), 0.0, T0, "mallory")
    assert events[0][0] == "refused"
    assert window.streams["cam1"].stats.foreign == 1
    assert [e.sequence for e in window.streams["cam1"].entries] == [0]
    assembler = ChunkAssembler()  # chunks of one segment from two sources never mix
    a = split_segment("cam1", 0, 1.0, T0, b"a" * 20, 10)
    assert assembler.add(a[0], 0.0, "cam") is None
    assert assembler.add(a[1], 0.0, "mallory") is None
    assert assembler.pending == 2


def test_a_viewer_that_joins_after_the_last_segment_sees_the_end() -> None:
    stream = LiveStream("cam1", LivePolicy(), 0.0)
    end = MediaSegment("cam1", 9, 0.0, T0, bytes(32), b"", end=True)
    assert stream.add(end, 0.0, T0) == [("ended", {"stream": "cam1", "sequence": 9})]
    assert stream.ended
    assert stream.add(seg(3), 1.0, T0)[0][0] in ("late", "listed")  # nothing breaks after
