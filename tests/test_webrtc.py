"""hp2p peers over WebRTC data channels (hp2p.transport.webrtc), signalled through a real HOMS.

The HOMS runs as a process (its signalling WebSocket is what dials a WebRTC peer); the peers
run in this process with ``webrtc`` set, ICE host candidates on 127.0.0.1 only and no ICE
server, so every packet stays on loopback. Peers advertise only the HOMS's ``ws://`` URL: no
peer can reach another over TCP, every link is a data channel. Nothing waits by sleeping:
every step waits on a delivery, an event or a state with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hp2p.homs.launch import HomsProcess
from hp2p.peer.config import PeerConfig
from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings
from node_helpers import collect

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("aiortc") is None,
    reason="aiortc is not installed: pip install 'hp2p[webrtc]' (make test installs it)",
)

FAST = PeerConfig(heartbeat_interval=0.5, heartbeat_timeout=2.0, scan_timeout=1.0)
DEADLINE = 20.0


@pytest.fixture(scope="module")
def homs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomsProcess]:
    proc = HomsProcess(tmp_path_factory.mktemp("webrtc"), "sqlite:///webrtc.db")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


async def start(
    homs: HomsProcess, *, webrtc: bool = True, config: PeerConfig = FAST, **settings: Any
) -> PeerNode:
    settings.setdefault("join_timeout", DEADLINE)
    settings.setdefault("leave_timeout", 3.0)
    if webrtc:
        settings.setdefault("ice_hosts", "127.0.0.1")
    node = PeerNode(NodeSettings(homs=homs.url, webrtc=webrtc, **settings), config)
    await node.start()
    return node


async def close_all(nodes: list[PeerNode]) -> None:
    await asyncio.gather(*(n.close() for n in reversed(nodes)), return_exceptions=True)


async def assert_exactly_once(nodes: list[PeerNode], sources: list[PeerNode], rounds: int) -> None:
    subs = [n.subscribe() for n in nodes]
    for round_ in range(rounds):
        for src in sources:
            src.publish(f"{src.peer_id}:{round_}".encode())
    expected = {(s.peer_id, seq) for s in sources for seq in range(1, rounds + 1)}
    for node, sub in zip(nodes, subs, strict=True):
        others = {k for k in expected if k[0] != node.peer_id}
        got = await collect(sub, len(others), within=DEADLINE)
        keys = Counter((d.source, d.sequence) for d in got)
        assert set(keys) == others, node.peer_id
        assert max(keys.values()) == 1
        assert sub.get_nowait() is None


def webrtc_links(node: PeerNode) -> list[Any]:
    from hp2p.transport.webrtc import WebRtcLink

    return [link for link in node._links.values() if isinstance(link, WebRtcLink)]


async def test_two_webrtc_peers_exchange_messages(homs: HomsProcess) -> None:
    nodes = [await start(homs, create="rtc-two", peer_id="w0")]
    try:
        assert nodes[0].address == f"ws://127.0.0.1:{homs.port}/ws"
        nodes.append(await start(homs, join="rtc-two", peer_id="w1"))
        assert all(n.state == "attached" for n in nodes)
        assert webrtc_links(nodes[0])
        assert webrtc_links(nodes[1])
        await assert_exactly_once(nodes, nodes, rounds=3)
        assert nodes[1].connect_times or nodes[0].connect_times
    finally:
        await close_all(nodes)


def test_a_tcp_peer_does_not_import_aiortc() -> None:
    code = "import sys, hp2p.peer.node, hp2p.peer.cli; print('aiortc' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


class Events:
    """A peer's JSON events, by kind, each kind with an asyncio.Event to wait on."""

    def __init__(self) -> None:
        self.seen: dict[str, list[dict[str, Any]]] = {}
        self.flags: dict[str, asyncio.Event] = {}

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        self.seen.setdefault(kind, []).append(fields)
        self.flag(kind).set()

    def flag(self, kind: str) -> asyncio.Event:
        return self.flags.setdefault(kind, asyncio.Event())

    async def wait(self, kind: str) -> None:
        await asyncio.wait_for(self.flag(kind).wait(), DEADLINE)


