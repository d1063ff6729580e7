"""The HOMS signalling/monitoring WebSocket against a real `hp2p homs` process.

* ``etri-2023`` profile: the HOMP recording is replayed with a monitor subscribed, checking the
  events every step pushes, and the recorded signalling interlude (hello, relays, bye,
  re-registration, monitor ``get``) is replayed with real websockets clients: the same
  deliveries, except the deliberate differences in :data:`PUSH_DIFFERENCES`.
* ``secure`` profile (the default): every refusal of issue #3.

Absence of a delivery is checked without sleeping: every socket's stream is ordered, so after
the silent steps a sentinel relay is sent and must be the very next message that arrives.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from homp_bodies import create, join
from hp2p.homs.launch import HomsProcess, free_port
from recordings import SIGNALLING_RECORDING, load, needs
from test_homs_conformance import (
    DIFFERENCES,
    GENERATED,
    ReplayResult,
    assert_replay_ok,
    replay,
)

pytestmark = pytest.mark.slow

DEADLINE_S = 10.0

#: Steps whose pushed events differ from the recording, and how (docs/homs.md lists them).
PUSH_DIFFERENCES: dict[str, list[dict[str, Any]] | None] = {
    # Refused joins leave nothing behind, so nothing is announced.
    "join_sub_type_mesh": [],
    "recovery_join_forged_ticket": [],
    "join_closed_peerlist_removed": [],
    "join_closed_peerlist_go_style_id": [],
    "admin_removal_unauthenticated": [],
    # The replay removes conf-closed-list with credentials before this step.
    "admin_removal_unknown": [
        {"overlay_id": "conf-closed-list", "type": "overlay", "action": "remove"},
        {
            "overlay_id": "conf-closed-list",
            "peer_id": "alice",
            "type": "log",
            "message": "Overlay Removal.",
        },
    ],
    # ?recovery=false is a normal join here.
    "recovery_false_is_recovery": [
        {
            "overlay_id": "conf-open-01",
            "type": "peer",
            "action": "add_peer",
            "node": {"id": "new-peer;1700000000000077", "ticket_id": 13},
        },
        {
            "overlay_id": "conf-open-01",
            "peer_id": "new-peer;1700000000000077",
            "type": "log",
            "message": "Overlay Join.",
        },
    ],
    # The expiry sweep says why the peer left, and the overlay removal follows it.
    "query_after_expiry": [
        {
            "overlay_id": "conf-expiry",
            "peer_id": "e1;1",
            "type": "log",
            "message": "Overlay Leave(Expired).",
        },
        {"overlay_id": "conf-expiry", "type": "overlay", "action": "remove"},
    ],
}
#: Tickets without the reference's gaps (docs/homs.md, "Deliberate differences").
TICKET_FIXES = {"join_after_duplicate_ticket_gap": 12, "join_after_root_left": 14}
#: The last leave of an overlay says why it was removed.
REMOVAL_TEXT_FIXES = {"leave_last_peer_closed_key": "Overlay Removal(Empty)."}


def load_signalling() -> list[dict[str, Any]]:
    return load(SIGNALLING_RECORDING)


def expected_pushes() -> dict[str, list[dict[str, Any]]]:
    """What our HOMS must push for each HOMP step (the recording plus the differences)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in load_signalling():
        if rec["step"].startswith("push:") and rec["trigger"].get("homp_step") != "scheduler":
            out[rec["step"][5:]] = copy.deepcopy(rec["received"]["monitor"])
    for step, ticket in TICKET_FIXES.items():
        out[step][0]["node"]["ticket_id"] = ticket
    for step, text in REMOVAL_TEXT_FIXES.items():
        out[step][-1]["message"] = text
    for step, events in PUSH_DIFFERENCES.items():
        if events is not None:
            out[step] = copy.deepcopy(events)
    return out


