"""How long a history member takes to answer one hour of one topic (36,000 readings at 10/s).

Not a test (no timing is asserted anywhere): run it by hand on a quiet machine,

    PYTHONPATH=src python tests/bench_iot_history_query.py /tmp/history-bench.sqlite

It fills a history file with three topics of 36,000 readings each (10 s segments), then times
the store's query with its gaps and JSON encoding, and ``GET /history`` over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from hp2p.apps.iot.history import HistoryStore
from hp2p.apps.iot.history_api import HistoryApi
from hp2p.apps.iot.history_gaps import find_gaps
from hp2p.apps.iot.reading import Reading
from hp2p.apps.iot.segments import (
    SEGMENT_APP_ID,
    Segment,
    Segmenter,
    SegmentPolicy,
    encode_segment,
    segment_meta,
)

T0 = 1_764_000_000.0
TOPICS = ("sensors/t1", "sensors/t2", "sensors/t3")
PER_TOPIC = 36_000


def fill(store: HistoryStore) -> None:
    segmenter = Segmenter(SegmentPolicy(slice_seconds=10, grace=0))
    segments: list[Segment] = []
    number = 0
    for topic in TOPICS:
        for i in range(PER_TOPIC):
            number += 1
            ts = T0 + i / 10
            payload = b'{"ts":%.1f,"temp":21.5,"hum":40}' % ts
            reading = Reading(topic, payload, ts, ts + 0.01, 0, "gw-1", 1, number)
            segments += segmenter.add(reading, ts)
        segments += segmenter.flush()
    started = time.perf_counter()
    for obj, segment in enumerate(segments, 1):
        data = encode_segment(segment)
        meta = segment_meta(segment)
        store.ingest(obj, data, SEGMENT_APP_ID, meta, piece_size=32768, now=T0)
    took = time.perf_counter() - started
    print(f"stored {len(segments)} segments, {number} readings in {took:.2f} s")


class _Member:
    """Just what the API needs of a member: its query over the store."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    async def query(self, topic: str, lo: float, hi: float, **kw: Any) -> dict[str, Any]:
        docs = self.store.query(topic, lo, hi, kw["limit"])
        known = self.store.known
        gaps = find_gaps(
            topic, lo, hi, kept_from=None, floor=1, known=known, pending={}, announced=[]
        )
        return {"gaps": [g.json() for g in gaps], "readings": [msgspec.Raw(d) for d in docs]}

    def status(self) -> dict[str, Any]:
        return {}


async def over_http(store: HistoryStore) -> list[float]:
    api = HistoryApi(_Member(store), "127.0.0.1:0")  # type: ignore[arg-type]
    url = await api.start()
    times = []
    params = {"topic": TOPICS[1], "from": T0, "to": T0 + 3600}
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(7):
            started = time.perf_counter()
            answer = await client.get(f"{url}/history", params=params)
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200
    await api.stop()
    return times


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "history-bench.sqlite")
    path.unlink(missing_ok=True)
    store = HistoryStore(path)
    fill(store)
    encoder = msgspec.json.Encoder()
    times = []
    for _ in range(7):
        started = time.perf_counter()
        docs = store.query(TOPICS[1], T0, T0 + 3600, 100_000)
        encoder.encode({"readings": [msgspec.Raw(d) for d in docs]})
        times.append(time.perf_counter() - started)
    print(f"query + JSON of {len(docs)} readings: median {statistics.median(times) * 1000:.0f} ms")
    http = asyncio.run(over_http(store))
    print(f"GET /history of {len(docs)} readings: median {statistics.median(http) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
