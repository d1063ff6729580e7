"""The DR FE's pieces on their own: buffermap summaries, the pull queue, push/pull selection."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hp2p.peer.broadcast import DuplicateFilter
from hp2p.peer.cache import MessageCache
from hp2p.peer.config import PeerConfig
from hp2p.peer.control import JoinInfo
from hp2p.peer.core import PeerCore
from hp2p.peer.effects import Gap, Send
from hp2p.peer.errors import SettingsError
from hp2p.peer.paths import Link, Role
from hp2p.peer.recovery import PullQueue, PullSettings, lacking, missing_from, summarise
from hp2p.wire.errors import LimitExceeded
from hp2p.wire.r2 import decode, encode
from hp2p.wire.r2.messages import (
    GET_DATA_MISSING,
    BroadcastData,
    BroadcastExt,
    BuffermapEntry,
    BuffermapResponse,
    GetData,
    GetDataResponse,
    Heartbeat,
    HeartbeatExt,
)


def settings_(**kw: float) -> PullSettings:
    base = {
        "gap_wait": 0.1,
        "timeout": 1.0,
        "rounds": 2,
        "round_delay": 0.5,
        "per_peer": 2,
        "total": 3,
        "max_wanted": 100,
    }
    base.update(kw)
    return PullSettings(**base)  # type: ignore[arg-type]


# --- summarise ------------------------------------------------------------------------------------
def test_a_huge_buffermap_is_refused_by_the_codec_and_the_summary_fits() -> None:
    entries = [
        BuffermapEntry(f"source-{k:03d}", list(range(1_000_000, 1_001_024))) for k in range(20)
    ]
    with pytest.raises(LimitExceeded):
        encode(BuffermapResponse(overlay_id="ov", buffermap=entries))
    cut = summarise(entries, 48 * 1024)
    frame = encode(BuffermapResponse(overlay_id="ov", buffermap=cut))
    assert len(frame) < 65535
    assert {e.source_peer_id for e in cut} == {e.source_peer_id for e in entries}
    for entry in cut:  # the newest sequences are kept, contiguous up to the newest
        assert entry.sequences[-1] == 1_001_023
        assert entry.sequences == list(range(entry.sequences[0], 1_001_024))
    sizes = [len(e.sequences) for e in cut]
    assert max(sizes) - min(sizes) <= 1  # shared fairly


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=40),
        st.lists(st.integers(1, 2**40), max_size=300),
        max_size=30,
    ),
    st.integers(1024, 60 * 1024),
)
def test_summaries_always_fit_their_budget(raw: dict[str, list[int]], budget: int) -> None:
    entries = [BuffermapEntry(s, sorted(set(q))) for s, q in raw.items()]
    cut = summarise(entries, budget)
    body = encode(BuffermapResponse(overlay_id="ov", buffermap=cut))
    assert len(body) - 4 <= budget + 64  # the rest of the header is the envelope
    assert decode(body) == BuffermapResponse(overlay_id="ov", buffermap=cut)
    original = {e.source_peer_id: set(e.sequences) for e in entries}
    for entry in cut:
        assert set(entry.sequences) <= original[entry.source_peer_id]


# --- what the other side lacks, what I miss ---------------------------------------------------
def test_lacking_pushes_only_above_their_lowest_and_new_sources_since_the_outage() -> None:
    cache = MessageCache(100, 1 << 20, 0)
    for seq in range(1, 11):
        cache.put(BroadcastData(source="a", sequence=seq, data=b"x"), float(seq))
    for seq in range(1, 4):
        cache.put(BroadcastData(source="b", sequence=seq, data=b"y"), 10.0 + seq)
    theirs = [BuffermapEntry("a", [5, 6, 9])]
    out = lacking(cache, theirs, since=12.0, limit=100)
    assert [(m.source, m.sequence) for m in out] == [
        ("a", 7),
        ("a", 8),
        ("a", 10),
        ("b", 2),
        ("b", 3),
    ]
    assert len(lacking(cache, theirs, since=None, limit=2)) == 2


def test_missing_from_respects_the_window_and_knows_new_sources() -> None:
    dup = DuplicateFilter(window=16, max_ahead=100)
    for seq in (10, 11, 13):
        dup.check("a", seq)
    theirs = [
        BuffermapEntry("a", [5, 9, 10, 12, 14, 15]),
        BuffermapEntry("new", [1, 2]),
        BuffermapEntry("me", [1]),
    ]
    assert missing_from(dup, theirs, "me") == [
        ("a", 12),
        ("a", 14),
        ("a", 15),
        ("new", 1),
        ("new", 2),
    ]


# --- the pull queue -------------------------------------------------------------------------------
def test_pulls_are_bounded_per_peer_and_in_total() -> None:
    q = PullQueue(settings_())
    dup = DuplicateFilter(64, 64)
    for seq in range(1, 11):
        q.want("s", seq, 0.0)
    first = q.pump(0.0, [1, 2], dup)
    assert len(first) == 3  # total bound
    assert sum(r.conn == 1 for r in first) == 2  # per-peer bound
    assert q.pump(0.0, [1, 2], dup) == []
    # Everything due is blocked: the next deadline is an answer time-out, never "now".
    assert q.next_deadline() == pytest.approx(1.0)


def test_an_absent_answer_moves_on_and_rounds_end_in_one_gap_range() -> None:
    q = PullQueue(settings_(per_peer=10, total=10))
    dup = DuplicateFilter(64, 64)
    dup.check("s", 1)
    dup.check("s", 4)
    q.want_range("s", 2, 3, 0.0)
    assert q.pump(0.05, [1, 2], dup) == []  # reordering tolerance
    now = 0.1
    for _ in range(10):  # bounded: answer every request with 11404
        for req in q.pump(now, [1, 2], dup):
            q.answered(req.conn, req.source, req.sequence, False, now)
        if q.has_failed() and not q.wants:
            break
        now = max(now + 0.01, q.next_deadline() or now)
    assert not q.wants
    assert q.take_failed(now, dup) == []  # held for gap_wait, to merge neighbours
    assert q.take_failed(now + 0.2, dup) == [("s", 2, 3)]
    assert q.counters.absent == 2 * 2 * 2  # 2 wants × 2 holders × 2 rounds


def test_a_want_that_arrives_another_way_is_dropped_and_a_timeout_tries_the_next_holder() -> None:
    q = PullQueue(settings_())
    dup = DuplicateFilter(64, 64)
    dup.check("s", 1)
    q.want("s", 2, 0.0)
    q.want("s", 3, 0.0)
    reqs = q.pump(0.0, [7, 8], dup)
    assert [r.conn for r in reqs] == [7, 7]
    dup.check("s", 2)  # arrived on the live path meanwhile
    again = q.pump(1.5, [7, 8], dup)  # both timed out; 2 is done, 3 goes to the next holder
    assert [(r.conn, r.sequence) for r in again] == [(8, 3)]
    assert q.counters.timeouts == 2
    q.conn_lost(8)
    assert [(r.conn, r.sequence) for r in q.pump(1.5, [7, 9], dup)] == [(9, 3)]


def test_over_the_wanted_bound_a_miss_is_a_gap_at_once_never_silent() -> None:
    q = PullQueue(settings_(max_wanted=2, gap_wait=0.0))
    dup = DuplicateFilter(64, 64)
    for seq in range(1, 5):
        q.want("s", seq, 0.0)
    assert len(q) == 2
    assert q.take_failed(0.0, dup) == [("s", 3, 4)]


def test_recovery_settings_are_validated() -> None:
    with pytest.raises(SettingsError, match="buffermap_bytes"):
        PeerConfig(buffermap_bytes=70_000)
    with pytest.raises(SettingsError, match="pull_rounds"):
        PeerConfig(pull_rounds=0)


# --- the core's DR FE, input by input ------------------------------------------------------
def attached_core(**kw: object) -> tuple[PeerCore, int, int]:
    """A root with two children: one to lose data from, one to ask."""
    c = PeerCore(PeerConfig(**kw), "me", "mem://me", random.Random(1))  # type: ignore[arg-type]
    c.start(JoinInfo("ov", 1, root=True), 0.0)
    c.paths.add(Link(11, Role.CHILD, peer_id="a", ticket=2, last_rx=0.0))
    c.paths.add(Link(12, Role.CHILD, peer_id="b", ticket=3, last_rx=0.0))
    c.take_effects()
    return c, 11, 12


def test_a_live_hole_is_pulled_after_the_wait_and_reported_when_nobody_has_it() -> None:
    c, a, b = attached_core(gap_wait=0.1, pull_rounds=1)
    c.receive(a, BroadcastData(source="s", sequence=1, data=b"1"), 1.0)
    c.receive(a, BroadcastData(source="s", sequence=3, data=b"3"), 1.0)
    c.take_effects()
    c.handle_timer(1.09)  # inside the reordering tolerance: nothing asked yet
    assert not [e for e in c.take_effects() if isinstance(e, Send) and type(e.message) is GetData]
    c.handle_timer(1.1)
    asks = [e for e in c.take_effects() if isinstance(e, Send) and type(e.message) is GetData]
    assert [(e.conns, e.message.sequence) for e in asks] == [((a,), 2)]
    missing = GetDataResponse(source="s", sequence=2, data=b"", code=GET_DATA_MISSING)
    c.receive(a, missing, 1.12)
    asks = [e for e in c.take_effects() if isinstance(e, Send) and type(e.message) is GetData]
    assert [e.conns for e in asks] == [(b,)]
    c.receive(b, missing, 1.14)
    c.take_effects()
    when = c.next_timer()
    assert when is not None
    c.handle_timer(when)
    assert [e for e in c.take_effects() if isinstance(e, Gap)] == [Gap("s", 2, 2)]


def test_a_recovered_message_is_delivered_once_and_forwarded_down_but_not_back() -> None:
    c, a, b = attached_core(gap_wait=0.1)
    c.receive(a, BroadcastData(source="s", sequence=1, data=b"1"), 1.0)
    c.receive(a, BroadcastData(source="s", sequence=3, data=b"3"), 1.0)
    c.take_effects()
    c.handle_timer(1.2)
    c.take_effects()
    c.receive(a, GetDataResponse(source="s", sequence=2, data=b"2"), 1.25)
    out = c.take_effects()
    forwards = [e for e in out if isinstance(e, Send) and type(e.message) is BroadcastData]
    assert [e.conns for e in forwards] == [(b,)]
    assert forwards[0].message.hp2p == BroadcastExt(recovered=True)
    delivered = [e for e in out if type(e).__name__ == "Deliver"]
    assert len(delivered) == 1
    assert delivered[0].recovered  # type: ignore[attr-defined]
    c.receive(b, BroadcastData(source="s", sequence=2, data=b"2"), 1.3)  # late copy
    assert not [e for e in c.take_effects() if type(e).__name__ == "Deliver"]


def test_heads_in_a_heartbeat_reveal_a_lost_last_message() -> None:
    c, a, _ = attached_core(gap_wait=0.1)
    c.receive(a, BroadcastData(source="s", sequence=1, data=b"1"), 1.0)
    c.receive(a, Heartbeat(hp2p=HeartbeatExt(heads={"s": 3, "me": 99})), 1.5)
    c.take_effects()
    c.handle_timer(1.6)  # heads may race the data: half a heartbeat interval of patience
    assert not [e for e in c.take_effects() if isinstance(e, Send) and type(e.message) is GetData]
    c.handle_timer(2.0)
    asks = [e.message for e in c.take_effects() if isinstance(e, Send)]
    assert sorted(m.sequence for m in asks if isinstance(m, GetData)) == [2, 3]
