"""PPM/CPM FEs: path roles and their limits, counted separately (Q.4100 §7.2.2.2)."""

from __future__ import annotations

import pytest

from hp2p.peer.paths import Link, PathLimitError, PathTable, Role


def table() -> PathTable:
    return PathTable(max_children=2, max_out=1, max_in=2, recovery_children=1)


def test_limits_are_counted_separately() -> None:
    t = table()
    t.add(Link(1, Role.CHILD, peer_id="c1"))
    t.add(Link(2, Role.CHILD, peer_id="c2"))
    # children full: candidates of both directions still have their own room
    t.add(Link(3, Role.IN_CANDIDATE, peer_id="i1"))
    t.add(Link(4, Role.OUT_CANDIDATE, peer_id="o1"))
    assert t.children == 2
    assert t.in_candidates == 1
    assert t.out_candidates == 1
    with pytest.raises(PathLimitError):
        t.add(Link(5, Role.CHILD, peer_id="c3"))
    with pytest.raises(PathLimitError):
        t.add(Link(6, Role.OUT_CANDIDATE, peer_id="o2"))
    t.add(Link(7, Role.IN_CANDIDATE, peer_id="i2"))
    with pytest.raises(PathLimitError):
        t.add(Link(8, Role.IN_CANDIDATE, peer_id="i3"))


def test_at_most_one_parent() -> None:
    t = table()
    t.add(Link(1, Role.PARENT, peer_id="p"))
    other = t.add(Link(2, Role.OUT_CANDIDATE, peer_id="o"))
    with pytest.raises(PathLimitError):
        t.set_role(other, Role.PARENT)
    assert t.parent is not None
    assert t.parent.peer_id == "p"
    t.remove(1)
    t.set_role(other, Role.PARENT)
    assert t.parent is other


def test_volunteering_needs_child_slot_and_incoming_candidate_slot() -> None:
    t = table()
    assert t.can_volunteer()
    t.add(Link(1, Role.IN_CANDIDATE))
    t.add(Link(2, Role.VOLUNTEER))  # a pending offer holds an incoming-candidate slot
    assert t.child_slot_free()
    assert not t.can_volunteer()
    t.remove(1)
    assert t.can_volunteer()
    t.add(Link(3, Role.CHILD))
    t.add(Link(4, Role.CHILD))
    assert t.in_candidate_slot_free()
    assert not t.can_volunteer()
    assert t.can_volunteer(recovery=True)  # the spare slot is for orphans only


def test_pending_offers_hold_child_slots() -> None:
    t = table()
    t.add(Link(1, Role.VOLUNTEER, opened=10.0, offer_pending=True))
    assert t.can_volunteer(now=10.5, hold=2.0)
    t.add(Link(2, Role.VOLUNTEER, opened=10.0, offer_pending=True))
    assert not t.can_volunteer(now=10.5, hold=2.0)  # two offers out, two child slots
    assert t.can_volunteer(now=12.5, hold=2.0) is False  # in-candidate slots are full anyway
    t.remove(2)
    assert t.can_volunteer(now=12.5, hold=2.0)  # the hold expired


def test_accepted_offer_keeps_its_slot_when_the_table_is_full() -> None:
    t = table()
    a = t.add(Link(1, Role.VOLUNTEER))
    t.add(Link(2, Role.IN_CANDIDATE))
    t.set_role(a, Role.IN_CANDIDATE)  # must not be refused for lack of room
    assert t.in_candidates == 2


def test_fanout_excludes_the_arrival_path_and_follows_the_candidate_flag() -> None:
    t = table()
    t.add(Link(1, Role.PARENT, peer_id="p"))
    t.add(Link(2, Role.CHILD, peer_id="c"))
    t.add(Link(3, Role.OUT_CANDIDATE, peer_id="o"))
    t.add(Link(4, Role.HELLO, peer_id="h"))
    assert sorted(t.fanout(None, False)) == [1, 2]
    assert t.fanout(1, False) == (2,)
    assert sorted(t.fanout(2, True)) == [1, 3]
    assert sorted(t.fanout(None, True)) == [1, 2, 3]
    t.remove(2)
    assert t.fanout(1, False) == ()


def test_costmap_lists_peers_by_role() -> None:
    t = table()
    t.add(Link(1, Role.PARENT, peer_id="p"))
    t.add(Link(2, Role.CHILD, peer_id="c"))
    t.add(Link(3, Role.OUT_CANDIDATE, peer_id="o"))
    t.add(Link(4, Role.IN_CANDIDATE, peer_id="i"))
    t.add(Link(5, Role.INCOMING))
    cm = t.costmap()
    assert cm.primary == ("p", "c")
    assert cm.outgoing_candidate == ("o",)
    assert cm.incoming_candidate == ("i",)


def test_displaceable_is_the_youngest_child_younger_than_the_orphan() -> None:
    table = PathTable(max_children=3, max_out=2, max_in=2)
    table.add(Link(1, Role.CHILD, peer_id="a", ticket=30))
    table.add(Link(2, Role.CHILD, peer_id="b", ticket=50))
    table.add(Link(3, Role.IN_CANDIDATE, peer_id="c", ticket=90))  # not a child
    table.add(Link(4, Role.CHILD, peer_id="d", ticket=40))
    found = table.displaceable(10)
    assert found is not None
    assert found.peer_id == "b"
    assert table.displaceable(50) is None  # no child is younger than ticket 50
    assert table.displaceable(35) is found
