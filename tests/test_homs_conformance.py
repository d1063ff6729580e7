"""Replay of the recorded ETRI HOMS-2023 exchanges against an hp2p HOMS (shared by tests).

Every exchange of ``shared/conformance/homp-etri-2023.jsonl`` is sent in order. For each one
the status code must be the recorded one, and for every success (and 407) answer the body must
equal the recorded body exactly (``GET /homs`` results compared as a set, since the reference
orders same-second creations arbitrarily), except for the deliberate differences in
:data:`DIFFERENCES`, which docs/homs.md lists with the same reasons.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hp2p.homs.app import create_app
from hp2p.homs.db import scratch_database
from hp2p.homs.liveness import sweep_once
from hp2p.homs.settings import HomsSettings
from recordings import HOMP_RECORDING, load, needs

GENERATED = "<overlay-id-1>"


def load_records() -> list[dict[str, Any]]:
    return load(HOMP_RECORDING)


def _drop_ghost(body: Any) -> Any:
    """Cost map without the reference's ghost peer m01, and p12 holding ticket 12 (no gap)."""
    nodes = body["data"]["nodes"]
    body["data"]["nodes"] = [n for n in nodes if not n["id"].startswith("m01;")]
    for n in body["data"]["nodes"]:
        if n["id"].startswith("p12;"):
            n["ticket_id"] = 12
    return body


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Any], Any]:
    def patch(body: Any) -> Any:
        node = body
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return body

    return patch


@dataclass(frozen=True)
class Difference:
    """A deliberate difference from the reference: our status, and how our body differs."""

    status: int
    reason: str
    patch: Callable[[Any], Any] | None = None
    expect_body: Any = None


# Keep in step with the table "Deliberate differences" in docs/homs.md.
DIFFERENCES: dict[str, Difference] = {
    "init_data": Difference(
        200,
        "WEB_SOCKET_PORT is the port that really serves the WebSocket (--ws-port, else the "
        "HTTP port); the reference always says its separate 8082",
        expect_body={},
    ),
    "create_duplicate_overlay_id": Difference(
        409, "a duplicate overlay-id is a conflict (ETRI: 500)"
    ),
    "create_missing_auth_object": Difference(400, "missing `auth` is a client error (ETRI: 500)"),
    "create_no_overlay_object": Difference(400, "missing `overlay` is a client error (ETRI: 500)"),
    "join_duplicate_peer_id": Difference(409, "duplicate peer-id is a conflict (ETRI: 500)"),
    "join_after_duplicate_ticket_gap": Difference(
        202,
        "the failed duplicate join burnt no ticket: 12, not 13",
        _set(("peer", "ticket-id"), 12),
    ),
    "join_sub_type_mesh": Difference(
        400, "a core overlay is a tree: refused, and no ghost peer is left (ETRI: 500 + ghost)"
    ),
    "query_after_mesh_join_ghost_peer": Difference(
        200, "no ghost peer: 12 members, not 13", _set((0, "overlay", "status", "num_peers"), 12)
    ),
    "cost_map_rest": Difference(
        200, "no ghost peer in the graph, and p12 holds ticket 12", _drop_ghost
    ),
    "recovery_false_is_recovery": Difference(
        202,
        "?recovery=false is a normal join (ETRI treats any value as recovery: 400)",
        expect_body={"peer": {"peer-id": "new-peer;1700000000000077", "ticket-id": 13}},
    ),
    "recovery_join_forged_ticket": Difference(
        403, "a recovery ticket must be the one issued to the peer (ETRI accepts forgeries)"
    ),
    "join_closed_peerlist_removed": Difference(
        407, "peer list enforced: an unlisted peer without an access_key is refused (ETRI: 202)"
    ),
    "join_closed_peerlist_go_style_id": Difference(
        407, "peer list enforced: 'alice;…' is not the listed 'alice' (ETRI: 202)"
    ),
    "join_after_root_left": Difference(
        202, "tickets have no gaps: 14, not 15", _set(("peer", "ticket-id"), 14)
    ),
    "admin_removal_unauthenticated": Difference(
        400, "the admin removal needs owner-id and admin_key (ETRI: none, 200)"
    ),
    "malformed_json_create": Difference(400, "bad JSON is a client error (ETRI: 500)"),
    "malformed_json_join": Difference(400, "bad JSON is a client error (ETRI: 500)"),
    "malformed_json_modify": Difference(400, "bad JSON is a client error (ETRI: 500)"),
    "malformed_json_remove": Difference(400, "an empty body is a client error (ETRI: 500)"),
    "wrong_content_type_create": Difference(
        415, "JSON must be sent as application/json (ETRI: 500)"
    ),
    "json_array_body_join": Difference(400, "a JSON array is not a HOMP object (ETRI: 500)"),
    "join_overlay_object_null": Difference(400, "`overlay: null` is a client error (ETRI: 500)"),
}

