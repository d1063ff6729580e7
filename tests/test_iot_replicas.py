"""``hp2p iot history --replicas 2`` end to end on 127.0.0.1: a real HOMS, a CoreTree publisher
of readings, the R3 bridge packing them into segments on a SubMesh, and six history member
processes. Each segment is stored by exactly the two members rendezvous hashing picks, every
member answers every query complete (fetching what it does not own from the mesh, without
storing it), and after two of the six are SIGKILLed (a third) the survivors repair: every
segment is again on two live members and every survivor still answers complete.

Storage per member against full replication is printed (``-s``) and checked.
Every wait has a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from hp2p.apps.iot.history_member import HistoryMember, HistorySettings
from hp2p.apps.iot.placement import Placement
from hp2p.apps.iot.reading import APP_ID, PAYLOAD_TYPE, Reading, encode_reading
from hp2p.homs.launch import HomsProcess
from hp2p.peer.mesh_node import MeshNode, MeshSettings
from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings
from peer_procs import EventProc, create_core_overlay
from test_iot_history import packed, query, start_bridge

pytestmark = pytest.mark.slow

TOPICS = ("sensors/t1", "sensors/t2")
MEMBERS = 6
REPLICAS = 2
PER_TOPIC = 120
SPACING = 0.25  # seconds of device time between readings: 1 s slices, 30 segments per topic
DEADLINE = 90.0


class ReplicaProc(EventProc):
    """``hp2p iot history --replicas 2`` with JSON events and its API on a free port."""

    def __init__(self, workdir: Path, homs_url: str, name: str) -> None:
        self.db = workdir / f"{name}.sqlite"
        cmd = [sys.executable, "-m", "hp2p", "iot", "history", "--homs", homs_url]
        cmd += ["--join", "iot-history", "--db", str(self.db), "--api", "127.0.0.1:0"]
        cmd += ["--replicas", str(REPLICAS), "--id", name, "--json-events"]
        super().__init__(workdir, name, cmd)
        self.url = ""

    async def ready(self) -> str:
        await asyncio.to_thread(self.wait_joined, DEADLINE)
        self.url = (await asyncio.to_thread(self.next_event, "api", DEADLINE))["url"]
        return self.url

    def stored(self) -> dict[int, int]:
        """Object number -> bytes of the segments in its file (read-only, beside the writer)."""
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return dict(db.execute("SELECT obj, size FROM segments").fetchall())
        finally:
            db.close()

    async def status(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            body: dict[str, Any] = (await client.get(f"{self.url}/status")).json()
        return body


def publish(gateway: PeerNode, base: float, first: int, count: int) -> dict[str, list[int]]:
    """``count`` readings per topic, numbered from ``first``, SPACING apart in device time."""
    sent: dict[str, list[int]] = {t: [] for t in TOPICS}
    for i in range(count):
        for k, topic in enumerate(TOPICS):
            number = first + 2 * i + k
            ts = base + i * SPACING
            payload = json.dumps({"ts": ts, "n": number}).encode()
            reading = Reading(topic, payload, ts, ts + 0.001, 0, "gw-1", 7, number)
            gateway.publish(encode_reading(reading), app_id=APP_ID, payload_type=PAYLOAD_TYPE)
            sent[topic].append(number)
    return sent


async def until(what: str, check: Any, deadline: float = DEADLINE) -> float:
    """Poll ``await check()`` until true; the seconds it took (bounded)."""
    start = time.monotonic()
    last: Any = None
    while True:  # bounded by the deadline
        last = await check()
        if last is True:
            return time.monotonic() - start
        assert time.monotonic() - start < deadline, (what, last)
        await asyncio.sleep(0.3)


async def complete(url: str, sent: dict[str, list[int]]) -> bool | tuple[Any, ...]:
    """Every topic answers every reading sent, exactly once, in time order, complete."""
    for topic, numbers in sent.items():
        body = await query(url, topic, wait=10.0)
        got = [r["number"] for r in body["readings"]]
        if not body["complete"] or Counter(got) != Counter(numbers):
            return (url, topic, body["count"], body["gaps"][:3])
        stamps = [r["ts"] for r in body["readings"]]
        assert stamps == sorted(stamps)
    return True


def copies(procs: list[ReplicaProc]) -> dict[int, list[str]]:
    """Object number -> the members whose file stores it."""
    where: dict[int, list[str]] = {}
    for p in procs:
        for obj in p.stored():
            where.setdefault(obj, []).append(p.name)
    return where


async def test_two_replicas_complete_answers_and_repair_after_a_third_is_killed(
    tmp_path: Path, homs: HomsProcess
) -> None:
    core_id = create_core_overlay(homs.url, "iot")
    gateway = PeerNode(NodeSettings(homs=homs.url, join=core_id, peer_id="gw-1"))
    await gateway.start()
    bridge, events = await start_bridge(homs.url, core_id)
    procs = [ReplicaProc(tmp_path, homs.url, f"h{i}") for i in range(MEMBERS)]
    try:
        for p in procs:
            await p.ready()
        names = sorted(p.name for p in procs)

        async def all_placed() -> bool | list[Any]:
            seen = [(await p.status())["placement"]["members"] for p in procs]
            return all(s == names for s in seen) or seen

        await until("every member sees the six", all_placed)
        overlay_id = (await procs[0].status())["overlay_id"]

        sent = publish(gateway, time.time() - 100, 1, PER_TOPIC)
        await packed(events, 2 * PER_TOPIC)
        segments = {e["object"] for e in events if e["event"] == "packed"}
        assert len(segments) >= 40

        # every segment on exactly the two members rendezvous hashing names
        placement = Placement(REPLICAS, names[0], overlay_id)
        placement.update(names, now=0.0)

        async def placed_exactly() -> bool | dict[int, tuple[list[str], list[str]]]:
            where = copies(procs)
            wrong = {
                o: (sorted(where.get(o, [])), sorted(placement.owners(o)))
                for o in sorted(segments)
                if sorted(where.get(o, [])) != sorted(placement.owners(o))
            }
            if wrong:
                return wrong
            return True

        await until("each segment on its two owners", placed_exactly)

        # every member answers complete, fetching what it does not own, storing nothing more
        for p in procs:
            await until(f"{p.name} answers complete", lambda p=p: complete(p.url, sent))
        assert await placed_exactly() is True
        fetched = [(await p.status())["stats"]["fetched"] for p in procs]
        assert all(0 < f <= len(segments) for f in fetched), fetched  # each once: cached
        sizes = [sum(p.stored().values()) for p in procs]
        total = sum(sum(p.stored().values()) for p in procs) // REPLICAS
        share = [s / total for s in sizes]
        print(
            f"\nstorage per member with --replicas {REPLICAS} of {MEMBERS}: {sizes} bytes "
            f"(full replication: {total} each; shares {[round(x, 2) for x in share]})"
        )
        assert sum(sizes) == REPLICAS * total
        files = [(await p.status())["store"]["bytes"] for p in procs]
        print(f"with every manifest (piece 0 of each segment) and loose pieces: {files} bytes")
        assert max(share) < 0.7  # about R/N = 1/3 each, not everything

        # SIGKILL two of six; the survivors drop them from the member set and repair
        dead, alive = procs[4:], procs[:4]
        for p in dead:
            p.proc.kill()
            p.proc.wait(timeout=10)
        killed_at = time.monotonic()
        survivors = sorted(p.name for p in alive)

        async def dead_gone() -> bool | list[Any]:
            seen = [(await p.status())["placement"]["members"] for p in alive]
            return all(s == survivors for s in seen) or seen

        detected = await until("the dead leave the member set", dead_gone)

        async def repaired() -> bool | dict[int, list[str]]:
            where = copies(alive)
            short = {o: where.get(o, []) for o in segments if len(where.get(o, [])) < REPLICAS}
            if short:
                return short
            return True

        await until("every segment again on two live members", repaired)
        repair = time.monotonic() - killed_at
        for p in alive:
            await until(f"{p.name} answers complete", lambda p=p: complete(p.url, sent))
        later = publish(gateway, time.time() - 40, 10_000, 20)  # placed among the four
        await packed(events, 2 * PER_TOPIC + 40)
        for topic in TOPICS:
            sent[topic] += later[topic]
        for p in alive:
            await until(f"{p.name} answers complete", lambda p=p: complete(p.url, sent))
        sizes = [sum(p.stored().values()) for p in alive]
        print(
            f"killed 2 of 6: member set updated after {detected:.1f} s, repaired after "
            f"{repair:.1f} s; storage of the four: {sizes} bytes"
        )
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.terminate()
        await bridge.close()
        await gateway.close()


async def test_a_segment_no_neighbour_holds_is_a_gap_naming_its_keepers(
    tmp_path: Path, homs: HomsProcess
) -> None:
    """A member that does not own a segment fetches it from its neighbours; when none holds it
    (its owner keeps nothing: a SubMesh peer that is no history member, then the bridge goes)
    the answer says so, naming the member it is kept by, instead of being silently short."""
    core_id = create_core_overlay(homs.url, "iot")
    gateway = PeerNode(NodeSettings(homs=homs.url, join=core_id, peer_id="gw-1"))
    await gateway.start()
    bridge, events = await start_bridge(homs.url, core_id)
    ghost = MeshNode(MeshSettings(homs=homs.url, join="iot-history", peer_id="ghost"))
    ghost.wants = lambda obj, manifest: False  # counted as a member, stores nothing
    member = HistoryMember(
        HistorySettings(
            homs=homs.url,
            join="iot-history",
            db=str(tmp_path / "keeper.sqlite"),
            peer_id="keeper",
            replicas=1,
            members_interval=0.3,
        )
    )
    closed = False
    try:
        await ghost.start()
        await member.start()

        async def placed() -> bool | tuple[str, ...]:
            assert member.placement is not None
            return member.placement.members == ("ghost", "keeper") or member.placement.members

        await until("the keeper sees the ghost", placed)
        sent = publish(gateway, time.time() - 100, 1, 40)
        await packed(events, 80)
        segments = {e["object"] for e in events if e["event"] == "packed"}
        assert member.placement is not None
        ghosts = {o for o in segments if member.placement.owners(o) == ["ghost"]}
        assert ghosts
        assert ghosts != segments

        async def stored_own() -> bool | int:
            core = member.node.core
            assert core is not None
            have = member.store.known
            ok = all(core.manifest(o) for o in segments) and segments - ghosts <= have
            return ok or len(have)

        await until("the keeper stores its own", stored_own)
        assert not member.store.known & ghosts  # never stored what it does not own
        await bridge.close()  # the only holder of the ghost's segments
        closed = True
        body = await member.query(TOPICS[0], 0, 1e10, wait=1.0)
        assert not body["complete"]
        unavailable = [g for g in body["gaps"] if g["kind"] == "unavailable"]
        assert unavailable
        assert all("no neighbour holds" in g["reason"] for g in unavailable)
        assert all("kept by ghost" in g["reason"] for g in unavailable)
        assert {g["objects"][0] for g in unavailable} <= ghosts
        got = {r["number"] for r in body["readings"]}
        assert got < set(sent[TOPICS[0]])  # what it keeps, and says what it lacks
    finally:
        await member.close()
        await ghost.close()
        if not closed:
            await bridge.close()
        await gateway.close()
