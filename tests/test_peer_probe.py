"""PSP FE pieces and the core's timers: liveness deadlines, RTT tokens, named deadlines."""

from __future__ import annotations

from hp2p.peer.paths import Link, Role
from hp2p.peer.probe import LivenessDeadlines, RttProbe
from hp2p.peer.timers import Timers


def test_paths_die_after_the_heartbeat_timeout_transients_after_their_own() -> None:
    d = LivenessDeadlines(heartbeat_timeout=3.0, idle_timeout=5.0, estab_timeout=4.0)
    path = Link(1, Role.CHILD, last_rx=10.0, opened=0.0)
    idle = Link(2, Role.INCOMING, last_rx=0.0, opened=9.0)
    offer = Link(3, Role.VOLUNTEER, last_rx=0.0, opened=9.5)
    links = [path, idle, offer]
    assert d.next_check(links) == 13.0
    assert d.expired(links, 12.9) == []
    assert d.expired(links, 13.0) == [path]
    assert d.expired(links, 14.0) == [path, idle, offer]
    path.last_rx = 12.0  # any frame counts as liveness
    assert d.expired(links, 14.0) == [idle, offer]
    assert d.next_check([]) is None


def test_rtt_is_measured_from_the_local_send_time_of_the_echoed_token() -> None:
    p = RttProbe()
    token = p.start(conn=7, now=100.0)
    assert p.answer(7, "forged", 100.2) is None
    assert p.answer(8, token, 100.2) is None
    assert p.outstanding() == 1
    rtt = p.answer(7, token, 100.25)
    assert rtt is not None
    assert abs(rtt - 0.25) < 1e-9
    assert p.answer(7, token, 100.3) is None  # answered once only
    second = p.start(conn=7, now=101.0)
    assert second != token


def test_timers_fire_in_order_once_and_rearming_replaces() -> None:
    t = Timers()
    t.arm("a", 5.0)
    t.arm("b", 3.0)
    t.arm("a", 7.0)  # supersedes a@5
    assert t.next() == 3.0
    assert t.pop_due(6.0) == ["b"]
    assert t.next() == 7.0
    t.cancel("a")
    assert t.next() is None
    assert t.pop_due(100.0) == []
    t.arm("c", 1.0)
    t.arm("d", 1.0)
    assert t.pop_due(1.0) == ["c", "d"]
    assert not t.armed("c")
