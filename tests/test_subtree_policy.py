"""Which overlays carry the SubTree single-source rule (the core enforces it: test_subtree_core)."""

from __future__ import annotations

from hp2p.peer.subtree import subtree_source
from hp2p.wire import homp


def _overlay(type_: str, sub_type: str, source: str | None) -> homp.QueryOverlay:
    return homp.QueryOverlay(
        overlay_id="ov",
        title="t",
        type=type_,  # type: ignore[arg-type]
        sub_type=sub_type,  # type: ignore[arg-type]
        owner_id="o",
        status=homp.QueryStatus(num_peers=0, status="active"),
        description="",
        auth=homp.QueryAuth(type="open"),
        parent_overlay_id="core" if type_ == "sub" else None,
        source_peer_id=source,
    )


def test_only_subtrees_have_a_single_source():
    assert subtree_source(_overlay("core", "tree", None)) is None
    assert subtree_source(_overlay("sub", "mesh", "s")) is None
    assert subtree_source(_overlay("sub", "tree", None)) is None
    assert subtree_source(None) is None
    assert subtree_source(_overlay("sub", "tree", "s")) == "s"
