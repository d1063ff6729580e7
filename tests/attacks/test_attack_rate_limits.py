"""Rate limits: admin-key guessing and overlay creation flooding (issue #11).

Before the fix a client could guess admin keys as fast as the HOMS computed scrypt (keeping
its CPU busy too) and create overlays without limit.
"""

from __future__ import annotations

from attacks.conftest import attack_app, client_of
from homp_bodies import create
from hp2p.homs.limits import TokenBuckets


def _removal(overlay_id: str, key: str) -> dict[str, str]:
    return {"overlay-id": overlay_id, "owner-id": "owner", "admin_key": key}


async def test_wrong_admin_keys_are_limited_per_address_and_per_overlay(db_url: str) -> None:
    async with attack_app(db_url, admin_key_burst=3, admin_key_rate=0.01) as app:
        async with client_of(app, "10.0.0.1") as c:
            assert (await c.post("/homs", json=create("ov"))).status_code == 200
            assert (await c.post("/homs", json=create("other", title="o"))).status_code == 200
            for _ in range(3):
                r = await c.post("/api/HybridOverlayRemoval", json=_removal("ov", "guess"))
                assert r.status_code == 400
            r = await c.post("/api/HybridOverlayRemoval", json=_removal("ov", "guess"))
            assert (r.status_code, r.json()["field"]) == (429, "$.overlay.auth.admin_key")
            assert int(r.headers["retry-after"]) >= 1
            # the right key is refused too while limited: no guess gets checked then
            r = await c.post("/api/HybridOverlayRemoval", json=_removal("ov", "admin"))
            assert r.status_code == 429
            # the address is limited on every overlay
            r = await c.post("/api/HybridOverlayRemoval", json=_removal("other", "guess"))
            assert r.status_code == 429
        # rotating addresses meets the overlay's own bucket (4 x the burst)
        statuses = []
        for i in range(12):
            async with client_of(app, f"10.0.1.{i}") as c:
                r = await c.post("/api/HybridOverlayRemoval", json=_removal("ov", "guess"))
                statuses.append(r.status_code)
        assert 429 in statuses
        async with client_of(app, "10.0.2.1") as c:  # another overlay, another address: fine
            assert (
                await c.post("/api/HybridOverlayRemoval", json=_removal("other", "admin"))
            ).status_code == 200


async def test_overlay_creation_is_limited_per_address(db_url: str) -> None:
    async with attack_app(db_url, create_burst=4, create_rate=0.01) as app:
        async with client_of(app, "10.0.0.9") as c:
            for i in range(4):
                assert (
                    await c.post("/homs", json=create(f"o{i}", title=f"t{i}"))
                ).status_code == 200
            r = await c.post("/homs", json=create("o4", title="t4"))
            assert r.status_code == 429
            assert "retry-after" in r.headers
        async with client_of(app, "10.0.0.10") as c:
            assert (await c.post("/homs", json=create("o4", title="t4"))).status_code == 200


def test_limit_tables_are_bounded() -> None:
    buckets = TokenBuckets(rate=0.001, burst=2, max_entries=100)
    for i in range(10_000):
        buckets.take(f"2001:db8::{i:x}", now=0.0)
    assert len(buckets) == 100
