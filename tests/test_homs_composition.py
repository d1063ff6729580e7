"""The HOMS shows a CoreTree and its sub-overlays as one composition (issue #7, R3)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from homp_bodies import create, join
from hp2p.wire import homp
from hp2p.wire.errors import WireError
from node_helpers import asgi_client, homs_app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with homs_app(tmp_path) as app, asgi_client(app) as c:
        yield c


async def test_status_lists_sub_overlays_and_composition_starts_at_the_core_tree(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/homs", json=create("core"))).status_code == 200
    for oid, kind, source in (("live", "tree", "b1-live"), ("blocks", "mesh", "b1-blocks")):
        body = create(
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


KEY_A = "ed25519:" + "a1" * 32
KEY_B = "ed25519:" + "b2" * 32


def _submesh(oid: str, source: str, **extra: object) -> dict[str, object]:
    fields = {"sub-type": "mesh", "parent-overlay-id": "core", "source-peer-id": source}
    return create(oid, type="sub", **fields, **extra)


def _declare(body: dict, key: str) -> dict:
    body["overlay"]["source-key"] = key
    return body


async def _query_key(client: httpx.AsyncClient, oid: str) -> object:
    items = (await client.get("/homs", params={"overlay-id": oid})).json()
    return items[0]["overlay"].get("source-key")


async def test_a_source_key_given_at_creation_is_returned_in_query_join_and_status(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/homs", json=create("core"))).status_code == 200
    r = await client.post("/homs", json=_submesh("blocks", "src", **{"source-key": KEY_A}))
    assert r.status_code == 200
    assert r.json()["overlay"]["source-key"] == KEY_A
    assert await _query_key(client, "blocks") == KEY_A
    r = await client.post("/peer", json=join("blocks", "m1", type="sub", sub_type="mesh"))
    assert r.json()["overlay"]["source-key"] == KEY_A
    status = (await client.get("/api/OverlayStatus", params={"overlay_id": "blocks"})).json()
    assert status["overlay"]["source-key"] == KEY_A
    # a CoreTree has no source, and a key must be spelled exactly
    r = await client.post("/homs", json=create("c2", **{"source-key": KEY_A}))
    assert (r.status_code, r.json()["field"]) == (400, "$.overlay.type")
    r = await client.post("/homs", json=_submesh("b2", "src", **{"source-key": "ed25519:XY"}))
    assert (r.status_code, r.json()["field"]) == (400, "$.overlay.source-key")
    # an overlay without a key answers without the field (a reference peer sees nothing new)
    assert (await client.post("/homs", json=_submesh("plain", "src"))).status_code == 200
    items = (await client.get("/homs", params={"overlay-id": "plain"})).json()
    assert "source-key" not in items[0]["overlay"]


async def test_the_source_records_its_key_on_its_own_join_and_nobody_else_can(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/homs", json=create("core"))).status_code == 200
    assert (await client.post("/homs", json=_submesh("blocks", "src"))).status_code == 200
    # another peer may not declare a key for the source
    r = await client.post(
        "/peer", json=_declare(join("blocks", "mallory", type="sub", sub_type="mesh"), KEY_B)
    )
    assert (r.status_code, r.json()["field"]) == (400, "$.overlay.source-key")
    assert await _query_key(client, "blocks") is None
    # the source's join records it and the answer carries it
    source_join = _declare(join("blocks", "src", type="sub", sub_type="mesh"), KEY_A)
    r = await client.post("/peer", json=source_join)
    assert r.status_code == 200
    assert r.json()["overlay"]["source-key"] == KEY_A
    assert await _query_key(client, "blocks") == KEY_A
    r = await client.post("/peer", json=join("blocks", "m1", type="sub", sub_type="mesh"))
    assert r.json()["overlay"]["source-key"] == KEY_A
    # the source back with another key (lost key file) is refused before it joins
    leave = {
        "overlay": {"overlay-id": "blocks"},
        "peer": {"peer-id": "src", "auth": {"password": "pw"}},
    }
    assert (await client.request("DELETE", "/peer", json=leave)).status_code == 200
    r = await client.post(
        "/peer", json=_declare(join("blocks", "src", type="sub", sub_type="mesh"), KEY_B)
    )
    assert r.status_code == 409
    assert "PUT /homs" in r.json()["error"]
    status = (await client.get("/api/OverlayStatus", params={"overlay_id": "blocks"})).json()
    assert [p["peer-id"] for p in status["peers"]] == ["m1"]
    # the owner (admin key) may replace it; a wrong admin key changes nothing
    modify = {
        "overlay": {
            "overlay-id": "blocks",
            "owner-id": "owner",
            "auth": {"admin_key": "wrong"},
            "source-key": KEY_B,
        }
    }
    assert (await client.put("/homs", json=modify)).status_code != 200
    assert await _query_key(client, "blocks") == KEY_A
    modify["overlay"]["auth"] = {"admin_key": "admin"}
    r = await client.put("/homs", json=modify)
    assert r.status_code == 200
    assert r.json()["overlay"]["source-key"] == KEY_B
    assert await _query_key(client, "blocks") == KEY_B
    r = await client.post(
        "/peer", json=_declare(join("blocks", "src", type="sub", sub_type="mesh"), KEY_B)
    )
    assert r.status_code == 200


@settings(max_examples=200, deadline=None)
@example(KEY_A)
@example(KEY_A + "\n")  # `$` would let a trailing newline through
@given(
    st.one_of(
        st.text(max_size=80),
        st.builds(lambda h: "ed25519:" + h, st.text("0123456789abcdefABCDEF", max_size=70)),
    )
)
def test_fuzz_source_key_is_accepted_exactly_when_it_is_a_well_formed_key(key: str) -> None:
    body = msgspec.json.encode(_submesh("blocks", "src", **{"source-key": key}))
    well_formed = re.fullmatch(r"ed25519:[0-9a-f]{64}", key) is not None
    for decode in (homp.decode_create_request, homp.decode_join_request):
        if decode is homp.decode_join_request:
            body = msgspec.json.encode(_declare(join("blocks", "src", type="sub"), key))
        if well_formed:
            assert decode(body).overlay.source_key == key
        else:
            with pytest.raises(WireError) as info:
                decode(body)
            assert info.value.field == "$.overlay.source-key"
