"""SubTree standby logic without processes: the forward ledger, the absence clock, the
HELLO probe (against a tiny R2 server on 127.0.0.1), and the shared source credential."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

import pytest

from hp2p.apps.bridge import Bridge, BridgeTarget, _Running
from hp2p.apps.bridge_standby import (
    AbsenceClock,
    CoreKeys,
    ForwardLedger,
    content_key,
    source_answers,
)
from hp2p.peer.mesh_node import MeshNode
from hp2p.peer.node import Delivery
from hp2p.peer.subtree import SubOverlayHomsClient
from hp2p.transport import tcp
from hp2p.transport.base import Link, LinkEvents
from hp2p.wire.r2 import encode
from hp2p.wire.r2.messages import Hello, HelloResponse, Message
from node_helpers import homs_app as in_process_homs


def core(source: str, sequence: int, data: bytes, app_id: str | None = "iot") -> Delivery:
    return Delivery(source, sequence, data, app_id, "text/plain")


def tree(sequence: int, data: bytes, app_id: str = "iot", source: str = "b1-live") -> Delivery:
    return Delivery(source, sequence, data, app_id, "text/plain")


def test_what_the_subtree_carried_is_not_replayed_and_the_rest_is_in_core_order():
    ledger = ForwardLedger("b1-live")
    for n in range(1, 6):
        ledger.core_message(core("c0", n, f"m{n}".encode()))
    ledger.tree_message(tree(1, b"m1"))
    ledger.tree_message(tree(2, b"m3"))  # the active bridge's order may differ from ours
    assert ledger.last_sequence == 2
    assert ledger.waiting == 3
    assert [d.sequence for d in ledger.unforwarded()] == [2, 4, 5]
    assert ledger.unforwarded() == []  # taken once


def test_a_subtree_message_ahead_of_its_core_copy_waits_for_it():
    ledger = ForwardLedger("b1-live")
    ledger.tree_message(tree(1, b"early"))
    ledger.core_message(core("c0", 7, b"early"))
    ledger.core_message(core("c0", 8, b"late"))
    assert [d.data for d in ledger.unforwarded()] == [b"late"]
    assert ledger.matched == 1


def test_equal_contents_are_counted_not_merged():
    ledger = ForwardLedger("b1-live")
    for n in range(3):
        ledger.core_message(core("c0", n + 1, b"same"))
    ledger.tree_message(tree(1, b"same"))
    assert len(ledger.unforwarded()) == 2  # three sent, one carried: two to replay


def test_app_id_and_payload_type_are_part_of_the_identity():
    ledger = ForwardLedger("b1-live")
    ledger.core_message(core("c0", 1, b"x", app_id="iot"))
    ledger.core_message(core("c0", 2, b"x", app_id=None))
    ledger.tree_message(tree(1, b"x", app_id="etri_data"))  # the bridge's default app-id
    assert [d.sequence for d in ledger.unforwarded()] == [1]
    assert content_key(None, "a", b"x") != content_key(None, "b", b"x")


def test_only_the_source_moves_the_numbering():
    ledger = ForwardLedger("b1-live")
    ledger.core_message(core("c0", 1, b"a"))
    ledger.tree_message(tree(40, b"a", source="intruder"))
    assert ledger.last_sequence == 0
    assert ledger.waiting == 1
    ledger.tree_message(tree(5, b"a"))
    ledger.tree_message(tree(3, b"b"))  # a recovered, older message never lowers it
    assert ledger.last_sequence == 5


def test_the_ledger_is_bounded_both_ways():
    ledger = ForwardLedger("b1-live", limit=3)
    for n in range(1, 6):
        ledger.core_message(core("c0", n, f"m{n}".encode()))
    assert ledger.dropped == 2
    assert [d.sequence for d in ledger.unforwarded()] == [3, 4, 5]
    for n in range(1, 6):
        ledger.tree_message(tree(n, f"t{n}".encode()))
    assert ledger.orphans == 2
    for n in range(1, 6):  # the two forgotten ones come back as unforwarded
        ledger.core_message(core("c0", n, f"t{n}".encode()))
    assert [d.data for d in ledger.unforwarded()] == [b"t1", b"t2"]
    with pytest.raises(ValueError, match="at least 1"):
        ForwardLedger("s", limit=0)


def test_a_long_run_of_matches_keeps_the_ledger_small():
    ledger = ForwardLedger("b1-live", limit=4)
    ledger.core_message(core("c0", 0, b"never forwarded"))
    for n in range(1, 200):
        ledger.core_message(core("c0", n, f"m{n}".encode()))
        ledger.tree_message(tree(n, f"m{n}".encode()))
    assert ledger.waiting == 1
    assert len(ledger._pending) <= 2 * ledger.limit + 1
    assert [d.sequence for d in ledger.unforwarded()] == [0]


def test_the_absence_clock_waits_its_rank_and_resets_on_an_answer():
    first, second = AbsenceClock(1.0), AbsenceClock(1.0, rank=2, rank_gap=4.0)
    assert second.wait == 5.0
    assert not first.observe(False, 10.0)
    assert not first.observe(False, 10.9)
    assert first.observe(False, 11.0)
    assert not second.observe(False, 10.0)
    assert not second.observe(False, 14.5)
    assert not second.observe(True, 14.6)  # the first standby took over: the id answers again
    assert not second.observe(False, 15.0)
    assert not second.observe(False, 19.9)
    assert second.observe(False, 20.0)
    assert AbsenceClock(2.0, rank=3).wait == 6.0  # without a gap: one wait per rank
    with pytest.raises(ValueError, match="rank"):
        AbsenceClock(1.0, rank=0)
    with pytest.raises(ValueError, match="> 0"):
        AbsenceClock(0.0)
    with pytest.raises(ValueError, match="rank_gap"):
        AbsenceClock(1.0, rank=2, rank_gap=-1)


def test_a_later_standby_waits_for_the_earlier_one_to_finish_its_takeover():
    from hp2p.apps.bridge import Bridge, BridgeTarget

    tree = [BridgeTarget.parse("tree", "live", "b1")]
    b2 = Bridge("http://127.0.0.1:1", "c", tree, standby=True, takeover_after=1, settle=1)
    b3 = Bridge("http://127.0.0.1:1", "c", tree, standby=True, rank=2, takeover_after=1, settle=1)
    first = AbsenceClock(b2.takeover_after, b2.rank, b2.rank_gap).wait
    second = AbsenceClock(b3.takeover_after, b3.rank, b3.rank_gap).wait
    # b2 decides, settles, joins; b3's clock may have started one probe period earlier
    assert second - first >= b2.settle + 2 * b2.probe_interval + 1.0


async def _r2_server(answer: bool) -> tuple[asyncio.Server, list[Message]]:
    heard: list[Message] = []

    def on_accept(link: tcp.TcpLink) -> LinkEvents:
        def on_message(lk: Link, message: Message) -> None:
            heard.append(message)
            if answer:
                lk.send_frame(encode(HelloResponse()))

        return LinkEvents(on_message=on_message, on_closed=lambda lk, exc: None)

    return await tcp.listen("127.0.0.1", 0, on_accept), heard


def _address(server: asyncio.Server) -> str:
    return tcp.format_tcp_address("127.0.0.1", server.sockets[0].getsockname()[1])


async def test_the_probe_is_a_ticket_0_hello_and_needs_the_1202():
    server, heard = await _r2_server(answer=True)
    try:
        ok = await source_answers(
            _address(server),
            overlay_id="o",
            prober_id="b2-live",
            prober_address="tcp://127.0.0.1:9",
            limit=5.0,
        )
    finally:
        server.close()
    assert ok
    assert len(heard) == 1
    hello = heard[0]
    assert isinstance(hello, Hello)
    assert (hello.overlay_id, hello.peer_id, hello.ticket_id) == ("o", "b2-live", 0)


async def test_a_silent_or_dead_source_does_not_answer():
    server, heard = await _r2_server(answer=False)
    try:
        silent = await source_answers(
            _address(server), overlay_id="o", prober_id="p", prober_address="", limit=0.3
        )
    finally:
        server.close()
    assert not silent
    assert heard  # it was asked
    with socket.socket() as s:  # a port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        closed = tcp.format_tcp_address("127.0.0.1", s.getsockname()[1])
    dead = await source_answers(closed, overlay_id="o", prober_id="p", prober_address="", limit=2)
    assert not dead


def test_the_source_client_refuses_an_empty_password():
    with pytest.raises(ValueError, match="must not be empty"):
        SubOverlayHomsClient("http://127.0.0.1:1", source_password="")


@pytest.fixture
async def homs_app(tmp_path):
    async with in_process_homs(tmp_path) as app:
        yield app


def _client(app, password: str | None) -> SubOverlayHomsClient:
    import httpx

    from hp2p.trust.keys import SigningKey

    return SubOverlayHomsClient(
        "http://homs",
        source_password=password,
        transport=httpx.ASGITransport(app=app),
        key=SigningKey.generate(),  # a peer's membership key: the overlays need credentials
    )


async def test_the_group_key_lets_a_standby_replace_a_source_and_fences_the_old_one(homs_app):
    from hp2p.peer.homs_client import HomsError

    active, standby, stranger = (_client(homs_app, p) for p in ("k", "k", "wrong"))
    try:
        core = await active.create_overlay(
            "chain", "b1", "admin", heartbeat_interval=1, heartbeat_timeout=3
        )
        live = await active.create_sub_overlay(
            "live",
            sub_type="tree",
            parent_overlay_id=core,
            source_peer_id="b1-live",
            owner_id="b1",
            admin_key="admin",
            parent_admin_key="admin",
        )
        overlay = await active.find_overlay(live)
        # the peer shell passes its own random password: the group key replaces it
        await active.join(
            overlay, peer_id="b1-live", address="tcp://127.0.0.1:1", password="r1", expires=30
        )
        assert await standby.peer_address(live, "b1-live") == "tcp://127.0.0.1:1"
        with pytest.raises(HomsError):  # the dead source still holds the peer-id
            await standby.join(
                overlay, peer_id="b1-live", address="tcp://127.0.0.1:2", password="r2", expires=30
            )
        with pytest.raises(HomsError):  # without the group key it cannot be removed
            await stranger.remove_member(live, "b1-live", "wrong")
        await standby.remove_member(live, "b1-live", "k")
        assert await standby.peer_address(live, "b1-live") is None
        await standby.join(
            overlay, peer_id="b1-live", address="tcp://127.0.0.1:2", password="r2", expires=30
        )
        assert await stranger.peer_address(live, "b1-live") == "tcp://127.0.0.1:2"
        # the replaced bridge finds out, never refreshes its address back, never removes b2
        assert await standby.holds_id()
        assert not await active.holds_id()
        with pytest.raises(HomsError, match="another bridge of the group"):
            await active.refresh()
        await active.leave()
        assert await stranger.peer_address(live, "b1-live") == "tcp://127.0.0.1:2"
        assert await standby.refresh() == 30  # the holder's own refresh goes through
    finally:
        for c in (active, standby, stranger):
            await c.aclose()


class _Client(SubOverlayHomsClient):
    """The HOMS's word on who holds the source peer-id, scripted."""

    def __init__(self, answers: list[bool]) -> None:
        super().__init__("http://127.0.0.1:1")
        self.answers = answers

    async def holds_id(self) -> bool:
        return self.answers.pop(0) if self.answers else False


