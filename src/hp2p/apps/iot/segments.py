"""Segments: IoT readings grouped by topic and time slice, one SubMesh object each.

The SubMesh is the history (Q.4100 §9.1: it "stacks the received data for additional use,
similar to a database"). One object per reading would cost a manifest, a signature and a
buffermap entry per reading, so the bridge packs the readings of one topic and one time slice
(``slice_seconds``, default 10 s) into one *segment*. A segment closes when its slice has
ended plus a ``grace`` (late readings still fit), or earlier when it reaches a size cap: the
readings that follow go into a further *part* of the same slice. A reading that arrives after
its slice closed opens a new part too, closed at the next tick; nothing is ever dropped for
being late. No segment stays open longer than ``max_hold`` (a device whose clock runs ahead
would otherwise hold its readings back until that time).

The :class:`Segmenter` is pure: time comes in as an argument (the bridge passes the
wall clock), so it is tested without sleeping. :func:`decode_segment` takes bytes from the
network and checks everything before a history stores it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from hp2p.apps.iot.reading import (
    MAX_PAYLOAD,
    MAX_TOPIC,
    Reading,
    ReadingError,
    check_reading,
    decode_reading,
)

if TYPE_CHECKING:
    from hp2p.peer.node import Delivery

__all__ = [
    "MAX_SEGMENT",
    "MAX_SEGMENT_READINGS",
    "SEGMENT_APP_ID",
    "Segment",
    "SegmentError",
    "SegmentPacker",
    "SegmentPolicy",
    "Segmenter",
    "decode_segment",
    "encode_segment",
    "reading_time",
    "segment_meta",
]

#: The app-id of segment objects on the SubMesh.
SEGMENT_APP_ID = "hp2p-iot-segment"
#: Largest encoded segment accepted (the bridge's default cap is far below).
MAX_SEGMENT = 8 * 1024 * 1024
#: Most readings one segment may carry.
MAX_SEGMENT_READINGS = 100_000
#: Longest slice accepted in a segment (a day): a history indexes by slice.
MAX_SLICE = 86_400.0
#: Highest part number accepted (parts of one slice).
MAX_PART = 1_000_000
#: Per-reading overhead assumed when estimating a segment's encoded size.
_READING_OVERHEAD = 96

Clock = Literal["device", "received"]


class SegmentError(ValueError):
    """A segment that cannot be accepted; ``str(err)`` says why."""


class Segment(msgspec.Struct, array_like=True, frozen=True):
    """The readings of one topic in ``[start, end)`` (by ``clock``), part ``part`` of it."""

    topic: str
    start: float
    end: float
    part: int
    clock: str
    readings: list[Reading]


def reading_time(reading: Reading, clock: str) -> float:
    """The time a reading is filed under: the device's timestamp when it has one and
    ``clock`` is ``"device"``, else the gateway's reception time."""
    if clock == "device" and reading.device_ts is not None:
        return reading.device_ts
    return reading.received_ts


def segment_meta(segment: Segment) -> dict[str, Any]:
    """The SubMesh object's meta: what a history needs before it has pulled the data."""
    return {
        "topic": segment.topic,
        "start": segment.start,
        "end": segment.end,
        "part": segment.part,
        "count": len(segment.readings),
        "clock": segment.clock,
    }


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Segment)


def encode_segment(segment: Segment) -> bytes:
    return _encoder.encode(segment)


def decode_segment(data: bytes, max_size: int = MAX_SEGMENT) -> Segment:
    """The segment in ``data``, every field and reading checked (:class:`SegmentError`)."""
    if len(data) > max_size:
        raise SegmentError(f"segment of {len(data)} bytes exceeds {max_size}")
    try:
        segment = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec lets bad UTF-8 through
        raise SegmentError(f"not a segment: {exc}") from None
    check_segment(segment)
    return segment


