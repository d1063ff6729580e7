"""Peer-list eclipse: one member's report must not make honest members suspects.

Before the fix a member that reported every peer as its neighbour and then none made every
honest member a suspect (left out of every peer list), so new joiners were handed only the
attacker and orphans only themselves.
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from attacks.conftest import attack_app, client_of
from homp_bodies import create, join, report
from hp2p.homs.db import accusation


def _claim(overlay_id: str, peer_id: str, neighbours: list[str]) -> dict[str, Any]:
    """A report that names ``neighbours`` and says it is attached (num_primary > 0)."""
    body = report(overlay_id, peer_id, "pw", neighbours)
    body["status"]["num_primary"] = max(len(neighbours), 1)
    return body


async def _named(c: httpx.AsyncClient, body: dict[str, Any], query: str = "") -> list[str]:
    r = await c.post(f"/peer{query}", json=body)
    assert r.status_code == 202, r.text
    return [e["peer-id"] for e in r.json()["overlay"]["status"]["peer_info_list"]]


async def _suspects(c: httpx.AsyncClient, overlay_id: str) -> set[str]:
    status = (await c.get("/api/OverlayStatus", params={"overlay_id": overlay_id})).json()
    return {m["peer-id"] for m in status["peers"] if m["suspect_since"] is not None}


async def test_one_liar_listing_everyone_then_no_one_eclipses_nobody(db_url: str) -> None:
    async with attack_app(db_url) as app, client_of(app) as c:
        assert (await c.post("/homs", json=create("ov"))).status_code == 200
        honest = [f"h{i}" for i in range(6)]
        for pid in [*honest, "mallory"]:
            assert (await c.post("/peer", json=join("ov", pid))).status_code == 202
        for pid in honest:
            assert (await c.post("/peer/report", json=_claim("ov", pid, ["h0"]))).status_code == 200
        lie = _claim("ov", "mallory", honest)
        assert (await c.post("/peer/report", json=lie)).status_code == 200
        assert (await c.post("/peer/report", json=_claim("ov", "mallory", []))).status_code == 200

        assert await _suspects(c, "ov") == set()
        offered = await _named(c, join("ov", "newcomer"))
        assert set(offered) - {"mallory"}, f"the newcomer got only {offered}"
        orphan = join("ov", "h5", **{"ticket-id": 6})
        assert set(await _named(c, orphan, "?recovery=true")) - {"mallory", "h5"}


async def test_accusations_are_bounded_per_reporter(db_url: str) -> None:
    async with attack_app(db_url) as app, client_of(app) as c:
        assert (await c.post("/homs", json=create("ov"))).status_code == 200
        victims = [f"v{i:02d}" for i in range(40)]
        for pid in [*victims, "mallory"]:
            assert (await c.post("/peer", json=join("ov", pid))).status_code == 202
        for _ in range(3):
            lie = _claim("ov", "mallory", victims)
            assert (await c.post("/peer/report", json=lie)).status_code == 200
            drop = _claim("ov", "mallory", [])
            assert (await c.post("/peer/report", json=drop)).status_code == 200
        held = await app.state.store.run_write(
            lambda conn: conn.scalar(select(func.count()).select_from(accusation))
        )
        assert held <= app.state.store.max_accusations


async def test_two_accusers_make_a_suspect_and_an_orphan_is_not_told_it_is_alone(
    db_url: str,
) -> None:
    async with attack_app(db_url) as app, client_of(app) as c:
        assert (await c.post("/homs", json=create("ov"))).status_code == 200
        for pid in ("r", "x", "o", "y", "z"):
            assert (await c.post("/peer", json=join("ov", pid))).status_code == 202
        for pid in ("y", "z"):
            body = _claim("ov", pid, ["r", "x"])
            assert (await c.post("/peer/report", json=body)).status_code == 200
        for pid in ("y", "z"):
            assert (await c.post("/peer/report", json=_claim("ov", pid, []))).status_code == 200
        assert await _suspects(c, "ov") == {"r", "x"}  # corroborated: both dropped them
        # the orphan o (ticket 3) has only suspects older than it: it gets them, nearest
        # first, instead of only itself (which would make it a second root)
        orphan = join("ov", "o", **{"ticket-id": 3})
        assert await _named(c, orphan, "?recovery=true") == ["x", "r"]