class _SourceNode:
    """What the bridge uses of its SubTree source peer."""

    def __init__(self, client: _Client) -> None:
        self.homs = client
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self.published: list[bytes] = []
        self.closed = False

    def publish(self, data: bytes, app_id: str, payload_type: str) -> int:
        self.published.append(data)
        return len(self.published)

    async def close(self) -> None:
        self.closed = True


def _bridge_with_source(answers: list[bool]):
    from hp2p.apps.bridge import Bridge, BridgeTarget, _Running

    events: list[tuple[str, dict]] = []
    target = BridgeTarget.parse("tree", "live", "b1")
    bridge = Bridge(
        "http://127.0.0.1:1",
        "c",
        [target],
        takeover_after=0.3,
        on_event=lambda kind, fields: events.append((kind, fields)),
    )
    node = _SourceNode(_Client(answers))
    running = _Running(target, "ov", tree=node)  # type: ignore[arg-type]
    bridge._running.append(running)
    return bridge, running, node, events


async def test_a_source_forwards_within_its_lease_and_holds_outside_it():
    bridge, running, node, events = _bridge_with_source([True, True, False])
    loop = asyncio.get_running_loop()
    running.lease_until = loop.time() + 60
    bridge._offer(running, core("c0", 1, b"live"))
    assert node.published == [b"live"]
    running.lease_until = loop.time() - 1  # e.g. woke up after a hang
    bridge._offer(running, core("c0", 2, b"held 1"))
    bridge._offer(running, core("c0", 3, b"held 2"))
    assert node.published == [b"live"]
    assert bridge.status()["targets"][0]["held"] == 2
    # the HOMS says "still yours" twice (the held ones go out, in order), then "replaced"
    await asyncio.wait_for(bridge._guard_source(running), 5)
    assert node.published == [b"live", b"held 1", b"held 2"]
    assert not running.active
    assert node.closed
    kind, fields = events[-1]
    assert kind == "replaced"
    assert "another bridge of the group holds source peer-id 'b1-live'" in fields["reason"]


