"""Gaps reach Python subscribers: in their place among deliveries, never dropped for room."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from hp2p.peer.effects import Gap
from hp2p.peer.subscription import MAX_QUEUED_GAPS, Delivery, Subscription
from hp2p.transport.faults import LinkFaults
from node_helpers import FAST, homs_app, start_node


def _d(seq: int, source: str = "src") -> Delivery:
    return Delivery(source, seq, b"x", "etri_data", "text/plain")


def _drain(sub: Subscription[Delivery | Gap]) -> list[Delivery | Gap]:
    out: list[Delivery | Gap] = []
    for _ in range(100_000):  # bounded: what is queued
        item = sub.get_nowait()
        if item is None:
            return out
        out.append(item)
    raise AssertionError("the subscription never ran dry")


def test_a_gap_comes_in_its_place_among_the_deliveries() -> None:
    sub: Subscription[Delivery | Gap] = Subscription(8, lambda s: None, gaps=True)
    sub.put(_d(1))
    sub.put(_d(3))
    sub.put_gap(Gap("src", 2, 2))
    sub.put(_d(4))
    assert _drain(sub) == [_d(1), _d(3), Gap("src", 2, 2), _d(4)]


def test_a_full_queue_drops_deliveries_never_the_gap() -> None:
    sub: Subscription[Delivery | Gap] = Subscription(2, lambda s: None, gaps=True)
    sub.put(_d(1))
    sub.put_gap(Gap("src", 2, 5))
    for seq in range(6, 12):  # 6 more into a queue of 2: deliveries 1, 6, 7, 8, 9 are dropped
        sub.put(_d(seq))
    got = _drain(sub)
    assert got == [Gap("src", 2, 5), replace(_d(10), lost=5), _d(11)]
    assert sub.dropped == 5


def test_a_subscriber_without_gaps_never_sees_one() -> None:
    sub: Subscription[Delivery] = Subscription(4, lambda s: None)
    sub.put(_d(1))
    sub.put_gap(Gap("src", 2, 2))
    sub.put(_d(3))
    assert [sub.get_nowait(), sub.get_nowait(), sub.get_nowait()] == [_d(1), _d(3), None]


def test_a_reader_that_never_reads_gets_merged_ranges_not_unbounded_memory() -> None:
    sub: Subscription[Delivery | Gap] = Subscription(4, lambda s: None, gaps=True)
    for k in range(MAX_QUEUED_GAPS + 10):
        sub.put_gap(Gap("src", 10 * k, 10 * k + 1))
    got = _drain(sub)
    assert len(got) == MAX_QUEUED_GAPS
    assert sub.gaps_merged == 10
    assert got[0] == Gap("src", 0, 10 * 10 + 1)  # the 11 oldest ranges, as one
    assert all(isinstance(g, Gap) for g in got)


async def test_a_waiting_reader_wakes_up_on_a_gap() -> None:
    sub: Subscription[Delivery | Gap] = Subscription(4, lambda s: None, gaps=True)
    reader = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)  # one loop turn: the reader blocks (deterministic, no timing)
    assert not reader.done()
    sub.put_gap(Gap("src", 7, 9))
    assert await asyncio.wait_for(reader, 5) == Gap("src", 7, 9)


def test_a_queue_of_zero_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Subscription(0, lambda s: None)


async def test_a_message_no_peer_can_serve_reaches_the_python_subscriber_as_a_gap(
    tmp_path: Path,
) -> None:
    """Real TCP: the root's cache holds one message, so the one its child missed is gone."""
    # sign_window=0: each publish goes out at once (no signing batch), so the loss plan set
    # around a publish applies to exactly that message
    small_cache = replace(
        FAST,
        cache_count=1,
        gap_wait=0.02,
        pull_timeout=0.3,
        pull_rounds=2,
        pull_round_delay=0.05,
        sign_window=0.0,
    )
    async with homs_app(tmp_path) as app:
        a = await start_node(app, small_cache, create="gaps", peer_id="a", faults="delay=0")
        b = await start_node(app, small_cache, join="gaps", peer_id="b")
        try:
            assert a.fault_plan is not None
            inbox = b.subscribe_with_gaps()
            a.publish(b"m1")
            first = await asyncio.wait_for(inbox.get(), 10)
            assert isinstance(first, Delivery)
            assert first.sequence == 1
            a.fault_plan.default = LinkFaults(loss=1.0)  # m2 never reaches b
            a.publish(b"m2")
            a.fault_plan.default = LinkFaults()
            a.publish(b"m3")  # evicts m2 from a's one-message cache
            got = [await asyncio.wait_for(inbox.get(), 15) for _ in range(2)]
            assert got == [
                Delivery("a", 3, b"m3", "etri_data", "text/plain"),
                Gap("a", 2, 2),
            ]
            assert b.status()["node"]["gaps"] == 1
        finally:
            await b.close()
            await a.close()


def test_the_local_api_tells_a_gap_from_a_delivery() -> None:
    from hp2p.peer.api import delivery_json, gap_json

    assert gap_json(Gap("s", 4, 6)) == {"gap": {"source": "s", "first": 4, "last": 6}}
    assert "gap" not in delivery_json(_d(1))


def test_a_submesh_subscription_counts_lost_objects_the_same_way() -> None:
    from hp2p.peer.mesh_node import MeshDelivery, MeshSubscription

    sub = MeshSubscription(2, lambda s: None)
    for n in range(1, 6):  # objects 1..5 into a queue of 2: 1, 2, 3 are dropped
        sub.put(MeshDelivery(n, b"o", None, None))
    got = [sub.get_nowait(), sub.get_nowait(), sub.get_nowait()]
    assert got == [
        MeshDelivery(4, b"o", None, None, lost=3),
        MeshDelivery(5, b"o", None, None),
        None,
    ]
