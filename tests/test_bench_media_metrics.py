"""The figures of `hp2p bench media` from recorded sessions (pure)."""

from __future__ import annotations

import pytest

from hp2p.bench.media_metrics import Session, percentile, session_due, summarise

D = 2.0
PUBLISHED = {q: 100.0 + D * q for q in range(10)}  # segment q broadcast at 100 + 2q


def test_a_session_listing_everything_on_time_scores_one() -> None:
    s = Session("v1", joined=101.0, left=None)
    for q in range(2, 10):
        s.listed[q] = PUBLISHED[q] + 0.1
    due = session_due(s, PUBLISHED, D, end=200.0)
    assert [q for q, _d, _ok in due] == list(range(2, 10))
    assert all(ok for _q, _d, ok in due)


def test_late_and_missing_segments_count_against_continuity() -> None:
    s = Session("v1", joined=99.0, left=None)
    s.listed = {0: 100.1, 1: 102.1, 3: 106.1}  # 2 never came; 3 in time
    s.listed[4] = 100.1 + (PUBLISHED[4] - PUBLISHED[0]) + D + 0.5  # after its deadline
    metrics, series = summarise([s], {q: PUBLISHED[q] for q in range(5)}, D, 200.0, 100.0)
    assert metrics["continuity"] == pytest.approx(3 / 5)
    assert sum(p["due"] for p in series) == 5


def test_a_session_that_never_listed_scores_zero_and_startup_counts_live_joins() -> None:
    stuck = Session("v1", joined=100.0, left=110.0)
    joined_live = Session("v2", joined=104.5)
    joined_live.listed = {q: PUBLISHED[q] + 0.2 for q in range(3, 10)}
    metrics, _ = summarise([stuck, joined_live], PUBLISHED, D, 130.0, 100.0)
    assert metrics["continuity"] == pytest.approx(0.5)
    assert metrics["continuity_p5"] == 0.0
    assert metrics["startup_sessions"] == 1
    assert metrics["startup_p50_s"] == pytest.approx(PUBLISHED[3] + 0.2 - 104.5)


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(100)], 99) == 98.0