async def test_five_webrtc_only_peers_deliver_every_message_once(homs: HomsProcess) -> None:
    nodes = [await start(homs, create="rtc-five", peer_id="f0")]
    try:
        for i in range(1, 5):
            nodes.append(await start(homs, join="rtc-five", peer_id=f"f{i}"))
        assert all(n.address.startswith("ws://") for n in nodes)
        assert all(n.state == "attached" for n in nodes)
        # no TCP between them: every link of every peer is a data channel
        for node in nodes:
            assert node._links
            assert len(webrtc_links(node)) == len(node._links), node.peer_id
        await assert_exactly_once(nodes, [nodes[0], nodes[2], nodes[4]], rounds=4)
        assert all(n.stats.frames_refused == 0 for n in nodes)
    finally:
        await close_all(nodes)


async def test_a_mixed_tree_of_tcp_and_webrtc_peers(homs: HomsProcess) -> None:
    from hp2p.homs.launch import free_port

    port = free_port()
    both = {
        "listen": f"127.0.0.1:{port}",
        "advertise": f"tcp://127.0.0.1:{port}",  # reached over TCP first, WebRTC as fallback
    }
    nodes = [await start(homs, webrtc=False, create="rtc-mixed", peer_id="m0")]
    try:
        nodes.append(await start(homs, join="rtc-mixed", peer_id="m1", **both))
        nodes.append(await start(homs, join="rtc-mixed", peer_id="m2"))  # ws:// only
        nodes.append(await start(homs, join="rtc-mixed", peer_id="m3"))  # ws:// only
        nodes.append(await start(homs, webrtc=False, join="rtc-mixed", peer_id="m4"))
        assert all(n.state == "attached" for n in nodes)
        assert nodes[1].address.startswith("tcp://")
        assert nodes[2].address.startswith("ws://")
        total_rtc = sum(len(webrtc_links(n)) for n in nodes)
        total = sum(len(n._links) for n in nodes)
        assert 0 < total_rtc < total  # both kinds of link carry the tree
        await assert_exactly_once(nodes, [nodes[0], nodes[2], nodes[4]], rounds=3)
    finally:
        await close_all(nodes)


async def test_a_malformed_data_channel_message_closes_the_link_only(homs: HomsProcess) -> None:
    nodes = [await start(homs, create="rtc-bad", peer_id="b0")]
    try:
        nodes.append(await start(homs, join="rtc-bad", peer_id="b1"))
        nodes.append(await start(homs, join="rtc-bad", peer_id="b2"))
        root = nodes[0]
        child = next(n for n in nodes[1:] if n.core is not None and n.core.parent == "b0")
        events = Events()
        child.on_event = events
        link = next(
            link for link in webrtc_links(root) if link.remote == f"webrtc://{child.peer_id}"
        )
        assert link._channel is not None
        link._channel.send(b"\x01 this is not an R2 frame")
        await events.wait("error")
        assert child.stats.wire_errors == 1
        assert "malformed R2" in events.seen["error"][0]["reason"]
        await events.wait("attached")  # the child re-attached to the tree
        await assert_exactly_once(nodes, [root, child], rounds=2)
    finally:
        await close_all(nodes)


async def test_a_vanished_remote_is_detected_and_the_tree_repairs(homs: HomsProcess) -> None:
    narrow = dataclasses.replace(FAST, max_children=2)  # a tree with depth: the victim has a child
    nodes = [await start(homs, config=narrow, create="rtc-gone", peer_id="g0")]
    try:
        for i in range(1, 5):
            nodes.append(await start(homs, config=narrow, join="rtc-gone", peer_id=f"g{i}"))
        # a victim with a child of its own: its child must repair
        victim = next(
            n
            for n in nodes[1:]
            if any(m.core is not None and m.core.parent == n.peer_id for m in nodes)
        )
        orphans = [m for m in nodes if m.core is not None and m.core.parent == victim.peer_id]
        watched = [m for m in nodes if m is not victim]
        recorders = []
        for node in watched:
            rec = Events()
            node.on_event = rec
            recorders.append(rec)
        # the victim goes silent at once: no RELEASE, its peer connections just close
        victim._stopped = True
        for link in webrtc_links(victim):
            await link._pc.close()
        for node, rec in zip(watched, recorders, strict=True):
            if node in orphans:
                await rec.wait("peer_lost")
                await rec.wait("attached")
        survivors = [n for n in nodes if n is not victim]
        await assert_exactly_once(survivors, [survivors[0], orphans[0]], rounds=2)
    finally:
        await close_all(nodes)