def check_segment(segment: Segment) -> None:
    """Raise :class:`SegmentError` unless the segment is consistent and every reading valid."""
    topic = segment.topic
    if not topic or len(topic.encode()) > MAX_TOPIC or any(c in topic for c in "+#\0"):
        raise SegmentError("segment topic must be 1..256 bytes without wildcards or NUL")
    start, end = segment.start, segment.end
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end < 1e11):
        raise SegmentError(f"segment slice [{start!r}, {end!r}) is not a time range")
    if end - start > MAX_SLICE:
        raise SegmentError(f"segment slice of {end - start:g} s exceeds {MAX_SLICE:g} s")
    if not 0 <= segment.part <= MAX_PART:
        raise SegmentError(f"segment part {segment.part} is not in 0..{MAX_PART}")
    if segment.clock not in ("device", "received"):
        raise SegmentError(f"segment clock must be 'device' or 'received', not {segment.clock!r}")
    if not 1 <= len(segment.readings) <= MAX_SEGMENT_READINGS:
        raise SegmentError(f"a segment holds 1..{MAX_SEGMENT_READINGS} readings")
    for i, reading in enumerate(segment.readings):
        try:
            check_reading(reading)
        except ReadingError as exc:
            raise SegmentError(f"reading {i}: {exc}") from None
        if reading.topic != topic:
            raise SegmentError(f"reading {i} is on topic {reading.topic[:40]!r}, not the segment's")
        ts = reading_time(reading, segment.clock)
        if not start <= ts < end:
            raise SegmentError(f"reading {i} at {ts!r} is outside the slice [{start}, {end})")


@dataclass(frozen=True, slots=True)
class SegmentPolicy:
    """How the bridge cuts segments; sizes bound what one SubMesh object carries."""

    slice_seconds: float = 10.0
    grace: float = 2.0
    max_readings: int = 10_000
    max_bytes: int = 1024 * 1024
    clock: Clock = "device"
    #: Open segments at most (topics x slices); beyond, the oldest closes early.
    max_open: int = 10_000
    #: Longest a segment stays open (s) whatever its slice: a device whose clock runs ahead
    #: does not keep its readings from the history until that time comes.
    max_hold: float = 60.0
    #: (topic, slice) part counters remembered for late readings.
    max_remembered: int = 100_000

    def __post_init__(self) -> None:
        if not 0 < self.slice_seconds <= MAX_SLICE:
            raise ValueError(
                f"slice_seconds (--segment-seconds) must be in (0, {MAX_SLICE:g}], "
                f"not {self.slice_seconds}"
            )
        if self.grace < 0:
            raise ValueError("grace (--grace) must be 0 or more seconds")
        if not 1 <= self.max_readings <= MAX_SEGMENT_READINGS:
            raise ValueError(f"max_readings must be 1..{MAX_SEGMENT_READINGS}")
        if not MAX_PAYLOAD + 4096 <= self.max_bytes <= MAX_SEGMENT // 2:
            raise ValueError(f"max_bytes must be {MAX_PAYLOAD + 4096}..{MAX_SEGMENT // 2}")
        if self.clock not in ("device", "received"):
            raise ValueError("clock must be 'device' or 'received'")
        if self.max_hold < self.slice_seconds + self.grace:
            raise ValueError("max_hold must be at least slice_seconds + grace")
        if self.max_open < 1 or self.max_remembered < 1:
            raise ValueError("max_open and max_remembered must be at least 1")


@dataclass(slots=True)
class _Open:
    topic: str
    start: float
    end: float
    part: int
    readings: list[Reading]
    opened: float
    size: int = 0


