"""``hp2p iot state`` and ``hp2p iot watch`` with real processes on 127.0.0.1.

A HOMS, a CoreTree peer that publishes encoded readings through its local API (app-id
``hp2p-iot``; the gateway is another part), the R3 bridge feeding SubTree ``live`` with
``--subtree live:hp2p-iot``, and two state members on that SubTree: one republishing to the
real Mosquitto on 127.0.0.1:1883 (unique topic prefix; the test starts its own Mosquitto
when nothing listens there), one with ``--api-token`` republishing
to a broker that is down at first and started later (its own Mosquitto on a free port).
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import websockets

from hp2p.apps.iot.reading import APP_ID, Reading, encode_reading
from hp2p.apps.iot.state import ChangeLog, LiveState
from hp2p.apps.iot.state_api import StateApi, build_state_app
from hp2p.apps.iot.state_feed import StateFeed
from hp2p.apps.iot.watch import parse_sse
from hp2p.homs.launch import HomsProcess, free_port
from hp2p.peer.subscription import Delivery
from peer_procs import BridgeProc, EventProc, PeerProc, Procs

pytestmark = pytest.mark.slow

DEADLINE = 60.0
NOW_TS = 1_700_000_000.0


class StateProc(EventProc):
    """``hp2p iot state --json-events``; stopped by SIGTERM (it has no stdin commands)."""

    def __init__(self, workdir: Path, homs_url: str, name: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "hp2p", "iot", "state", "--homs", homs_url, "--id", name]
        cmd += ["--api", "127.0.0.1:0", "--json-events", *args]
        super().__init__(workdir, name, cmd)

    def leave(self) -> None:
        pass

    def stop(self) -> int | None:
        return self.terminate()

    @property
    def api(self) -> str:
        assert self.joined is not None
        return str(self.joined["api"])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


#: Our own Mosquitto processes, stopped at the end of the session.
_BROKERS: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _stop_own_brokers() -> Iterator[None]:
    yield
    while _BROKERS:
        proc = _BROKERS.pop()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


class Mosquitto:
    """Our own Mosquitto on a free port (for the broker-down-then-up case, and when the
    machine's broker on 1883 is not running)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        port = port or free_port()
        self.port = port
        conf = workdir / f"mosquitto-{uuid.uuid4().hex[:6]}.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "mosquitto.err").open("wb"),
        )
        _BROKERS.append(self.proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded: until it accepts connections
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def reading(topic: str, value: float, ts: float, number: int) -> bytes:
    payload = json.dumps({"value": value, "ts": ts}).encode()
    return encode_reading(Reading(topic, payload, ts, ts, 0, "test-gw", 7, number))


async def until(check: Callable[[], Awaitable[Any]], what: str, deadline: float = DEADLINE) -> Any:
    """``await check()`` once it is truthy (polled, bounded by ``deadline`` seconds)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {deadline} s: {what}")


async def get(url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, **kwargs)


async def topics_of(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    answer = (await get(f"{url}/state", headers=headers or {})).json()
    return {t["topic"]: t for t in answer["topics"]}


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    yield started
    for proc in reversed(started):
        proc.leave()
    for proc in reversed(started):
        proc.stop()


async def start_overlays(
    tmp_path: Path, homs: HomsProcess, procs: Procs, extra: list[list[str]]
) -> tuple[PeerProc, list[StateProc]]:
    """CoreTree publisher, bridge to SubTree ``live``, one state member per ``extra`` (on
    ``live``, or on the CoreTree when its first item is ``core``)."""
    core = PeerProc(
        tmp_path, homs.url, "pub", "--create", "iot", "--set", "admin_key=admin",
        "--api", "127.0.0.1:0",
    )  # fmt: skip
    procs.append(core)
    await asyncio.to_thread(core.wait_joined)
    bridge = BridgeProc(
        tmp_path, homs.url, "--core", core.overlay_id, "--id", "b1", "--subtree", "live:hp2p-iot"
    )
    procs.append(bridge)
    joined = await asyncio.to_thread(bridge.next_event, "joined", 90)
    live = {t["title"]: t["overlay_id"] for t in joined["targets"]}["live"]
    members = [
        StateProc(tmp_path, homs.url, f"m{i}", "--join", core.overlay_id, *args[1:])
        if args[:1] == ["core"]
        else StateProc(tmp_path, homs.url, f"m{i}", "--join", live, *args)
        for i, args in enumerate(extra)
    ]
    procs.extend(members)
    for member in members:
        await asyncio.to_thread(member.wait_joined, 90)
    return core, members


async def publish(core: PeerProc, data: bytes, app_id: str = APP_ID) -> None:
    assert core.joined is not None
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            f"{core.joined['api']}/publish",
            params={"app_id": app_id},
            content=data,
            headers={"Authorization": f"Bearer {core.joined['api_token']}"},
        )
    answer.raise_for_status()


async def sse_until(
    url: str,
    headers: dict[str, str],
    done: Callable[[list[Any]], bool],
    ready: asyncio.Event | None = None,
) -> Any:
    """Events of ``GET /state/stream`` (with ``headers``) until ``done(events)``; ``ready`` is
    set once the first event arrived."""
    got: list[tuple[str, str, dict[str, Any]]] = []

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", f"{url}/state/stream", headers=headers) as answer,
        ):
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            lines: list[str] = []
            async for line in answer.aiter_lines():
                lines.append(line)
                if line == "":
                    got.extend(parse_sse(iter(lines)))
                    lines.clear()
                    if got and ready is not None:
                        ready.set()
                    if done(got):
                        return

    await asyncio.wait_for(read(), DEADLINE)
    return got


def changed(topic: str, value: float) -> Callable[[list[Any]], bool]:
    def done(events: list[Any]) -> bool:
        return any(
            e == "change" and d["topic"] == topic and d["payload"]["value"] == value
            for e, _, d in events
        )

    return done


async def test_members_keep_the_latest_reading_per_topic_and_stream_changes(
    tmp_path: Path, homs: HomsProcess, procs: Procs
) -> None:
    prefix = f"hp2p-test-{uuid.uuid4().hex[:12]}/"
    down_port = free_port()
    shared = 1883 if _listening(1883) else (await asyncio.to_thread(Mosquitto, tmp_path)).port
    core, (m0, m1, m2) = await start_overlays(
        tmp_path,
        homs,
        procs,
        [
            ["--mqtt-out", f"mqtt://127.0.0.1:{shared}", "--out-prefix", prefix],
            ["--api-token", "--mqtt-out", f"mqtt://127.0.0.1:{down_port}"],
            ["core"],  # a member on the CoreTree itself sees the other applications too
        ],
    )
    assert m1.joined is not None
    auth = {"Authorization": f"Bearer {m1.joined['api_token']}"}
    assert (await get(f"{m1.api}/state")).status_code == 401
    t0 = time.time()

    async with aiomqtt.Client("127.0.0.1", shared) as mqtt:
        await mqtt.subscribe(f"{prefix}#")
        async with websockets.connect(m0.api.replace("http", "ws") + "/state/ws") as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert first == {"type": "snapshot", "version": 0, "topics": []}
            ready = asyncio.Event()
            sse = asyncio.ensure_future(sse_until(m1.api, auth, changed("room/b", 20.0), ready))
            await asyncio.wait_for(ready.wait(), 10)  # its snapshot came: it sees what follows
            await publish(core, reading("room/a", 1.0, t0 - 3, 1))
            await publish(core, reading("room/a", 2.0, t0 - 1, 2))
            await publish(core, reading("room/a", 1.5, t0 - 2, 3))  # older: stale
            await publish(core, b"\xc1 not msgpack")  # malformed, counted
            await publish(core, b"hello", app_id="etri_data")  # another application
            await publish(core, reading("room/b", 20.0, t0 - 1, 4))

            # the WebSocket: the two changes of room/a, then room/b (room/a 1.5 was stale)
            frames = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(3)]
            assert [(f["topic"], f["payload"]["value"], f["version"]) for f in frames] == [
                ("room/a", 1.0, 1),
                ("room/a", 2.0, 2),
                ("room/b", 20.0, 3),
            ]
            events = await sse
            assert events[0][0] == "snapshot"
            values = [d["payload"]["value"] for e, _, d in events if e == "change"]
            assert values == [1.0, 2.0, 20.0]

        for member, headers, others in ((m0, {}, 0), (m1, auth, 0), (m2, {}, 1)):
            state = await until(
                functools.partial(_two_topics, member.api, headers), f"two topics on {member.name}"
            )
            assert state["room/a"]["payload"] == {"value": 2.0, "ts": t0 - 1}
            assert state["room/a"]["gateway"] == "test-gw"
            assert state["room/b"]["payload"]["value"] == 20.0
            status = (await get(f"{member.api}/status", headers=headers)).json()
            counted = status["state"]
            assert (counted["applied"], counted["stale"]) == (3, 1), member.name
            assert counted["malformed"] == {"not_a_reading": 1}
            # the bridge forwards only app-id hp2p-iot to the SubTree
            assert status["feed"]["other_app_ids"] == others
            assert status["peer"]["state"] == "attached"

        one = await get(f"{m0.api}/state/room/a")
        assert one.status_code == 200
        assert one.json()["payload"]["value"] == 2.0
        missing = await get(f"{m0.api}/state/no/such/topic")
        assert missing.status_code == 404
        assert "no reading of topic 'no/such/topic'" in missing.text
        only_b = (await get(f"{m0.api}/state", params={"prefix": "room/b"})).json()
        assert [t["topic"] for t in only_b["topics"]] == ["room/b"]
        # the guard: a DNS-rebinding Host and a cross-site Origin are refused
        rebound = await get(f"{m0.api}/state", headers={"Host": "evil.example"})
        assert rebound.status_code == 421
        cross = await get(f"{m0.api}/state", headers={"Origin": "http://x.example"})
        assert cross.status_code == 403

        # --mqtt-out: the latest value of each topic, retained, under the prefix
        latest = await _mqtt_until(mqtt, 2, lambda got: got.get(f"{prefix}room/a") == 2.0)
        assert latest[f"{prefix}room/b"] == 20.0
    async with aiomqtt.Client("127.0.0.1", shared) as late:  # a dashboard started later
        await late.subscribe(f"{prefix}room/a")
        async with asyncio.timeout(10):
            message = await anext(aiter(late.messages))
        assert message.retain
        assert _value(message) == 2.0

    # resume: an SSE client that saw version 1 gets versions 2 and 3, no snapshot
    resumed = await sse_until(m1.api, auth | {"Last-Event-ID": "1"}, changed("room/b", 20.0))
    assert [(e, i) for e, i, _ in resumed] == [("change", "2"), ("change", "3")]

    # the broker of m1 was down: counted, and once it is up the latest values arrive
    out = (await get(f"{m1.api}/status", headers=auth)).json()["mqtt_out"]
    assert out["connect_failures"] >= 1
    assert out["pending"] == 2
    broker = await asyncio.to_thread(Mosquitto, tmp_path, down_port)
    try:
        async with aiomqtt.Client("127.0.0.1", down_port) as mqtt2:
            await mqtt2.subscribe("room/#")
            # the member's backoff is a few seconds at this point
            seen = await _mqtt_until(mqtt2, 2, lambda got: len(got) == 2, deadline=45)
        assert seen == {"room/a": 2.0, "room/b": 20.0}
        # the broker restarts (losing its retained messages): the member reconnects and
        # sends what changed meanwhile; the tree never waited for it
        broker.stop()
        await publish(core, reading("room/a", 3.0, t0, 5))
        broker = await asyncio.to_thread(Mosquitto, tmp_path, down_port)
        async with aiomqtt.Client("127.0.0.1", down_port) as mqtt3:
            await mqtt3.subscribe("room/#")
            again = await _mqtt_until(mqtt3, 1, lambda got: "room/a" in got, deadline=45)
        assert again == {"room/a": 3.0}
        out = (await get(f"{m1.api}/status", headers=auth)).json()["mqtt_out"]
        assert out["connects"] == 2
        assert out["published"] == 3
    finally:
        broker.stop()


async def _two_topics(api: str, headers: dict[str, str]) -> dict[str, Any] | None:
    topics = await topics_of(api, headers)
    return topics if len(topics) == 2 else None


def _value(message: aiomqtt.Message) -> Any:
    payload = message.payload
    assert isinstance(payload, bytes | bytearray)
    return json.loads(bytes(payload))["value"]


async def _mqtt_until(
    client: aiomqtt.Client,
    most: int,
    done: Callable[[dict[str, Any]], bool],
    deadline: float = 30,
) -> dict[str, Any]:
    """The values by topic of the messages ``client`` gets until ``done`` (bounded)."""
    got: dict[str, Any] = {}
    async with asyncio.timeout(deadline):
        async for message in client.messages:
            got[str(message.topic)] = _value(message)
            if done(got) and len(got) >= most:
                break
    return got


async def _stream_clients(api: str) -> int:
    return int((await get(f"{api}/status")).json()["feed"]["stream_clients"])


def watch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "hp2p", "iot", "watch", *args]
    env = {"COLUMNS": "160", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


async def test_watch_renders_the_table_and_explains_an_unreachable_member(
    tmp_path: Path, homs: HomsProcess, procs: Procs
) -> None:
    core, (m0,) = await start_overlays(tmp_path, homs, procs, [[]])
    t0 = time.time()
    await publish(core, reading("hall/temp", 21.5, t0, 1))
    await until(lambda: topics_of(m0.api), "the reading on the member")

    once = await asyncio.to_thread(watch, "--api", m0.api, "--once")
    assert once.returncode == 0, once.stderr
    assert "hall/temp" in once.stdout
    assert "21.5" in once.stdout
    assert "test-gw" in once.stdout
    assert "1 topics" in once.stdout

    # --count 1: follows the SSE stream until one change arrives, then prints the table
    follower = asyncio.ensure_future(asyncio.to_thread(watch, "--api", m0.api, "--count", "1"))
    await until(lambda: _stream_clients(m0.api), "watch connected")
    for n in range(2, 12):  # bounded: the first change may beat watch's snapshot
        await publish(core, reading("hall/door", n, t0 + n, n))
        done, _ = await asyncio.wait([follower], timeout=5)
        if done:
            break
    counted = await asyncio.wait_for(follower, DEADLINE)
    assert counted.returncode == 0, counted.stderr
    assert "hall/door" in counted.stdout
    assert "2 topics" in counted.stdout

    # Ctrl-C: a clean end, status 0, no traceback
    env = {"COLUMNS": "160", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    live = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "hp2p", "iot", "watch", "--api", m0.api],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        await until(lambda: _stream_clients(m0.api), "watch connected")
        live.send_signal(signal.SIGINT)
        out_b, err_b = await asyncio.wait_for(live.communicate(), 30)
    finally:
        if live.returncode is None:
            live.kill()
    out, err = out_b.decode(), err_b.decode()
    assert live.returncode == 0, err
    assert "stopped" in out
    assert "Traceback" not in err

    dead = await asyncio.to_thread(watch, "--api", f"http://127.0.0.1:{free_port()}", "--once")
    assert dead.returncode == 1
    assert "cannot reach the state member" in dead.stderr
    assert "Traceback" not in dead.stderr


async def test_a_slow_stream_client_gets_a_resync_and_streams_are_bounded() -> None:
    """A client that stops reading costs the member nothing: the feed goes on (it never waits
    for a client), and when the client reads again the changes it missed have left the
    bounded log, so it gets one ``resync`` snapshot. Real TCP, the state API without a peer."""
    feed = StateFeed(LiveState(log=ChangeLog(max_changes=50)), max_clients=1)
    api = StateApi(build_state_app(feed, dict), "127.0.0.1:0")
    await api.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port, limit=1 << 20)
        writer.write(b"GET /state/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"event: snapshot"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        # a second stream is one too many
        refused = await get(f"{api.url}/state/stream")
        assert refused.status_code == 503
        ws_url = api.url.replace("http", "ws") + "/state/ws"
        for query, status in (("", 503), ("?since=abc", 400)):
            with pytest.raises(websockets.InvalidStatus) as denied:
                await websockets.connect(ws_url + query)
            assert denied.value.response.status_code == status
            assert b"detail" in denied.value.response.body
        async with httpx.AsyncClient(timeout=10) as client:
            body = await client.request("GET", f"{api.url}/state", content=b"12345")
        assert body.status_code == 413  # nothing here takes a request body
        payload = b"x" * 4000
        started = time.monotonic()
        for n in range(1, 5001):  # 20 MB of changes: more than any socket buffer holds
            now = NOW_TS + n
            data = encode_reading(Reading(f"t/{n % 20}", payload, None, now, 0, "gw", 1, n))
            feed.deliver(Delivery("src", n, data, APP_ID, "x"))
            if n % 50 == 0:
                await asyncio.sleep(0)  # let the server run meanwhile
        fed = time.monotonic() - started
        assert feed.state.counters.applied == 5000
        assert fed < 30, f"feeding took {fed:.1f}s"
        rest = await asyncio.wait_for(reader.readuntil(b"event: resync"), 30)
        assert b"event: resync" in rest
        line = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        resync = json.loads(line.decode().partition("data: ")[2])
        assert len(resync["topics"]) == 20  # the whole state, once: not the missed changes
        assert feed.stats.resyncs >= 1
        writer.close()
    finally:
        await api.stop()