async def test_a_reference_compat_overlay_signals_with_the_password(homs: HomsProcess) -> None:
    nodes = [await start(homs, create="rtc-compat", peer_id="c0", security="reference-compat")]
    try:
        nodes.append(await start(homs, join="rtc-compat", peer_id="c1"))
        assert nodes[1].homs.membership is not None
        assert nodes[1].homs.membership.trust is None or not nodes[1].homs.membership.trust.required
        assert webrtc_links(nodes[1])
        await assert_exactly_once(nodes, nodes, rounds=2)
    finally:
        await close_all(nodes)


class FakeChannel:
    """What WebRtcLink uses of an aiortc data channel: state, buffered amount, send, on."""

    readyState = "open"  # noqa: N815 (aiortc's name)

    def __init__(self) -> None:
        self.bufferedAmount = 0
        self.sent: list[bytes] = []
        self.handlers: dict[str, Any] = {}

    def on(self, name: str) -> Any:
        def register(fn: Any) -> Any:
            self.handlers[name] = fn
            return fn

        return register

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.bufferedAmount += len(data)


class FakePeerConnection(FakeChannel):
    connectionState = "connected"  # noqa: N815 (aiortc's name)

    async def close(self) -> None:
        self.connectionState = "closed"


async def test_send_frame_refuses_and_counts_beyond_the_buffered_bound() -> None:
    from hp2p.transport.base import LinkEvents
    from hp2p.transport.webrtc import WebRtcLink

    closed: list[object] = []
    events = LinkEvents(on_message=lambda _l, _m: None, on_closed=lambda lk, _e: closed.append(lk))
    link = WebRtcLink(FakePeerConnection(), "webrtc://x", events, max_queue_bytes=100)  # type: ignore[arg-type]
    channel = FakeChannel()
    link.attach(channel)  # type: ignore[arg-type]
    assert link.send_frame(b"a" * 60)
    assert not link.send_frame(b"b" * 60)  # 60 buffered + 60 > 100
    assert link.stats.overflow_drops == 1
    assert link.stats.frames_sent == 1
    channel.bufferedAmount = 0  # the channel drained
    assert link.send_frame(b"c" * 60)
    link.close()
    assert not link.send_frame(b"d")  # closing: refused, not counted as overflow
    assert link.stats.overflow_drops == 1
    channel.handlers["close"]()
    assert closed == [link]
    assert link.closed


def test_ice_server_settings() -> None:
    from hp2p.peer.settings import SettingsError
    from hp2p.transport.ice import IceServer, parse_ice_server

    assert parse_ice_server("stun:127.0.0.1:3478") == IceServer("stun:127.0.0.1:3478")
    assert parse_ice_server("turn:alice:s%40cret@127.0.0.1:3478") == IceServer(
        "turn:127.0.0.1:3478", "alice", "s@cret"
    )
    for bad in ("http://x", "stun:u:p@127.0.0.1:3478", "turn:alice@127.0.0.1:3478"):
        with pytest.raises(ValueError, match=r"ICE|STUN|TURN"):
            parse_ice_server(bad)
    with pytest.raises(SettingsError, match="ice_servers"):
        NodeSettings(join="x", webrtc=True, ice_servers="stun:")
    with pytest.raises(SettingsError, match="--webrtc"):
        NodeSettings(join="x", ice_servers="stun:127.0.0.1:3478")
    ok = NodeSettings(join="x", webrtc=True, advertise="ws://127.0.0.1:8081/ws")
    assert ok.advertise == "ws://127.0.0.1:8081/ws"


# --- real processes: `hp2p peer --webrtc` ------------------------------------------------------

RTC_ARGS = ("--webrtc", "--ice-host", "127.0.0.1")
FAST_ARGS = ("--set", "heartbeat_interval=0.5", "--set", "heartbeat_timeout=2")
CHAIN = ("--set", "max_children=1")  # r0 -> r1 -> r2 -> r3: killing r1 orphans r2


