"""The live state of an IoT overlay: the latest reading per topic (Q.4100 §9.1), no I/O.

§9.1 asks a SubTree member to "update the current state in real time without saving the data":
:class:`LiveState` keeps, per MQTT topic, the newest reading it was given and nothing older.
Readings reach it from a tree that may deliver them out of order (recovery, two gateways,
a bridge restart), so "newest" is decided by the reading's own time, not by arrival:

* a reading's time is its ``device_ts`` (the device's clock) when it has one, else its
  ``received_ts`` (the gateway's clock). A ``device_ts`` further than ``future_slack`` seconds
  ahead of ``now`` is not believed (a device with a wrong clock would otherwise pin its topic
  for ever): the ``received_ts`` is used instead, and ``future_ts`` counts it;
* a reading older than the stored one is *stale*: counted, not applied;
* equal times: the same reading again (same ``(gateway, epoch, number)``) is a *duplicate*;
  from the same gateway the higher ``(epoch, number)`` wins; from another gateway the later
  ``received_ts`` wins and, failing that, the one that arrived last.

Every table is keyed by something from the network, so it is bounded: at most
``max_topics`` topics (the least recently *updated* is evicted, counted), and the change feed
(:class:`ChangeLog`) keeps at most ``max_changes`` changes and ``max_change_bytes`` of payload.
Each change has a version number (1, 2, …); a client that saw version ``v`` resumes with the
changes after ``v`` while they are still kept, else it needs a fresh snapshot (``None`` from
:meth:`ChangeLog.since`). Time is passed in (``now``), so all of this is testable without a
clock.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from hp2p.apps.iot.reading import Reading, ReadingError, decode_reading

__all__ = [
    "Change",
    "ChangeLog",
    "LiveState",
    "StateCounters",
    "malformed_reason",
    "payload_view",
    "reading_json",
]

#: Seconds a device clock may run ahead of ours before its ``device_ts`` is not believed.
FUTURE_SLACK = 300.0

#: The reasons a reading is refused, by the start of :class:`ReadingError`'s message; the
#: counters use these few names (a message itself carries remote text and is unbounded).
_REASONS: tuple[tuple[str, str], ...] = (
    ("not an IoT reading", "not_a_reading"),
    ("reading of", "too_large"),
    ("topic", "bad_topic"),
    ("payload", "bad_payload"),
    ("qos", "bad_qos"),
    ("gateway", "bad_gateway"),
    ("number", "bad_number"),
    ("device_ts", "bad_timestamp"),
    ("received_ts", "bad_timestamp"),
)


def malformed_reason(error: ReadingError) -> str:
    """The counter name of a refused reading (one of a fixed few, never remote text)."""
    text = str(error)
    for prefix, reason in _REASONS:
        if text.startswith(prefix):
            return reason
    return "invalid"


def payload_view(payload: bytes) -> dict[str, Any]:
    """A payload for JSON: ``json`` when it is a JSON document, ``text`` when it is UTF-8
    text, else ``base64``; ``payload_format`` says which."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return {"payload_format": "base64", "payload": base64.b64encode(payload).decode("ascii")}
    try:
        return {"payload_format": "json", "payload": json.loads(text)}
    except ValueError:
        return {"payload_format": "text", "payload": text}


def reading_json(reading: Reading, now: float) -> dict[str, Any]:
    """One topic's reading as a JSON-able dict (the shape of ``GET /state`` items)."""
    ts = reading.device_ts if reading.device_ts is not None else reading.received_ts
    return {
        "topic": reading.topic,
        **payload_view(reading.payload),
        "device_ts": reading.device_ts,
        "received_ts": reading.received_ts,
        "gateway": reading.gateway,
        "age": round(max(0.0, now - ts), 3),
    }


@dataclass
class StateCounters:
    """What happened to the readings given to a :class:`LiveState`."""

    applied: int = 0
    stale: int = 0
    duplicate: int = 0
    future_ts: int = 0
    evicted: int = 0
    malformed: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "stale": self.stale,
            "duplicate": self.duplicate,
            "future_ts": self.future_ts,
            "evicted": self.evicted,
            "malformed": dict(self.malformed),
            "malformed_total": sum(self.malformed.values()),
        }


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the state: ``reading`` is the topic's new value, None when it was evicted."""

    version: int
    topic: str
    reading: Reading | None

    @property
    def size(self) -> int:
        return len(self.topic) + (len(self.reading.payload) if self.reading else 0)

    def as_json(self, now: float) -> dict[str, Any]:
        if self.reading is None:
            return {"type": "remove", "version": self.version, "topic": self.topic}
        return {"type": "change", "version": self.version, **reading_json(self.reading, now)}


