"""R3 bridge configuration: target selection and refusals, without processes."""

from __future__ import annotations

import pytest

from hp2p.apps.bridge import Bridge, BridgeError, BridgeTarget, main
from hp2p.peer.node import Delivery


def _delivery(app_id: str | None, data: bytes = b"x") -> Delivery:
    return Delivery("src", 1, data, app_id, "text/plain")


def test_a_target_selects_by_app_id_and_filter():
    target = BridgeTarget.parse("mesh", "blocks:blockchain,media", "b1")
    assert target.source_id == "b1-blocks"
    assert target.selects(_delivery("blockchain"))
    assert target.selects(_delivery("media"))
    assert not target.selects(_delivery("iot"))
    everything = BridgeTarget.parse("tree", "live", "b1")
    assert everything.selects(_delivery(None))
    big = BridgeTarget("mesh", "big", "b1-big", where=lambda d: len(d.data) > 3)
    assert big.selects(_delivery("iot", b"long!"))
    assert not big.selects(_delivery("iot", b"no"))


def test_bad_configurations_say_what_is_wrong():
    with pytest.raises(BridgeError, match="'tree' or 'mesh'"):
        BridgeTarget("ring", "x", "y")
    with pytest.raises(BridgeError, match="at least one target"):
        Bridge("http://127.0.0.1:1", "core", [])
    mesh = BridgeTarget("mesh", "m", "s")
    with pytest.raises(BridgeError, match="SubTree targets only"):
        Bridge("http://127.0.0.1:1", "core", [mesh], standby=True, rank=2)
    with pytest.raises(BridgeError, match="rank starts at 1"):
        Bridge("http://127.0.0.1:1", "core", [mesh], standby=True, rank=0)
    with pytest.raises(BridgeError, match="group key is empty"):
        Bridge("http://127.0.0.1:1", "core", [mesh], group_key="")
    with pytest.raises(BridgeError, match="--settle"):
        Bridge("http://127.0.0.1:1", "core", [mesh], settle=-1)
    with pytest.raises(BridgeError, match="takeover-after must be > 0"):
        Bridge("http://127.0.0.1:1", "core", [mesh], takeover_after=0)


def test_a_standby_for_a_subtree_is_accepted_with_its_rank_and_key():
    tree = BridgeTarget.parse("tree", "live", "b1")
    bridge = Bridge(
        "http://127.0.0.1:1",
        "core",
        [tree],
        bridge_id="b3",
        standby=True,
        rank=2,
        group_key="k",
        takeover_after=1.5,
    )
    assert (bridge.rank, bridge.group_key, bridge.takeover_after) == (2, "k", 1.5)
    assert tree.source_id == "b1-live"  # the standby publishes under the active bridge's id


def test_the_command_refuses_several_standbys_for_a_submesh(capsys):
    argv = ["--core", "c", "--id", "b3", "--standby-for", "b1", "--standby-rank", "2"]
    code = main([*argv, "--submesh", "blocks"])
    assert code == 2
    assert "SubTree targets only" in capsys.readouterr().err


def test_the_group_key_comes_from_the_environment(monkeypatch):
    from hp2p.apps.bridge import build_parser

    monkeypatch.setenv("HP2P_BRIDGE_GROUP_KEY", "shared")
    args = build_parser().parse_args(["--core", "c", "--id", "b2", "--subtree", "live"])
    assert args.group_key == "shared"


def test_the_command_has_help_with_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Examples:" in out
    assert "--standby-for" in out
    assert "--standby-rank 2 --subtree live:iot" in out
    assert "--group-key" in out
