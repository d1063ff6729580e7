"""SubTree single-source rule: refuse publishing elsewhere, drop and count foreign data."""

from __future__ import annotations

import pytest

from hp2p.peer.subtree import NotSourceError, SourcePolicy, policy_for
from hp2p.wire import homp
from hp2p.wire.r2.messages import GET_DATA_MISSING, BroadcastData, GetDataResponse, Heartbeat


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


def test_only_subtrees_get_a_policy():
    assert policy_for(_overlay("core", "tree", None)) is None
    assert policy_for(_overlay("sub", "mesh", "s")) is None
    assert policy_for(None) is None
    policy = policy_for(_overlay("sub", "tree", "s"))
    assert policy == SourcePolicy("ov", "s")


def test_publishing_off_the_source_is_refused_clearly():
    policy = SourcePolicy("ov", "src")
    policy.check_publish("src")
    with pytest.raises(NotSourceError, match="only the source peer 'src' of SubTree 'ov'"):
        policy.check_publish("other")


def test_foreign_data_is_dropped_and_counted_the_rest_passes():
    policy = SourcePolicy("ov", "src")
    assert policy.admit(BroadcastData(source="src", sequence=1, data=b"a"))
    assert not policy.admit(BroadcastData(source="intruder", sequence=1, data=b"a"))
    assert not policy.admit(GetDataResponse(source="intruder", sequence=1, data=b"a"))
    assert policy.admit(GetDataResponse("intruder", 1, b"", code=GET_DATA_MISSING))
    assert policy.admit(Heartbeat())
    assert policy.dropped == 2
