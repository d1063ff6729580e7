"""The IoT history end to end on 127.0.0.1: a real HOMS, a CoreTree publisher of readings, the
R3 bridge packing them into segments on a SubMesh, and ``hp2p iot history`` member processes
answering queries over HTTP. Every wait has a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from hp2p.apps.bridge import Bridge, BridgeTarget
from hp2p.apps.iot.history_member import HistoryMember, HistorySettings
from hp2p.apps.iot.reading import APP_ID, PAYLOAD_TYPE, Reading, decode_reading, encode_reading
from hp2p.apps.iot.segments import SEGMENT_APP_ID, SegmentPacker, SegmentPolicy
from hp2p.homs.launch import HomsProcess
from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings
from peer_procs import CORE_ADMIN_KEY, EventProc, create_core_overlay

pytestmark = pytest.mark.slow

TOPICS = ("sensors/t1", "sensors/t2")
PER_TOPIC = 150
DEADLINE = 60.0


class HistoryProc(EventProc):
    """``hp2p iot history`` with JSON events and its query API on a free loopback port."""

    def __init__(self, workdir: Path, homs_url: str, name: str, db: Path) -> None:
        cmd = [sys.executable, "-m", "hp2p", "iot", "history", "--homs", homs_url]
        cmd += ["--join", "iot-history", "--db", str(db), "--api", "127.0.0.1:0", "--json-events"]
        super().__init__(workdir, name, cmd)
        self.url = ""

    async def ready(self) -> str:
        await asyncio.to_thread(self.wait_joined, DEADLINE)
        self.url = (await asyncio.to_thread(self.next_event, "api", DEADLINE))["url"]
        return self.url


class Readings:
    """Readings of one gateway, numbered from 1, filed at device times around ``base``."""

    def __init__(self, node: PeerNode, base: float) -> None:
        self.node = node
        self.base = base
        self.number = 0
        self.sent: dict[str, list[int]] = {t: [] for t in TOPICS}

    def publish(self, topic: str, count: int, *, again: Reading | None = None) -> Reading:
        last = again
        for _ in range(count):
            self.number += 1
            ts = self.base + self.number * 0.01
            payload = json.dumps({"ts": ts, "n": self.number}).encode()
            last = Reading(topic, payload, ts, ts + 0.001, 0, "gw-1", 7, self.number)
            self.sent[topic].append(self.number)
            self.node.publish(encode_reading(last), app_id=APP_ID, payload_type=PAYLOAD_TYPE)
        if again is not None:  # the same reading once more: a history stores it once
            self.node.publish(encode_reading(again), app_id=APP_ID, payload_type=PAYLOAD_TYPE)
        assert last is not None
        return last


async def query(url: str, topic: str, wait: float = 5.0) -> dict[str, Any]:
    params = {"topic": topic, "from": 0, "to": 1e10, "wait": wait}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"{url}/history", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def until_complete(url: str, want: dict[str, list[int]]) -> None:
    """Every topic answers every wanted reading exactly once, in time order, complete."""
    deadline = time.monotonic() + DEADLINE
    for topic, numbers in want.items():
        while True:  # bounded by the deadline
            body = await query(url, topic)
            if body["count"] >= len(numbers) and body["complete"]:
                break
            assert time.monotonic() < deadline, (url, topic, body["count"], body["gaps"])
            await asyncio.sleep(0.2)
        got = [r["number"] for r in body["readings"]]
        assert Counter(got) == Counter(numbers), (url, topic)
        stamps = [r["ts"] for r in body["readings"]]
        assert stamps == sorted(stamps)
        assert all(r["topic"] == topic and r["gateway"] == "gw-1" for r in body["readings"])


async def start_bridge(homs_url: str, core_id: str) -> tuple[Bridge, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    packer = SegmentPacker(SegmentPolicy(slice_seconds=1, grace=0.3))
    targets = [
        BridgeTarget("tree", "iot-live", "b1-iot-live", frozenset({APP_ID})),
        BridgeTarget("mesh", "iot-history", "b1-iot-history", frozenset({APP_ID}), packer=packer),
    ]
    bridge = Bridge(
        homs_url,
        core_id,
        targets,
        bridge_id="b1",
        core_admin_key=CORE_ADMIN_KEY,
        on_event=lambda kind, fields: events.append({"event": kind, **fields}),
    )
    await bridge.start()
    return bridge, events


async def packed(events: list[dict[str, Any]], readings: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while sum(e.get("count", 0) for e in events if e["event"] == "packed") < readings:
        assert time.monotonic() < deadline, [e for e in events if e["event"] != "forwarded"]
        await asyncio.sleep(0.1)


async def test_members_keep_the_history_backfill_survive_a_kill_and_a_restart(
    tmp_path: Path, homs: HomsProcess
) -> None:
    core_id = create_core_overlay(homs.url, "iot")
    gateway = PeerNode(NodeSettings(homs=homs.url, join=core_id, peer_id="gw-1"))
    await gateway.start()
    bridge, events = await start_bridge(homs.url, core_id)
    members: list[HistoryProc] = []
    try:
        members = [
            HistoryProc(tmp_path, homs.url, f"h{i}", tmp_path / f"h{i}.sqlite") for i in range(3)
        ]
        urls = [await m.ready() for m in members]
        readings = Readings(gateway, time.time() - 30)
        first = readings.publish(TOPICS[0], 1)
        readings.publish(TOPICS[0], PER_TOPIC - 1, again=first)
        readings.publish(TOPICS[1], PER_TOPIC)
        await packed(events, 2 * PER_TOPIC + 1)
        for url in urls:
            await until_complete(url, readings.sent)

        # the source publishes objects that are not segments: counted, not stored, no crash
        mesh = bridge._running[1].mesh
        assert mesh is not None
        mesh.publish(b"\x93garbage", app_id=SEGMENT_APP_ID, meta={"topic": TOPICS[0]})
        mesh.publish(b"not even msgpack", app_id="other", meta=None)
        for m in members:
            reasons = [(await asyncio.to_thread(m.next_event, "rejected", DEADLINE))["reason"]]
            reasons.append((await asyncio.to_thread(m.next_event, "rejected", DEADLINE))["reason"])
            assert any("not a segment" in r for r in reasons), reasons
        for url in urls:
            await until_complete(url, readings.sent)
            async with httpx.AsyncClient(timeout=10) as client:
                status = (await client.get(f"{url}/status")).json()
            assert status["store"]["rejected"] == 2
            assert status["store"]["segments"] >= 2
            assert status["replication"] == "full"
            async with httpx.AsyncClient(timeout=10) as client:
                bad = await client.get(f"{url}/history", params={"topic": "x", "from": 5, "to": 1})
            assert bad.status_code == 400
            assert "from < to" in bad.text

        # a late joiner backfills from its neighbours and answers the same
        late = HistoryProc(tmp_path, homs.url, "late", tmp_path / "late.sqlite")
        members.append(late)
        await until_complete(await late.ready(), readings.sent)

        # one member dies abruptly; the others answer, also about what came after
        members[0].proc.kill()
        members[0].proc.wait(timeout=10)
        readings.publish(TOPICS[0], 50)
        await packed(events, 2 * PER_TOPIC + 51)
        for url in [*urls[1:], late.url]:
            await until_complete(url, readings.sent)

        # restarted on the same file, it has its history at once, then catches up
        again = HistoryProc(tmp_path, homs.url, "h0-again", tmp_path / "h0.sqlite")
        members.append(again)
        url = await again.ready()
        body = await query(url, TOPICS[1], wait=0)
        assert sorted(r["number"] for r in body["readings"]) == readings.sent[TOPICS[1]]
        await until_complete(url, readings.sent)
    finally:
        for m in members:
            if m.proc.poll() is None:
                m.terminate()
        await bridge.close()
        await gateway.close()


async def test_the_iot_bridge_command_and_retention_with_an_explicit_gap(
    tmp_path: Path, homs: HomsProcess
) -> None:
    core_id = create_core_overlay(homs.url, "iot2")
    cmd = [sys.executable, "-m", "hp2p", "iot", "bridge", "--homs", homs.url, "--core", core_id]
    cmd += ["--id", "b2", "--segment-seconds", "1", "--grace", "0.3", "--json-events"]
    cmd += ["--core-admin-key", CORE_ADMIN_KEY]
    bridge = EventProc(tmp_path, "bridge", cmd)
    gateway = PeerNode(NodeSettings(homs=homs.url, join=core_id, peer_id="gw-1"))
    live: PeerNode | None = None
    member: HistoryMember | None = None
    try:
        joined = await asyncio.to_thread(bridge.next_event, "joined", DEADLINE)
        assert {t["title"] for t in joined["targets"]} == {"iot-live", "iot-history"}
        await gateway.start()
        live = PeerNode(NodeSettings(homs=homs.url, join="iot-live", peer_id="live-1"))
        live_readings = live.subscribe(1000)
        await live.start()
        member = HistoryMember(
            HistorySettings(
                homs=homs.url,
                join="iot-history",
                db=str(tmp_path / "m.sqlite"),
                retention_age=100.0,
                retention_interval=0.2,
            )
        )
        await member.start()
        now = time.time()
        old = Readings(gateway, now - 1000)
        old.publish(TOPICS[0], 20)
        recent = Readings(gateway, now - 5)
        recent.number = 1000
        recent.publish(TOPICS[0], 20)
        deadline = time.monotonic() + DEADLINE
        while True:  # bounded: the recent readings arrive, the old ones are dropped
            body = await member.query(TOPICS[0], now - 2000, now + 60, wait=1)
            numbers = [r["number"] for r in body["readings"]]
            if numbers == recent.sent[TOPICS[0]] and member.stats.dropped >= 1:
                break
            assert time.monotonic() < deadline, (numbers, member.status())
            await asyncio.sleep(0.2)
        assert not body["complete"]
        (gap,) = body["gaps"]
        assert gap["reason"].startswith("outside retention")
        assert gap["from"] == now - 2000
        assert now - 101 < gap["to"] <= time.time() - 100
        # the time the member keeps is complete
        body = await member.query(TOPICS[0], now - 50, now + 60, wait=1)
        assert body["complete"]
        assert body["count"] == 20
        # the SubTree got every reading as it was, one message each
        async with asyncio.timeout(DEADLINE):
            got = [await live_readings.get() for _ in range(40)]
        assert all(d.app_id == APP_ID for d in got)
        assert [decode_reading(d.data).number for d in got] == [
            *old.sent[TOPICS[0]],
            *recent.sent[TOPICS[0]],
        ]
    finally:
        if member is not None:
            await member.close()
        if live is not None:
            await live.close()
        await gateway.close()
        bridge.terminate()
