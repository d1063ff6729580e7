"""WebRTC peers across real NATs (issue #12): ICE with coturn's STUN and TURN.

Skipped where the WebRTC transport (``hp2p.transport.webrtc``, aiortc) cannot be imported.
Written against its command-line contract (main at a36f591, webrtc merged):

* ``hp2p peer --webrtc``: links are also WebRTC data channels, dialled by peer-id through the
  HOMS signalling WebSocket; such a peer advertises ``ws://HOMS/ws`` unless ``--advertise``
  gives a ``tcp://`` address (then TCP peers can dial it too);
* ``--ice-server URL`` (repeatable): ``stun:HOST:PORT`` or ``turn:USER:CREDENTIAL@HOST:PORT``;
  without one, host candidates only;
* ``--ice-host ADDR`` (repeatable): gather host candidates there only (default: every
  non-loopback interface, i.e. the home's ``eth0`` inside a namespace).

A peer's status does not say which ICE candidates a link uses: the relayed path is asserted
from coturn's log (data relayed both ways for an allocation, counted when it is closed).

coturn denies relaying to private ranges (``netns.DENIED_PEER_RANGES``, as docs/deploy.md
recommends): with 10/8 allowed, coturn 4.6 closed the allocations of links between two
symmetric NATs before their relay→relay check (the relay→host check's send failed first).

The topology: the public namespace (HOMS, coturn, the root peer), two cone NATs and two
symmetric NATs with two homes each (``tests/netns.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import netns
from nat_peers import DEADLINE, Tree, parents, publish_and_check
from netns import Coturn, Topology

pytestmark = [pytest.mark.slow, pytest.mark.nat]

NATS = {"coneA": "cone", "coneB": "cone", "symA": "sym", "symB": "sym"}


def _webrtc_missing() -> str | None:
    try:
        importlib.import_module("hp2p.transport.webrtc")
    except ImportError as exc:
        return f"needs the WebRTC transport (hp2p.transport.webrtc): {exc}"
    return None


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[Topology, Coturn]]:
    why = _webrtc_missing() or netns.why_unavailable() or netns.why_no_coturn()
    if why:
        pytest.skip(why)
    with netns.topology(homes_per_nat=2, nats=NATS) as topo:
        yield topo, topo.start_coturn(tmp_path)
    assert netns.namespaces_of(topo.token) == [], "namespaces left over"


def stun(turn: Coturn) -> list[str]:
    return ["--webrtc", "--ice-server", turn.stun_url()]


def stun_and_turn(turn: Coturn) -> list[str]:
    return [*stun(turn), "--ice-server", turn.turn_url()]


def home(topo: Topology, name: str) -> netns.Home:
    return next(h for h in topo.homes if h.name == name)


def test_two_peers_behind_two_cone_nats_connect_directly(
    net: tuple[Topology, Coturn], tmp_path: Path
) -> None:
    """STUN only (no relay exists): coneB-0 can only hang below coneA-0 (the root takes one
    child), so their link is a hole punched through both cone NATs (srflx candidates)."""
    topo, turn = net
    tree = Tree(topo, tmp_path)
    try:
        tree.public("root", *stun(turn), "--set", "max_children=1", "--set", "recovery_children=0")
        tree.home(home(topo, "coneA-0"), *stun(turn))
        tree.home(home(topo, "coneB-0"), *stun(turn))
        placed = parents(tree, list(tree.peers))
        assert placed == {"root": None, "coneA-0": "root", "coneB-0": "coneA-0"}, placed
        peers = list(tree.peers.values())
        publish_and_check(peers, peers, 3, "direct")
    finally:
        codes = tree.stop()
    assert all(code == 0 for code in codes.values()), codes


def test_peers_behind_symmetric_nats_connect_through_turn(
    net: tuple[Topology, Coturn], tmp_path: Path
) -> None:
    """Two symmetric NATs: no hole can be punched; the link goes through coturn's relay."""
    topo, turn = net
    tree = Tree(topo, tmp_path)
    try:
        tree.public(
            "root", *stun_and_turn(turn), "--set", "max_children=1", "--set", "recovery_children=0"
        )
        tree.home(home(topo, "symA-0"), *stun_and_turn(turn))
        tree.home(home(topo, "symB-0"), *stun_and_turn(turn))
        placed = parents(tree, list(tree.peers))
        assert placed == {"root": None, "symA-0": "root", "symB-0": "symA-0"}, placed
        peers = list(tree.peers.values())
        publish_and_check(peers, peers, 3, "relayed")
    finally:
        codes = tree.stop()
    assert all(code == 0 for code in codes.values()), codes
    relayed = turn.peer_usage(DEADLINE)  # the peers deleted their allocations when they left
    assert any(u["rp"] > 0 and u["sp"] > 0 for u in relayed), relayed


