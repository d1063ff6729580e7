"""30 real ``hp2p peer`` processes with a real ``hp2p homs`` process, all on 127.0.0.1.

All join; the tree is loop-free, seen both by SCAN_TREE from the root and in the HOMS topology
built from the peers' reports; every peer receives every message of every other source (3
sources) exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hp2p.homs.launch import HomsProcess
from peer_procs import PeerProc, Procs

pytestmark = pytest.mark.slow

N_PEERS = 30
MESSAGES_PER_SOURCE = 5


@pytest.fixture
def overlay(tmp_path: Path, homs: HomsProcess) -> Iterator[tuple[HomsProcess, list[PeerProc]]]:
    procs = Procs()
    try:
        names = [f"n{i:02d}" for i in range(N_PEERS)]
        yield homs, procs.start_tree(tmp_path, homs.url, names, "thirty", deadline=120)
    finally:
        codes = procs.stop_all()
        assert all(code == 0 for code in codes.values()), codes


def _parents_from_scan(paths: list[list[dict[str, str]]], root: str) -> dict[str, str]:
    """Each SCAN_TREE path runs from the root's neighbour down to a leaf."""
    parents: dict[str, str] = {}
    for path in paths:
        above = root
        for hop in path:
            known = parents.setdefault(hop["peer_id"], above)
            assert known == above, f"{hop['peer_id']} has two parents: {known} and {above}"
            above = hop["peer_id"]
    return parents


def _assert_tree(parents: dict[str, str], root: str, everyone: set[str]) -> int:
    """Every peer but the root has a parent, following parents reaches the root; max depth."""
    assert set(parents) == everyone - {root}
    deepest = 0
    for peer in parents:
        hops, node = 0, peer
        while node != root:
            node = parents[node]
            hops += 1
            assert hops <= len(everyone), f"loop above {peer}"
        deepest = max(deepest, hops)
    return deepest


def test_thirty_peers_form_a_loop_free_tree_and_deliver_exactly_once(
    overlay: tuple[HomsProcess, list[PeerProc]],
) -> None:
    homs, peers = overlay
    names = {p.name for p in peers}
    assert len(names) == N_PEERS
    assert peers[0].joined is not None
    assert peers[0].joined["parent"] is None
    assert all(p.joined and p.joined["parent"] in names for p in peers[1:])
    tickets = [p.joined["ticket"] for p in peers if p.joined]
    assert sorted(tickets) == list(range(1, N_PEERS + 1))

    # --- the tree as SCAN_TREE sees it from the root -------------------------------------
    root = peers[0]
    root.command("scan")
    scan = root.next_event({"scan"}, deadline=30)
    parents = _parents_from_scan(scan["paths"], root.name)
    depth = _assert_tree(parents, root.name, names)
    assert depth <= 5, f"a 30-peer tree with max_children 4 should be shallow, got depth {depth}"
    for peer in peers[1:]:
        assert peer.joined is not None
        # ticket rule along every primary path: the parent is older than the child
        parent = next(p for p in peers if p.name == parents[peer.name])
        assert parent.joined is not None
        assert parent.joined["ticket"] < peer.joined["ticket"]

    # --- the same tree in the HOMS, from the reports ---------------------------------------
    overlay_id = root.joined["overlay_id"] if root.joined else ""
    edges: set[frozenset[str]] = set()
    end = time.monotonic() + 30
    while time.monotonic() < end:  # reports are asynchronous: poll with a deadline
        topo = httpx.get(
            f"{homs.url}/api/OverlayTopology", params={"overlay_id": overlay_id}, timeout=5
        ).json()
        edges = {
            frozenset((link["source"], link["target"])) for link in topo["links"] if link["primary"]
        }
        if edges == {frozenset((c, p)) for c, p in parents.items()}:
            break
        time.sleep(0.2)  # polling interval of a bounded loop, not a synchronisation point
    assert edges == {frozenset((c, p)) for c, p in parents.items()}

    # --- 3 sources, every message to every other peer exactly once --------------------------
    sources = [peers[0], peers[N_PEERS // 2], peers[-1]]
    published: set[tuple[str, int]] = set()
    for i in range(MESSAGES_PER_SOURCE):
        for src in sources:
            src.command(f"publish {src.name} message {i}")
    for src in sources:
        for _ in range(MESSAGES_PER_SOURCE):
            event = src.next_event({"published"}, deadline=30)
            published.add((event["source"], event["sequence"]))
    assert len(published) == 3 * MESSAGES_PER_SOURCE
    for peer in peers:
        expected = {key for key in published if key[0] != peer.name}
        got: Counter[tuple[str, int]] = Counter()
        while set(got) != expected:
            event = peer.next_event({"deliver"}, deadline=30)
            got[(event["source"], event["sequence"])] += 1
        assert max(got.values()) == 1, f"{peer.name} got duplicates: {got}"
        peer.command("status")
        status = peer.next_event({"status"}, deadline=30)
        assert status["core"]["delivered"] == len(expected), peer.name
        assert status["node"]["frames_refused"] == 0
        assert status["state"] == "attached"
        late = [e for e in peer.seen if e["event"] == "deliver"]
        assert not late, f"{peer.name}: deliveries beyond the expected ones: {late}"
