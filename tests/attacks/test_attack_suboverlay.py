"""Sub-overlay consent: nobody may hang a SubTree/SubMesh off a CoreTree they do not own.

Before the fix anyone could create a sub-overlay under any CoreTree and appear, in the
composition views and to bridges looking for it by title, as part of that CoreTree.
"""

from __future__ import annotations

import httpx

from homp_bodies import create


def _sub(overlay_id: str, parent: str, **auth: str) -> dict[str, object]:
    return create(
        overlay_id,
        type="sub",
        auth={"type": "open", "admin_key": "sub-admin", **auth},
        **{"sub-type": "tree", "parent-overlay-id": parent, "source-peer-id": "src"},
    )


async def test_sub_overlay_needs_the_coretree_admin_key(client: httpx.AsyncClient) -> None:
    assert (await client.post("/homs", json=create("core"))).status_code == 200
    r = await client.post("/homs", json=_sub("evil", "core"))
    assert (r.status_code, r.json()["field"]) == (403, "$.overlay.auth.parent-admin-key")
    assert "consent" in r.json()["error"]
    r = await client.post("/homs", json=_sub("evil", "core", **{"parent-admin-key": "guess"}))
    assert (r.status_code, r.json()["field"]) == (403, "$.overlay.auth.parent-admin-key")
    status = (await client.get("/api/OverlayStatus", params={"overlay_id": "core"})).json()
    assert status["overlay"]["sub-overlays"] == []

    r = await client.post("/homs", json=_sub("good", "core", **{"parent-admin-key": "admin"}))
    assert r.status_code == 200
    assert "parent-admin-key" not in r.json()["overlay"]["auth"]  # never echoed
    # under a sub-overlay, its own owner decides (no CoreTree key involved)
    nested = _sub("nested", "good")
    assert (await client.post("/homs", json=nested)).status_code == 200