def test_a_webrtc_tree_across_four_nats_delivers_and_repairs(
    net: tuple[Topology, Coturn], tmp_path: Path
) -> None:
    """A root in public and 8 home peers behind 2 cone and 2 symmetric NATs; exactly once;
    a SIGKILLed inner peer's children re-attach and delivery goes on."""
    topo, turn = net
    tree = Tree(topo, tmp_path)
    victim = ""
    try:
        tree.public("root", *stun_and_turn(turn), "--set", "max_children=2")
        for h in topo.homes:
            tree.home(h, *stun_and_turn(turn), "--set", "max_children=2")
        assert len(tree.peers) >= 9
        peers = list(tree.peers.values())
        sources = [tree.peers["root"], tree.peers["coneA-1"], tree.peers["symB-1"]]
        publish_and_check(peers, sources, 3, "before")
        before = parents(tree, list(tree.peers))
        inner = [p for p in before.values() if p not in (None, "root")]
        assert inner, f"max_children=2 makes a deeper tree than this: {before}"
        victim = str(inner[0])
        orphans = [name for name, parent in before.items() if parent == victim]
        tree.peers[victim].proc.kill()
        tree.peers[victim].proc.wait(timeout=10)
        for name in orphans:
            event = tree.peers[name].next_event("attached", DEADLINE)
            assert event["parent"] != victim, event
        survivors = [p for p in peers if p.name != victim]
        placed = parents(tree, [p.name for p in survivors])
        assert victim not in placed.values(), placed
        sources = [s for s in sources if s.name != victim]
        publish_and_check(survivors, sources, 3, "after")
    finally:
        codes = tree.stop(killed={victim} if victim else ())
    assert all(code == 0 for code in codes.values()), codes


def test_a_mixed_tree_of_tcp_and_webrtc_peers(net: tuple[Topology, Coturn], tmp_path: Path) -> None:
    """The root speaks both (WebRTC, and TCP advertised on its public address); TCP-only
    peers in public and behind a port forward, WebRTC peers behind cone and symmetric NATs."""
    topo, turn = net
    tree = Tree(topo, tmp_path)
    try:
        ip = topo.public_ip
        both = [*stun_and_turn(turn), "--advertise", f"tcp://{ip}:7100"]
        tree.start("root", topo.public_ns, "public", "--listen", f"{ip}:7100", *both)
        tree.public("tcp-public")
        tree.forwarded_home(home(topo, "coneA-0"), 7000)
        tree.home(home(topo, "coneB-0"), *stun_and_turn(turn))
        tree.home(home(topo, "symA-0"), *stun_and_turn(turn))
        tree.home(home(topo, "symB-0"), *stun_and_turn(turn))
        placed = parents(tree, list(tree.peers))
        assert all(p is not None for n, p in placed.items() if n != "root"), placed
        peers = list(tree.peers.values())
        sources = [tree.peers["tcp-public"], tree.peers["coneA-0"], tree.peers["symB-0"]]
        publish_and_check(peers, sources, 3, "mixed")
    finally:
        codes = tree.stop()
    assert all(code == 0 for code in codes.values()), codes