#: After the (refused) unauthenticated admin removal, the replay removes the same overlay
#: with credentials, so that every later step sees the state the recording saw.
AUTHENTICATED_ADMIN_REMOVAL = {
    "overlay-id": "conf-closed-list",
    "owner-id": "alice",
    "admin_key": "adminCL",
}


@dataclass
class ReplayResult:
    generated_id: str | None = None
    failures: list[str] = field(default_factory=list)
    checked: int = 0


def _subst(value: Any, generated: str | None) -> Any:
    if generated is None:
        return value
    text = json.dumps(value)
    return json.loads(text.replace(GENERATED, generated))


def _is_query(record: dict[str, Any]) -> bool:
    req = record["request"]
    return bool(req["method"] == "GET" and req["path"].split("?")[0] == "/homs")


def _canonical(body: Any, record: dict[str, Any]) -> Any:
    if _is_query(record) and isinstance(body, list):
        return sorted(body, key=lambda item: json.dumps(item, sort_keys=True))
    return body


def _contains(ours: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(ours, dict) and all(
            k in ours and _contains(ours[k], v) for k, v in expected.items()
        )
    return bool(ours == expected)


async def replay(
    client: httpx.AsyncClient,
    *,
    expire_now: Callable[[], Awaitable[None]],
    before_step: Callable[[str, ReplayResult], Awaitable[None]] | None = None,
    after_step: Callable[[str, ReplayResult], Awaitable[None]] | None = None,
) -> ReplayResult:
    """Send every recorded exchange; collect every mismatch instead of stopping at the first.

    ``expire_now`` must make the HOMS drop the ``expires: 2`` peer of the expiry demo (advance
    a fake clock and sweep, or wait for a real sweep). ``before_step``/``after_step`` let the
    WebSocket replay interleave its steps and check the events each HOMP step pushed.
    """
    result = ReplayResult()
    for record in load_records():
        step = record["step"]
        req = record["request"]
        if before_step is not None:
            await before_step(step, result)
        if step == "query_after_expiry":
            await expire_now()
        if step == "admin_removal_unknown":
            done = await client.post("/api/HybridOverlayRemoval", json=AUTHENTICATED_ADMIN_REMOVAL)
            if done.status_code != 200 or done.json() != {"overlay-id": "conf-closed-list"}:
                result.failures.append(
                    f"authenticated admin removal: {done.status_code} {done.text[:200]}"
                )
        path = req["path"]
        if result.generated_id is not None:
            path = path.replace(GENERATED, result.generated_id)
        headers: dict[str, str] = {}
        content: bytes | None = None
        if "raw_body" in req:
            content = req["raw_body"].encode()
            headers["content-type"] = req["content_type"]
        elif req["body"] is not None:
            content = json.dumps(_subst(req["body"], result.generated_id)).encode()
            headers["content-type"] = "application/json"
        resp = await client.request(req["method"], path, content=content, headers=headers)
        result.checked += 1
        if step == "create_open_generated_id" and resp.status_code == 200:
            result.generated_id = resp.json()["overlay"]["overlay-id"]
        if after_step is not None:
            await after_step(step, result)
        recorded = record["response"]
        diff = DIFFERENCES.get(step)
        want_status = diff.status if diff else recorded["status"]
        if resp.status_code != want_status:
            result.failures.append(
                f"{step}: status {resp.status_code} != {want_status}; body {resp.text[:300]}"
            )
            continue
        if step == "create_open_generated_id":
            result.generated_id = resp.json()["overlay"]["overlay-id"]
        try:
            ours = resp.json()
        except ValueError:
            result.failures.append(f"{step}: body is not JSON: {resp.text[:200]!r}")
            continue
        if resp.status_code >= 400 and resp.status_code != 407:
            if not (isinstance(ours, dict) and isinstance(ours.get("error"), str)):
                result.failures.append(f"{step}: error body without 'error': {ours!r}")
            continue
        if diff is not None and diff.expect_body is not None:
            if not _contains(ours, diff.expect_body):
                result.failures.append(f"{step}: {ours!r} lacks {diff.expect_body!r}")
            continue
        if diff is not None and diff.status != recorded["status"]:
            continue  # refused where the reference accepted: nothing more to compare
        expected = _subst(copy.deepcopy(recorded["body"]), result.generated_id)
        if diff is not None and diff.patch is not None:
            expected = diff.patch(expected)
        if _canonical(ours, record) != _canonical(expected, record):
            result.failures.append(
                f"{step}: body differs\n  ours:     {json.dumps(ours)[:600]}\n"
                f"  recorded: {json.dumps(expected)[:600]}"
            )
    return result


# ---------------------------------------------------------------------------- tests


class FakeClock:
    """A clock the test moves by hand, so expiry needs no sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


requires_shared = needs(HOMP_RECORDING)


def replay_settings(database: str) -> HomsSettings:
    # The replay needs the ETRI rule "last leave/expiry deletes the overlay" (docs/homs.md).
    # The reference corpus creates overlays without `security` and joins without keys: the
    # HOMS serves it as `hp2p homs --default-security reference-compat` would.
    return HomsSettings(
        database=database,
        delete_empty_overlays=True,
        admin_key_cost=2**10,
        default_security="reference-compat",
        ephemeral_keys=True,
    )


async def run_asgi_replay(database: str) -> ReplayResult:
    clock = FakeClock()
    settings = replay_settings(database)
    app = create_app(settings, clock=clock, run_expiry_sweep=False)
    store = app.state.store

    async def expire_now() -> None:
        clock.now += 3.0
        await sweep_once(store)

    transport = httpx.ASGITransport(app=app)

    # Steps in the recording are seconds apart; move the clock a little per request so
    # that creation order is strict, as it was there.
    async def tick(_request: httpx.Request) -> None:
        clock.now += 0.001

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://homs", event_hooks={"request": [tick]}
        ) as client,
    ):
        return await replay(client, expire_now=expire_now)


def assert_replay_ok(result: ReplayResult) -> None:
    assert result.checked == len(load_records())
    assert not result.failures, "\n".join(result.failures)


@requires_shared
async def test_replay_matches_recording_on_sqlite(tmp_path: Path) -> None:
    result = await run_asgi_replay(f"sqlite:///{tmp_path / 'replay.db'}")
    assert_replay_ok(result)


@requires_shared
@pytest.mark.postgres
async def test_replay_matches_recording_on_postgresql() -> None:
    base = os.environ.get("HP2P_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("set HP2P_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres")
    async with scratch_database(base, "hp2p_test") as url:
        result = await run_asgi_replay(url)
    assert_replay_ok(result)


def test_differences_are_documented() -> None:
    """Every deliberate difference in this table is also explained in docs/homs.md."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "homs.md").read_text()
    missing = [step for step in DIFFERENCES if f"`{step}`" not in doc]
    assert not missing, f"docs/homs.md does not list: {missing}"
