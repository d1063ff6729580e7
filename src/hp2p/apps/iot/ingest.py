"""The gateway's pure logic: MQTT messages in, numbered readings out, every loss counted.

A gateway (:mod:`hp2p.apps.iot.gateway`) has two speeds to reconcile: the broker delivers as
fast as devices publish, the CoreTree takes readings as fast as its links drain. Between them
sits one bounded queue, :class:`IngestQueue`. No I/O and no clock happen here (times are
passed in), so the policy is tested without a broker or a tree.

Why numbers are given on arrival, not on publication: a reading dropped because the queue was
full still used its number, so every consumer sees a hole in ``(gateway, epoch, number)`` where
a reading was lost. A slow tree can make the gateway drop, but never silently: the hole is in
the data, the count is in :meth:`IngestQueue.status`, and the gateway's events say when
dropping began and ended. Malformed MQTT messages get no number: they never were readings.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hp2p.apps.iot.reading import (
    MAX_PAYLOAD,
    MAX_TOPIC,
    Reading,
    ReadingError,
    check_reading,
    device_timestamp,
)

__all__ = [
    "MALFORMED_REASONS",
    "Backoff",
    "EventBudget",
    "IngestCounters",
    "IngestQueue",
    "Offer",
    "WhenFull",
    "classify",
    "reading_bytes",
]

#: What to discard when the queue is full: the oldest queued reading, or the one arriving.
WhenFull = Literal["oldest", "newest"]

#: Every reason a message is counted as malformed (a fixed set: the counters stay bounded).
MALFORMED_REASONS = (
    "payload_too_large",
    "topic_too_long",
    "bad_topic",
    "bad_qos",
    "too_large_for_tree",
    "invalid",
)


@dataclass
class IngestCounters:
    """What a gateway has done since it started; ``received`` = the other four + ``queued``
    (+ the reading being published)."""

    received: int = 0  # MQTT messages the broker delivered
    published: int = 0  # readings handed to the CoreTree
    dropped: int = 0  # readings discarded because the queue was full (or left at exit)
    malformed: int = 0  # messages that could not be readings (see ``malformed_by``)
    reconnects: int = 0  # MQTT connections made after the first one
    mqtt_failures: int = 0  # connection attempts refused and connections lost
    malformed_by: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Offer:
    """What :meth:`IngestQueue.offer` did with one MQTT message.

    ``reading`` is the new reading (None if malformed), ``dropped`` the readings discarded to
    make room (the new one itself under ``newest``), ``malformed`` the reason, ``full_began``
    True when this offer started a run of drops and ``full_ended`` the number of drops of a run
    that this offer ended (0 if none).
    """

    reading: Reading | None = None
    dropped: tuple[Reading, ...] = ()
    malformed: str | None = None
    full_began: bool = False
    full_ended: int = 0


def reading_bytes(reading: Reading) -> int:
    """What a queued reading costs, roughly: its payload, its topic and the object around them."""
    return len(reading.payload) + len(reading.topic) + 200


def classify(topic: str, payload: bytes, qos: int) -> str | None:
    """Why this MQTT message cannot be a reading (a :data:`MALFORMED_REASONS` key), or None."""
    if len(payload) > MAX_PAYLOAD:
        return "payload_too_large"
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC:
        return "topic_too_long"
    if not topic or any(c in topic for c in "+#\0"):
        return "bad_topic"
    if qos not in (0, 1, 2):
        return "bad_qos"
    return None


class IngestQueue:
    """The bounded queue between MQTT and the tree, with the numbering and the counters.

    ``gateway`` and ``epoch`` are the identity stamped on every reading (the gateway's peer-id
    and its start time); ``capacity`` bounds the readings waiting for the tree and
    ``max_bytes`` their size (:func:`reading_bytes`), whichever is reached first.
    """

    def __init__(
        self,
        gateway: str,
        epoch: int,
        capacity: int,
        when_full: WhenFull = "oldest",
        max_bytes: int = 64 << 20,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"the queue holds at least 1 reading, not {capacity}")
        if max_bytes < MAX_PAYLOAD + MAX_TOPIC + 200:
            raise ValueError(
                f"the queue must hold one reading of any size: at least "
                f"{MAX_PAYLOAD + MAX_TOPIC + 200} bytes, not {max_bytes}"
            )
        if when_full not in ("oldest", "newest"):
            raise ValueError(f"when the queue is full drop 'oldest' or 'newest', not {when_full!r}")
        if not gateway or len(gateway) > 128:
            raise ValueError("the gateway id (its peer-id) must be 1..128 characters")
        self.gateway = gateway
        self.epoch = epoch
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self.when_full: WhenFull = when_full
        self.counters = IngestCounters()
        self.last_number = 0
        self._queue: deque[Reading] = deque()
        self._run = 0  # drops in the current run of drops (0: not dropping)

    def __len__(self) -> int:
        return len(self._queue)

    def offer(self, topic: str, payload: bytes, qos: int, received_ts: float) -> Offer:
        """Take one MQTT message as the broker delivered it at ``received_ts`` (unix s)."""
        c = self.counters
        c.received += 1
        reason = classify(topic, payload, qos)
        reading: Reading | None = None
        if reason is None:
            reading = Reading(
                topic=topic,
                payload=payload,
                device_ts=device_timestamp(payload),
                received_ts=received_ts,
                qos=qos,
                gateway=self.gateway,
                epoch=self.epoch,
                number=self.last_number + 1,
            )
            try:
                check_reading(reading)
            except ReadingError:
                reason, reading = "invalid", None
        if reading is None:
            self.count_malformed(reason or "invalid")
            return Offer(malformed=reason)
        self.last_number = reading.number
        size = reading_bytes(reading)
        if self._fits(size):
            self._push(reading, size)
            ended, self._run = self._run, 0
            return Offer(reading=reading, full_ended=ended)
        if self.when_full == "newest":
            dropped: tuple[Reading, ...] = (reading,)
        else:
            out = []
            while self._queue and not self._fits(size):
                out.append(self._pop())
            self._push(reading, size)
            dropped = tuple(out)
        c.dropped += len(dropped)
        began = self._run == 0
        self._run += len(dropped)
        return Offer(reading=reading, dropped=dropped, full_began=began)

    def _fits(self, size: int) -> bool:
        return len(self._queue) < self.capacity and self.bytes + size <= self.max_bytes

    def _push(self, reading: Reading, size: int) -> None:
        self._queue.append(reading)
        self.bytes += size

    def _pop(self) -> Reading:
        reading = self._queue.popleft()
        self.bytes -= reading_bytes(reading)
        return reading

    def take(self) -> Reading | None:
        """The next reading for the tree (oldest first), or None when the queue is empty."""
        return self._pop() if self._queue else None

    def published(self) -> None:
        self.counters.published += 1

    def count_malformed(self, reason: str) -> None:
        """One more malformed message (``reason`` from :data:`MALFORMED_REASONS`)."""
        if reason not in MALFORMED_REASONS:
            reason = "invalid"
        self.counters.malformed += 1
        by = self.counters.malformed_by
        by[reason] = by.get(reason, 0) + 1

    def drop_rest(self) -> int:
        """Count every queued reading as dropped (the gateway is leaving); how many."""
        n = len(self._queue)
        self._queue.clear()
        self.bytes = 0
        self.counters.dropped += n
        return n

    def status(self) -> dict[str, Any]:
        return {
            **asdict(self.counters),
            "queued": len(self._queue),
            "queued_bytes": self.bytes,
            "queue_capacity": self.capacity,
            "queue_max_bytes": self.max_bytes,
            "when_full": self.when_full,
            "dropping": self._run > 0,
            "last_number": self.last_number,
            "gateway": self.gateway,
            "epoch": self.epoch,
        }


class Backoff:
    """Bounded exponential back-off with jitter for reconnecting to the broker.

    Each :meth:`next` is up to twice the previous, never above ``maximum``, and jittered down
    by up to half so that many gateways of one broker do not come back in step.
    """

    def __init__(
        self, initial: float = 0.2, maximum: float = 10.0, rng: random.Random | None = None
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("the back-off needs 0 < initial <= maximum seconds")
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._ceiling = initial

    def next(self) -> float:
        delay = self._ceiling * (0.5 + 0.5 * self._rng.random())
        self._ceiling = min(self.maximum, self._ceiling * 2)
        return delay

    def reset(self) -> None:
        self._ceiling = self.initial


class EventBudget:
    """At most ``limit`` events per ``interval`` seconds of one kind; the rest are counted.

    A broker (or a device behind it) can send malformed messages as fast as it likes; the
    counters see each one, the event stream only a bounded sample.
    """

    def __init__(self, limit: int, interval: float) -> None:
        self.limit = limit
        self.interval = interval
        self.suppressed = 0
        self._start = float("-inf")
        self._used = 0

    def allow(self, now: float) -> bool:
        if now - self._start >= self.interval:
            self._start, self._used = now, 0
        if self._used < self.limit:
            self._used += 1
            return True
        self.suppressed += 1
        return False
