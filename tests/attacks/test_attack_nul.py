"""NUL characters in HOMP text: 400 naming the field on every backend (PostgreSQL gave 500)."""

from __future__ import annotations

import httpx
import pytest

from homp_bodies import create, join, report


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (create("o\u0000v"), "$.overlay.overlay-id"),
        (create("ov", title="a\u0000b"), "$.overlay.title"),
        (create("ov", description="\u0000"), "$.overlay.description"),
        (create("ov", auth={"type": "open", "admin_key": "k\u0000"}), "$.overlay.auth.admin_key"),
    ],
)
async def test_nul_in_create_is_400_with_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    r = await client.post("/homs", json=body)
    assert (r.status_code, r.json()["field"]) == (400, field)
    assert "NUL" in r.json()["error"]


async def test_nul_in_peer_operations_and_queries_is_400(client: httpx.AsyncClient) -> None:
    assert (await client.post("/homs", json=create("ov"))).status_code == 200
    r = await client.post("/peer", json=join("ov", "p\u0000"))
    assert (r.status_code, r.json()["field"]) == (400, "$.peer.peer-id")
    r = await client.post("/peer", json=join("ov", "p", address="tcp://x\u0000"))
    assert (r.status_code, r.json()["field"]) == (400, "$.peer.address")
    r = await client.post("/peer", json=join("ov", "p", capabilities={"k": ["\u0000"]}))
    assert (r.status_code, r.json()["field"]) == (400, "$.peer.capabilities.k[0]")
    assert (await client.post("/peer", json=join("ov", "p"))).status_code == 202
    r = await client.post("/peer/report", json=report("ov", "p", "pw", ["q\u0000"]))
    assert (r.status_code, r.json()["field"]) == (400, "$.status.costmap.primary[0]")
    r = await client.get("/homs", params={"title": "t\u0000"})
    assert (r.status_code, r.json()["field"]) == (400, "?title")
    r = await client.get("/api/OverlayStatus", params={"overlay_id": "o\u0000"})
    assert (r.status_code, r.json()["field"]) == (400, "?overlay_id")
    r = await client.get("/api/PeerInfo", params={"peer_id": "p\u0000"})
    assert (r.status_code, r.json()["field"]) == (400, "?peer_id")
    # nothing was stored with a NUL, and the HOMS still answers
    r = await client.get("/homs")
    assert r.status_code == 200
    assert [o["overlay"]["overlay-id"] for o in r.json()] == ["ov"]
