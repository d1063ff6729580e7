"""The reference Go peer's recorded R2 frames replayed against hp2p's sans-IO core.

``shared/conformance/go-peer-2023/r2.jsonl`` holds every data-channel message a probe (an
hp2p-encoded aiortc peer) exchanged with GO-2023 peers. Go speaks R2 over WebRTC data
channels, one frame per message, so the replay is at the frame level: each frame the Go peer
sent is decoded with hp2p's codec and fed to a :class:`PeerCore` standing where the probe
stood; what the core sends back is compared with what the recording expects (the kind of
message and its code, not the bytes: hp2p adds its extension, the probe did not always).

Every frame the core sends to a Go peer is also checked against the README's list of frames
that make a Go peer panic (:func:`assert_go_safe`). Scenario B is the probe as root of a pull
overlay with Go children; scenario A the probe as a joiner under Go peers (push overlay).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from hp2p.homs.app import create_app
from hp2p.homs.settings import HomsSettings
from hp2p.peer.config import PeerConfig
from hp2p.peer.control import CrPolicy, JoinInfo, Phase
from hp2p.peer.core import PeerCore
from hp2p.peer.effects import Close, Connect, Effect, Send
from hp2p.peer.homs_client import HomsClient, homp_heartbeat
from hp2p.peer.paths import Role
from hp2p.wire.r2 import decode, encode
from hp2p.wire.r2.messages import (
    ESTAB_YES,
    PRIMARY_YES,
    BroadcastData,
    BuffermapResponse,
    Estab,
    EstabResponse,
    GetDataResponse,
    Heartbeat,
    HeartbeatResponse,
    Hello,
    HelloResponse,
    Message,
    SetPrimary,
    SetPrimaryResponse,
)
from recordings import CONFORMANCE, load, needs

GO_CORPUS = CONFORMANCE / "go-peer-2023" / "r2.jsonl"
R2: dict[int, dict[str, Any]] = {r["seq"]: r for r in load(GO_CORPUS)}
pytestmark = needs(GO_CORPUS)

M = TypeVar("M")


def frame(seq: int) -> Message:
    """The recorded frame ``seq``, decoded by hp2p's codec as the core would get it."""
    return decode(bytes.fromhex(R2[seq]["hex"]))


def at(seq: int) -> float:
    t: float = R2[seq]["t"]
    return t


def header(seq: int) -> dict[str, Any]:
    h: dict[str, Any] = R2[seq]["decoded"]["header"]
    return h


def peer_of(seq: int) -> str:
    p: str = R2[seq]["peer"]
    return p


def sent(effects: Iterable[Effect], conn: int, kind: type[M]) -> list[M]:
    return [
        e.message
        for e in effects
        if isinstance(e, Send) and conn in e.conns and isinstance(e.message, kind)
    ]


def assert_go_safe(effects: Iterable[Effect], go_conns: set[int]) -> None:
    """No frame sent to a Go peer is one of the README's five panics (or their relatives).

    A frame shorter than its 4-byte prefix, a header length past the frame's end, a header
    that is not a JSON object or whose code is not a number, BROADCAST_DATA without
    ``operation``, and any 11200 (the correct GET_DATA answer crashes ``recvData``).
    """
    for e in effects:
        if not isinstance(e, Send) or not go_conns.intersection(e.conns):
            continue
        raw = encode(e.message)
        assert len(raw) >= 4
        assert raw[:2] == b"\x01\x01"
        length = int.from_bytes(raw[2:4], "big")
        assert 4 + length <= len(raw)
        head = json.loads(raw[4 : 4 + length])
        assert isinstance(head, dict)
        code = head.get("req-code", head.get("rsp-code"))
        assert isinstance(code, int)
        assert not isinstance(code, bool)
        assert code != 11200, "a GET_DATA answer crashes a Go peer (r2 207)"
        if code == 6:
            assert isinstance(head["req-params"].get("operation"), dict)


