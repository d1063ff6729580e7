"""SCAN_TREE steps (etri-2023-protocol.md §4.8)."""

from __future__ import annotations

from hp2p.peer.scan import ScanDone, ScanForward, ScanInvalid, on_leaf_response, on_scan_request
from hp2p.wire.r2.messages import SCAN_TREE_LEAF, SCAN_TREE_NON_LEAF, ScanTree


def request() -> ScanTree:
    return ScanTree(
        cseq=7,
        overlay_id="ov",
        peer_id="init",
        address="mem://init",
        ticket_id=1,
        via=[["init", "mem://init"]],
    )


def test_inner_peer_answers_9100_and_relays_with_itself_prepended_to_via() -> None:
    step = on_scan_request(request(), "mid", 4, "mem://mid", has_other_primaries=True)
    assert step.response.code == SCAN_TREE_NON_LEAF
    assert step.relay is not None
    assert step.relay.via == [["mid", "mem://mid"], ["init", "mem://init"]]


def test_leaf_answer_travels_back_along_via_to_the_initiator() -> None:
    relayed = on_scan_request(request(), "mid", 4, "mem://mid", True).relay
    assert relayed is not None
    leaf = on_scan_request(relayed, "leaf", 9, "mem://leaf", has_other_primaries=False)
    assert leaf.relay is None
    assert leaf.response.code == SCAN_TREE_LEAF
    assert leaf.response.path == [["leaf", "9", "mem://leaf"]]
    at_mid = on_leaf_response(leaf.response, "mid", 4, "mem://mid")
    assert isinstance(at_mid, ScanForward)
    assert at_mid.next_peer == "init"
    done = on_leaf_response(at_mid.response, "init", 1, "mem://init")
    assert isinstance(done, ScanDone)
    assert done.path == [["mid", "4", "mem://mid"], ["leaf", "9", "mem://leaf"]]


def test_answer_that_is_not_for_this_peer_is_invalid() -> None:
    leaf = on_scan_request(request(), "leaf", 9, "mem://leaf", False).response
    assert isinstance(on_leaf_response(leaf, "someone-else", 3, "x"), ScanInvalid)
    leaf.via = []
    assert isinstance(on_leaf_response(leaf, "init", 1, "x"), ScanInvalid)
