"""Peer-list selection (OPM FE): the reference rules, reproduced exactly, and their invariants."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p.homs.peerlist import (
    PeerEntry,
    entry_start_rank,
    entry_window,
    mesh_neighbours,
    tree_entry_points,
    tree_recovery_points,
)


def p(ticket: int, num_primary: int = 0) -> PeerEntry:
    return PeerEntry(f"p{ticket:02d}", "ws://127.0.0.1:8082", ticket, num_primary)


def ids(entries: list[PeerEntry]) -> list[str]:
    return [e.peer_id for e in entries]


def test_recorded_join_progression_of_conformance_step_5() -> None:
    """p01…p11 join one by one; after each join the joiner and its parent report primaries."""
    num_primary: dict[int, int] = {}
    lists: list[list[str]] = []
    for ticket in range(1, 12):
        num_primary[ticket] = 0
        peers = [p(t, n) for t, n in num_primary.items()]
        lists.append(ids(tree_entry_points(peers)))
        if ticket >= 2:  # the joiner attaches; its parent already had a primary (or gains one)
            num_primary[ticket] = 1
            num_primary[1] = max(num_primary[1], 1)
    assert lists == [
        ["p01"],
        ["p01"],
        ["p01", "p02"],
        *[["p01", "p02", "p03"]] * 4,
        *[["p02", "p03", "p04"]] * 3,
        ["p04", "p05", "p06"],
    ]


def _scenario_after_step_5() -> list[PeerEntry]:
    # 11 attached peers plus p12, which joined but has not reported.
    return [p(t, 1) for t in range(1, 12)] + [p(12, 0)]


@pytest.mark.parametrize(
    ("ticket", "expected"),
    [
        (8, ["p07", "p06", "p05"]),
        (3, ["p02", "p01"]),
        (1, ["p01"]),  # nothing older: fallback to the lowest ticket
        (11, ["p10", "p09", "p08"]),
    ],
)
def test_recorded_recovery_lists_of_conformance_step_9(ticket: int, expected: list[str]) -> None:
    assert ids(tree_recovery_points(_scenario_after_step_5(), ticket)) == expected


def test_join_after_root_left_moves_entry_points() -> None:
    # Conformance step 12: p01 and p05 left; 9 attached peers remain (p12 never reported).
    peers = [p(t, 1) for t in (2, 3, 4, 6, 7, 8, 9, 10, 11)] + [p(12), p(13)]
    assert ids(tree_entry_points(peers)) == ["p03", "p04", "p06"]


def test_fallback_is_the_lowest_ticket_even_when_inactive() -> None:
    peers = [p(5), p(3), p(9)]
    assert ids(tree_entry_points(peers)) == ["p03"]
    assert ids(tree_recovery_points(peers, 9)) == ["p03"]
    assert tree_entry_points([]) == []


@pytest.mark.parametrize(
    ("active", "rank"), [(0, 0), (4, 1), (5, 1), (9, 2), (10, 4), (20, 12), (35, 28)]
)
def test_entry_start_rank_follows_the_reference_table(active: int, rank: int) -> None:
    assert entry_start_rank(active) == rank


def test_list_size_is_configurable_and_checked() -> None:
    peers = [p(t, 1) for t in range(1, 30)]
    assert len(tree_entry_points(peers, size=5)) == 5
    assert len(tree_recovery_points(peers, 20, size=8)) == 8
    for bad in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            tree_entry_points(peers, size=bad)
        with pytest.raises(ValueError, match="at least 1"):
            tree_recovery_points(peers, 3, size=bad)
        with pytest.raises(ValueError, match="at least 1"):
            mesh_neighbours(peers, "p01", random.Random(1), size=bad)


peer_sets = st.lists(
    st.tuples(st.integers(1, 500), st.integers(0, 3)), unique_by=lambda x: x[0], max_size=60
).map(lambda xs: [p(t, n) for t, n in xs])


@given(peers=peer_sets, ticket=st.integers(1, 501), size=st.integers(1, 10))
def test_recovery_never_offers_a_younger_peer(
    peers: list[PeerEntry], ticket: int, size: int
) -> None:
    chosen = tree_recovery_points(peers, ticket, size)
    older_active = [e for e in peers if e.active and e.ticket < ticket]
    if older_active:
        assert all(e.active and e.ticket < ticket for e in chosen)
        assert [e.ticket for e in chosen] == sorted((e.ticket for e in chosen), reverse=True)
        # the nearest older ones, none skipped
        assert chosen == sorted(older_active, key=lambda e: -e.ticket)[:size]
    else:
        assert chosen == ([min(peers, key=lambda e: e.ticket)] if peers else [])


@given(peers=peer_sets, size=st.integers(1, 10))
def test_entry_points_are_a_window_of_the_active_peers(peers: list[PeerEntry], size: int) -> None:
    chosen = tree_entry_points(peers, size)
    ranked = sorted((e for e in peers if e.active), key=lambda e: e.ticket)
    offset, count = entry_window(len(ranked), size)
    window = ranked[offset : offset + count]
    if window:
        assert chosen == window
        assert len(chosen) <= size
    else:
        assert chosen == ([min(peers, key=lambda e: e.ticket)] if peers else [])


def test_mesh_choice_is_seeded_excludes_the_requester_and_is_uniform() -> None:
    peers = [p(t) for t in range(1, 12)]  # the requester p01 plus 10 others
    one = mesh_neighbours(peers, "p01", random.Random(7), size=3)
    assert one == mesh_neighbours(peers, "p01", random.Random(7), size=3)
    counts: Counter[str] = Counter()
    rng = random.Random(42)
    for _ in range(3000):
        chosen = mesh_neighbours(peers, "p01", rng, size=3)
        assert len(chosen) == 3
        assert len(set(ids(chosen))) == 3
        assert "p01" not in ids(chosen)
        counts.update(ids(chosen))
    # each of the 10 others is expected 900 times; a biased choice would leave this band
    assert set(counts) == {f"p{t:02d}" for t in range(2, 12)}
    assert all(780 <= n <= 1020 for n in counts.values()), counts


def test_mesh_small_overlays() -> None:
    rng = random.Random(1)
    assert ids(mesh_neighbours([p(1)], "p01", rng)) == ["p01"]  # alone: itself
    assert ids(mesh_neighbours([p(1), p(2), p(3)], "p02", rng, size=8)) == ["p01", "p03"]
    assert mesh_neighbours([], "p01", rng) == []
