"""Placement of history segments (rendezvous hashing), the HOMS member list it reads, the memory
cache of fetched segments and the gaps that name whom a segment is kept by. Pure parts only."""

from __future__ import annotations

import contextlib
import json
from collections import Counter

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p.apps.iot.history_cache import SegmentCache, merge
from hp2p.apps.iot.history_gaps import find_gaps
from hp2p.apps.iot.placement import MAX_MEMBERS, MembersError, Placement, live_members

MEMBERS = [f"h{i}" for i in range(6)]


def _placements(members: list[str], replicas: int = 2) -> dict[str, Placement]:
    out = {}
    for m in members:
        p = Placement(replicas, m, "ov-1")
        p.update(members, now=1.0)
        out[m] = p
    return out


def test_every_member_computes_the_same_r_owners_and_the_load_is_spread() -> None:
    placements = _placements(MEMBERS)
    load: Counter[str] = Counter()
    for obj in range(1, 3001):
        owners = placements["h0"].owners(obj)
        assert len(owners) == 2 == len(set(owners))
        assert all(p.owners(obj) == owners for p in placements.values())
        assert [m for m in MEMBERS if placements[m].mine(obj)] == sorted(owners)
        load.update(owners)
    # 6000 copies over 6 members: each about 1000 (a third of the segments)
    assert all(850 < n < 1150 for n in load.values()), load


def test_a_dead_member_moves_only_its_segments_each_to_one_new_owner() -> None:
    before = _placements(MEMBERS)["h0"]
    alive = [m for m in MEMBERS if m not in ("h4", "h5")]
    after = Placement(2, "h0", "ov-1")
    after.update(alive, now=2.0)
    moved = 0
    for obj in range(1, 2001):
        old, new = before.owners(obj), after.owners(obj)
        survivors = [m for m in old if m in alive]
        assert survivors == [m for m in new if m in survivors]  # survivors keep theirs
        assert set(survivors) <= set(new)
        moved += len(set(new) - set(old))
    # about 2/6 of the copies were on the dead: roughly that many move, not the whole history
    assert 1000 < moved < 1700


def test_placement_rules() -> None:
    p = Placement(3, "me", "ov")
    assert not p.ready
    assert p.owners(1) == []
    assert not p.mine(1)
    assert p.update(["a"], now=5.0)  # this member always counts
    assert p.members == ("a", "me")
    assert p.changed_at == 5.0
    assert sorted(p.owners(7)) == ["a", "me"]  # fewer members than replicas: all of them
    assert not p.update(["a", "me"], now=6.0)
    assert p.changes == 1
    with pytest.raises(ValueError, match="full replication"):
        Placement(0, "me", "ov")
    with pytest.raises(MembersError):
        p.update([f"p{i}" for i in range(MAX_MEMBERS + 1)], now=7.0)
    other = Placement(1, "me", "another-submesh")  # another SubMesh places differently
    other.update(["a"], now=1.0)
    same = Placement(1, "me", "ov")
    same.update(["a"], now=1.0)
    assert any(other.owners(o) != same.owners(o) for o in range(1, 50))


def _status(peers: list[dict[str, object]], source: str = "b1-iot-history") -> bytes:
    return json.dumps({"overlay": {"source-peer-id": source}, "peers": peers}).encode()


def test_live_members_leave_out_the_source_the_expired_and_the_suspects() -> None:
    body = _status(
        [
            {"peer-id": "b1-iot-history", "expires_at": 200.0, "suspect_since": None},
            {"peer-id": "h1", "expires_at": 200.0, "suspect_since": None, "costmap": {}},
            {"peer-id": "h2", "expires_at": 99.0, "suspect_since": None},
            {"peer-id": "h3", "expires_at": 200.0, "suspect_since": 90.0},
            {"peer-id": "h4", "expires_at": 100.0},
        ]
    )
    assert live_members(body, 100.0, source_id="b1-iot-history") == ["h1", "h4"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"overlay": {}, "peers": [{"peer-id": 5}]}).encode(),
        json.dumps({"overlay": {}, "peers": [{"peer-id": ""}]}).encode(),
        json.dumps({"overlay": {}, "peers": [{"peer-id": "x" * 300}]}).encode(),
        json.dumps({"overlay": {}, "peers": [{"peer-id": f"p{i}"} for i in range(5000)]}).encode(),
    ],
)
def test_an_unusable_member_list_is_an_error_not_a_crash(body: bytes) -> None:
    with pytest.raises(MembersError):
        live_members(body, 1.0, source_id="s")


@given(st.binary(max_size=300))
def test_live_members_fuzz(body: bytes) -> None:
    with contextlib.suppress(MembersError):
        live_members(body, 1.0, source_id="s")


def _row(ts: float, number: int, obj: int, topic: str = "t") -> tuple[object, ...]:
    doc = msgspec.json.encode({"ts": ts, "number": number, "object": obj})
    return (topic, ts, "gw", 1, number, obj, doc)


def test_the_cache_merges_with_the_file_each_reading_once_in_time_order_and_is_bounded() -> None:
    cache = SegmentCache(max_bytes=10_000)
    cache.add(7, [_row(3.0, 3, 7), _row(1.0, 1, 7)])
    cache.add(8, [_row(9.0, 9, 8, topic="other")])
    stored = [(2.0, "gw", 1, 2, b"two"), (3.0, "gw", 1, 3, b"three-stored")]
    docs = merge(stored, cache.rows("t", 0.0, 10.0), limit=10)
    assert len(docs) == 3  # reading 3 is in both: once
    assert msgspec.json.decode(docs[0])["number"] == 1
    assert docs[1:] == [b"two", b"three-stored"]
    assert merge(stored, cache.rows("t", 0.0, 10.0), limit=2)[-1] == b"two"
    assert cache.rows("t", 1.5, 2.5) == []
    assert 7 in cache
    assert cache.objects == {7, 8}
    for obj in range(100, 200):  # bounded: least recently used out
        cache.add(obj, [_row(float(obj), obj, obj)])
    assert cache.bytes <= 10_000
    assert cache.evicted > 0
    assert 7 not in cache


def test_gaps_name_the_members_that_keep_a_segment() -> None:
    meta = {"topic": "t", "start": 0.0, "end": 10.0}
    gaps = find_gaps(
        "t",
        0.0,
        20.0,
        kept_from=None,
        floor=1,
        known={1},
        pending={2: meta, 3: meta},
        announced=[2],
        notes=lambda obj: (
            ("unavailable", "no neighbour holds this segment's data (kept by h4, h5)")
            if obj == 3
            else ("pending", "segment known, data not pulled yet (kept by h0, h1)")
        ),
    )
    assert [(g.kind, g.objects) for g in gaps] == [("pending", (2, 2)), ("unavailable", (3, 3))]
    assert "h4, h5" in gaps[1].reason
