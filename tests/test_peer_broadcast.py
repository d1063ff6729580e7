"""DB FE: the per-source sliding duplicate window."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from hp2p.peer.broadcast import ACCEPTED, DUPLICATE, TOO_FAR, TOO_OLD, DuplicateFilter


def test_in_order_sequences_are_accepted_once() -> None:
    f = DuplicateFilter(window=64, max_ahead=64)
    assert [f.check("s", n) for n in range(1, 6)] == [ACCEPTED] * 5
    assert f.check("s", 3) == DUPLICATE
    assert f.check("s", 5) == DUPLICATE
    assert f.counters.accepted == 5
    assert f.counters.duplicates == 2


def test_late_message_inside_window_is_accepted_exactly_once() -> None:
    f = DuplicateFilter(window=64, max_ahead=64)
    # the reference filter's failure case: 5, 3, 4 must deliver 3 and 4, each once
    assert f.check("s", 5) == ACCEPTED
    assert f.check("s", 3) == ACCEPTED
    assert f.check("s", 4) == ACCEPTED
    assert f.check("s", 4) == DUPLICATE
    assert f.check("s", 3) == DUPLICATE
    assert f.counters.late == 2


def test_far_future_sequence_is_rejected_and_does_not_move_the_window() -> None:
    f = DuplicateFilter(window=16, max_ahead=100)
    f.check("s", 1)
    assert f.check("s", 1 + 101) == TOO_FAR
    assert f.newest("s") == 1
    assert f.check("s", 2) == ACCEPTED  # the source is not silenced
    assert f.check("s", 2 + 100) == ACCEPTED  # exactly max_ahead ahead is allowed
    assert f.counters.too_far == 1


def test_window_slides_and_sequences_below_it_are_refused() -> None:
    f = DuplicateFilter(window=8, max_ahead=100)
    f.check("s", 1)
    f.check("s", 20)  # the window is now 13..20
    assert f.check("s", 12) == TOO_OLD
    assert f.check("s", 13) == ACCEPTED
    assert f.check("s", 13) == DUPLICATE
    f.check("s", 28)  # slides to 21..28: 20 is gone, 21 is a late arrival
    assert f.check("s", 20) == TOO_OLD
    assert f.check("s", 21) == ACCEPTED
    assert f.counters.too_old == 2


def test_sources_are_independent() -> None:
    f = DuplicateFilter(window=8, max_ahead=8)
    assert f.check("a", 1) == ACCEPTED
    assert f.check("b", 1) == ACCEPTED
    assert f.check("a", 1) == DUPLICATE
    assert not f.seen("b", 2)
    assert f.seen("a", 1)


def test_gaps_list_missing_sequences_inside_the_window() -> None:
    f = DuplicateFilter(window=64, max_ahead=64)
    for n in (3, 4, 7, 9):
        f.check("s", n)
    assert f.gaps("s") == [5, 6, 8]
    assert f.all_gaps() == {"s": [5, 6, 8]}
    f.check("s", 6)
    assert f.gaps("s") == [5, 8]
    assert f.gaps("unknown") == []


@given(
    st.integers(min_value=1, max_value=10_000),
    st.integers(min_value=1, max_value=200),
    st.integers(min_value=0, max_value=2**32),
)
def test_any_reordering_within_the_window_delivers_each_once(
    start: int, count: int, seed: int
) -> None:
    window = 256
    f = DuplicateFilter(window=window, max_ahead=window)
    rng = random.Random(seed)
    arrivals = [start + i for i in range(count)] * 2  # every message arrives twice
    rng.shuffle(arrivals)
    # keep the reordering inside the window: the first arrival is the lowest sequence
    arrivals.remove(start)
    arrivals.insert(0, start)
    accepted = [n for n in arrivals if f.check("s", n) == ACCEPTED]
    assert sorted(accepted) == list(range(start, start + count))
    assert f.counters.duplicates == count
