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
    with pytest.raises(BridgeError, match="SubMesh targets only"):
        Bridge("http://127.0.0.1:1", "core", [BridgeTarget("tree", "t", "s")], standby=True)


def test_the_command_refuses_a_standby_for_a_subtree(capsys):
    code = main(["--core", "c", "--id", "b2", "--standby-for", "b1", "--subtree", "live"])
    assert code == 2
    assert "SubMesh targets only" in capsys.readouterr().err


def test_the_command_has_help_with_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Examples:" in out
    assert "--standby-for" in out