@pytest.mark.slow
def test_peer_processes_over_webrtc_survive_a_killed_peer(
    tmp_path: Path, homs: HomsProcess
) -> None:
    """A tree of ``hp2p peer --webrtc`` processes; one is killed (SIGKILL: its peer
    connections vanish without a word) and the others still get every message once."""
    from peer_procs import PeerProc, Procs

    root = PeerProc(
        tmp_path, homs.url, "r0", "--create", "rtc-procs", *RTC_ARGS, *FAST_ARGS, *CHAIN
    )
    procs = [root]
    victim: PeerProc | None = None
    try:
        assert str(root.wait_joined()["r2"]).startswith("ws://")
        for i in range(1, 4):
            args = ("--join", "rtc-procs", *RTC_ARGS, *CHAIN)
            proc = PeerProc(tmp_path, homs.url, f"r{i}", *args)
            procs.append(proc)
            proc.wait_joined()
        root.command("publish before")
        for proc in procs[1:]:
            assert proc.next_event({"deliver"}, DEADLINE)["sequence"] == 1
        victim = procs[1]
        victim.proc.kill()
        victim.proc.wait(timeout=30)
        survivors = [p for p in procs if p is not victim]
        lost = root.next_event({"peer_lost"}, DEADLINE)  # its link to the victim closed
        assert lost["peer"] == "r1"
        repaired = procs[2].next_event({"attached"}, DEADLINE)  # the orphan re-attached
        assert repaired["parent"] != "r1"
        root.command("publish after")
        for proc in survivors[1:]:
            got = proc.next_event({"deliver"}, DEADLINE)
            assert (got["source"], got["sequence"]) == ("r0", 2), proc.name
    finally:
        alive = [p for p in procs if p is not victim]
        for p in alive:
            p.leave()
        codes = Procs(alive).stop_all()
    assert all(code == 0 for code in codes.values()), codes


@pytest.mark.slow
def test_a_submesh_over_webrtc_processes(tmp_path: Path, homs: HomsProcess) -> None:
    """SubMesh peers (``hp2p peer --webrtc`` on a SubMesh) pull a 256 KiB object over data
    channels; the pieces (32 KiB) each fit one data-channel message."""
    from peer_procs import MeshProc, Procs, create_core_overlay

    core = create_core_overlay(homs.url, "core-for-rtc-mesh")
    source = MeshProc(
        tmp_path, homs.url, "src", "--create", "rtc-blocks", "--parent", core, *RTC_ARGS
    )
    procs = [source]
    try:
        source.wait_joined()
        for i in range(3):
            proc = MeshProc(tmp_path, homs.url, f"m{i}", "--join", "rtc-blocks", *RTC_ARGS)
            procs.append(proc)
            proc.wait_joined()
        source.command(f"publish-random {256 * 1024} 7")
        published = source.next_event({"published"}, 30)
        for proc in procs[1:]:
            got = proc.next_event({"delivered"}, 60)
            assert got["sha256"] == published["sha256"], proc.name
    finally:
        for p in procs:
            p.leave()
        codes = Procs(procs).stop_all()
    assert all(code == 0 for code in codes.values()), codes


async def test_a_webrtc_submesh_refuses_pieces_larger_than_one_message() -> None:
    from hp2p.peer.mesh_config import MeshConfig
    from hp2p.peer.mesh_node import MeshNode, MeshNodeError, MeshSettings

    config = MeshConfig(piece_size=512 * 1024)
    node = MeshNode(MeshSettings(join="x", webrtc=True, config=config))
    with pytest.raises(MeshNodeError, match="piece_size"):
        await node.start()


async def test_the_signalling_client_reopens_a_dropped_socket_and_gives_up_bounded() -> None:
    """The socket is reopened and the hello repeated after the HOMS drops it; with nobody
    listening any more the client stops after its bounded attempts, with the reason."""
    from websockets.asyncio.server import ServerConnection, serve

    from hp2p.peer.signalling_client import Identity, SignallingClient

    hellos: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sockets = 0

    async def handler(conn: ServerConnection) -> None:
        nonlocal sockets
        sockets += 1
        hellos.put_nowait(json.loads(await conn.recv()))
        if sockets == 1:
            await conn.close()  # the first socket is dropped at once
            return
        await conn.wait_closed()

    me = Identity("ov", "p1", "pw")
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = SignallingClient(
            f"ws://127.0.0.1:{port}/ws",
            lambda: me,
            on_relay=lambda _m: None,
            backoff=0.01,
            max_reconnects=2,
        )
        await client.start(5.0)
        first = await asyncio.wait_for(hellos.get(), 5.0)
        second = await asyncio.wait_for(hellos.get(), 5.0)  # reopened, hello again
        expected = {"action": "hello", "peer-id": "p1", "overlay-id": "ov", "password": "pw"}
        assert first == second == expected
        assert client.stats.connects == 2
        server.close(close_connections=True)
    await asyncio.wait_for(client.stopped.wait(), 10.0)  # nobody listens: it gave up
    assert client.failure is not None
    assert not await client.send({"toid": "x"})
    await client.close()
