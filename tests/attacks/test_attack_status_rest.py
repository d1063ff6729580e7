"""The REST status views of a closed overlay need the operator token or its admin key.

Before the fix ``/api/OverlayStatus`` (and the topology, cost map, member and composition
views) showed any caller every member of a closed overlay, with addresses and links.
"""

from __future__ import annotations

from attacks.conftest import attack_app, client_of
from homp_bodies import create, join

CLOSED = {"type": "closed", "admin_key": "closed-admin", "access_key": "door"}
VIEWS = ("OverlayStatus", "OverlayTopology", "OverlayCostMap")


async def test_closed_overlay_views_need_a_credential(db_url: str) -> None:
    async with attack_app(db_url) as app, client_of(app) as c:
        assert (await c.post("/homs", json=create("core", title="core"))).status_code == 200
        sub = create(
            "hidden",
            title="hidden",
            type="sub",
            auth={**CLOSED, "parent-admin-key": "admin"},
            **{"sub-type": "tree", "parent-overlay-id": "core", "source-peer-id": "src"},
        )
        assert (await c.post("/homs", json=sub)).status_code == 200
        joined = await c.post("/peer", json=join("hidden", "secret", type="sub", access_key="door"))
        assert joined.status_code == 202
        query = {"overlay_id": "hidden"}
        for view in VIEWS:
            r = await c.get(f"/api/{view}", params=query)
            assert (r.status_code, r.json()["field"]) == (403, "Authorization"), view
        r = await c.get("/api/OverlayMember", params={**query, "peer_id": "secret"})
        assert r.status_code == 403
        composition = (await c.get("/api/OverlayComposition", params={"overlay_id": "core"})).json()
        (entry,) = composition["composition"]["sub-overlays"]
        assert entry["hidden"] is True
        assert entry["nodes"] == []

        operator = {"authorization": f"Bearer {app.state.operator_token}"}
        owner = {"x-homs-admin-key": "closed-admin"}
        for headers in (operator, owner):
            for view in VIEWS:
                r = await c.get(f"/api/{view}", params=query, headers=headers)
                assert r.status_code == 200, (view, headers)
        r = await c.get("/api/OverlayStatus", params=query, headers={"x-homs-admin-key": "guess"})
        assert (r.status_code, r.json()["field"]) == (403, "X-HOMS-Admin-Key")
        # an open overlay is shown to anyone, as in the reference
        r = await c.get("/api/OverlayStatus", params={"overlay_id": "core"})
        assert r.status_code == 200