class Sock:
    """A websockets client whose messages are read one at a time, each with a deadline."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def send(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        await self.conn.send(text)

    async def next(self) -> Any:
        return json.loads(await asyncio.wait_for(self.conn.recv(), DEADLINE_S))


@asynccontextmanager
async def sock(url: str) -> AsyncIterator[Sock]:
    async with connect(url, open_timeout=DEADLINE_S, max_size=2**20) as conn:
        yield Sock(conn)


async def wait_status(base: str, **want: int) -> None:
    """Poll ``GET /api/SignallingStatus`` until it shows ``want`` (bounded)."""
    deadline = time.monotonic() + DEADLINE_S
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = (await client.get("/api/SignallingStatus")).json()
            if all(last.get(k) == v for k, v in want.items()):
                return
            await asyncio.sleep(0.02)  # bounded poll on observable server state
    raise AssertionError(f"signalling status {last} never reached {want}")


def _subst(value: Any, generated: str | None) -> Any:
    if generated is None:
        return value
    return json.loads(json.dumps(value).replace(GENERATED, generated))


@pytest.fixture
def etri_homs(tmp_path: Path) -> Iterator[HomsProcess]:
    ws_port = free_port()
    homs = HomsProcess(
        tmp_path,
        "sqlite:///ws-replay.db",
        *("--signalling-profile", "etri-2023", "--ws-port", str(ws_port)),
        *("--delete-empty-overlays", "--expiry-sweep", "0.2"),
        # the recorded reference exchanges create overlays without `security`, join keyless
        *("--default-security", "reference-compat"),
    )
    homs.ws_port = ws_port  # type: ignore[attr-defined]
    try:
        homs.wait_ready()
        yield homs
    finally:
        homs.stop()


@needs(SIGNALLING_RECORDING)
async def test_etri_profile_replays_the_recorded_signalling_and_pushes(
    etri_homs: HomsProcess,
) -> None:
    homs = etri_homs
    ws_port: int = homs.ws_port  # type: ignore[attr-defined]
    bare = f"ws://127.0.0.1:{ws_port}"
    first_line = homs.stdout_path.read_text().splitlines()[0]
    assert first_line == (
        f"hp2p homs: serving http://127.0.0.1:{homs.port} (database SQLite file "
        f"{(homs.workdir / 'ws-replay.db').resolve()}, WebSocket also on port {ws_port})"
    )
    on_http_port = f"ws://127.0.0.1:{homs.port}/ws"
    pushes = expected_pushes()
    ws_steps = [r for r in load_signalling() if not r["step"].startswith("push:")]
    assert ws_steps[0]["step"] == "monitor_hello"
    problems: list[str] = []

    async with (
        sock(on_http_port) as monitor,
        sock(bare) as peer_a,
        sock(bare) as peer_b,
        sock(bare) as peer_c,
        sock(bare) as sentinel,
        httpx.AsyncClient(base_url=homs.url, timeout=10.0) as client,
    ):
        sockets = {"monitor": monitor, "peerA": peer_a, "peerB": peer_b, "peerC": peer_c}
        sent = 1
        await monitor.send(ws_steps[0]["send"])
        await wait_status(homs.url, monitors=1, messages=sent)

        async def check_pushes(step: str, result: ReplayResult) -> None:
            for want in _subst(pushes.get(step, []), result.generated_id):
                got = await monitor.next()
                if got != want:
                    problems.append(f"push after {step}: got {got}, want {want}")

        async def interlude(step: str, result: ReplayResult) -> None:
            nonlocal sent
            if step != "recovery_join":
                return
            for rec in ws_steps[1:]:
                await run_ws_step(rec, result)
            # Nothing else was delivered to the peer sockets: a sentinel is next on each.
            for name in ("peerA", "peerB"):
                pid = f"sentinel-for-{name}"
                await sockets[name].send({"action": "hello", "peer-id": pid})
                await wait_status(homs.url, messages=sent + 1)
                await sentinel.send({"toid": pid, "type": "sentinel"})
                sent += 2
                got = await sockets[name].next()
                if got != {"toid": pid, "type": "sentinel"}:
                    problems.append(f"{name} received {got} after the recorded steps")

        async def run_ws_step(rec: dict[str, Any], result: ReplayResult) -> None:
            nonlocal sent
            step = rec["step"]
            if step == "relay_after_close_of_registered_socket":
                await peer_c.conn.close()
                await wait_status(homs.url, sockets=4)
            sender = sockets[rec["socket"]]
            await sender.send(rec["raw_send"] if rec["send"] is None else rec["send"])
            sent += 1
            await wait_status(homs.url, messages=sent)
            for name, messages in rec["received"].items():
                for want in messages:
                    if step == "monitor_get_current_cost_map":
                        want = DIFFERENCES["cost_map_rest"].patch(copy.deepcopy(want))  # type: ignore[misc]
                    got = await sockets[name].next()
                    if got != want:
                        problems.append(f"{step}: {name} got {got}, want {want}")

        # InitData announces the port that serves the socket (the replay checks only its shape).
        announced = (await client.get("/api/InitData")).json()
        assert announced == {"WEB_SOCKET_PORT": ws_port}
        result = await replay(
            client,
            expire_now=_wait_for_expiry(client),
            before_step=interlude,
            after_step=check_pushes,
        )
        assert_replay_ok(result)
        # Nothing more was pushed: the next event is the sentinel overlay's creation.
        await client.post("/homs", json=create("sentinel-overlay"))
        tail = await monitor.next()
        if tail != {"overlay_id": "sentinel-overlay", "type": "overlay", "action": "create"}:
            problems.append(f"pushed after the last step: {tail}")
    assert not problems, "\n".join(problems)


def _wait_for_expiry(client: httpx.AsyncClient) -> Any:
    async def wait() -> None:
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            r = await client.get("/homs", params={"overlay-id": "conf-expiry"})
            if r.json() == []:
                return
            await asyncio.sleep(0.1)  # bounded poll on observable state

    return wait


def _join(overlay_id: str, peer_id: str, password: str) -> dict[str, Any]:
    return join(overlay_id, peer_id, password=password, address="ws://127.0.0.1:8082", expires=600)


# ---------------------------------------------------------------------------- secure profile


@pytest.fixture(scope="module")
def secure_homs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomsProcess]:
    homs = HomsProcess(
        tmp_path_factory.mktemp("secure"),
        "sqlite:///secure.db",
        *("--ws-rate", "20", "--ws-burst", "30"),
    )
    try:
        homs.wait_ready()
        with httpx.Client(base_url=homs.url, timeout=10.0) as client:
            for overlay_id in ("ov-1", "ov-2"):
                assert client.post("/homs", json=create(overlay_id)).status_code == 200
            for overlay_id, peer_id in (("ov-1", "alice"), ("ov-1", "bob"), ("ov-2", "carol")):
                joined = client.post("/peer", json=_join(overlay_id, peer_id, f"pw-{peer_id}"))
                assert joined.status_code == 202
        yield homs
    finally:
        homs.stop()


def _hello(peer_id: str, password: str | None = None, **extra: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"action": "hello", "peer-id": peer_id, **extra}
    if password is not None:
        msg["password"] = password
    return msg


async def _expect_error(s: Sock, field: str | None, *words: str) -> dict[str, Any]:
    got = await s.next()
    assert got.get("action") == "error", got
    if field is not None:
        assert got.get("field") == field, got
    for word in words:
        assert word in got["reason"], got
    return dict(got)


async def test_secure_profile_refuses_unproven_and_out_of_overlay_signalling(
    secure_homs: HomsProcess,
) -> None:
    url = f"ws://127.0.0.1:{secure_homs.port}/ws"
    async with sock(url) as alice, sock(url) as bob, sock(url) as carol, sock(url) as mallory:
        # No password, wrong password, password of another overlay: refused.
        await mallory.send(_hello("bob"))
        await _expect_error(mallory, "$.password", "password")
        await mallory.send(_hello("bob", "wrong"))
        await _expect_error(mallory, "$.password", "not a member")
        await mallory.send(_hello("bob", "pw-bob", **{"overlay-id": "ov-2"}))
        await _expect_error(mallory, "$.password", "ov-2")
        # Relaying before a hello is refused.
        await mallory.send({"fromid": "bob", "toid": "alice", "type": "offer"})
        await _expect_error(mallory, "$", "hello")

        await alice.send(_hello("alice", "pw-alice", **{"overlay-id": "ov-1"}))
        await bob.send(_hello("bob", "pw-bob"))
        await carol.send(_hello("carol", "pw-carol"))
        await wait_status(secure_homs.url, registered=3)

        # A relay within the overlay arrives, with fromid filled in when missing.
        await alice.send({"toid": "bob", "type": "candidate", "candidate": "c1"})
        assert await bob.next() == {
            "toid": "bob",
            "type": "candidate",
            "candidate": "c1",
            "fromid": "alice",
        }
        # Spoofed fromid: refused, nothing delivered.
        await alice.send({"fromid": "carol", "toid": "bob", "type": "offer"})
        await _expect_error(alice, "$.fromid", "carol")
        # Another overlay's peer: refused.
        await alice.send({"fromid": "alice", "toid": "carol", "type": "offer"})
        await _expect_error(alice, "$.toid", "carol")
        # A member not connected: reported.
        await bob.send({"fromid": "bob", "toid": "nobody", "type": "offer"})
        await _expect_error(bob, "$.toid", "nobody")
        # Bad input is reported and the socket stays usable.
        await bob.send("{not json")
        await _expect_error(bob, None, "JSON")
        await bob.send({"type": "offer"})
        await _expect_error(bob, "$", "route")
        # Another socket's peer-id cannot be said goodbye to.
        await bob.send({"action": "bye", "peer-id": "alice"})
        await _expect_error(bob, "$.peer-id", "alice")
        # Monitor get of an unknown overlay is an error here (silent in etri-2023).
        await bob.send({"server": "ui", "action": "get", "overlay_id": "nope"})
        await _expect_error(bob, "$.overlay_id", "nope")
        # Still delivered after all that: nothing else reached bob or carol meanwhile.
        await alice.send({"fromid": "alice", "toid": "bob", "type": "answer", "n": 2})
        assert await bob.next() == {"fromid": "alice", "toid": "bob", "type": "answer", "n": 2}
        await bob.send({"fromid": "bob", "toid": "alice", "type": "offer", "n": 3})
        assert await alice.next() == {"fromid": "bob", "toid": "alice", "type": "offer", "n": 3}


async def test_secure_profile_bounds_size_and_rate(secure_homs: HomsProcess) -> None:
    url = f"ws://127.0.0.1:{secure_homs.port}/ws"
    async with sock(url) as big:
        await big.send({"toid": "x", "sdp": "a" * (65 * 1024)})
        with pytest.raises(ConnectionClosed) as closed:
            await big.next()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
    async with sock(url) as chatty:
        # 100 messages at once with a burst of 30 at 20/s: each gets an error until the limit
        # closes the socket.
        for _ in range(100):
            await chatty.send({"type": "noise"})
        reasons = []
        close_code = None
        for _ in range(101):
            try:
                reasons.append((await chatty.next())["reason"])
            except ConnectionClosed as closed:
                close_code = closed.rcvd.code if closed.rcvd is not None else None
                break
        assert close_code == 1008, "the rate limit did not close the socket with 1008"
        assert "rate limit" in reasons[-1]
        assert 30 <= len(reasons) < 100


async def test_monitor_feed_and_cost_map_in_secure_profile(secure_homs: HomsProcess) -> None:
    async with (
        sock(f"ws://127.0.0.1:{secure_homs.port}/") as monitor,
        httpx.AsyncClient(base_url=secure_homs.url, timeout=10.0) as client,
    ):
        token = secure_homs.operator_token  # secure monitoring needs the operator token
        await monitor.send({"server": "ui", "action": "hello", "token": token})
        await monitor.send({"server": "ui", "action": "get", "overlay_id": "ov-2"})
        cost_map = await monitor.next()  # answered in order, so the subscription is active
        assert cost_map["action"] == "current_cost_map"
        assert cost_map["data"]["nodes"] == [{"id": "carol", "ticket_id": 1, "seeder": True}]
        joined = await client.post("/peer", json=_join("ov-2", "dave", "pw-dave"))
        assert joined.status_code == 202
        assert await monitor.next() == {
            "overlay_id": "ov-2",
            "type": "peer",
            "action": "add_peer",
            "node": {"id": "dave", "ticket_id": 2},
        }
        assert (await monitor.next())["message"] == "Overlay Join."
