"""HOMP over HTTP (in-process ASGI): errors, limits, extensions and monitoring endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from homp_bodies import create, join, report
from node_helpers import asgi_client, homs_app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with homs_app(tmp_path) as app, asgi_client(app) as c:
        yield c


async def test_errors_are_json_with_the_offending_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/homs", json=create("x", title="t" * 5000))
    assert r.status_code == 400
    assert r.json()["field"] == "$.overlay.title"
    r = await client.post("/homs", json=create("x", **{"heartbeat-interval": -1}))
    assert (r.status_code, r.json()["field"]) == (400, "$.overlay.heartbeat-interval")
    r = await client.post("/peer", json=join("x", "p", expires=0))
    assert (r.status_code, r.json()["field"]) == (400, "$.peer.expires")
    r = await client.post("/homs", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "invalid JSON" in r.json()["error"]


async def test_body_limits_and_content_type(client: httpx.AsyncClient) -> None:
    big = b'{"overlay": "' + b"x" * (70 * 1024) + b'"}'
    r = await client.post("/homs", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "larger than" in r.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(20):
            yield b"x" * 8192

    r = await client.post("/homs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = await client.post("/homs", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = await client.post(
        "/homs",
        json=create("cs"),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200


async def test_recovery_flag_values(client: httpx.AsyncClient) -> None:
    assert (await client.post("/homs", json=create("ov"))).status_code == 200
    r = await client.post("/peer?recovery=false", json=join("ov", "a", expires=30))
    assert (r.status_code, r.json()["peer"]["ticket-id"]) == (202, 1)
    r = await client.post("/peer?recovery=maybe", json=join("ov", "b"))
    assert (r.status_code, r.json()["field"]) == (400, "?recovery")
    r = await client.post("/peer?recovery=true", json=join("ov", "a"))
    assert (r.status_code, r.json()["field"]) == (400, "$.peer.ticket-id")
    r = await client.post("/peer?recovery=1", json=join("ov", "a", **{"ticket-id": 1}))
    assert r.status_code == 202
    assert r.json()["peer"] == {"peer-id": "a", "ticket-id": 1, "expires": 30}
    r = await client.post("/peer?recovery=true", json=join("ov", "a", **{"ticket-id": -1}))
    assert (r.status_code, r.json()["field"]) == (400, "$.peer.ticket-id")


async def test_a_reference_go_peer_joins_with_ticket_id_minus_one(
    client: httpx.AsyncClient,
) -> None:
    """GO-2023 sends ``"ticket-id": -1`` on a normal join; the HOMS issues a real ticket."""
    assert (await client.post("/homs", json=create("ov"))).status_code == 200
    r = await client.post("/peer", json=join("ov", "go-1", **{"ticket-id": -1}))
    assert r.status_code == 202
    assert r.json()["peer"]["ticket-id"] == 1
    r = await client.post("/peer", json=join("ov", "go-2", **{"ticket-id": -1}))
    assert r.json()["peer"]["ticket-id"] == 2


async def test_closed_overlay_refusal_is_407_with_the_reference_body(
    client: httpx.AsyncClient,
) -> None:
    closed = create("c", auth={"type": "closed", "admin_key": "k", "peerlist": ["alice"]})
    assert (await client.post("/homs", json=closed)).status_code == 200
    r = await client.post("/peer", json=join("c", "mallory"))
    assert r.status_code == 407
    assert r.json() == {"overlay": {"overlay-id": "c"}}
    assert "peer list" in r.headers["x-homs-error"]
    assert (await client.post("/peer", json=join("c", "alice"))).status_code == 202


async def test_admin_removal_needs_the_owner_credentials(client: httpx.AsyncClient) -> None:
    assert (await client.post("/homs", json=create("ov"))).status_code == 200
    r = await client.post("/api/HybridOverlayRemoval", json={"overlay-id": "ov"})
    assert r.status_code == 400
    wrong = {"overlay-id": "ov", "owner-id": "owner", "admin_key": "guess"}
    assert (await client.post("/api/HybridOverlayRemoval", json=wrong)).status_code == 400
    assert (await client.get("/homs", params={"overlay-id": "ov"})).json() != []
    right = {"overlay-id": "ov", "owner-id": "owner", "admin_key": "admin"}
    r = await client.post("/api/HybridOverlayRemoval", json=right)
    assert (r.status_code, r.json()) == (200, {"overlay-id": "ov"})
    assert (await client.get("/homs", params={"overlay-id": "ov"})).json() == []


async def test_submesh_join_answers_200_with_parent_and_source(client: httpx.AsyncClient) -> None:
    assert (await client.post("/homs", json=create("core"))).status_code == 200
    sub = create(
        "mesh",
        type="sub",
        **{"sub-type": "mesh", "parent-overlay-id": "core", "source-peer-id": "src"},
    )
    assert (await client.post("/homs", json=sub)).status_code == 200
    for pid in ("src", "m1"):
        r = await client.post("/peer", json=join("mesh", pid, type="sub", sub_type="mesh"))
        assert r.status_code == 200
    body = r.json()
    assert body["overlay"]["parent-overlay-id"] == "core"
    assert body["overlay"]["source-peer-id"] == "src"
    assert [e["peer-id"] for e in body["overlay"]["status"]["peer_info_list"]] == ["src"]
    r = await client.post("/peer", json=join("mesh", "t1"))  # wrong kind for this overlay
    assert (r.status_code, r.json()["field"]) == (400, "$.overlay.type")
    status = (await client.get("/api/OverlayStatus", params={"overlay_id": "mesh"})).json()
    assert status["overlay"]["parent-overlay-id"] == "core"
    assert status["overlay"]["source-peer-id"] == "src"
    q = (await client.get("/homs", params={"overlay-id": "mesh"})).json()
    assert q[0]["overlay"]["source-peer-id"] == "src"


async def test_status_topology_and_registry(client: httpx.AsyncClient) -> None:
    assert (await client.post("/homs", json=create("ov"))).status_code == 200
    caps = {"nat": "none", "uplink_kbps": 10000}
    for pid in ("a", "b"):
        r = await client.post("/peer", json=join("ov", pid, expires=60, capabilities=caps))
        assert r.status_code == 202
    sent = report("ov", "b", "pw", ["a"])
    assert (await client.post("/peer/report", json=sent)).status_code == 200
    topo = (await client.get("/api/OverlayTopology", params={"overlay_id": "ov"})).json()
    assert topo["nodes"] == [
        {"id": "a", "ticket_id": 1, "seeder": True},
        {"id": "b", "ticket_id": 2},
    ]
    assert topo["links"] == [{"source": "b", "target": "a", "primary": True}]
    status = (await client.get("/api/OverlayStatus", params={"overlay_id": "ov"})).json()
    assert [p["num_primary"] for p in status["peers"]] == [0, 1]
    assert all(p["expires_at"] - p["last_seen"] == 60 for p in status["peers"])
    info = (await client.get("/api/PeerInfo", params={"peer_id": "a"})).json()
    assert (info["addresses"], info["capabilities"]) == (["tcp://127.0.0.1:9"], caps)
    for path in ("/api/OverlayStatus", "/api/OverlayTopology", "/api/OverlayCostMap"):
        assert (await client.get(path)).status_code == 404
        assert (await client.get(path, params={"overlay_id": "nope"})).status_code == 404
    assert (await client.get("/api/PeerInfo", params={"peer_id": "zz"})).status_code == 404


async def test_one_member_is_shown_without_the_whole_overlay(client: httpx.AsyncClient) -> None:
    assert (await client.post("/homs", json=create("ov"))).status_code == 200
    for pid in ("a", "b"):
        assert (await client.post("/peer", json=join("ov", pid, expires=60))).status_code == 202
    status = (await client.get("/api/OverlayStatus", params={"overlay_id": "ov"})).json()
    member = await client.get("/api/OverlayMember", params={"overlay_id": "ov", "peer_id": "b"})
    assert member.status_code == 200
    assert member.json() == status["peers"][1]  # the same member, as OverlayStatus shows it
    missing = {
        ("ov", "zz"): "?peer_id",  # not a member
        ("nope", "a"): "?overlay_id",  # no such overlay
        ("ov", ""): "?peer_id",  # no member named
    }
    for (oid, pid), field in missing.items():
        r = await client.get("/api/OverlayMember", params={"overlay_id": oid, "peer_id": pid})
        assert r.status_code == 404
        assert r.json()["field"] == field


async def test_openapi_documents_the_request_bodies(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    join_body = spec["paths"]["/peer"]["post"]["requestBody"]["content"]["application/json"]
    assert join_body["schema"] == {"$ref": "#/components/schemas/JoinRequest"}
    assert "JoinPeer" in spec["components"]["schemas"]
    # every $ref in the document resolves
    text = str(spec)
    for name in {part.split("'")[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in spec["components"]["schemas"], name
    assert (await client.get("/docs")).status_code == 200


async def test_new_admission_data_replaces_the_old(client: httpx.AsyncClient) -> None:
    closed = create("c", auth={"type": "closed", "admin_key": "k", "peerlist": ["alice"]})
    assert (await client.post("/homs", json=closed)).status_code == 200
    rotate = {
        "overlay": {
            "overlay-id": "c",
            "owner-id": "owner",
            "auth": {"admin_key": "k", "access_key": "new-key"},
        }
    }
    r = await client.put("/homs", json=rotate)
    assert r.json() == {
        "overlay": {"overlay-id": "c", "owner-id": "owner", "auth": {"access_key": "new-key"}}
    }
    assert (await client.post("/peer", json=join("c", "alice"))).status_code == 407
    r = await client.post("/peer", json=join("c", "alice", access_key="new-key"))
    assert r.status_code == 202
    relist = {
        "overlay": {
            "overlay-id": "c",
            "owner-id": "owner",
            "auth": {"admin_key": "k", "peerlist": ["bob"]},
        }
    }
    assert (await client.put("/homs", json=relist)).status_code == 200
    assert (
        await client.post("/peer", json=join("c", "carol", access_key="new-key"))
    ).status_code == 407
    assert (await client.post("/peer", json=join("c", "bob"))).status_code == 202