class Replay:
    """One hp2p core in the probe's place, and the conns standing for the recorded links."""

    def __init__(self, core: PeerCore) -> None:
        self.core = core
        self.go: set[int] = set()
        self.links: dict[str, int] = {}

    def drain(self) -> list[Effect]:
        out = self.core.take_effects()
        assert_go_safe(out, self.go)
        return out

    def feed(self, seq: int, conn: int | None = None) -> list[Effect]:
        """Feed recorded frame ``seq`` (one the Go peer sent) on its link's conn."""
        record = R2[seq]
        assert record["dir"] == "received"
        conn = self.links[record["link"]] if conn is None else conn
        self.core.receive(conn, frame(seq), at(seq))
        return self.drain()

    def incoming(self, seq: int) -> tuple[int, list[Effect]]:
        """The Go peer opened a new connection and sent frame ``seq`` on it."""
        conn = self.core.accept(at(seq))
        self.go.add(conn)
        self.links[R2[seq]["link"]] = conn
        return conn, self.feed(seq, conn)

    def until_sent(self, kind: type[M], limit: float) -> tuple[list[Effect], float]:
        """Run core timers until it sends a ``kind`` (bounded by ``limit``); effects and time."""
        out: list[Effect] = []
        for _ in range(1000):
            due = self.core.next_timer()
            assert due is not None, f"no {kind.__name__} and no timer"
            assert due <= limit, f"no {kind.__name__} by {limit}"
            self.core.handle_timer(due)
            step = self.drain()
            out += step
            if any(isinstance(e, Send) and isinstance(e.message, kind) for e in step):
                return out, due
        raise AssertionError("timer loop did not end")

    def timers_until(self, t: float) -> list[Effect]:
        """Run every core timer due up to ``t`` (bounded: the core's timers are finite)."""
        out: list[Effect] = []
        for _ in range(1000):
            due = self.core.next_timer()
            if due is None or due > t:
                break
            self.core.handle_timer(due)
            out += self.drain()
        self.core.handle_timer(t)
        return out + self.drain()


# === scenario B: hp2p as the root of a pull overlay, Go children ===============================
def b_root() -> Replay:
    """The probe ``ai2`` as an hp2p core: root, ticket 1, the overlay's pull policy.

    Its own heartbeat is pinned sub-second (0.5/1.5 s): the Go children heartbeat by the
    overlay's values (10/15 s, every 9 s), and the core must time them out by those.
    """
    hello = header(183)["req-params"]
    overlay_id = hello["operation"]["overlay-id"]
    me = header(185)["req-params"]["peer"]["peer-id"]
    config = PeerConfig(heartbeat_interval=0.5, heartbeat_timeout=1.5, cache_count=100)
    core = PeerCore(config, me, "ws://10.213.9.1:8082", random.Random(7))
    info = JoinInfo(
        overlay_id,
        1,
        root=True,
        heartbeat_interval=10,
        heartbeat_timeout=15,
        cr_policy=CrPolicy(cache_count=100, recovery_by="pull"),
    )
    core.start(info, at(183) - 10)
    core.take_effects()
    return Replay(core)


def b_join(r: Replay, hello_seq: int, estab_seq: int) -> int:
    """A Go joiner: HELLO on a temporary link it closes at once, then ESTAB on a new one.

    Answers: 1202 on the HELLO link (r2 184), a fresh connection to the joiner carrying
    ESTAB (r2 185), and 4200 to the SET_PRIMARY that comes with the 2200 (r2 186-188).
    Returns the conn of the new child's path.
    """
    hello_conn, out = r.incoming(hello_seq)
    assert [m.code for m in sent(out, hello_conn, HelloResponse)] == [1202]
    connect = [e for e in out if isinstance(e, Connect)]
    assert len(connect) == 1
    assert connect[0].peer_id == peer_of(hello_seq)
    child = connect[0].conn
    r.go.add(child)
    r.links[R2[estab_seq]["link"]] = child
    # a Go joiner closes the temporary link within 1 ms of the 1202 (README R2 2)
    r.core.connection_lost(hello_conn, at(hello_seq) + 0.001)
    r.drain()
    r.core.connection_made(child, at(estab_seq))
    out = r.drain()
    estab = sent(out, child, Estab)
    assert len(estab) == 1
    assert estab[0].allow_primary_req
    assert isinstance(frame(estab_seq + 1), EstabResponse)
    assert isinstance(frame(estab_seq + 2), SetPrimary)
    r.feed(estab_seq + 1)  # 2200 ...
    out = r.feed(estab_seq + 2)  # ... and SET_PRIMARY in the same millisecond
    assert [m.code for m in sent(out, child, SetPrimaryResponse)] == [PRIMARY_YES]
    link = r.core.paths.get(child)
    assert link is not None
    assert link.role is Role.CHILD
    assert not link.hp2p
    return child


