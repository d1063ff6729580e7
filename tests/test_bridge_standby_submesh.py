"""A SubMesh standby bridge that takes over re-publishes nothing the SubMesh already holds.

Real processes on 127.0.0.1: a CoreTree publisher, an active bridge ``b1`` feeding SubMesh
``blocks``, a standby ``b2`` (``--standby-for b1``) and one SubMesh member counting the objects
it gets. Messages are published, the standby starts (so its CoreTree peer
may get them later, when it re-attaches), ``b1`` is SIGKILLed, more are published: every CoreTree
message must be exactly one SubMesh object (docs/sub-overlays.md, "Failover of a SubMesh
source", step 5).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from hp2p.homs.launch import HomsProcess
from peer_procs import CORE_ADMIN_KEY, BridgeProc, MeshProc, PeerProc, Procs

pytestmark = pytest.mark.slow

_ROOT_SETTINGS = ("--set", f"admin_key={CORE_ADMIN_KEY}", "--set", "max_children=1")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _standby(tmp_path: Path, homs: HomsProcess, core: str) -> BridgeProc:
    (tmp_path / "standby").mkdir()
    standby = BridgeProc(
        tmp_path / "standby",
        homs.url,
        *("--core", core, "--id", "b2", "--standby-for", "b1", "--submesh", "blocks"),
    )
    standby.next_event("joined", 90)
    return standby


@pytest.mark.parametrize("late", [False, True], ids=["standby-first", "standby-late"])
def test_after_a_takeover_every_core_message_is_one_submesh_object(
    tmp_path: Path, homs: HomsProcess, late: bool
) -> None:
    procs = Procs()
    standby: BridgeProc | None = None
    bridges: list[BridgeProc] = []
    try:
        # the publisher takes one child (b1), so b2 hangs under b1 in the CoreTree and has to
        # re-attach when b1 dies: its new parent may then hand it messages it never had
        root = PeerProc(tmp_path, homs.url, "c00", "--create", "chain", *_ROOT_SETTINGS)
        procs.append(root)
        root.wait_joined()
        active = BridgeProc(
            tmp_path, homs.url, "--core", root.overlay_id, "--id", "b1", "--submesh", "blocks"
        )
        bridges.append(active)
        blocks = active.next_event("joined", 90)["targets"][0]["overlay_id"]
        if not late:
            standby = _standby(tmp_path, homs, root.overlay_id)
        member = MeshProc(tmp_path, homs.url, "m0", "--join", blocks)
        procs.append(member)
        member.wait_joined()
        before = ["message 1", "message 2"]
        for text in before:
            root.command(f"publish {text}")
        for _ in before:
            member.next_event("delivered", 30)
        if late:
            standby = _standby(tmp_path, homs, root.overlay_id)
        assert standby is not None
        active.proc.kill()
        took_over = standby.next_event("active", 60)
        assert took_over["replayed"] == 0, took_over
        after = ["message 3", "message 4"]
        for text in after:
            root.command(f"publish {text}")
        marker = _sha(after[-1])
        got = []
        while not got or got[-1]["sha256"] != marker:  # bounded: next_event has a deadline
            got.append(member.next_event("delivered", 60))
        delivered = [e for e in member.seen if e["event"] == "delivered"]
        assert not delivered
        seen = Counter(e["sha256"] for e in got)
        seen.update(_sha(t) for t in before)
        assert seen == Counter(_sha(t) for t in before + after), got
        forwarded = [standby.next_event("forwarded", 30)]
        while forwarded[-1]["core_sequence"] != 4:  # bounded: next_event has a deadline
            forwarded.append(standby.next_event("forwarded", 30))
        assert all(not e["replay"] for e in forwarded), forwarded
        assert sorted(e["core_sequence"] for e in forwarded) == [3, 4], forwarded
    finally:
        codes = procs.stop_all()
        for bridge in [*bridges, *([standby] if standby else [])]:
            bridge.stop()
    assert all(code == 0 for code in codes.values()), codes