class Segmenter:
    """Readings in, closed segments out; pure (``now`` is always an argument)."""

    def __init__(self, policy: SegmentPolicy | None = None) -> None:
        self.policy = policy or SegmentPolicy()
        self._open: dict[tuple[str, float], _Open] = {}
        # (topic, slice start) -> next part number, for slices already (partly) closed
        self._parts: OrderedDict[tuple[str, float], int] = OrderedDict()
        self.closed = 0

    def slice_of(self, ts: float) -> tuple[float, float]:
        width = self.policy.slice_seconds
        start = math.floor(ts / width) * width
        end = start + width
        if not start <= ts < end:  # float rounding at a boundary
            start, end = (end, end + width) if ts >= end else (start - width, start)
        return start, end

    def add(self, reading: Reading, now: float) -> list[Segment]:
        """File one (checked) reading; returns segments closed by a size cap."""
        policy = self.policy
        start, end = self.slice_of(reading_time(reading, policy.clock))
        key = (reading.topic, start)
        out: list[Segment] = []
        seg = self._open.get(key)
        size = len(reading.payload) + len(reading.topic) + len(reading.gateway) + _READING_OVERHEAD
        if seg is not None and (
            len(seg.readings) >= policy.max_readings or seg.size + size > policy.max_bytes
        ):
            out.append(self._close(key))
            seg = None
        if seg is None:
            if len(self._open) >= policy.max_open:
                oldest = min(self._open, key=lambda k: self._open[k].end)
                out.append(self._close(oldest))
            seg = _Open(reading.topic, start, end, self._parts.pop(key, 0), [], now)
            self._open[key] = seg
        seg.readings.append(reading)
        seg.size += size
        return out

    def due(self, now: float) -> list[Segment]:
        """Segments whose slice ended more than ``grace`` ago, or open for ``max_hold``,
        oldest slice first."""
        keys = sorted((k for k, s in self._open.items() if self._due_at(s) <= now), key=_order)
        return [self._close(k) for k in keys]

    def next_due(self) -> float | None:
        """When :meth:`due` will next return something (None: nothing open)."""
        return min((self._due_at(s) for s in self._open.values()), default=None)

    def _due_at(self, seg: _Open) -> float:
        policy = self.policy
        return min(seg.end + policy.grace, seg.opened + policy.max_hold)

    def flush(self) -> list[Segment]:
        """Close everything open (the bridge stops)."""
        return [self._close(k) for k in sorted(self._open, key=_order)]

    @property
    def open_readings(self) -> int:
        return sum(len(s.readings) for s in self._open.values())

    def _close(self, key: tuple[str, float]) -> Segment:
        seg = self._open.pop(key)
        self._parts[key] = seg.part + 1
        self._parts.move_to_end(key)
        while len(self._parts) > self.policy.max_remembered:
            self._parts.popitem(last=False)
        self.closed += 1
        return Segment(seg.topic, seg.start, seg.end, seg.part, self.policy.clock, seg.readings)


class SegmentPacker:
    """The bridge's packer for a SubMesh target: CoreTree deliveries of readings in, segment
    objects ``(data, app_id, meta)`` out (see ``hp2p.apps.bridge.Packer``).

    A delivery that is not a valid reading is counted in ``bad`` and dropped (it still went
    to the SubTree, unchanged).
    """

    def __init__(self, policy: SegmentPolicy | None = None) -> None:
        self.segmenter = Segmenter(policy)
        self.bad = 0
        self.last_error = ""

    def add(self, delivery: Delivery, now: float) -> list[tuple[bytes, str | None, dict[str, Any]]]:
        try:
            reading = decode_reading(delivery.data)
        except ValueError as exc:  # ReadingError, and UnicodeDecodeError for a bad UTF-8 str
            self.bad += 1
            self.last_error = str(exc)
            return []
        return [_packed(s) for s in self.segmenter.add(reading, now)]

    def due(self, now: float) -> list[tuple[bytes, str | None, dict[str, Any]]]:
        return [_packed(s) for s in self.segmenter.due(now)]

    def next_due(self) -> float | None:
        return self.segmenter.next_due()

    def status(self) -> dict[str, Any]:
        return {
            "segments": self.segmenter.closed,
            "open_readings": self.segmenter.open_readings,
            "bad_readings": self.bad,
        }


def _packed(segment: Segment) -> tuple[bytes, str | None, dict[str, Any]]:
    return encode_segment(segment), SEGMENT_APP_ID, segment_meta(segment)


def _order(key: tuple[str, float]) -> tuple[float, str]:
    return (key[1], key[0])