class ChangeLog:
    """The last changes, bounded in count and payload bytes, for clients to resume from."""

    def __init__(self, max_changes: int = 4096, max_bytes: int = 16 * 1024 * 1024) -> None:
        if max_changes < 1 or max_bytes < 1:
            raise ValueError("a change log keeps at least one change and one byte")
        self.max_changes = max_changes
        self.max_bytes = max_bytes
        self.version = 0
        self._changes: deque[Change] = deque()
        self._bytes = 0

    def add(self, topic: str, reading: Reading | None) -> Change:
        self.version += 1
        change = Change(self.version, topic, reading)
        self._changes.append(change)
        self._bytes += change.size
        while len(self._changes) > self.max_changes or (
            self._bytes > self.max_bytes and len(self._changes) > 1
        ):
            self._bytes -= self._changes.popleft().size
        return change

    @property
    def oldest(self) -> int:
        """The version of the oldest change kept (``version + 1`` when none is kept)."""
        return self._changes[0].version if self._changes else self.version + 1

    def since(self, version: int, limit: int = 64) -> list[Change] | None:
        """Up to ``limit`` changes after ``version``; None when some of them are no longer kept
        (or ``version`` is from the future, e.g. another member's): the client needs a
        snapshot. A small ``limit`` keeps what a slow client holds small."""
        if version > self.version or version < 0:
            return None
        if version == self.version:
            return []
        if version + 1 < self.oldest:
            return None
        skip = version + 1 - self.oldest
        return list(itertools.islice(self._changes, skip, skip + limit))


class LiveState:
    """The latest reading per topic, bounded, with counters and a change log."""

    def __init__(
        self,
        max_topics: int = 10_000,
        *,
        future_slack: float = FUTURE_SLACK,
        log: ChangeLog | None = None,
    ) -> None:
        if max_topics < 1:
            raise ValueError("the state keeps at least one topic")
        self.max_topics = max_topics
        self.future_slack = future_slack
        self.log = log or ChangeLog()
        self.counters = StateCounters()
        # topic → (order key, reading), least recently updated first
        self._topics: OrderedDict[str, tuple[tuple[float, float], Reading]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._topics)

    @property
    def version(self) -> int:
        return self.log.version

    def get(self, topic: str) -> Reading | None:
        entry = self._topics.get(topic)
        return entry[1] if entry else None

    def _time(self, reading: Reading, now: float) -> tuple[float, float]:
        ts = reading.device_ts
        if ts is None:
            return (reading.received_ts, reading.received_ts)
        if ts > now + self.future_slack:
            self.counters.future_ts += 1
            return (reading.received_ts, reading.received_ts)
        return (ts, reading.received_ts)

    def _replaces(self, old: Reading, new: Reading) -> bool | None:
        """On equal reading times: True if ``new`` wins, False if not, None if it is ``old``."""
        if old.key == new.key:
            return None
        if old.gateway == new.gateway:
            return (new.epoch, new.number) > (old.epoch, old.number)
        return True  # another gateway at the same instant: the last to arrive

    def apply(self, reading: Reading, now: float) -> Change | None:
        """Store ``reading`` if it is the topic's newest; the change made, or None."""
        key = self._time(reading, now)
        entry = self._topics.get(reading.topic)
        if entry is not None:
            old_key, old = entry
            if key < old_key:
                self.counters.stale += 1
                return None
            if key == old_key:
                wins = self._replaces(old, reading)
                if wins is None:
                    self.counters.duplicate += 1
                    return None
                if not wins:
                    self.counters.stale += 1
                    return None
            del self._topics[reading.topic]
        self._topics[reading.topic] = (key, reading)
        self.counters.applied += 1
        while len(self._topics) > self.max_topics:
            topic, _ = self._topics.popitem(last=False)
            self.counters.evicted += 1
            self.log.add(topic, None)
        return self.log.add(reading.topic, reading)

    def apply_bytes(self, data: bytes, now: float) -> Change | None:
        """Decode and apply one broadcast's payload; a malformed one is counted by reason."""
        try:
            reading = decode_reading(data)
        except ValueError as exc:
            # ReadingError, and UnicodeDecodeError: msgspec 0.19 raises that (not a
            # DecodeError) for a topic or gateway that is not UTF-8, and decode_reading
            # lets it through
            reason = malformed_reason(exc) if isinstance(exc, ReadingError) else "not_a_reading"
            self.counters.malformed[reason] = self.counters.malformed.get(reason, 0) + 1
            return None
        return self.apply(reading, now)

    def readings(self, prefix: str = "") -> list[Reading]:
        """The stored readings whose topic starts with ``prefix``, by topic."""
        return [r for t, (_, r) in sorted(self._topics.items()) if t.startswith(prefix)]

    def snapshot(self, now: float, prefix: str = "") -> dict[str, Any]:
        """Every topic (under ``prefix``) as JSON-able dicts, with the version they reflect."""
        return {
            "version": self.version,
            "topics": [reading_json(r, now) for r in self.readings(prefix)],
        }