@pytest.mark.parametrize(("hello_seq", "estab_seq"), [(183, 185), (197, 200), (222, 225)])
def test_a_go_joiner_attaches_to_an_hp2p_volunteer(hello_seq: int, estab_seq: int) -> None:
    r = b_root()
    child = b_join(r, hello_seq, estab_seq)
    assert r.core.paths.children == 1
    out = r.feed(estab_seq + 4)  # BUFFERMAP right after 4200 (r2 189)
    assert len(sent(out, child, BuffermapResponse)) == 1


def test_go_childrens_heartbeats_every_9_s_keep_their_path_under_a_pinned_1_5_s_timeout() -> None:
    """Go heartbeats by the overlay (int(0.9 x 10) = 9 s); hp2p's tolerance follows it."""
    r = b_root()
    child = b_join(r, 183, 185)
    r.feed(189)
    for seq in (191, 193):  # the recorded HEARTBEATs, 9 s apart
        r.timers_until(at(seq) - 0.01)
        assert r.core.paths.get(child) is not None, f"dropped before r2 {seq}"
        out = r.feed(seq)
        assert [m.code for m in sent(out, child, HeartbeatResponse)] == [8200]
    out = r.timers_until(at(193) + 15.5)  # silent past the overlay's timeout: dead
    assert r.core.paths.get(child) is None
    assert [e.conn for e in out if isinstance(e, Close)] == [child]


def test_hp2p_peers_keep_their_own_timeout() -> None:
    """The overlay's longer timeout is only for peers not known to run hp2p."""
    r = b_root()
    child = b_join(r, 183, 185)
    r.core.receive(child, Heartbeat(hp2p=frame_heartbeat_ext()), at(189))
    link = r.core.paths.get(child)
    assert link is not None
    assert link.hp2p
    r.timers_until(at(189) + 1.6)
    assert r.core.paths.get(child) is None


def frame_heartbeat_ext() -> Any:
    from hp2p.wire.r2.messages import HeartbeatExt

    return HeartbeatExt(depth=1)


def test_pull_answers_a_go_get_data_with_a_push_never_with_11200() -> None:
    """r2 197-207: the correct 11200 crashed ``g6``; hp2p pushes BROADCAST_DATA instead."""
    r = b_root()
    g5 = b_join(r, 183, 185)
    r.feed(189)
    seq = r.core.publish(b"pull-1", at(195), app_id="chat")
    out = r.drain()
    assert [m.sequence for m in sent(out, g5, BroadcastData)] == [seq] == [1]
    g6_hello, out = r.incoming(197)
    # relayed down to the Go child with ttl - 1 (r2 199)
    relayed = sent(out, g5, Hello)
    assert len(relayed) == 1
    assert relayed[0].ttl == header(199)["req-params"]["operation"]["ttl"]
    g6 = next(e.conn for e in out if isinstance(e, Connect))
    r.go.add(g6)
    r.links[R2[200]["link"]] = g6
    r.core.connection_lost(g6_hello, at(197) + 0.001)
    r.core.connection_made(g6, at(200))
    r.drain()
    r.feed(201)
    out = r.feed(202)
    assert [m.code for m in sent(out, g6, SetPrimaryResponse)] == [PRIMARY_YES]
    # push first: a reference child gets what I cache without asking (it cannot pull safely)
    assert [m.sequence for m in sent(out, g6, BroadcastData)] == [1]
    out = r.feed(204)
    (bm,) = sent(out, g6, BuffermapResponse)
    assert [(e.source_peer_id, e.sequences) for e in bm.buffermap] == [(r.core.peer_id, [1])]
    out = r.feed(206)  # GET_DATA, flat (README R2 9)
    assert sent(out, g6, GetDataResponse) == []
    pushed = sent(out, g6, BroadcastData)
    assert [(m.source, m.sequence, m.data) for m in pushed] == [(r.core.peer_id, 1, b"pull-1")]
    assert r.core.counters.protocol_errors == 0


