"""The one settings pipeline (issue #10): sections, the one ``--set`` parser, the one error,
which settings apply to which overlay, and the heartbeat round trip through a real HOMS."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from hp2p.peer.config import PeerConfig
from hp2p.peer.errors import SettingsError
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_node import MeshSettings
from hp2p.peer.settings import (
    NodeSettings,
    Settings,
    SubMeshSettings,
    merge,
    overlay_kind,
    parse_assignments,
    runtime_of,
)
from hp2p.wire import homp
from node_helpers import homs_app, start_node

SUBMESH = "overlay 'blocks' is a SubMesh"
CORETREE = "overlay 'chat' is a CoreTree"


def _merge(**flags: object) -> Settings:
    return merge(environ={}, flags={"join": "x", **flags})


# --- one parser, one error ------------------------------------------------------------------


def test_set_parses_key_value_and_section_key() -> None:
    assert parse_assignments(["max-children=8", "mesh.piece_size=65536", "api="]) == {
        "max_children": "8",
        "mesh.piece_size": "65536",
        "api": "",
    }
    with pytest.raises(SettingsError, match="--set expects KEY=VALUE"):
        parse_assignments(["max_children"])


def test_every_section_is_set_through_the_same_pipeline() -> None:
    s = _merge(
        max_children="2",  # tree
        piece_size="65536",  # mesh core
        store="/tmp/pieces",  # mesh shell
        standby="yes",
        api="127.0.0.1:0",  # shell
        require_signatures="on",
    )
    assert s.tree.max_children == 2
    assert s.mesh.piece_size == 65536
    assert s.mesh.require_signatures is True
    assert s.submesh == SubMeshSettings(store="/tmp/pieces", standby=True)
    assert s.node.api == "127.0.0.1:0"
    assert "piece_size" in s.given
    assert "heartbeat_interval" not in s.given


def test_a_shared_key_sets_both_cores_and_a_section_key_only_one() -> None:
    s = _merge(heartbeat_timeout="5", **{"mesh.heartbeat_timeout": "7"})
    assert (s.tree.heartbeat_timeout, s.mesh.heartbeat_timeout) == (5.0, 7.0)
    t = _merge(**{"core.max_children": "3"})  # [core]: the older name of [tree]
    assert t.tree.max_children == 3


def test_unknown_keys_name_the_key_and_close_matches() -> None:
    with pytest.raises(
        SettingsError, match=r"unknown setting 'max_childs' \(did you mean max_children"
    ):
        _merge(max_childs="2")
    with pytest.raises(
        SettingsError, match=r"unknown setting 'peice_size' \(did you mean piece_size"
    ):
        _merge(peice_size="2")
    with pytest.raises(SettingsError, match="unknown section 'tre'"):
        _merge(**{"tre.max_children": "2"})
    with pytest.raises(
        SettingsError, match=r"'piece_size' is not a tree setting \(it is in mesh\)"
    ):
        _merge(**{"tree.piece_size": "2"})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"max_children": "many"}, "max_children: expected an integer, got 'many'"),
        ({"max_children": 2.5}, "max_children: expected an integer"),
        ({"standby": "perhaps"}, "standby: expected true or false"),
        ({"piece_size": "0"}, "piece_size must be at least 1"),
        ({"heartbeat_interval": "5"}, "heartbeat_timeout must exceed heartbeat_interval"),
        ({"listen": "7000"}, "listen: expected HOST:PORT"),
    ],
)
def test_bad_values_are_one_settings_error_naming_the_key(
    flags: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        _merge(**flags)


def test_the_section_classes_raise_the_same_error() -> None:
    with pytest.raises(SettingsError):
        PeerConfig(max_children=-1)
    with pytest.raises(SettingsError):
        MeshConfig(low_water=20)
    with pytest.raises(SettingsError):
        NodeSettings(create="a", join="b")


def test_toml_tables_and_environment(tmp_path: Path) -> None:
    toml = tmp_path / "peer.toml"
    toml.write_text(
        'expires = 60\n[node]\nlisten = "127.0.0.1:7000"\n[tree]\nmax_children = 6\n'
        "[mesh]\npiece_size = 16384\nheartbeat_timeout = 9\n[submesh]\nstore = 'p'\n"
    )
    s = merge(file=toml, environ={"HP2P_PIECE_SIZE": "65536", "HP2P_KEY_DIR": "/k"}, flags={})
    assert (s.node.expires, s.node.listen) == (60, "127.0.0.1:7000")
    assert s.tree.max_children == 6
    assert s.mesh.piece_size == 65536  # env beats file
    assert (s.mesh.heartbeat_timeout, s.tree.heartbeat_timeout) == (9.0, 3.0)
    assert s.submesh.store == "p"
    bad = tmp_path / "bad.toml"
    bad.write_text("[peer]\nmax_children = 2\n")
    with pytest.raises(SettingsError, match=r"unknown table \[peer\]"):
        merge(file=bad, environ={})


# --- what applies to which overlay ---------------------------------------------------------


def test_tree_settings_on_a_submesh_are_refused_with_what_to_do() -> None:
    s = _merge(max_children="2")
    s.check("tree", CORETREE)
    with pytest.raises(SettingsError) as refused:
        s.check("mesh", SUBMESH)
    text = str(refused.value)
    assert (
        "max_children is a tree (CoreTree/SubTree) setting and overlay 'blocks' is a SubMesh"
        in text
    )
    assert "drop it" in text
    assert "tree.max_children" in text


def test_submesh_settings_on_a_tree_are_refused() -> None:
    for flags in ({"piece_size": "65536"}, {"store": "p"}, {"require_signatures": "true"}):
        s = _merge(**flags)
        s.check("mesh", SUBMESH)
        with pytest.raises(SettingsError, match="is a SubMesh setting and overlay 'chat'"):
            s.check("tree", CORETREE)


def test_shell_settings_apply_to_both_but_tree_only_and_create_only_ones_do_not() -> None:
    s = _merge(api="127.0.0.1:0", faults="delay=0.01", expires="20", heartbeat_interval="0.5")
    s.check("tree", CORETREE)
    s.check("mesh", SUBMESH)
    with pytest.raises(SettingsError, match=r"rejoins is a tree \(CoreTree/SubTree\) setting"):
        _merge(rejoins="2").check("mesh", SUBMESH)
    with pytest.raises(SettingsError, match="description applies to --create only"):
        _merge(description="d").check("tree", CORETREE)
    with pytest.raises(SettingsError, match="parent applies to --create only"):
        _merge(parent="core").check("mesh", SUBMESH)


def test_section_keys_are_conditional_never_refused() -> None:
    s = _merge(**{"tree.max_children": "2", "mesh.piece_size": "65536"})
    s.check("tree", CORETREE)
    s.check("mesh", SUBMESH)


def test_every_problem_is_in_one_message() -> None:
    with pytest.raises(SettingsError, match=r"max_ahead.*; .*max_children"):
        _merge(max_children="2", max_ahead="9").check("mesh", SUBMESH)


def _overlay(kind: str, sub: str) -> homp.QueryOverlay:
    return homp.QueryOverlay(
        overlay_id="o",
        title="t",
        type=kind,  # type: ignore[arg-type]
        sub_type=sub,  # type: ignore[arg-type]
        owner_id="x",
        status=homp.QueryStatus(num_peers=0, status="ok"),
        description="",
        auth=homp.QueryAuth(type="open"),
    )


def test_the_runtime_is_chosen_from_the_typed_homp_overlay() -> None:
    assert (runtime_of(_overlay("core", "tree")), overlay_kind(_overlay("core", "tree"))) == (
        "tree",
        "CoreTree",
    )
    assert runtime_of(_overlay("sub", "tree")) == "tree"
    assert overlay_kind(_overlay("sub", "tree")) == "SubTree"
    assert runtime_of(_overlay("sub", "mesh")) == "mesh"
    assert _merge(parent="core").created_runtime() == "mesh"
    assert _merge().created_runtime() == "tree"


# --- the runtime's copy and the SubMesh peer's settings --------------------------------------


def test_the_document_for_the_lean_runtime_round_trips() -> None:
    s = _merge(heartbeat_interval="0.5", piece_size="65536", standby="1", api="127.0.0.1:0")
    import msgspec

    again = Settings.from_document(msgspec.json.decode(msgspec.json.encode(s.to_document())))
    assert again == s
    assert again.tree.pinned == frozenset({"heartbeat_interval"})


def test_a_submesh_peer_gets_the_node_submesh_and_mesh_sections() -> None:
    s = _merge(piece_size="65536", store="p", unsigned="true", expires="12", faults="loss=0.1")
    m = MeshSettings.from_settings(s)
    assert (m.config.piece_size, m.store, m.sign, m.expires, m.faults) == (
        65536,
        "p",
        False,
        12,
        "loss=0.1",
    )
    assert (
        m.send_queue_bytes == MeshSettings(join="x").send_queue_bytes
    )  # not given: the mesh default
    assert MeshSettings.from_settings(_merge(send_queue_bytes="1000")).send_queue_bytes == 1000


def test_mesh_settings_defaults_agree_with_the_shell_section() -> None:
    """MeshSettings is what MeshNode takes; its defaults must not drift from NodeSettings."""
    node = {f.name: f.default for f in dataclasses.fields(NodeSettings)}
    for f in dataclasses.fields(MeshSettings):
        if f.name in node and f.name != "send_queue_bytes":  # documented: pieces are large
            assert f.default == node[f.name], f.name


# --- heartbeat: precise locally, rounded only in the HOMP field --------------------------------


async def test_a_created_overlay_records_whole_seconds_and_the_creator_keeps_its_own(
    tmp_path: Path,
) -> None:
    local = PeerConfig.from_dict({"heartbeat_interval": 0.5, "heartbeat_timeout": 1.5})
    async with homs_app(tmp_path) as app:
        root = await start_node(app, local, create="beat", peer_id="r")
        joiner = await start_node(app, PeerConfig(), join="beat", peer_id="j")
        try:
            for member in (root.membership, joiner.membership):  # the HOMS's (HOMP) values
                assert member is not None
                assert (member.heartbeat_interval, member.heartbeat_timeout) == (1.0, 2.0)
            assert root.core is not None
            assert joiner.core is not None
            mine = root.core.config
            assert (mine.heartbeat_interval, mine.heartbeat_timeout) == (0.5, 1.5)
            theirs = joiner.core.config  # set nothing: the overlay's value applies
            assert (theirs.heartbeat_interval, theirs.heartbeat_timeout) == (1.0, 2.0)
        finally:
            await asyncio.gather(joiner.close(), root.close())


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:8081", "did you mean http://127.0.0.1:8081"),
        ("htp://x", "must start with http:// or https://"),
        ("", "is empty"),
        ("http://", "names no host"),
        ("http://h:99999", "malformed"),
    ],
)
def test_a_homs_url_a_peer_could_never_reach_is_one_settings_error(url: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        NodeSettings(homs=url)
    assert NodeSettings(homs="https://homs.example:8443/").homs.startswith("https://")
