"""Peer-id takeover: a join under a live peer-id must prove it is that peer.

Before the fix a join in another overlay under an existing live peer-id overwrote the peer
information registry (PIR) record: anyone could redirect ``GET /api/PeerInfo`` (and whoever
dials by it) to their own address.
"""

from __future__ import annotations

import httpx

from homp_bodies import create, join


async def test_a_join_under_a_live_peer_id_with_another_password_is_409(
    client: httpx.AsyncClient,
) -> None:
    for oid in ("a", "b"):
        assert (await client.post("/homs", json=create(oid, title=f"t-{oid}"))).status_code == 200
    real = join("a", "victim", password="victim-pw", address="tcp://10.0.0.1:7000")
    assert (await client.post("/peer", json=real)).status_code == 202

    fake = join("b", "victim", password="mallory", address="tcp://6.6.6.6:7000")
    r = await client.post("/peer", json=fake)
    assert (r.status_code, r.json()["field"]) == (409, "$.peer.peer-id")
    info = (await client.get("/api/PeerInfo", params={"peer_id": "victim"})).json()
    assert info["addresses"] == ["tcp://10.0.0.1:7000"]
    status = (await client.get("/api/OverlayStatus", params={"overlay_id": "b"})).json()
    assert status["peers"] == []  # and no member, no burnt ticket
    assert status["overlay"]["last-ticket"] == 0

    # the same peer (same password) may join another overlay and update its record
    same = join("b", "victim", password="victim-pw", address="tcp://10.0.0.1:7001")
    assert (await client.post("/peer", json=same)).status_code == 202
    info = (await client.get("/api/PeerInfo", params={"peer_id": "victim"})).json()
    assert info["addresses"] == ["tcp://10.0.0.1:7001"]

    # once the peer has left everywhere, the name is free again
    for oid in ("a", "b"):
        leave = {
            "overlay": {"overlay-id": oid},
            "peer": {"peer-id": "victim", "auth": {"password": "victim-pw"}},
        }
        assert (await client.request("DELETE", "/peer", json=leave)).status_code == 200
    assert (await client.post("/peer", json=fake)).status_code == 202
