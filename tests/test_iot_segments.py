"""Segments of IoT readings: the pure segmenter (time passed in) and the bounded codec."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p.apps.iot.reading import Reading, encode_reading
from hp2p.apps.iot.segments import (
    SEGMENT_APP_ID,
    Segment,
    Segmenter,
    SegmentError,
    SegmentPacker,
    SegmentPolicy,
    decode_segment,
    encode_segment,
)
from hp2p.peer.node import Delivery

T0 = 1_700_000_000.0


def reading(topic: str, ts: float, n: int, payload: bytes = b"{}", device: bool = True) -> Reading:
    return Reading(topic, payload, ts if device else None, ts + 0.01, 0, "gw", 1, n)


def test_readings_are_grouped_by_topic_and_slice_and_close_after_the_grace() -> None:
    seg = Segmenter(SegmentPolicy(slice_seconds=10, grace=2))
    for i in range(30):
        assert seg.add(reading("a", T0 + i, i + 1), T0 + i) == []
        assert seg.add(reading("b", T0 + i, 100 + i), T0 + i) == []
    assert seg.due(T0 + 11) == []  # slice [T0, T0+10) ends at T0+10, grace until T0+12
    assert seg.next_due() == T0 + 12
    closed = seg.due(T0 + 12)
    assert [(s.topic, s.start, s.part, len(s.readings)) for s in closed] == [
        ("a", T0, 0, 10),
        ("b", T0, 0, 10),
    ]
    rest = seg.flush()
    assert sorted((s.topic, s.start) for s in rest) == [
        ("a", T0 + 10),
        ("a", T0 + 20),
        ("b", T0 + 10),
        ("b", T0 + 20),
    ]
    for s in closed + rest:
        assert all(s.start <= r.device_ts < s.end for r in s.readings if r.device_ts)


def test_a_size_cap_closes_a_part_and_late_readings_open_a_further_part() -> None:
    seg = Segmenter(SegmentPolicy(slice_seconds=10, grace=1, max_readings=3))
    out = []
    for i in range(7):
        out += seg.add(reading("a", T0 + 0.1 * i, i + 1), T0)
    assert [(s.part, len(s.readings)) for s in out] == [(0, 3), (1, 3)]
    out = seg.due(T0 + 20)
    assert [(s.part, len(s.readings)) for s in out] == [(2, 1)]
    # a late reading of the closed slice: part 3, closed at the next tick
    assert seg.add(reading("a", T0 + 5, 99), T0 + 30) == []
    late = seg.due(T0 + 30)
    assert [(s.start, s.part, len(s.readings)) for s in late] == [(T0, 3, 1)]


def test_a_segment_from_a_clock_running_ahead_is_not_held_back_past_max_hold() -> None:
    seg = Segmenter(SegmentPolicy(slice_seconds=10, grace=2, max_hold=30))
    seg.add(reading("a", T0 + 3600, 1), T0)  # the device thinks it is an hour later
    assert seg.next_due() == T0 + 30
    assert seg.due(T0 + 29) == []
    (s,) = seg.due(T0 + 30)
    assert (s.start, s.part) == (T0 + 3600, 0)
    seg.add(reading("a", T0 + 3601, 2), T0 + 31)  # the same slice again: a further part
    assert [(s.part, len(s.readings)) for s in seg.flush()] == [(1, 1)]
    with pytest.raises(ValueError, match="max_hold"):
        SegmentPolicy(slice_seconds=60, max_hold=30)


def test_the_received_clock_files_by_the_gateway_time() -> None:
    seg = Segmenter(SegmentPolicy(slice_seconds=10, clock="received"))
    r = Reading("a", b"x", T0 - 1000, T0 + 1, 0, "gw", 1, 1)
    seg.add(r, T0)
    (s,) = seg.flush()
    assert s.start == T0
    assert s.clock == "received"
    assert decode_segment(encode_segment(s)) == s


def test_the_packer_counts_bad_readings_and_emits_objects_with_meta() -> None:
    packer = SegmentPacker(SegmentPolicy(slice_seconds=10, grace=0))
    good = Delivery("gw", 1, encode_reading(reading("t/1", T0 + 1, 1)), "hp2p-iot", "x")
    bad = Delivery("gw", 2, b"garbage", "hp2p-iot", "x")
    bad_utf8 = Delivery("gw", 3, b"\x98\xa3\x00\x00\x80", "hp2p-iot", "x")
    assert packer.add(good, T0) == []
    assert packer.add(bad, T0) == []
    assert packer.add(bad_utf8, T0) == []  # msgspec raises UnicodeDecodeError for it
    assert packer.bad == 2
    ((data, app_id, meta),) = packer.due(T0 + 10)
    assert app_id == SEGMENT_APP_ID
    assert meta == {
        "topic": "t/1",
        "start": T0,
        "end": T0 + 10,
        "part": 0,
        "count": 1,
        "clock": "device",
    }
    assert decode_segment(data).readings[0].number == 1


@pytest.mark.parametrize(
    ("segment", "why"),
    [
        (Segment("a", T0, T0 + 10, 0, "device", []), "1..100000 readings"),
        (Segment("a", T0, T0, 0, "device", [reading("a", T0, 1)]), "not a time range"),
        (Segment("a", T0, T0 + 1e6, 0, "device", [reading("a", T0, 1)]), "exceeds"),
        (Segment("a", T0, T0 + 10, 0, "device", [reading("b", T0, 1)]), "not the segment's"),
        (Segment("a", T0, T0 + 10, 0, "device", [reading("a", T0 + 11, 1)]), "outside"),
        (Segment("a/#", T0, T0 + 10, 0, "device", [reading("a", T0, 1)]), "wildcards"),
        (Segment("a", T0, T0 + 10, -1, "device", [reading("a", T0, 1)]), "part"),
        (Segment("a", T0, T0 + 10, 0, "wall", [reading("a", T0, 1)]), "clock"),
        (
            Segment("a", T0, T0 + 10, 0, "device", [Reading("a", b"", T0, T0, 7, "g", 1, 1)]),
            "qos",
        ),
    ],
)
def test_a_bad_segment_says_why(segment: Segment, why: str) -> None:
    with pytest.raises(SegmentError, match=why):
        decode_segment(msgspec.msgpack.encode(segment))


def test_a_string_of_bad_utf8_is_a_bad_segment() -> None:
    with pytest.raises(SegmentError, match="not a segment"):
        decode_segment(b"\x96\xa3\x00\x00\x80")


def test_an_oversized_segment_is_refused_before_decoding() -> None:
    with pytest.raises(SegmentError, match="exceeds"):
        decode_segment(b"\x90" * 100, max_size=99)


@given(st.binary(max_size=2000))
def test_decoding_random_bytes_never_crashes(data: bytes) -> None:
    with contextlib.suppress(SegmentError):
        decode_segment(data)


_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)


@given(
    st.lists(
        st.one_of(_values, st.lists(st.lists(_values, max_size=9), max_size=3)),
        max_size=7,
    )
)
def test_decoding_segment_shaped_garbage_never_crashes(fields: list[object]) -> None:
    with contextlib.suppress(SegmentError):
        decode_segment(msgspec.msgpack.encode(fields))


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b/c"]), st.floats(0, 100), st.binary(max_size=50)),
        min_size=1,
        max_size=60,
    )
)
def test_every_reading_comes_out_in_exactly_one_valid_segment(
    items: list[tuple[str, float, bytes]],
) -> None:
    seg = Segmenter(SegmentPolicy(slice_seconds=7, grace=0, max_readings=5))
    out: list[Segment] = []
    for n, (topic, dt, payload) in enumerate(items, 1):
        out += seg.add(reading(topic, T0 + dt, n, payload), T0 + dt / 2)
        out += seg.due(T0 + dt / 2)
    out += seg.flush()
    numbers = sorted(r.number for s in out for r in s.readings)
    assert numbers == list(range(1, len(items) + 1))
    for s in out:
        assert decode_segment(encode_segment(s)) == s
