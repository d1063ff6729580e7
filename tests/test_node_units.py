"""Shell pieces without a network: settings merge, subscriber queues, the HOMP client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hp2p.peer.config import PeerConfig
from hp2p.peer.effects import Costmap
from hp2p.peer.homs_client import (
    AdmissionRefusedError,
    HomsClient,
    HomsUnreachableError,
    OverlayNotFoundError,
)
from hp2p.peer.node import Delivery, Subscription
from hp2p.peer.settings import NodeSettings, SettingsError, merge, settings_table
from node_helpers import client_for, homs_app

# --- settings --------------------------------------------------------------------------------


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "peer.toml"
    toml.write_text(
        'homs = "http://file:1"\nexpires = 60\n[core]\nmax_children = 6\nhello_ttl = 2\n'
    )
    env = {"HP2P_EXPIRES": "90", "HP2P_MAX_CHILDREN": "7", "HP2P_TEST_UNRELATED": "x"}
    settings = merge(file=toml, environ=env, flags={"max_children": "8", "join": "o"})
    node, core = settings.node, settings.tree
    assert node.homs == "http://file:1"  # file only
    assert node.expires == 90  # env beats file
    assert core.max_children == 8  # flag beats env
    assert core.hello_ttl == 2  # file only
    assert core.heartbeat_interval == PeerConfig().heartbeat_interval  # default
    assert node.join == "o"


def test_unknown_or_badly_typed_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="unknown setting 'max_kids'"):
        merge(environ={}, flags={"max_kids": "3"})
    with pytest.raises(SettingsError, match="max_children: expected an integer"):
        merge(environ={"HP2P_MAX_CHILDREN": "many"})
    bad = tmp_path / "bad.toml"
    bad.write_text("expires = = 3")
    with pytest.raises(SettingsError, match="not valid TOML"):
        merge(file=bad, environ={})
    with pytest.raises(SettingsError, match="listen: expected HOST:PORT"):
        merge(environ={}, flags={"listen": "7000"})
    with pytest.raises(SettingsError, match="not both"):
        NodeSettings(create="a", join="b")


def test_every_setting_is_documented() -> None:
    rows = settings_table()
    keys = {key for _, key, _, _ in rows}
    assert keys >= {"homs", "listen", "api", "max_children", "hello_ttl", "piece_size", "store"}
    assert all(doc for _, _, _, doc in rows)
    assert {section for section, _, _, _ in rows} == {"node", "tree", "mesh", "submesh"}


# --- subscriptions ---------------------------------------------------------------------------


def _d(seq: int) -> Delivery:
    return Delivery("src", seq, b"x", "etri_data", "text/plain")


async def test_a_slow_subscriber_loses_the_oldest_and_is_told_how_many() -> None:
    closed: list[Subscription] = []
    sub = Subscription(3, closed.append)
    for seq in range(1, 8):  # 7 messages into a queue of 3
        sub.put(_d(seq))
    got = [sub.get_nowait() for _ in range(3)]
    assert [d.sequence for d in got if d] == [5, 6, 7]
    assert got[0] is not None
    assert got[0].lost == 4
    assert [d.lost for d in got[1:] if d] == [0, 0]
    assert sub.dropped == 4
    assert sub.get_nowait() is None
    sub.close()
    assert closed == [sub]
    with pytest.raises(StopAsyncIteration):
        await sub.get()


async def test_a_waiting_subscriber_wakes_up_on_a_delivery() -> None:
    sub = Subscription(4, lambda s: None)
    reader = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)  # one loop turn: the reader runs and blocks (deterministic, no timing)
    assert not reader.done()
    sub.put(_d(1))
    got = await asyncio.wait_for(reader, 5)
    assert got.sequence == 1


# --- the HOMP client against a real HOMS app -------------------------------------------------


async def test_closed_overlay_refuses_a_join_without_key_with_407(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        owner = client_for(app)
        overlay_id = await owner.create_overlay(
            "closed", "owner", "admin", heartbeat_interval=1, heartbeat_timeout=3, access_key="k"
        )
        overlay = await owner.find_overlay("closed")
        assert overlay.overlay_id == overlay_id
        stranger = client_for(app)
        with pytest.raises(AdmissionRefusedError, match=r"refused this peer \(407\).*access"):
            await stranger.join(
                overlay, peer_id="x", address="tcp://127.0.0.1:1", password="p" * 8, expires=30
            )
        member = await stranger.join(
            overlay,
            peer_id="x",
            address="tcp://127.0.0.1:1",
            password="p" * 8,
            expires=30,
            access_key="k",
        )
        assert member.ticket == 1
        assert member.root
        assert await stranger.refresh() == 30
        await stranger.leave()
        for c in (owner, stranger):
            await c.aclose()


async def test_a_burst_of_reports_is_coalesced_and_the_latest_wins(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        client = client_for(app)
        await client.create_overlay("r", "o", "admin", heartbeat_interval=1, heartbeat_timeout=3)
        overlay = await client.find_overlay("r")
        await client.join(
            overlay, peer_id="me", address="tcp://127.0.0.1:1", password="p" * 8, expires=30
        )
        for i in range(20):
            client.report(Costmap((f"c{i}",), (), ()))
        await client.flush_reports(10)
        assert client.stats.reports_sent <= 3
        assert client.stats.reports_sent + client.stats.reports_coalesced == 20
        (member,) = await app.state.store.peers(overlay.overlay_id)
        assert member.costmap["primary"] == ["c19"]
        await client.aclose()


async def test_unknown_overlay_and_unreachable_homs_are_clear(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        client = client_for(app)
        with pytest.raises(OverlayNotFoundError, match="no overlay with id or title 'nope'"):
            await client.find_overlay("nope")
        await client.aclose()
    nobody = HomsClient("http://127.0.0.1:9", attempts=2, backoff_initial=0.01)
    with pytest.raises(HomsUnreachableError, match=r"cannot connect.*after 2 attempt"):
        await nobody.find_overlay("x")
    await nobody.aclose()


async def test_join_by_title_never_guesses_between_overlays(tmp_path: Path) -> None:
    async with homs_app(tmp_path) as app:
        client = client_for(app)
        for title in ("chat", "chat", "news-eu"):
            await client.create_overlay(
                title, "o", "admin", heartbeat_interval=1, heartbeat_timeout=3
            )
        with pytest.raises(OverlayNotFoundError, match="matches 2 overlays and none"):
            await client.find_overlay("chat")
        assert (await client.find_overlay("news")).title == "news-eu"  # unique substring
        by_id = await client.find_overlay((await client.find_overlay("news-eu")).overlay_id)
        assert by_id.title == "news-eu"
        await client.aclose()
