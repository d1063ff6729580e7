"""The HOMS shows a CoreTree and its sub-overlays as one composition (issue #7, R3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hp2p.homs.app import create_app
from hp2p.homs.settings import HomsSettings
from test_homs_api import join, overlay


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = HomsSettings(database=f"sqlite:///{tmp_path / 'c.db'}", admin_key_cost=2**4)
    app = create_app(settings, run_expiry_sweep=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://homs") as c,
    ):
        yield c


async def test_status_lists_sub_overlays_and_composition_starts_at_the_core_tree(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/homs", json=overlay("core"))).status_code == 200
    for oid, kind, source in (("live", "tree", "b1-live"), ("blocks", "mesh", "b1-blocks")):
        body = overlay(
            oid,
            type="sub",
            **{"sub-type": kind, "parent-overlay-id": "core", "source-peer-id": source},
        )
        assert (await client.post("/homs", json=body)).status_code == 200
    assert (await client.post("/peer", json=join("core", "c1"))).status_code == 202
    r = await client.post("/peer", json=join("blocks", "m1", type="sub", sub_type="mesh"))
    assert r.status_code == 200

    status = (await client.get("/api/OverlayStatus", params={"overlay_id": "core"})).json()
    subs = {s["overlay-id"]: s for s in status["overlay"]["sub-overlays"]}
    assert set(subs) == {"live", "blocks"}
    assert subs["blocks"]["sub-type"] == "mesh"
    assert subs["blocks"]["source-peer-id"] == "b1-blocks"
    assert subs["blocks"]["num_peers"] == 1
    leaf = (await client.get("/api/OverlayStatus", params={"overlay_id": "live"})).json()
    assert leaf["overlay"]["sub-overlays"] == []

    # Named from a sub-overlay, the composition still starts at its CoreTree.
    r = await client.get("/api/OverlayComposition", params={"overlay_id": "blocks"})
    assert r.status_code == 200
    top = r.json()["composition"]
    assert top["overlay-id"] == "core"
    assert top["parent-overlay-id"] is None
    assert [n["id"] for n in top["nodes"]] == ["c1"]
    children = {s["overlay-id"]: s for s in top["sub-overlays"]}
    assert set(children) == {"live", "blocks"}
    assert children["live"]["source-peer-id"] == "b1-live"
    assert [n["id"] for n in children["blocks"]["nodes"]] == ["m1"]

    r = await client.get("/api/OverlayComposition", params={"overlay_id": "nope"})
    assert r.status_code == 404
    assert r.json()["field"] == "?overlay_id"
