"""hp2p peers over WebRTC data channels (hp2p.transport.webrtc), signalled through a real HOMS.

The HOMS runs as a process (its signalling WebSocket is what dials a WebRTC peer); the peers
run in this process with ``webrtc`` set, ICE host candidates on 127.0.0.1 only and no ICE
server, so every packet stays on loopback. Peers advertise only the HOMS's ``ws://`` URL: no
peer can reach another over TCP, every link is a data channel. Nothing waits by sleeping:
every step waits on a delivery, an event or a state with a deadline.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
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


async def start(homs: HomsProcess, *, webrtc: bool = True, **settings: Any) -> PeerNode:
    settings.setdefault("join_timeout", DEADLINE)
    settings.setdefault("leave_timeout", 3.0)
    if webrtc:
        settings.setdefault("ice_hosts", "127.0.0.1")
    node = PeerNode(NodeSettings(homs=homs.url, webrtc=webrtc, **settings), FAST)
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