async def test_a_replaced_source_drops_what_it_held():
    bridge, running, node, events = _bridge_with_source([False])
    running.lease_until = asyncio.get_running_loop().time() - 1
    for n in range(3):
        bridge._offer(running, core("c0", n, f"m{n}".encode()))
    await asyncio.wait_for(bridge._guard_source(running), 5)
    assert node.published == []  # not one message under a sequence the new source uses
    assert events[-1][0] == "replaced"
    assert events[-1][1]["dropped"] == 3
    assert running.retired
    assert bridge.status()["targets"][0]["retired"]

    async def later():
        yield core("c0", 9, b"late")

    await bridge._pump(later())  # selected, yet neither forwarded nor kept
    assert bridge.stats.received == 1
    assert node.published == []
    assert not running.held
    assert not running.buffer


async def test_a_failed_source_peer_stops_the_target():
    bridge, running, node, events = _bridge_with_source([True] * 100)
    node.failure = "could not join the HOMS again"
    node.failed.set()
    await asyncio.wait_for(bridge._guard_source(running), 5)
    assert not running.active
    assert "could not join the HOMS again" in events[-1][1]["reason"]


def test_every_bridge_of_a_group_signs_as_the_subtree_source_with_one_key() -> None:
    """A takeover keeps the source's key: messages in flight from the old source, and the
    caches' copies of them, still verify against it (only the credential changes)."""
    from hp2p.apps.bridge import source_member_key

    one = source_member_key("group secret", "ov", "b1-live")
    assert one.public == source_member_key("group secret", "ov", "b1-live").public
    others = {
        source_member_key("other secret", "ov", "b1-live").public,
        source_member_key("group secret", "ov2", "b1-live").public,
        source_member_key("group secret", "ov", "b2-live").public,
    }
    assert one.public not in others
    assert len(others) == 3


