"""POC FE decisions: ticket rule, volunteer condition, parent choice, back-off."""

from __future__ import annotations

import random

from hp2p.peer.config import PeerConfig
from hp2p.peer.control import (
    backoff_delay,
    may_volunteer,
    parent_rank,
    recovery_rank,
    relay_conn_num,
)
from hp2p.peer.paths import Link, PathTable, Role


def free_table() -> PathTable:
    return PathTable(max_children=4, max_out=3, max_in=16)


def test_ticket_rule_only_younger_joiners_get_an_estab() -> None:
    t = free_table()
    assert may_volunteer(5, 6, t, conn_num=3, vertical=False)
    assert not may_volunteer(5, 5, t, conn_num=3, vertical=False)
    assert not may_volunteer(5, 4, t, conn_num=3, vertical=False)
    assert not may_volunteer(5, 4, t, conn_num=3, vertical=True)


def test_conn_num_is_enforced() -> None:
    t = free_table()
    assert not may_volunteer(1, 2, t, conn_num=0, vertical=False)


def test_vertical_hello_needs_only_a_candidate_slot() -> None:
    t = free_table()
    for conn in range(4):
        t.add(Link(conn, Role.CHILD))
    assert not may_volunteer(1, 9, t, conn_num=3, vertical=False)
    assert may_volunteer(1, 9, t, conn_num=0, vertical=True)


def link(conn: int, depth: int | None, rtt: float | None, ticket: int = 1) -> Link:
    return Link(conn, Role.OFFERED, peer_id=f"v{conn}", ticket=ticket, depth=depth, rtt=rtt)


def test_parent_choice_is_depth_first_then_rtt() -> None:
    offers = [
        link(1, 3, 0.001),
        link(2, 1, 0.050),
        link(3, 1, 0.010),
        link(4, None, 0.0001),  # a reference peer: unknown depth ranks last
        link(5, 1, None),  # no PROBE answer ranks after measured RTTs at its depth
    ]
    ranked = [x.conn for x in sorted(offers, key=parent_rank)]
    assert ranked == [3, 2, 5, 1, 4]


def test_recovery_tries_the_grandparent_first() -> None:
    gp = link(1, 5, 0.5)
    gp.vertical = True
    others = [link(2, 0, 0.001), link(3, 1, 0.001)]
    ranked = [x.conn for x in sorted([*others, gp], key=recovery_rank)]
    assert ranked == [1, 2, 3]


def test_relay_conn_num_splits_among_children() -> None:
    assert relay_conn_num(3, 4) == 1
    assert relay_conn_num(3, 2) == 2
    assert relay_conn_num(0, 2) == 0
    assert relay_conn_num(3, 0) == 0


def test_backoff_grows_is_capped_and_jittered() -> None:
    config = PeerConfig(backoff_initial=0.5, backoff_max=4.0, backoff_jitter=0.5)
    rng = random.Random(7)
    delays = [backoff_delay(n, config, rng) for n in range(1, 8)]
    bases = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= delay <= base
    assert len(set(delays)) == len(delays)  # jitter: no two peers retry in lock-step