def test_an_hp2p_child_still_gets_the_11200_answer() -> None:
    """The push-for-GET_DATA rule is for reference peers only (Link.hp2p)."""
    r = b_root()
    child = b_join(r, 183, 185)
    r.core.publish(b"pull-1", at(195))
    r.drain()
    link = r.core.paths.get(child)
    assert link is not None
    r.core.receive(child, Heartbeat(hp2p=frame_heartbeat_ext()), at(195))  # shows hp2p
    r.go.discard(child)
    r.core.receive(child, frame(206), at(206))
    out = r.core.take_effects()
    assert [m.code for m in sent(out, child, GetDataResponse)] == [11200]


# === scenario A: hp2p as a joiner under Go peers (push) ========================================
def a_joiner() -> tuple[Replay, int]:
    """The probe ``ai1`` as an hp2p core, ticket 3, joining with the list ``[g1]``."""
    hello = header(1)["req-params"]
    overlay_id = hello["operation"]["overlay-id"]
    me = hello["peer"]["peer-id"]
    core = PeerCore(PeerConfig(), me, hello["peer"]["address"], random.Random(3))
    g1 = peer_of(1)
    info = JoinInfo(
        overlay_id,
        hello["peer"]["ticket-id"],
        peers=((g1, "ws://10.213.9.1:8082"),),
        heartbeat_interval=10,
        heartbeat_timeout=15,
        cr_policy=CrPolicy(cache_count=100, recovery_by="push"),
    )
    core.start(info, at(1) - 0.1)
    r = Replay(core)
    out = r.drain()
    (connect,) = [e for e in out if isinstance(e, Connect)]
    assert connect.peer_id == g1
    r.go.add(connect.conn)
    r.links["ai1#1"] = connect.conn
    core.connection_made(connect.conn, at(1))
    out = r.drain()
    assert len(sent(out, connect.conn, Hello)) == 1
    return r, connect.conn


def test_an_hp2p_joiner_attaches_under_go_volunteers() -> None:
    """HELLO on a temporary link, ESTABs on new ones, SET_PRIMARY, 4200 (r2 1-9)."""
    r, hello_conn = a_joiner()
    out = r.feed(2)  # 1202
    # hp2p closes the temporary link itself: Go's RELEASE 200 ms later (r2 3) finds it gone
    assert hello_conn in [e.conn for e in out if isinstance(e, Close)]
    g1, out = r.incoming(4)  # g1's ESTAB on a connection g1 offered
    g2, out2 = r.incoming(8)  # g2's, 200 ms later, inside the collection window
    more, t = r.until_sent(SetPrimary, at(8) + 3)
    out = out + out2 + more
    asked = [c for c in (g1, g2) if sent(out, c, SetPrimary)]
    assert asked, "no SET_PRIMARY to a Go volunteer"
    parent = asked[0]
    assert [m.code for m in sent(out, parent, EstabResponse)] in ([ESTAB_YES], [])
    # push: the SET_PRIMARY carries a buffermap, which Go reads (r2 6 was accepted)
    assert sent(out, parent, SetPrimary)[0].buffermap is not None
    r.core.receive(parent, frame(7), t)  # {"rsp-code":4200,"rsp-params":{"buffermap":null}}
    out = r.drain()
    assert r.core.phase is Phase.ATTACHED
    assert r.core.parent in (peer_of(4), peer_of(8))
    for seq in (11, 13):  # Go answers hp2p's heartbeats with 8200 and sends none of its own
        assert isinstance(frame(seq), HeartbeatResponse)
    for _ in range(8):  # a minute on the parent link with only 8200s from Go: it stays
        t += 8.0
        r.timers_until(t)
        r.core.receive(parent, frame(11), t)
        r.drain()
    assert r.core.paths.parent is not None
    assert r.core.paths.parent.conn == parent