def test_core_keys_take_the_meta_of_submesh_objects_and_are_bounded():
    keys = CoreKeys(limit=2)
    keys.add_meta({"core-source": "c00", "core-sequence": 1})
    keys.add_meta({"core-source": "c00", "core-sequence": "2"})  # not a sequence: ignored
    keys.add_meta({"core-source": "c00", "core-sequence": True})
    keys.add_meta(None)
    assert ("c00", 1) in keys
    assert len(keys) == 1
    assert not keys.add("c00", 1)  # carried already
    assert keys.add("c00", 2)
    assert keys.add("c00", 3)
    assert ("c00", 1) not in keys
    assert len(keys) == 2
    with pytest.raises(ValueError, match="at least 1"):
        CoreKeys(limit=0)


class _Mesh:
    def __init__(self) -> None:
        self.published: list[tuple[bytes, dict[str, object] | None]] = []

    def publish(
        self, data: bytes, app_id: str | None = None, meta: dict[str, object] | None = None
    ) -> int:
        self.published.append((data, meta))
        return len(self.published)


def test_a_submesh_standby_that_took_over_never_publishes_a_carried_message_again():
    """Messages its CoreTree peer gets after the takeover (a re-attach) are checked too."""
    target = BridgeTarget("mesh", "blocks", "b1-blocks")
    bridge = Bridge("http://127.0.0.1:1", "core", [target], bridge_id="b2", standby=True)
    running = _Running(target, "blocks-id")
    mesh = _Mesh()
    running.mesh = cast(MeshNode, mesh)
    running.carried = CoreKeys()
    running.carried.add_meta({"core-source": "c00", "core-sequence": 1})
    for sequence in (1, 2, 2):
        bridge._forward(running, Delivery("c00", sequence, b"m%d" % sequence, None, "text/plain"))
    assert [meta for _, meta in mesh.published] == [{"core-source": "c00", "core-sequence": 2}]
    assert bridge.stats.already_carried == 2
