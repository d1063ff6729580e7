"""Overlay names: a newcomer may not take a name that captures joins meant for another overlay.

A peer joins by overlay-id or by title (``hp2p peer --join NAME``). Before the fix a create
could pick an overlay-id equal to an existing overlay's title (or a title equal to an existing
id), and the client silently took whichever matched first.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from attacks.conftest import attack_app, client_of
from homp_bodies import create
from hp2p.peer.homs_client import HomsClient, OverlayNotFoundError


async def test_an_overlay_id_equal_to_a_title_is_409(client: httpx.AsyncClient) -> None:
    assert (await client.post("/homs", json=create("real", title="news"))).status_code == 200
    r = await client.post("/homs", json=create("news", title="fake"))
    assert (r.status_code, r.json()["field"]) == (409, "$.overlay.overlay-id")
    r = await client.post("/homs", json=create("other", title="real"))
    assert (r.status_code, r.json()["field"]) == (409, "$.overlay.title")
    r = await client.post("/homs", json=create("real", title="x"))
    assert (r.status_code, r.json()["field"]) == (409, "$.overlay.overlay-id")
    # a generated id and a fresh title are fine; the same title twice is allowed (the client
    # refuses to guess between them)
    r = await client.post("/homs", json=create(None, title="news"))
    assert r.status_code == 200
    assert r.json()["overlay"]["overlay-id"] not in ("news", "real")


def _client(app: FastAPI) -> HomsClient:
    return HomsClient("http://homs", transport=httpx.ASGITransport(app=app), attempts=1)


async def _legacy_insert(app: FastAPI, overlay_id: str, title: str) -> None:
    """An overlay as a reference HOMS (or an older hp2p) may hold: names not checked."""
    from sqlalchemy import insert

    from hp2p.homs.db import overlay

    values = {
        "overlay_id": overlay_id,
        "title": title,
        "type": "core",
        "sub_type": "tree",
        "owner_id": "mallory",
        "status": "active",
        "description": "",
        "heartbeat_interval": 10,
        "heartbeat_timeout": 15,
        "auth_type": "open",
        "admin_key_hash": "x",
        "last_ticket": 0,
        "created_at": 1.0,
        "updated_at": 1.0,
        "delete_when_empty": False,
    }
    await app.state.store.run_write(lambda conn: conn.execute(insert(overlay).values(**values)))


async def test_join_by_name_refuses_an_ambiguous_name(db_url: str) -> None:
    async with attack_app(db_url) as app, client_of(app) as c:
        assert (await c.post("/homs", json=create("real", title="news"))).status_code == 200
        assert (await c.post("/homs", json=create("two", title="news"))).status_code == 200
        homs = _client(app)
        with pytest.raises(OverlayNotFoundError) as err:
            await homs.find_overlay("news")
        text = str(err.value)
        # refused with a table of the candidates (none has members to prefer one)
        assert "matches 2 overlays and none of them has members" in text
        for want in ("real", "two", "OVERLAY-ID", "OWNER", "owner", "UTC"):
            assert want in text
        assert (await homs.find_overlay("real")).overlay_id == "real"
        # a name that is one overlay's id and another's title: refused, both listed
        await _legacy_insert(app, "trap", "real")
        with pytest.raises(OverlayNotFoundError) as err:
            await homs.find_overlay("real")
        assert "both an overlay-id and a title" in str(err.value)
        assert "trap" in str(err.value)
        assert "mallory" in str(err.value)
        await homs.aclose()
