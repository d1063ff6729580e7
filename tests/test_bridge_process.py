"""The R3 bridge with real processes on 127.0.0.1: a CoreTree (``hp2p peer`` processes + the
bridge), a SubTree (the bridge's source + ``hp2p peer --join``) and a SubMesh (the bridge's
source + SubMesh peers); sizes below. Every CoreTree message reaches every sub-overlay peer
exactly once; a late SubMesh joiner gets the history; the HOMS shows the composition.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from hp2p.homs.launch import HomsProcess
from peer_procs import BridgeProc, MeshProc, PeerProc, Procs

pytestmark = pytest.mark.slow

# The sizes: CoreTree 10 (9 peers + the bridge), SubTree 10 (9 + the bridge's source),
# SubMesh 20, plus a late SubMesh joiner: 42 processes, ~35 s on a quiet 2-core machine (137 s
# under heavy load). HP2P_SMALL_SUBOVERLAYS=1 runs half the sizes (~10 s) for quick iteration.
SMALL = os.environ.get("HP2P_SMALL_SUBOVERLAYS") == "1"
CORE_PEERS = 4 if SMALL else 9  # + the bridge
SUBTREE_PEERS = 4 if SMALL else 9  # + the bridge's SubTree source
SUBMESH_PEERS = 8 if SMALL else 20
SOURCES = 3
PER_SOURCE = 4


def _deliveries(peer: PeerProc, count: int, deadline: float) -> list[dict[str, Any]]:
    return [peer.next_event({"deliver"}, deadline) for _ in range(count)]


def test_core_tree_feeds_a_subtree_and_a_submesh_exactly_once(
    tmp_path: Path, homs: HomsProcess
) -> None:
    procs = Procs()
    bridge: BridgeProc | None = None
    try:
        names = [f"c{i:02d}" for i in range(CORE_PEERS)]
        core = procs.start_tree(tmp_path, homs.url, names, "chain")
        core_id = core[0].overlay_id
        bridge = BridgeProc(
            tmp_path,
            homs.url,
            "--core",
            core_id,
            "--id",
            "b1",
            "--subtree",
            "live",
            "--submesh",
            "blocks",
        )
        joined = bridge.next_event("joined", 90)
        ids = {t["title"]: t["overlay_id"] for t in joined["targets"]}
        tree_peers = [
            PeerProc(tmp_path, homs.url, f"t{i:02d}", "--join", ids["live"])
            for i in range(SUBTREE_PEERS)
        ]
        mesh_peers = [
            MeshProc(tmp_path, homs.url, f"m{i:02d}", "--join", ids["blocks"])
            for i in range(SUBMESH_PEERS)
        ]
        procs.extend(tree_peers)
        procs.extend(mesh_peers)
        for p in [*tree_peers, *mesh_peers]:
            p.wait_joined(deadline=120)

        texts = []
        for s in range(SOURCES):
            for k in range(PER_SOURCE):
                text = f"core message {k} from c{s:02d}"
                texts.append(text)
                core[s].command(f"publish {text}")
        total = len(texts)
        for _ in range(2 * total):  # each message is forwarded to both targets
            bridge.next_event("forwarded", 60)

        for p in tree_peers:
            got = _deliveries(p, total, 60)
            keys = Counter((d["source"], d["sequence"]) for d in got)
            assert set(keys) == {("b1-live", n) for n in range(1, total + 1)}, p.name
            assert max(keys.values()) == 1
        wanted = Counter(hashlib.sha256(t.encode()).hexdigest() for t in texts)
        for p in mesh_peers:
            got = [p.next_event({"delivered"}, 60) for _ in range(total)]
            assert Counter(d["sha256"] for d in got) == wanted, p.name
        # nothing more arrives: a status round trip comes back with no extra delivery before it
        for p in [*tree_peers[:3], *mesh_peers[:3]]:
            p.command("status")
            p.next_event({"status"}, 30)
            assert not [e for e in p.seen if e["event"] in ("deliver", "delivered")], p.name

        # a SubTree peer may not publish: a clear error, nothing sent, the peer keeps running
        tree_peers[0].command("publish intruder")
        error = tree_peers[0].next_event({"error"}, 30)
        assert "only the source peer 'b1-live'" in error["reason"]
        tree_peers[0].command("status")
        assert tree_peers[0].next_event({"status"}, 30)["state"] == "attached"

        late = MeshProc(tmp_path, homs.url, "late", "--join", ids["blocks"])
        procs.append(late)
        # the bridge recorded its SubMesh source's manifest key when it created the SubMesh
        recorded = httpx.get(
            f"{homs.url}/api/OverlayStatus", params={"overlay_id": ids["blocks"]}, timeout=10
        ).json()["overlay"]["source-key"]
        assert recorded.startswith("ed25519:")
        assert late.wait_joined()["source_key"] == recorded
        got = [late.next_event({"delivered"}, 60) for _ in range(total)]
        assert Counter(d["sha256"] for d in got) == wanted
        late.command("status")
        counters = late.next_event({"status"}, 30)["mesh"]["counters"]
        assert counters["manifests_verified"] == total
        assert counters["manifests_unverified"] == 0

        # the HOMS knows the composition: each sub-overlay names its parent and source
        for title, kind in (("live", "tree"), ("blocks", "mesh")):
            status = httpx.get(
                f"{homs.url}/api/OverlayStatus", params={"overlay_id": ids[title]}, timeout=10
            ).json()["overlay"]
            assert status["type"] == "sub"
            assert status["sub-type"] == kind
            assert status["parent-overlay-id"] == core_id
            assert status["source-peer-id"] == f"b1-{title}"
    finally:
        codes = procs.stop_all()
        bridge_code = bridge.stop() if bridge is not None else 0
    assert all(code == 0 for code in codes.values()), codes
    assert bridge_code == 0


def test_a_standby_bridge_takes_over_and_the_submesh_catches_up(
    tmp_path: Path, homs: HomsProcess
) -> None:
    procs = Procs()
    bridges: list[BridgeProc] = []
    try:
        root, other = procs.start_tree(tmp_path, homs.url, ["c00", "c01"], "chain")
        core_id = root.overlay_id
        active = BridgeProc(
            tmp_path, homs.url, "--core", core_id, "--id", "b1", "--submesh", "blocks"
        )
        bridges.append(active)
        blocks = active.next_event("joined", 90)["targets"][0]["overlay_id"]
        (tmp_path / "standby").mkdir()
        standby = BridgeProc(
            tmp_path / "standby",
            homs.url,
            "--core",
            core_id,
            "--id",
            "b2",
            "--standby-for",
            "b1",
            "--submesh",
            "blocks",
            "--takeover-after",
            "1",
        )
        bridges.append(standby)
        standby.next_event("joined", 90)
        mesh = [MeshProc(tmp_path, homs.url, f"m{i}", "--join", blocks) for i in range(5)]
        procs.extend(mesh)
        for p in mesh:
            p.wait_joined()
        texts = [f"before {i}" for i in range(3)]
        for t in texts:
            root.command(f"publish {t}")
        for _ in texts:
            active.next_event("forwarded", 30)
        for p in mesh:
            for _ in texts:
                p.next_event({"delivered"}, 30)
        active.proc.kill()  # the active bridge dies with the SubMesh source in it
        during = [f"during {i}" for i in range(2)]
        for t in during:
            other.command(f"publish {t}")
        took_over = standby.next_event("active", 60)
        assert took_over["replayed"] == len(during)  # only what the SubMesh lacked
        after = [f"after {i}" for i in range(2)]
        for t in after:
            other.command(f"publish {t}")
        everything = texts + during + after
        wanted = Counter(hashlib.sha256(t.encode()).hexdigest() for t in everything)
        for p in mesh:
            got = [p.next_event({"delivered"}, 60) for _ in range(len(during) + len(after))]
            early = [e for e in p.seen if e["event"] == "delivered"]
            assert not early
            seen = Counter(d["sha256"] for d in got)
            seen.update(hashlib.sha256(t.encode()).hexdigest() for t in texts)
            assert seen == wanted, p.name
    finally:
        codes = procs.stop_all()
        for b in bridges:
            b.stop()
    assert all(code == 0 for code in codes.values()), codes


def test_the_running_line_names_the_bridge_core_and_each_target(
    tmp_path: Path, homs: HomsProcess
) -> None:
    """Without --json-events the bridge prints one readable line, not a Python dict."""
    import subprocess
    import sys

    from peer_procs import CORE_ADMIN_KEY, readline, stop_process

    procs = Procs()
    args = [sys.executable, "-m", "hp2p", "bridge", "--homs", homs.url, "--id", "b1"]
    args += ["--core-admin-key", CORE_ADMIN_KEY, "--subtree", "live:iot", "--submesh", "blocks"]
    bridge: subprocess.Popen[str] | None = None
    try:
        (root,) = procs.start_tree(tmp_path, homs.url, ["c00"], "chain")
        bridge = subprocess.Popen(
            [*args, "--core", "chain"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = readline(bridge, 90).rstrip("\n")
        assert line.startswith(f"hp2p bridge: running b1 (active) on CoreTree {root.overlay_id}; ")
        live, blocks = line.split("; ")[1:]
        assert live.startswith("SubTree 'live' ")
        assert live.endswith(" (source b1-live, app-ids iot)")
        assert blocks.startswith("SubMesh 'blocks' ")
        assert blocks.endswith(" (source b1-blocks, every message)")
        assert "{" not in line
    finally:
        code = stop_process(bridge) if bridge is not None else 0
        procs.stop_all()
    assert code == 0
