"""A SubTree member outlives its source (real processes on 127.0.0.1).

A HOMS, two CoreTree peers, a bridge (the SubTree's source ``b1-live``) and a member. The
bridge is SIGKILLed and no standby exists: the member reports the source unreachable (events
and status) and keeps running past the point where it used to give up (exit status 1 once
its re-attach budget was spent; the budget is made small here so that point comes while the
HOMS still lists the dead source). Once the HOMS has expired the dead source, the member
holds the SubTree's root place; the bridge started again (the same source peer-id) attaches
its source there, and the member receives what it publishes.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from hp2p.homs.launch import HomsProcess
from peer_procs import BridgeProc, PeerProc, Procs

pytestmark = pytest.mark.slow

KEY = "subtree-source-loss-group-key"
#: give up re-attaching within seconds (the HOMS lists the dead source for 30 s)
SMALL_BUDGET = ("recovery_attempts=1", "join_attempts=1", "rejoins=1", "backoff_max=1")


def _wait_until_gone(homs: HomsProcess, overlay_id: str, peer_id: str) -> None:
    """Bounded poll of the HOMS until ``peer_id`` is no member of ``overlay_id`` any more."""
    end = time.monotonic() + 90
    while True:
        status = httpx.get(
            f"{homs.url}/api/OverlayStatus", params={"overlay_id": overlay_id}, timeout=10
        ).json()
        if peer_id not in {p["peer-id"] for p in status["peers"]}:
            return
        assert time.monotonic() < end, f"the HOMS still lists {peer_id}"
        time.sleep(0.2)  # polling interval of a bounded loop


def test_a_subtree_member_waits_for_its_source_and_resumes_with_a_new_one(
    tmp_path: Path, homs: HomsProcess
) -> None:
    procs = Procs()
    bridges: list[BridgeProc] = []
    try:
        root, _ = procs.start_tree(tmp_path, homs.url, ["c00", "c01"], "chain")
        common = ["--core", root.overlay_id, "--subtree", "live", "--group-key", KEY]
        common += ["--takeover-after", "1"]
        active = BridgeProc(tmp_path, homs.url, *common, "--id", "b1")
        bridges.append(active)
        live = active.next_event("joined", 90)["targets"][0]["overlay_id"]
        settings = [arg for pair in SMALL_BUDGET for arg in ("--set", pair)]
        member = PeerProc(tmp_path, homs.url, "m1", "--join", live, *settings)
        procs.append(member)
        assert member.wait_joined()["parent"] == "b1-live"
        # Nothing is published before the loss: the bridge started again numbers its source's
        # messages from 1, and a member drops the numbers it has already had (a standby
        # bridge continues the numbering instead; docs/sub-overlays.md).

        active.proc.kill()  # SIGKILL: no RELEASE, no HOMP leave
        active.proc.wait(timeout=30)
        lost = member.next_event("source_unreachable", 60)
        assert lost["source"] == "b1-live"
        waiting = member.next_event("waiting_for_source", 90)  # where it used to exit 1
        assert waiting["source"] == "b1-live"
        assert waiting["retry_in"] == 1.0
        member.command("status")
        status = member.next_event("status", 30)
        assert member.proc.poll() is None
        assert status["source_lost_at"] is not None

        # The HOMS expires the dead source (its 30 s HOMP expiry); the member, still trying,
        # is then the oldest live member and takes the root's place until a source returns.
        attached = member.next_event("attached", 120)
        assert attached["parent"] is None
        _wait_until_gone(homs, root.overlay_id, "b1")  # the dead bridge's CoreTree membership
        (tmp_path / "again").mkdir()
        again = BridgeProc(tmp_path / "again", homs.url, *common, "--id", "b1")
        bridges.append(again)
        again.next_event("joined", 90)
        root.command("publish after")
        back = member.next_event("source_back", 90)
        assert back["source"] == "b1-live"
        delivered = [e for e in member.seen if e["event"] == "deliver"]
        assert delivered[-1]["source"] == "b1-live"
        member.command("status")
        status = member.next_event("status", 30)
        assert status["source_lost_at"] is None
        assert status["state"] == "attached"
    finally:
        codes = procs.stop_all()
        for bridge in bridges:
            bridge.stop()
    assert codes == {"c00": 0, "c01": 0, "m1": 0}
