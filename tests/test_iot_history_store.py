"""The history store (SQLite) and the gap finder, without a network."""

from __future__ import annotations

from pathlib import Path

import pytest

from hp2p.apps.iot.history import HistoryError, HistoryStore, SqlitePieceStore, decode_doc
from hp2p.apps.iot.history_command import parse_age, parse_size
from hp2p.apps.iot.history_gaps import find_gaps, number_ranges
from hp2p.apps.iot.reading import Reading
from hp2p.apps.iot.segments import (
    SEGMENT_APP_ID,
    Segment,
    encode_segment,
    segment_meta,
)
from hp2p.peer.mesh_objects import make_object, sequence_of

T0 = 1_700_000_000.0


def segment(topic: str, start: float, numbers: range, gateway: str = "gw") -> Segment:
    readings = [
        Reading(topic, f'{{"n":{n}}}'.encode(), start + (n % 10) / 10, start, 1, gateway, 1, n)
        for n in numbers
    ]
    return Segment(topic, start, start + 1, 0, "device", readings)


def ingest(store: HistoryStore, obj: int, seg: Segment, now: float = T0) -> int:
    data = encode_segment(seg)
    result = store.ingest(obj, data, SEGMENT_APP_ID, segment_meta(seg), piece_size=64, now=now)
    assert result.stored, result.reason
    return result.readings


def test_readings_are_stored_once_and_answered_in_time_order(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    assert ingest(store, 1, segment("a", T0, range(1, 11))) == 10
    assert ingest(store, 2, segment("a", T0, range(5, 16))) == 5  # 5..10 again: stored once
    assert ingest(store, 3, segment("b", T0, range(100, 103))) == 3
    rows = [decode_doc(d) for d in store.query("a", T0, T0 + 1, 1000)]
    assert sorted(r["number"] for r in rows) == list(range(1, 16))
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    assert rows[0]["payload"].startswith('{"n":')
    assert store.query("a", T0 + 1, T0 + 2, 10) == []
    assert len(store.query("a", T0, T0 + 1, 3)) == 3
    store.close()
    again = HistoryStore(tmp_path / "h.sqlite")  # a restart keeps everything
    assert again.counts()["readings"] == 18
    assert again.known == {1, 2, 3}


@pytest.mark.parametrize(
    ("data", "app_id", "meta", "why"),
    [
        (b"garbage", SEGMENT_APP_ID, None, "not a segment"),
        (encode_segment(segment("a", T0, range(1, 3))), "other", None, "is not"),
        (encode_segment(segment("a", T0, range(1, 3))), SEGMENT_APP_ID, {"topic": "b"}, "meta"),
    ],
)
def test_a_bad_object_is_counted_with_its_reason_and_not_stored(
    tmp_path: Path, data: bytes, app_id: str, meta: dict[str, object] | None, why: str
) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    result = store.ingest(7, data, app_id, meta, piece_size=64, now=T0)
    assert not result.stored
    assert why in result.reason
    assert store.counts()["segments"] == 0
    assert store.counts()["rejected"] == 1
    assert 7 in store.known


def test_pieces_of_a_stored_segment_are_served_from_its_bytes(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    pieces = SqlitePieceStore(store)
    seg = segment("a", T0, range(1, 40))
    data = encode_segment(seg)
    manifest, cut = make_object(5, data, 64, app_id=SEGMENT_APP_ID, meta=segment_meta(seg))
    pieces.put(sequence_of(5, 0), manifest.encode())
    for i, piece in enumerate(cut, 1):
        pieces.put(sequence_of(5, i), piece)
    assert store.ingest(5, data, SEGMENT_APP_ID, segment_meta(seg), piece_size=64, now=T0).stored
    assert store.db.execute("SELECT count(*) FROM pieces").fetchone()[0] == 1  # the manifest
    assert [pieces.get(sequence_of(5, i)) for i in range(1, len(cut) + 1)] == cut
    assert pieces.get(sequence_of(5, len(cut) + 1)) is None
    assert sorted(pieces.sequences()) == [sequence_of(5, i) for i in range(len(cut) + 1)]
    pieces.drop_object(5)
    assert list(pieces.sequences()) == []
    assert store.query("a", 0, 1e11, 10) == []


def test_retention_drops_whole_oldest_objects_and_remembers_it(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    for obj in range(1, 7):
        ingest(store, obj, segment("a", T0 + 10 * obj, range(10 * obj, 10 * obj + 5)))
    assert store.retention_floor(T0 + 35, 0, None) == 4  # slices ending before T0+35: 1..3
    size = store.total_bytes()
    assert store.retention_floor(T0, None, size - 1) == 2
    assert store.retention_floor(T0, None, size) == 1
    assert store.drop_below(4) == 3
    assert store.floor == 4
    assert store.dropped_until("a") == T0 + 31
    assert {decode_doc(d)["number"] // 10 for d in store.query("a", 0, 1e11, 100)} == {4, 5, 6}
    store.close()
    assert HistoryStore(tmp_path / "h.sqlite").floor == 4


def test_a_file_of_another_submesh_is_refused(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite")
    store.bind("ov-1", "src")
    store.bind("ov-1", "src")
    with pytest.raises(HistoryError, match="another --db"):
        store.bind("ov-2", "src")


def test_a_file_that_is_not_sqlite_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(HistoryError, match="cannot use"):
        HistoryStore(bad)


def test_gaps_name_what_is_known_but_not_held() -> None:
    assert number_ranges([5, 1, 2, 3, 7]) == [(1, 3), (5, 5), (7, 7)]
    gaps = find_gaps(
        "a",
        100,
        200,
        kept_from=150,
        floor=3,
        known={3, 4, 8},
        pending={9: {"topic": "a", "start": 190, "end": 200}, 10: {"topic": "b"}},
        announced=[11, 12, 2],
    )
    assert [g.json() for g in gaps] == [
        {
            "kind": "retention",
            "from": 100,
            "to": 150,
            "reason": "outside retention: not kept by this member",
        },
        {
            "kind": "pending",
            "from": 190,
            "to": 200,
            "reason": "segment known, data not pulled yet",
            "objects": [9, 9],
        },
        {
            "kind": "announced",
            "from": None,
            "to": None,
            "reason": "announced by neighbours, not pulled yet",
            "objects": [11, 12],
        },
        {
            "kind": "unseen",
            "from": None,
            "to": None,
            "reason": "object numbers never seen by this member",
            "objects": [5, 7],
        },
    ]
    assert (
        find_gaps("a", 0, 1, kept_from=None, floor=1, known={1, 2}, pending={}, announced=[]) == []
    )
    # a neighbour announcing a huge number costs one range, not a loop over the numbers
    far = find_gaps("a", 0, 1, kept_from=None, floor=1, known=set(), pending={}, announced=[2**60])
    assert [g.objects for g in far] == [(2**60, 2**60), (1, 2**60 - 1)]


def test_retention_values_parse_with_units() -> None:
    assert parse_age("7d") == 7 * 86_400
    assert parse_age("90") == 90
    assert parse_age("1.5h") == 5400
    assert parse_size("1GB") == 10**9
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("500k") == 500_000
    with pytest.raises(ValueError, match="retention-age"):
        parse_age("soon")
    with pytest.raises(ValueError, match="retention-bytes"):
        parse_size("0")
