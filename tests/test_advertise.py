"""The address a peer advertises: what others dial, never 0.0.0.0 (issue #12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hp2p.peer.settings import NodeSettings, SettingsError
from hp2p.peer.shell import host_address
from node_helpers import homs_app, start_node


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("ws://127.0.0.1:8082", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1", "advertise"),
        ("tcp://0.0.0.0:7000", "not 0.0.0.0"),
    ],
)
def test_a_bad_advertised_address_is_refused_with_what_to_give(value: str, why: str) -> None:
    with pytest.raises(SettingsError, match=why):
        NodeSettings(join="o", advertise=value)


def test_the_host_address_is_never_the_any_address() -> None:
    address = host_address()
    assert address not in ("0.0.0.0", "::", "")


async def test_a_peer_listening_everywhere_advertises_a_dialable_address(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        root = await start_node(app, create="adv", listen="0.0.0.0:0")
        try:
            assert "0.0.0.0" not in root.address
            assert root.address.startswith(f"tcp://{host_address()}:")
            members = await app.state.store.peers(root.membership.overlay_id)
            assert [m.address for m in members] == [root.address]  # what the HOMS hands out
        finally:
            await root.close()


async def test_an_explicit_advertised_address_is_what_the_homs_hands_out(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        root = await start_node(app, create="adv2", advertise="tcp://127.0.0.1:45999")
        try:
            assert root.address == "tcp://127.0.0.1:45999"
            members = await app.state.store.peers(root.membership.overlay_id)
            assert [m.address for m in members] == ["tcp://127.0.0.1:45999"]
        finally:
            await root.close()