def test_a_go_parent_relays_a_hello_and_hp2p_volunteers_then_adopts() -> None:
    """r2 14-19: the relayed HELLO (ttl 2) on the parent link, ESTAB, 2200 + SET_PRIMARY null."""
    r, _hello_conn = a_joiner()
    r.feed(2)
    parent, _ = r.incoming(4)
    _, t = r.until_sent(SetPrimary, at(4) + 3)
    r.core.receive(parent, frame(7), t)
    r.drain()
    assert r.core.phase is Phase.ATTACHED
    assert r.core.paths.parent is not None
    r.links["ai1#2"] = parent
    out = r.feed(14)
    assert [m.code for m in sent(out, parent, HelloResponse)] == [1202]
    (connect,) = [e for e in out if isinstance(e, Connect)]
    assert connect.peer_id == peer_of(16)
    r.go.add(connect.conn)
    r.links["ai1#4"] = connect.conn
    r.core.connection_made(connect.conn, at(16))
    assert len(sent(r.drain(), connect.conn, Estab)) == 1
    r.feed(17)
    out = r.feed(18)  # {"req-code":4,"req-params":{"buffermap":null}}
    assert [m.code for m in sent(out, connect.conn, SetPrimaryResponse)] == [PRIMARY_YES]
    # Go's own data arrives from the parent and is forwarded to the Go child (r2 64-65)
    out = r.feed(64)
    forwarded = sent(out, connect.conn, BroadcastData)
    assert [(m.source, m.sequence) for m in forwarded] == [(peer_of(64), 1)]
    # the Go child heartbeats every 9 s (r2 24, 38): hp2p's 3 s timeout does not drop it
    for seq in (24, 38, 46):
        r.timers_until(at(seq) - 0.01)
        assert r.core.paths.get(connect.conn) is not None
        out = r.feed(seq)
        assert [m.code for m in sent(out, connect.conn, HeartbeatResponse)] == [8200]


# === reference-compat overlays carry a heartbeat Go acts on ======================================
def test_reference_compat_overlays_get_a_heartbeat_go_sends() -> None:
    """Go heartbeats every int(0.9 x interval) s: interval 1 means none at all (README R2 6)."""
    for interval, timeout in ((0.5, 1.5), (1.0, 3.0), (2.0, 6.0), (10.0, 15.0)):
        whole, limit = homp_heartbeat(interval, timeout, reference=True)
        go_period = int(0.9 * whole)
        assert whole >= 2
        assert go_period >= 1
        assert limit > 2 * go_period  # one late Go heartbeat never drops a path
        assert homp_heartbeat(interval, timeout) <= (whole, limit)
    assert homp_heartbeat(1.0, 3.0) == (1, 3)  # an hp2p-only overlay keeps its values


async def test_an_overlay_created_reference_compat_by_hp2p_stores_a_go_heartbeat(
    db_url: str, tmp_path: Path
) -> None:
    """``hp2p peer --create X --security reference-compat`` with hp2p's 1 s / 3 s defaults:
    the HOMS stores integers a Go joiner heartbeats with (2 / 5), and an hp2p peer that
    joins takes them as its own unless it pinned its own values."""
    app = create_app(
        HomsSettings(database=db_url, admin_key_cost=2**4, key_dir=tmp_path / "keys"),
        run_expiry_sweep=False,
    )
    async with app.router.lifespan_context(app):
        client = HomsClient(
            "http://homs",
            transport=httpx.ASGITransport(app=app),
            attempts=1,
            security="reference-compat",
        )
        try:
            await client.create_overlay(
                "gocompat", "owner", "admin", heartbeat_interval=1.0, heartbeat_timeout=3.0
            )
            overlay = await client.find_overlay("gocompat")
            # a keyless (Go-like) join: the answer carries the stored values
            m = await client.join(
                overlay, peer_id="g", address="ws://127.0.0.1:1", password="p" * 8, expires=30
            )
            assert m.trust is None  # admitted without a credential: reference-compat
            assert (m.heartbeat_interval, m.heartbeat_timeout) == (2.0, 5.0)
            joined = PeerConfig().with_overlay(m.heartbeat_interval, m.heartbeat_timeout)
            assert int(0.9 * joined.heartbeat_interval) >= 1  # what Go computes from it
        finally:
            await client.aclose()
