"""CM FE: the per-source cache bounded by count, bytes and age."""

from __future__ import annotations

from hp2p.peer.cache import MessageCache
from hp2p.wire.r2.messages import BroadcastData


def msg(source: str, sequence: int, size: int = 10) -> BroadcastData:
    return BroadcastData(source=source, sequence=sequence, data=b"x" * size)


def test_count_bound_is_per_source() -> None:
    cache = MessageCache(max_count=3, max_bytes=10_000, max_age=0)
    for n in range(1, 6):
        cache.put(msg("a", n), now=0.0)
    cache.put(msg("b", 1), now=0.0)
    held = {e.source_peer_id: e.sequences for e in cache.buffermap(0.0)}
    assert held == {"a": [3, 4, 5], "b": [1]}
    assert cache.counters.evicted_count == 2


def test_byte_bound_evicts_oldest_over_all_sources() -> None:
    cache = MessageCache(max_count=100, max_bytes=250, max_age=0)
    cache.put(msg("a", 1, 100), 0.0)
    cache.put(msg("b", 1, 100), 1.0)
    cache.put(msg("a", 2, 100), 2.0)  # 300 bytes > 250: the oldest (a/1) goes
    assert cache.bytes == 200
    assert cache.get("a", 1, 2.0) is None
    assert cache.get("b", 1, 2.0) is not None
    assert cache.counters.evicted_bytes == 1


def test_message_larger_than_the_budget_is_refused_and_counted() -> None:
    cache = MessageCache(max_count=10, max_bytes=50, max_age=0)
    assert not cache.put(msg("a", 1, 51), 0.0)
    assert len(cache) == 0
    assert cache.counters.too_large == 1


def test_age_bound_drops_old_messages() -> None:
    cache = MessageCache(max_count=100, max_bytes=10_000, max_age=10.0)
    cache.put(msg("a", 1), 0.0)
    cache.put(msg("a", 2), 5.0)
    assert cache.get("a", 1, 9.9) is not None
    assert cache.get("a", 1, 10.5) is None
    assert cache.get("a", 2, 10.5) is not None
    assert [e.sequences for e in cache.buffermap(15.5)] == []
    assert cache.counters.evicted_age == 2
    assert cache.bytes == 0


def test_get_returns_the_stored_object_without_copy() -> None:
    cache = MessageCache(max_count=10, max_bytes=10_000, max_age=0)
    m = msg("a", 7)
    cache.put(m, 0.0)
    assert cache.get("a", 7, 0.0) is m
    assert cache.put(m, 0.0)  # a second put of the same message is a no-op
    assert len(cache) == 1
