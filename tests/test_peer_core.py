"""The sans-IO core driven by hand: one peer, its inputs and the effects it returns."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pytest

from hp2p.peer.config import PeerConfig
from hp2p.peer.control import JoinInfo, Phase
from hp2p.peer.core import PeerCore
from hp2p.peer.effects import (
    Close,
    Connect,
    Deliver,
    Detached,
    Effect,
    HomsRecoveryJoin,
    HomsReport,
    Joined,
    Left,
    ProtocolError,
    Send,
)
from hp2p.peer.paths import Link, Role
from hp2p.wire.errors import HeaderError
from hp2p.wire.r2 import decode, encode
from hp2p.wire.r2.messages import (
    ESTAB_NO,
    ESTAB_YES,
    GET_DATA_MISSING,
    PRIMARY_NO,
    PRIMARY_YES,
    BroadcastData,
    Buffermap,
    BuffermapResponse,
    Estab,
    EstabExt,
    EstabResponse,
    GetData,
    GetDataResponse,
    Heartbeat,
    HeartbeatExt,
    Hello,
    HelloExt,
    HelloResponse,
    PeerAddress,
    Probe,
    ProbeResponse,
    Release,
    SetCandidate,
    SetPrimary,
    SetPrimaryExt,
    SetPrimaryResponse,
    SetPrimaryResponseExt,
)

OV = "ov"


def core(peer_id: str = "me", **settings: Any) -> PeerCore:
    return PeerCore(PeerConfig(**settings), peer_id, f"mem://{peer_id}", random.Random(1))


M = TypeVar("M")


@dataclass
class Sent(Generic[M]):
    conns: tuple[int, ...]
    message: M
    position: int  # index of the Send effect in the drained list


def sends(effects: list[Effect], kind: type[M]) -> list[Sent[M]]:
    return [
        Sent(e.conns, e.message, i)
        for i, e in enumerate(effects)
        if isinstance(e, Send) and isinstance(e.message, kind)
    ]


def of(effects: list[Effect], kind: type[M]) -> list[M]:
    return [e for e in effects if isinstance(e, kind)]


def root(ticket: int = 1, **settings: Any) -> PeerCore:
    c = core("root", **settings)
    c.start(JoinInfo(OV, ticket, root=True), 0.0)
    c.take_effects()
    return c


def hello(peer: str = "j", ticket: int = 9, **kw: Any) -> Hello:
    return Hello(overlay_id=OV, peer_id=peer, address=f"mem://{peer}", ticket_id=ticket, **kw)


# --- volunteer side ---------------------------------------------------------------------------
def test_hello_is_answered_and_a_new_connection_carries_estab() -> None:
    c = root()
    conn = c.accept(1.0)
    c.receive(conn, hello(), 1.0)
    out = c.take_effects()
    assert sends(out, HelloResponse)[0].conns == (conn,)
    connect = of(out, Connect)[0]
    assert connect.addresses == ("mem://j",)
    assert connect.conn != conn
    c.connection_made(connect.conn, 1.1)
    estab = sends(c.take_effects(), Estab)[0]
    assert estab.conns == (connect.conn,)
    assert estab.message.allow_primary_req
    assert estab.message.hp2p == EstabExt(depth=0, address="mem://root")
    c.receive(connect.conn, EstabResponse(ESTAB_YES), 1.2)
    c.receive(connect.conn, SetPrimary(), 1.3)
    answer = sends(c.take_effects(), SetPrimaryResponse)[0].message
    assert answer.code == PRIMARY_YES
    assert answer.hp2p == SetPrimaryResponseExt(depth=0)
    assert c.paths.children == 1


def test_ticket_rule_no_estab_to_an_older_joiner() -> None:
    c = core("mid")
    c.start(JoinInfo(OV, 5, root=True), 0.0)
    c.take_effects()
    conn = c.accept(1.0)
    c.receive(conn, hello(ticket=3), 1.0)
    out = c.take_effects()
    assert sends(out, HelloResponse)
    assert not of(out, Connect)


def test_no_estab_without_a_child_slot_or_without_a_candidate_slot() -> None:
    c = root(max_children=1, max_incoming_candidates=1)
    c.paths.add(Link(100, Role.CHILD, peer_id="c", ticket=5))
    c.receive(c.accept(1.0), hello("j1"), 1.0)
    assert not of(c.take_effects(), Connect)  # children full (candidate slot free)
    c.paths.remove(100)
    c.paths.add(Link(101, Role.IN_CANDIDATE, peer_id="x", ticket=6))
    c.receive(c.accept(1.0), hello("j2"), 1.0)
    assert not of(c.take_effects(), Connect)  # candidates full (child slot free)


def test_set_primary_refused_when_full() -> None:
    c = root(max_children=1)
    c.paths.add(Link(100, Role.IN_CANDIDATE, peer_id="a", ticket=5))
    c.paths.add(Link(101, Role.IN_CANDIDATE, peer_id="b", ticket=6))
    c.receive(100, SetPrimary(), 1.0)
    c.receive(101, SetPrimary(), 1.0)
    codes = [s.message.code for s in sends(c.take_effects(), SetPrimaryResponse)]
    assert codes == [PRIMARY_YES, PRIMARY_NO]


def test_hello_relayed_down_to_children_except_the_joiner() -> None:
    c = root()
    for conn, peer in ((100, "c1"), (101, "c2"), (102, "j")):
        c.paths.add(Link(conn, Role.CHILD, peer_id=peer, ticket=conn))
    c.receive(c.accept(1.0), hello("j", ticket=200, ttl=3, conn_num=3), 1.0)
    relays = [s for s in sends(c.take_effects(), Hello)]
    assert len(relays) == 1
    assert sorted(relays[0].conns) == [100, 101]
    # no ESTAB to a peer it already has a path to, so conn_num 3 is split over 2 children
    assert relays[0].message.ttl == 2
    assert relays[0].message.conn_num == 2


# --- joiner side ------------------------------------------------------------------------------
def join_until_offers(c: PeerCore, offers: list[tuple[str, int, int | None]]) -> dict[str, int]:
    c.start(JoinInfo(OV, 50, peers=(("entry", "mem://entry"),)), 0.0)
    connect = of(c.take_effects(), Connect)[0]
    c.connection_made(connect.conn, 0.01)
    assert sends(c.take_effects(), Hello)
    c.receive(connect.conn, HelloResponse(), 0.02)
    assert Close(connect.conn) in c.take_effects()  # the HELLO link is short-lived
    conns = {}
    for peer, ticket, depth in offers:
        conn = c.accept(0.03)
        extra = EstabExt(depth=depth)
        c.receive(conn, Estab(overlay_id=OV, peer_id=peer, ticket_id=ticket, hp2p=extra), 0.03)
        assert sends(c.take_effects(), EstabResponse)[0].message.code == ESTAB_YES
        conns[peer] = conn
    return conns


def probe_all(c: PeerCore, at: float, rtts: dict[int, float]) -> list[Effect]:
    c.handle_timer(at)  # the ESTAB window ends
    probes = {s.conns[0]: s.message for s in sends(c.take_effects(), Probe)}
    assert set(probes) == set(rtts)
    for conn, rtt in rtts.items():
        c.receive(conn, ProbeResponse(ntp_time=probes[conn].ntp_time), at + rtt)
    return c.take_effects()


def test_joiner_chooses_by_depth_then_rtt_and_keeps_the_rest_as_candidates() -> None:
    c = core("j")
    conns = join_until_offers(c, [("deep", 2, 3), ("slow", 3, 1), ("fast", 4, 1)])
    assert c.next_timer() is not None
    out = probe_all(c, 1.0, {conns["deep"]: 0.001, conns["slow"]: 0.05, conns["fast"]: 0.01})
    ask = sends(out, SetPrimary)
    assert [s.conns for s in ask] == [(conns["fast"],)]
    c.receive(conns["fast"], SetPrimaryResponse(code=PRIMARY_NO), 1.1)
    ask = sends(c.take_effects(), SetPrimary)
    assert [s.conns for s in ask] == [(conns["slow"],)]
    gp = PeerAddress("gp", "mem://gp")
    yes = SetPrimaryResponse(parent_peer=gp, hp2p=SetPrimaryResponseExt(depth=1))
    c.receive(conns["slow"], yes, 1.2)
    out = c.take_effects()
    assert of(out, Joined) == [Joined("slow", 2, False)]
    assert sorted(s.conns[0] for s in sends(out, SetCandidate)) == sorted(
        [conns["fast"], conns["deep"]]
    )
    assert c.parent == "slow"
    assert c.grandparent == gp
    assert c.depth == 2
    report = of(out, HomsReport)[0].costmap
    assert report.primary == ("slow",)
    assert report.outgoing_candidate == ("deep", "fast")


def test_surplus_volunteers_are_released() -> None:
    c = core("j", max_outgoing_candidates=1)
    conns = join_until_offers(c, [("a", 2, 1), ("b", 3, 2), ("c", 4, 3)])
    out = probe_all(c, 1.0, {conns["a"]: 0.01, conns["b"]: 0.01, conns["c"]: 0.01})
    c.receive(conns["a"], SetPrimaryResponse(), 1.1)
    out = c.take_effects()
    assert [s.conns for s in sends(out, SetCandidate)] == [(conns["b"],)]
    assert [s.conns for s in sends(out, Release)] == [(conns["c"],)]
    assert Close(conns["c"]) in out


def test_estab_from_a_younger_peer_is_a_protocol_error_not_a_crash() -> None:
    c = core("j")
    c.start(JoinInfo(OV, 5, peers=(("entry", "mem://entry"),)), 0.0)
    c.take_effects()
    conn = c.accept(0.1)
    c.receive(conn, Estab(overlay_id=OV, peer_id="young", ticket_id=9), 0.1)
    out = c.take_effects()
    assert sends(out, EstabResponse)[0].message.code == ESTAB_NO
    assert of(out, ProtocolError)
    assert Close(conn) in out
    assert c.counters.protocol_errors == 1


def test_unexpected_messages_are_counted_not_raised() -> None:
    c = root()
    conn = c.accept(1.0)
    c.receive(conn, BroadcastData(source="x", sequence=1, data=b"d"), 1.0)
    c.receive(conn, SetPrimaryResponse(), 1.0)
    c.receive(999, Heartbeat(), 1.0)
    errors = of(c.take_effects(), ProtocolError)
    assert len(errors) == 3
    assert c.counters.protocol_errors == 3
    assert not of(c.take_effects(), Deliver)


# --- attached peer: data, liveness, recovery -----------------------------------------------------
def attached(**settings: Any) -> tuple[PeerCore, dict[str, int]]:
    """A peer at depth 2 with a parent, a vertical (grandparent) and one plain candidate."""
    c = core("j", **settings)
    conns = join_until_offers(c, [("parent", 2, 1), ("cand", 3, 2)])
    probe_all(c, 1.0, {conns["parent"]: 0.01, conns["cand"]: 0.01})
    gp = PeerAddress("gp", "mem://gp")
    yes = SetPrimaryResponse(parent_peer=gp, hp2p=SetPrimaryResponseExt(depth=1))
    c.receive(conns["parent"], yes, 1.1)
    c.take_effects()
    c.handle_timer(2.2)  # vertical_candidate_delay after attaching: HELLO to the grandparent
    connect = of(c.take_effects(), Connect)
    assert connect
    assert connect[0].addresses == ("mem://gp",)
    vconn = c.accept(2.5)
    estab = Estab(overlay_id=OV, peer_id="gp", ticket_id=1, allow_primary_req=False)
    c.receive(vconn, estab, 2.5)
    c.take_effects()
    conns["gp"] = vconn
    c.paths.add(Link(77, Role.CHILD, peer_id="kid", ticket=60, last_rx=2.5))
    return c, conns


def test_broadcast_is_forwarded_to_every_primary_path_but_the_arrival_one() -> None:
    c, conns = attached()
    data = BroadcastData(source="src", sequence=1, data=b"payload")
    c.receive(conns["parent"], data, 3.0)
    out = c.take_effects()
    assert [s.conns for s in sends(out, BroadcastData)] == [(77,)]
    assert sends(out, BroadcastData)[0].message is data  # no copy on the hot path
    deliver = of(out, Deliver)
    assert deliver == [Deliver("src", 1, b"payload", "etri_data", "text/plain", False)]
    c.receive(77, data, 3.1)  # the same message again by another path
    assert not c.take_effects()
    assert c.duplicates.counters.duplicates == 1
    # relayed once, on one path: its payload counted once (hp2p_peer_relayed_bytes_total)
    assert c.counters.forwarded == 1
    assert c.counters.forwarded_bytes == len(b"payload")


def test_candidate_path_flag_adds_candidate_paths_to_the_fanout() -> None:
    c, conns = attached()
    c.publish(b"x", 3.0, candidate_path=True)
    sent = sends(c.take_effects(), BroadcastData)[0].conns
    assert sorted(sent) == sorted([conns["parent"], 77, conns["cand"], conns["gp"]])


def test_heartbeat_timeout_kills_the_parent_and_the_grandparent_is_asked_first() -> None:
    c, conns = attached(heartbeat_interval=1.0, heartbeat_timeout=3.0, recovery_ask_timeout=2.0)
    now = 2.5
    for _ in range(6):  # bounded: the candidates talk, the parent is silent
        now += 0.5
        for peer in ("cand", "gp"):
            c.receive(conns[peer], Heartbeat(hp2p=HeartbeatExt(depth=1)), now)
        c.receive(77, Heartbeat(), now)
        c.handle_timer(now)
    out = c.take_effects()
    assert Close(conns["parent"]) in out
    assert of(out, Detached)
    asks = sends(out, SetPrimary)
    assert [s.conns for s in asks] == [(conns["gp"],)]
    assert asks[0].message.hp2p.recovery
    assert asks[0].message.buffermap == []  # push recovery (the default): my (empty) buffermap
    c.receive(conns["gp"], SetPrimaryResponse(hp2p=SetPrimaryResponseExt(depth=0)), now + 0.1)
    joined = of(c.take_effects(), Joined)
    assert joined == [Joined("gp", 1, True)]
    assert c.paths.children == 1  # the subtree moved with the peer


def test_parent_release_with_no_candidate_accepting_asks_the_homs() -> None:
    c, conns = attached()
    c.receive(conns["parent"], Release(), 3.0)
    out = c.take_effects()
    assert sends(out, SetPrimary)[0].conns == (conns["gp"],)
    c.receive(conns["gp"], SetPrimaryResponse(code=PRIMARY_NO), 3.1)
    assert sends(c.take_effects(), SetPrimary)[0].conns == (conns["cand"],)
    c.receive(conns["cand"], SetPrimaryResponse(code=PRIMARY_NO), 3.2)
    assert of(c.take_effects(), HomsRecoveryJoin) == [HomsRecoveryJoin(50)]
    c.homs_result([("older", "mem://older")], 3.3)
    connect = of(c.take_effects(), Connect)
    assert [x.addresses[0] for x in connect] == ["mem://older"]
    c.connection_made(connect[0].conn, 3.4)
    assert sends(c.take_effects(), Hello)[0].message.recovery is True


def test_leave_releases_every_path_then_closes_then_left() -> None:
    c, conns = attached()
    every_connection = set(c.paths.links)  # paths and the pending grandparent HELLO link
    c.leave(3.0)
    out = c.take_effects()
    release = sends(out, Release)
    assert len(release) == 1
    assert sorted(release[0].conns) == sorted([*conns.values(), 77])
    closes = of(out, Close)
    assert {x.conn for x in closes} == every_connection
    assert release[0].position < out.index(closes[0])
    assert out[-1] == Left()
    assert c.next_timer() is None


def test_cache_answers_buffermap_and_get_data() -> None:
    c, conns = attached()
    c.receive(conns["parent"], BroadcastData(source="s", sequence=4, data=b"four"), 3.0)
    c.take_effects()
    c.paths.links[77].hp2p = True  # an hp2p child: 11200 answers (tests/test_go_corpus.py)
    c.receive(77, Buffermap(overlay_id=OV), 3.1)
    c.receive(77, GetData(overlay_id=OV, source_id="s", sequence=4), 3.1)
    c.receive(77, GetData(overlay_id=OV, source_id="s", sequence=5), 3.1)
    out = c.take_effects()
    bm = sends(out, BuffermapResponse)[0].message
    assert [(e.source_peer_id, e.sequences) for e in bm.buffermap] == [("s", [4])]
    got = [s.message for s in sends(out, GetDataResponse)]
    assert got[0].data == b"four"
    assert got[1].code == GET_DATA_MISSING
    assert c.duplicates.gaps("s") == []


def test_recovered_data_is_delivered_once_and_flagged() -> None:
    c, conns = attached()
    c.receive(conns["parent"], BroadcastData(source="s", sequence=1, data=b"1"), 3.0)
    c.receive(conns["parent"], BroadcastData(source="s", sequence=3, data=b"3"), 3.0)
    c.take_effects()
    assert c.duplicates.gaps("s") == [2]
    answer = GetDataResponse(source="s", sequence=2, data=b"2")
    c.receive(conns["cand"], answer, 3.5)
    c.receive(conns["cand"], answer, 3.6)
    delivered = of(c.take_effects(), Deliver)
    assert [(d.sequence, d.recovered) for d in delivered] == [(2, True)]


@pytest.mark.parametrize(
    "hp2p",
    [
        b'{"up":-1,"attempt":null,"down":"x"}',
        b'{"up":true,"down":1000000000}',
        b'{"attempt":{"n":1},"cpm":"yes"}',
        b'{"up":1180591620717411303424}',
    ],
)
def test_malformed_hp2p_extensions_are_refused_before_the_core(hp2p: bytes) -> None:
    """What the core used to check with isinstance, the decoder refuses (a HeaderError)."""
    header = encode(hello())[4:]
    assert header.endswith(b"}}}")
    header = header[:-2] + b',"hp2p":' + hp2p + b"}}"
    with pytest.raises(HeaderError) as info:
        decode(b"\x01\x01" + len(header).to_bytes(2, "big") + header)
    assert info.value.field.startswith("$.req-params.hp2p.")


def test_extensions_at_their_bounds_are_handled_without_error() -> None:
    c = root()
    extremes = [
        HelloExt(up=63, down=0, attempt=2**63 - 1),
        HelloExt(up=0, down=63, attempt="x" * 255, cpm=True),
        HelloExt(displace=True, mesh=1, standby=1),
        HelloExt(),
    ]
    for n, extra in enumerate(extremes):
        c.receive(c.accept(1.0), hello(f"j{n}", ticket=10 + n, hp2p=extra), 1.0)
    c.paths.add(Link(50, Role.CHILD, peer_id="kid", ticket=60))
    c.receive(50, Heartbeat(hp2p=HeartbeatExt(depth=999_999, slot=0, heads={"s": 2**63 - 1})), 1.0)
    c.receive(50, SetPrimary(hp2p=SetPrimaryExt(recovery=True, since=1e9)), 1.0)  # on a child
    out = c.take_effects()
    assert len(of(out, Connect)) == 4  # every joiner still got its volunteer
    assert not of(out, ProtocolError)
    assert c.paths.get(50) is not None
    assert c.paths.get(50).depth == 999_999  # type: ignore[union-attr]


def test_forged_far_future_sequence_does_not_silence_the_source() -> None:
    c, conns = attached(max_ahead=1000)
    c.receive(conns["parent"], BroadcastData(source="s", sequence=1, data=b"1"), 3.0)
    c.receive(conns["parent"], BroadcastData(source="s", sequence=10**9, data=b"!"), 3.0)
    c.receive(conns["parent"], BroadcastData(source="s", sequence=2, data=b"2"), 3.0)
    delivered = [d.sequence for d in of(c.take_effects(), Deliver)]
    assert delivered == [1, 2]
    assert c.duplicates.counters.too_far == 1


def test_status_is_a_plain_snapshot() -> None:
    c, _ = attached()
    snap = c.status()
    assert snap["phase"] == "attached"
    assert snap["parent"] == "parent"
    assert snap["depth"] == 2
    roles = sorted(p["role"] for p in snap["paths"])
    assert roles == ["child", "outgoing_candidate", "outgoing_candidate", "parent"]
    assert snap["counters"]["protocol_errors"] == 0
    c.publish(b"x", 3.0)
    assert snap["cache"]["messages"] == 0  # a snapshot, not a live view
    assert c.status()["cache"]["messages"] == 1


def test_a_standby_continues_a_sources_numbering_and_never_goes_back() -> None:
    c = root()
    c.continue_as_source(41)
    assert c.publish(b"x", 1.0) == 42
    c.continue_as_source(10)  # an older figure never rewinds: sequences stay unique
    assert c.publish(b"y", 2.0) == 43
    with pytest.raises(ValueError, match="≥ 0"):
        c.continue_as_source(-1)


def test_restart_releases_every_path_and_starts_over_under_the_new_ticket() -> None:
    c = root(ticket=3)
    child = c.accept(1.0)
    c.receive(child, hello("kid", ticket=9), 1.0)
    c.take_effects()
    c.restart(JoinInfo(OV, 12, peers=(("entry", "mem://entry"),)), 2.0)
    effects = c.take_effects()
    assert Close(child) in effects
    assert of(effects, Connect)[0].addresses == ("mem://entry",)  # HELLO to the new peer list
    assert c.ticket == 12
    assert c.phase is not Phase.ATTACHED
    c.leave(3.0)
    c.take_effects()
    c.restart(JoinInfo(OV, 13, root=True), 4.0)  # after leave: refused, nothing sent
    assert of(c.take_effects(), Connect) == []
    assert c.phase is Phase.LEFT


# --- an old orphan and a full top (issue #5: survivors outside the tree) -----------------------
def full_root() -> PeerCore:
    c = root(max_children=2, recovery_children=0)
    c.paths.add(Link(100, Role.CHILD, peer_id="c30", ticket=30))
    c.paths.add(Link(101, Role.CHILD, peer_id="c40", ticket=40))
    return c


def orphan_hello(peer: str, ticket: int, displace: bool) -> Hello:
    return hello(peer, ticket=ticket, recovery=True, hp2p=HelloExt(displace=displace))


def test_a_full_peer_volunteers_to_an_older_orphan_only_when_it_asks_to_displace() -> None:
    c = full_root()
    c.receive(c.accept(1.0), orphan_hello("o1", 10, displace=False), 1.0)
    assert not of(c.take_effects(), Connect)  # full: the plain rule
    c.receive(c.accept(1.0), orphan_hello("young", 50, displace=True), 1.0)
    assert not of(c.take_effects(), Connect)  # no child is younger than the joiner
    c.receive(c.accept(1.0), orphan_hello("o2", 10, displace=True), 1.0)
    connect = of(c.take_effects(), Connect)
    assert [x.addresses[0] for x in connect] == ["mem://o2"]
    c.connection_made(connect[0].conn, 1.1)
    estab = sends(c.take_effects(), Estab)[0].message
    assert estab.hp2p == EstabExt(depth=0, displace=True, address="mem://root")


def test_set_primary_from_an_older_orphan_releases_the_youngest_child_of_a_full_peer() -> None:
    c = full_root()
    c.receive(c.accept(1.0), orphan_hello("o", 10, displace=True), 1.0)
    conn = of(c.take_effects(), Connect)[0].conn
    c.connection_made(conn, 1.1)
    c.receive(conn, EstabResponse(ESTAB_YES), 1.2)
    c.take_effects()
    c.receive(conn, SetPrimary(hp2p=SetPrimaryExt(recovery=True, displace=True)), 1.3)
    out = c.take_effects()
    assert [s.conns for s in sends(out, Release)] == [(101,)]  # c40: the youngest child
    assert Close(101) in out
    assert sends(out, SetPrimaryResponse)[0].message.code == PRIMARY_YES
    assert sends(out, Release)[0].position < sends(out, SetPrimaryResponse)[0].position
    assert sorted(link.peer_id for link in c.paths.with_role(Role.CHILD)) == ["c30", "o"]


def test_set_primary_without_displace_from_an_orphan_is_refused_by_a_full_peer() -> None:
    c = full_root()
    c.paths.add(Link(102, Role.IN_CANDIDATE, peer_id="o", ticket=10))
    c.receive(102, SetPrimary(hp2p=SetPrimaryExt(recovery=True)), 1.0)
    out = c.take_effects()
    assert sends(out, SetPrimaryResponse)[0].message.code == PRIMARY_NO
    assert not sends(out, Release)
    assert c.paths.children == 2


def test_an_orphan_asks_its_candidates_again_when_the_homs_lists_only_them() -> None:
    c, conns = attached()
    c.receive(conns["parent"], Release(), 3.0)
    assert sends(c.take_effects(), SetPrimary)[0].conns == (conns["gp"],)
    c.receive(conns["gp"], SetPrimaryResponse(code=PRIMARY_NO), 3.1)
    assert sends(c.take_effects(), SetPrimary)[0].conns == (conns["cand"],)
    c.receive(conns["cand"], SetPrimaryResponse(code=PRIMARY_NO), 3.2)
    assert of(c.take_effects(), HomsRecoveryJoin)
    # The HOMS lists the orphan's nearest older peers: its candidates, which may have room now.
    c.homs_result([("gp", "mem://gp"), ("cand", "mem://cand")], 3.3)
    out = c.take_effects()
    assert not of(out, Connect)  # no HELLO: a second path to a candidate would be refused
    asks = sends(out, SetPrimary)
    assert [s.conns for s in asks] == [(conns["gp"],)]
    assert asks[0].message.hp2p.displace  # the second attempt may displace
    c.receive(conns["gp"], SetPrimaryResponse(hp2p=SetPrimaryResponseExt(depth=0)), 3.4)
    assert of(c.take_effects(), Joined) == [Joined("gp", 1, True)]


def test_an_orphan_ranks_a_volunteer_that_must_displace_after_a_free_slot() -> None:
    c = core("j")
    c.start(JoinInfo(OV, 50, peers=(("entry", "mem://entry"),)), 0.0)
    connect = of(c.take_effects(), Connect)[0]
    c.connection_made(connect.conn, 0.01)
    c.receive(connect.conn, HelloResponse(), 0.02)
    c.take_effects()
    shallow = c.accept(0.03)
    c.receive(
        shallow,
        Estab(overlay_id=OV, peer_id="top", ticket_id=1, hp2p=EstabExt(depth=0, displace=True)),
        0.03,
    )
    deep = c.accept(0.03)
    c.receive(deep, Estab(overlay_id=OV, peer_id="deep", ticket_id=7, hp2p=EstabExt(depth=3)), 0.03)
    c.take_effects()
    out = probe_all(c, 1.0, {shallow: 0.001, deep: 0.001})
    assert [s.conns for s in sends(out, SetPrimary)] == [(deep,)]


def test_an_orphan_takes_the_first_free_slot_offered_without_waiting_for_the_window() -> None:
    c, conns = attached()
    c.receive(conns["parent"], Release(), 3.0)
    c.receive(conns["gp"], SetPrimaryResponse(code=PRIMARY_NO), 3.1)
    c.receive(conns["cand"], SetPrimaryResponse(code=PRIMARY_NO), 3.2)
    c.take_effects()
    c.homs_result([("older", "mem://older")], 3.3)
    hello_conn = of(c.take_effects(), Connect)[0].conn
    c.connection_made(hello_conn, 3.31)
    c.receive(hello_conn, HelloResponse(), 3.32)
    c.take_effects()
    offer = c.accept(3.33)
    estab = Estab(overlay_id=OV, peer_id="older", ticket_id=4, hp2p=EstabExt(depth=3))
    c.receive(offer, estab, 3.33)
    asks = sends(c.take_effects(), SetPrimary)
    # At once, and before the candidates that refused a moment ago.
    assert [s.conns for s in asks] == [(offer,)]
    c.receive(offer, SetPrimaryResponse(hp2p=SetPrimaryResponseExt(depth=3)), 3.34)
    assert of(c.take_effects(), Joined) == [Joined("older", 4, True)]


def orphan_with_a_younger_asker() -> tuple[PeerCore, dict[str, int]]:
    """An orphan in its candidate round, and a younger orphan asking it to be its parent."""
    c, conns = attached()
    c.paths.add(Link(88, Role.IN_CANDIDATE, peer_id="o", ticket=70, last_rx=2.5))
    c.receive(conns["parent"], Release(), 3.0)
    assert sends(c.take_effects(), SetPrimary)[0].conns == (conns["gp"],)
    c.receive(88, SetPrimary(hp2p=SetPrimaryExt(recovery=True)), 3.01)
    assert not sends(c.take_effects(), SetPrimaryResponse)  # held, not refused
    return c, conns


def test_an_orphan_holds_a_younger_orphans_ask_and_takes_it_once_attached_again() -> None:
    c, conns = orphan_with_a_younger_asker()
    c.receive(conns["gp"], SetPrimaryResponse(hp2p=SetPrimaryResponseExt(depth=0)), 3.02)
    out = c.take_effects()
    assert of(out, Joined) == [Joined("gp", 1, True)]
    answer = [s for s in sends(out, SetPrimaryResponse) if s.conns == (88,)]
    assert [s.message.code for s in answer] == [PRIMARY_YES]
    assert c.paths.get(88) is not None
    assert c.paths.get(88).role is Role.CHILD  # type: ignore[union-attr]


def test_a_held_ask_is_refused_when_the_orphan_must_go_to_the_homs() -> None:
    c, conns = orphan_with_a_younger_asker()
    c.receive(conns["gp"], SetPrimaryResponse(code=PRIMARY_NO), 3.02)
    c.take_effects()
    c.receive(conns["cand"], SetPrimaryResponse(code=PRIMARY_NO), 3.03)
    out = c.take_effects()
    assert of(out, HomsRecoveryJoin)
    assert [s.message.code for s in sends(out, SetPrimaryResponse)] == [PRIMARY_NO]


def test_a_held_ask_is_refused_before_the_askers_own_time_out() -> None:
    c, _ = orphan_with_a_younger_asker()
    limit = 3.01 + c.config.recovery_ask_timeout  # the asker gives up on me at this point
    answers: list[Sent[SetPrimaryResponse]] = []
    for _ in range(20):  # bounded: the timers due before the asker's time-out
        deadline = c.next_timer()
        if deadline is None or deadline >= limit or answers:
            break
        c.handle_timer(deadline)
        answers = [s for s in sends(c.take_effects(), SetPrimaryResponse) if s.conns == (88,)]
    assert [s.message.code for s in answers] == [PRIMARY_NO]


def test_the_volunteers_address_in_estab_reaches_the_grandchildren_in_4200() -> None:
    # R2's ESTAB has no address and the joiner sees only the ephemeral end of the volunteer's
    # connection; without hp2p "address", 4200's parent-peer (the grandparent of the asker)
    # had an empty address and every vertical-candidate HELLO went nowhere.
    c = core("j")
    c.start(JoinInfo(OV, 50, peers=(("entry", "mem://entry"),)), 0.0)
    connect = of(c.take_effects(), Connect)[0]
    c.connection_made(connect.conn, 0.01)
    c.receive(connect.conn, HelloResponse(), 0.02)
    c.take_effects()
    offer = c.accept(0.03)
    extra = EstabExt(depth=0, address="tcp://127.0.0.1:7001")
    c.receive(offer, Estab(overlay_id=OV, peer_id="p", ticket_id=2, hp2p=extra), 0.03)
    c.take_effects()
    probe_all(c, 1.0, {offer: 0.001})
    c.receive(offer, SetPrimaryResponse(hp2p=SetPrimaryResponseExt(depth=0)), 1.1)
    assert of(c.take_effects(), Joined) == [Joined("p", 1, False)]
    c.paths.add(Link(90, Role.IN_CANDIDATE, peer_id="kid", ticket=99, last_rx=1.2))
    c.receive(90, SetPrimary(), 1.2)
    answer = sends(c.take_effects(), SetPrimaryResponse)[0].message
    assert answer.code == PRIMARY_YES
    assert answer.parent_peer == PeerAddress("p", "tcp://127.0.0.1:7001")
