"""The IoT gateway with a real Mosquitto, a real HOMS and CoreTree peers on loopback TCP.

Every test starts its own broker (tests/mqtt_helpers.py); the HOMS is one process per module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from hp2p.apps.iot.gateway import Gateway, GatewayError
from hp2p.apps.iot.reading import (
    APP_ID,
    MAX_PAYLOAD,
    MAX_TOPIC,
    PAYLOAD_TYPE,
    Reading,
    decode_reading,
)
from hp2p.homs.launch import running_homs
from hp2p.peer.api import Peer
from hp2p.peer.node import Delivery
from hp2p.peer.settings import NodeSettings
from hp2p.peer.subscription import Subscription
from mqtt_helpers import Events, Mosquitto, TcpCutoff
from node_helpers import FAST

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def homs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_homs(tmp_path_factory.mktemp("homs")) as homs:
        yield homs.url


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    proc = Mosquitto(tmp_path).start()
    yield proc
    proc.stop()


def gateway(
    homs_url: str,
    broker_url: str,
    events: Events,
    *,
    create: str | None = None,
    join: str | None = None,
    peer_id: str,
    topics: list[str],
    **kwargs: Any,
) -> Gateway:
    node = NodeSettings(
        homs=homs_url,
        create=create,
        join=join,
        peer_id=peer_id,
        join_timeout=15.0,
        leave_timeout=3.0,
    )
    kwargs.setdefault("reconnect_max", 0.5)
    return Gateway(node, config=FAST, broker=broker_url, topics=topics, on_event=events, **kwargs)


@pytest.fixture
async def publisher(broker: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-publisher") as client:
        yield client


async def readings(sub: Subscription[Delivery], count: int, within: float = 15.0) -> list[Reading]:
    """``count`` IoT readings from ``sub`` (other deliveries are skipped), checked on decode."""
    out: list[Reading] = []
    async with asyncio.timeout(within):
        while len(out) < count:
            delivery = await sub.get()
            if delivery.app_id == APP_ID:
                assert delivery.payload_type == PAYLOAD_TYPE
                out.append(decode_reading(delivery.data))
    return out


def sample(i: int, device: str = "dev-1") -> tuple[str, bytes, float]:
    ts = 1_700_000_000.0 + i / 8
    payload = json.dumps({"ts": ts, "device": device, "value": i}).encode()
    return f"sensors/{device}/temperature", payload, ts


async def test_every_peer_receives_every_reading_exactly_once(
    homs_url: str, broker: Mosquitto, publisher: aiomqtt.Client
) -> None:
    events = Events()
    gw = gateway(
        homs_url, broker.url, events, create="iot-once", peer_id="gw-once", topics=["sensors/#"]
    )
    async with gw:
        await events.wait("mqtt_connected")
        async with (
            Peer(homs_url, join="iot-once", peer_id="p1", config=FAST) as p1,
            Peer(homs_url, join="iot-once", peer_id="p2", config=FAST) as p2,
        ):
            subs = [p1.messages(gaps=False), p2.messages(gaps=False)]
            sent = [sample(i, f"dev-{i % 4}") for i in range(60)]
            for topic, payload, _ in sent:
                await publisher.publish(topic, payload, qos=1)
            for sub in subs:
                got = await readings(sub, len(sent))
                assert [r.number for r in got] == list(range(1, 61))
                assert [(r.topic, r.payload, r.device_ts) for r in got] == sent
                assert {(r.gateway, r.epoch, r.qos) for r in got} == {("gw-once", gw.epoch, 1)}
                assert all(abs(r.received_ts - time.time()) < 60 for r in got)
                with pytest.raises(TimeoutError):  # exactly once: nothing more comes
                    await readings(sub, 1, within=0.5)
            status = gw.status()
            assert (status["received"], status["published"], status["dropped"]) == (60, 60, 0)


async def test_malformed_messages_are_counted_and_the_next_one_flows(
    homs_url: str, broker: Mosquitto, publisher: aiomqtt.Client
) -> None:
    events = Events()
    gw = gateway(
        homs_url, broker.url, events, create="iot-bad", peer_id="gw-bad", topics=["sensors/#"]
    )
    async with gw, Peer(homs_url, join="iot-bad", peer_id="p1", config=FAST) as p1:
        await events.wait("mqtt_connected")
        sub = p1.messages(gaps=False)
        await publisher.publish("sensors/big", b"x" * (MAX_PAYLOAD + 1), qos=1)
        await publisher.publish("sensors/" + "t" * MAX_TOPIC, b"{}", qos=1)
        await publisher.publish("sensors/empty", b"", qos=1)  # an empty payload is a reading
        await publisher.publish("sensors/text", b"not json \xff", qos=0)
        (empty, text) = await readings(sub, 2)
        assert (empty.topic, empty.payload, empty.device_ts) == ("sensors/empty", b"", None)
        assert (text.topic, text.payload, text.qos, text.number) == (
            "sensors/text",
            b"not json \xff",
            0,
            2,
        )
        status = gw.status()
        assert status["malformed"] == 2
        assert status["malformed_by"] == {"payload_too_large": 1, "topic_too_long": 1}
        reasons = [f["reason"] for k, f in events.seen if k == "malformed"]
        assert reasons == ["payload_too_large", "topic_too_long"]
        assert not gw.failed.is_set()


async def test_broker_restart_reconnects_and_later_messages_arrive(
    homs_url: str, tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path).start()
    events = Events()
    gw = gateway(
        homs_url,
        broker.url,
        events,
        create="iot-restart",
        peer_id="gw-restart",
        topics=["sensors/#"],
    )
    try:
        async with gw, Peer(homs_url, join="iot-restart", peer_id="p1", config=FAST) as p1:
            sub = p1.messages(gaps=False)
            await events.wait("mqtt_connected")
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.publish(*sample(1)[:2], qos=1)
            (first,) = await readings(sub, 1)
            broker.stop()
            await events.wait("mqtt_lost")
            mark = len(events.seen)
            await events.wait("mqtt_unreachable", after=mark)  # retries while it is down
            broker.start()
            await events.wait("mqtt_connected", lambda f: f["reconnect"], after=mark)
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.publish(*sample(2)[:2], qos=1)
            (second,) = await readings(sub, 1)
            assert (first.number, second.number) == (1, 2)
            assert second.payload == sample(2)[1]
            status = gw.status()
            assert status["reconnects"] == 1
            assert status["mqtt_failures"] >= 2
            assert status["mqtt_connected"] is True
    finally:
        broker.stop()


async def test_qos1_messages_sent_while_the_gateway_was_cut_off_arrive_after_reconnection(
    homs_url: str, broker: Mosquitto, publisher: aiomqtt.Client
) -> None:
    cutoff = TcpCutoff(broker.port)
    await cutoff.open()
    events = Events()
    gw = gateway(
        homs_url,
        f"mqtt://127.0.0.1:{cutoff.port}",
        events,
        create="iot-cut",
        peer_id="gw-cut",
        topics=["sensors/#"],
    )
    try:
        async with gw, Peer(homs_url, join="iot-cut", peer_id="p1", config=FAST) as p1:
            sub = p1.messages(gaps=False)
            await events.wait("mqtt_connected")
            await cutoff.cut()
            await events.wait("mqtt_lost")
            sent = [sample(i) for i in range(10)]
            for topic, payload, _ in sent:  # the broker holds them for the gateway's session
                await publisher.publish(topic, payload, qos=1)
            await cutoff.open()
            await events.wait("mqtt_connected", lambda f: f["reconnect"])
            got = await readings(sub, len(sent))
            assert [r.payload for r in got] == [payload for _, payload, _ in sent]
            assert gw.status()["reconnects"] == 1
    finally:
        await cutoff.cut()


async def test_a_restarted_gateway_gets_what_came_while_it_was_away(
    homs_url: str, broker: Mosquitto, publisher: aiomqtt.Client
) -> None:
    async with Peer(homs_url, create="iot-away", peer_id="root", config=FAST) as root:
        sub = root.messages(gaps=False)
        events = Events()
        async with gateway(
            homs_url, broker.url, events, join="iot-away", peer_id="gw-away", topics=["sensors/#"]
        ) as first:
            await events.wait("mqtt_connected")
        sent = [sample(i) for i in range(5)]
        for topic, payload, _ in sent:
            await publisher.publish(topic, payload, qos=1)
        events = Events()
        async with gateway(
            homs_url, broker.url, events, join="iot-away", peer_id="gw-away", topics=["sensors/#"]
        ) as second:
            got = await readings(sub, len(sent))
        assert [r.payload for r in got] == [payload for _, payload, _ in sent]
        assert {(r.gateway, r.epoch) for r in got} == {("gw-away", second.epoch)}
        assert second.epoch != first.epoch
        assert [r.number for r in got] == [1, 2, 3, 4, 5]


class StalledGateway(Gateway):
    """A gateway whose tree stalls until ``release`` is set (a slow tree, made certain)."""

    release: asyncio.Event

    async def send(self, data: bytes) -> None:
        await self.release.wait()
        await super().send(data)


async def test_a_stalled_tree_fills_the_queue_and_drops_are_counted(
    homs_url: str, broker: Mosquitto, publisher: aiomqtt.Client
) -> None:
    events = Events()
    node = NodeSettings(homs=homs_url, create="iot-full", peer_id="gw-full", join_timeout=15.0)
    gw = StalledGateway(
        node,
        config=FAST,
        broker=broker.url,
        topics=["sensors/#"],
        queue=5,
        on_event=events,
        status_interval=0.2,
    )
    gw.release = asyncio.Event()
    async with gw, Peer(homs_url, join="iot-full", peer_id="p1", config=FAST) as p1:
        sub = p1.messages(gaps=False)
        await events.wait("mqtt_connected")
        for topic, payload, _ in (sample(i) for i in range(20)):
            await publisher.publish(topic, payload, qos=1)
        # reading 1 waits in the stalled publish, 5 are queued, 14 were dropped (oldest first)
        full = await events.wait("queue_full")
        assert full["when_full"] == "oldest"
        status = await events.wait("status", lambda f: f["received"] == 20)
        assert (status["dropped"], status["queued"], status["dropping"]) == (14, 5, True)
        gw.release.set()
        got = await readings(sub, 6)
        assert [r.number for r in got] == [1, 16, 17, 18, 19, 20]  # the holes show the loss
        await publisher.publish(*sample(99)[:2], qos=1)
        ok = await events.wait("queue_ok")
        assert (ok["dropped_run"], ok["dropped"]) == (14, 14)
        (last,) = await readings(sub, 1)
        assert last.number == 21
        assert gw.status()["published"] == 7


async def test_two_gateways_are_two_sources_of_one_coretree(
    homs_url: str, broker: Mosquitto, publisher: aiomqtt.Client
) -> None:
    ev_a, ev_b = Events(), Events()
    gw_a = gateway(
        homs_url, broker.url, ev_a, create="iot-two", peer_id="gw-a", topics=["site-a/#"]
    )
    gw_b = gateway(homs_url, broker.url, ev_b, join="iot-two", peer_id="gw-b", topics=["site-b/#"])
    async with gw_a, gw_b, Peer(homs_url, join="iot-two", peer_id="p1", config=FAST) as p1:
        sub = p1.messages(gaps=False)
        await ev_a.wait("mqtt_connected")
        await ev_b.wait("mqtt_connected")
        for i in range(5):
            await publisher.publish(f"site-a/dev/{i}", b"a%d" % i, qos=1)
            await publisher.publish(f"site-b/dev/{i}", b"b%d" % i, qos=1)
        got = await readings(sub, 10)
        by_gateway: dict[str, list[tuple[int, bytes]]] = {}
        for r in got:
            by_gateway.setdefault(r.gateway, []).append((r.number, r.payload))
        assert by_gateway == {
            "gw-a": [(i + 1, b"a%d" % i) for i in range(5)],
            "gw-b": [(i + 1, b"b%d" % i) for i in range(5)],
        }


def _gateway_process(homs_url: str, broker: Mosquitto, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hp2p",
            "iot",
            "gateway",
            "--homs",
            homs_url,
            "--mqtt",
            broker.url,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def _next_event(
    proc: subprocess.Popen[str], kind: str, within: float = 30.0
) -> dict[str, Any]:
    assert proc.stdout is not None
    stdout = proc.stdout
    async with asyncio.timeout(within):
        while True:
            line = await asyncio.to_thread(stdout.readline)
            assert line, f"gateway exited: {proc.stderr.read() if proc.stderr else ''}"
            event: dict[str, Any] = json.loads(line)
            if event["event"] == kind:
                return event


async def test_the_command_runs_a_gateway_process_with_json_events(
    homs_url: str, broker: Mosquitto, publisher: aiomqtt.Client
) -> None:
    proc = _gateway_process(
        homs_url,
        broker,
        "--create",
        "iot-cli",
        "--id",
        "gw-cli",
        "--topic",
        "sensors/#",
        "--json-events",
        "--status-interval",
        "0.5",
    )
    try:
        joined = await _next_event(proc, "joined")
        assert (joined["gateway"], joined["client_id"]) == ("gw-cli", "hp2p-gw-gw-cli")
        await _next_event(proc, "mqtt_connected")
        async with Peer(homs_url, join="iot-cli", peer_id="p1", config=FAST) as p1:
            sub = p1.messages(gaps=False)
            await publisher.publish(*sample(1)[:2], qos=1)
            await publisher.publish("sensors/x", b"y" * (MAX_PAYLOAD + 5), qos=1)
            (reading,) = await readings(sub, 1)
            assert (reading.gateway, reading.number, reading.device_ts) == (
                "gw-cli",
                1,
                sample(1)[2],
            )
            malformed = await _next_event(proc, "malformed")
            assert malformed["reason"] == "payload_too_large"
        proc.send_signal(signal.SIGTERM)
        status = await _next_event(proc, "status")
        while status["malformed"] < 1:
            status = await _next_event(proc, "status")
        assert (status["received"], status["published"], status["malformed"]) == (2, 1, 1)
        left = await _next_event(proc, "left")
        assert left["unpublished"] == 0
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topic", "a/#", "--create", "x", "--overlay", "y"], "give --overlay"),
        (["--topic", "a/#"], "give --overlay"),
        (["--topic", "a/#/b", "--create", "x"], "'#' must be a whole, last level"),
        (["--topic", "a", "--create", "x", "--mqtt", "http://h:1"], "mqtt:// or mqtts://"),
        (["--topic", "a", "--create", "x", "--queue", "0"], "at least 1 reading"),
        (["--topic", "a", "--create", "x", "--set", "max_childs=3"], "max_childs"),
    ],
)
def test_the_command_refuses_bad_options_in_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "hp2p", "iot", "gateway", "--homs", "http://127.0.0.1:9", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.startswith("hp2p iot gateway: ")
    assert len(done.stderr.strip().splitlines()) == 1


def session_present(port: int, client_id: str) -> bool:
    """Whether the broker still holds a session for ``client_id`` (the CONNACK flag)."""
    import paho.mqtt.client as paho

    flags: list[bool] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_connect = lambda c, u, f, rc, p: flags.append(bool(f.session_present))
    client.connect("127.0.0.1", port)
    deadline = time.monotonic() + 10
    while not flags and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    assert flags, "no CONNACK within 10 s"
    return flags[0]


@pytest.mark.parametrize("stable_id", [True, False])
async def test_only_a_gateway_with_a_stable_id_leaves_its_session_on_the_broker(
    homs_url: str, broker: Mosquitto, stable_id: bool
) -> None:
    events = Events()
    node = NodeSettings(
        homs=homs_url,
        create=f"iot-session-{stable_id}",
        peer_id="gw-s" if stable_id else None,
        join_timeout=15.0,
    )
    gw = Gateway(node, config=FAST, broker=broker.url, topics=["sensors/#"], on_event=events)
    async with gw:
        connected = await events.wait("mqtt_connected")
        assert connected["persistent"] is stable_id
    assert await asyncio.to_thread(session_present, broker.port, gw.client_id) is stable_id


async def test_a_gateway_refuses_to_publish_into_a_subtree(
    homs_url: str, broker: Mosquitto
) -> None:
    from hp2p.peer.subtree import SubOverlayHomsClient
    from hp2p.trust.keys import SigningKey

    homs = SubOverlayHomsClient(homs_url, key=SigningKey.generate())
    try:
        core = await homs.create_overlay(
            "iot-core-x", "owner", "admin", heartbeat_interval=1, heartbeat_timeout=3
        )
        await homs.create_sub_overlay(
            "iot-live-x",
            sub_type="tree",
            parent_overlay_id=core,
            source_peer_id="src",
            owner_id="owner",
            admin_key="admin",
            parent_admin_key="admin",
        )
    finally:
        await homs.aclose()
    node = NodeSettings(homs=homs_url, join="iot-live-x", peer_id="gw-x", join_timeout=15.0)
    gw = Gateway(node, config=FAST, broker=broker.url, topics=["sensors/#"])
    with pytest.raises(
        GatewayError, match="'iot-live-x' is a SubTree: a gateway publishes into a CoreTree"
    ):
        await gw.start()
    assert gw.node.state != "attached"


class RefusingClient:
    """An MQTT client whose broker refuses every subscription (SUBACK 0x80), as brokers with
    ACLs on SUBSCRIBE do (Mosquitto grants and filters at delivery instead)."""

    async def subscribe(self, topic: str, qos: int) -> list[object]:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.reasoncodes import ReasonCode

        return [ReasonCode(PacketTypes.SUBACK, identifier=0x80)]


async def test_a_subscription_the_broker_refuses_is_an_error_that_says_why() -> None:
    node = NodeSettings(homs="http://127.0.0.1:9", create="x", peer_id="gw")
    gw = Gateway(node, broker="mqtt://127.0.0.1:9", topics=["secret/#"])
    with pytest.raises(GatewayError, match="refused the subscription to 'secret/#'"):
        await gw._connected(RefusingClient())  # type: ignore[arg-type]
    assert not gw.connected
    await gw.close()


async def test_a_cut_in_the_middle_of_a_stream_loses_no_qos1_message(
    homs_url: str, broker: Mosquitto, publisher: aiomqtt.Client
) -> None:
    cutoff = TcpCutoff(broker.port)
    await cutoff.open()
    events = Events()
    gw = gateway(
        homs_url,
        f"mqtt://127.0.0.1:{cutoff.port}",
        events,
        create="iot-midcut",
        peer_id="gw-midcut",
        topics=["sensors/#"],
        status_interval=0.05,
    )
    total = 3000
    try:
        async with gw, Peer(homs_url, join="iot-midcut", peer_id="p1", config=FAST) as p1:
            sub = p1.messages(maxsize=total + 10, gaps=False)
            await events.wait("mqtt_connected")

            async def stream() -> None:
                for i in range(total):
                    await publisher.publish("sensors/s", b"%d" % i, qos=1)

            sending = asyncio.ensure_future(stream())
            await events.wait("status", lambda f: f["received"] >= total // 3, within=60)
            await cutoff.cut()
            await events.wait("mqtt_lost")
            await sending
            await cutoff.open()
            seen: set[int] = set()  # QoS 1 is at least once: a duplicate may come
            async with asyncio.timeout(60):
                while len(seen) < total:
                    (reading,) = await readings(sub, 1)
                    seen.add(int(reading.payload))
            status = gw.status()
            assert status["received"] >= total
            assert status["published"] == status["received"]
    finally:
        await cutoff.cut()


async def test_messages_left_in_the_client_at_a_disconnection_are_not_lost() -> None:
    """paho acknowledged them already: the broker will not send them again."""
    node = NodeSettings(homs="http://127.0.0.1:9", create="x", peer_id="gw")
    gw = Gateway(node, broker="mqtt://127.0.0.1:9", topics=["s/#"])
    client = aiomqtt.Client("127.0.0.1", 9)
    for i in range(3):
        client._queue.put_nowait(aiomqtt.Message(f"s/{i}", b"%d" % i, 1, False, i + 1, None))
    gw._take_left(client)
    assert [r.payload for r in (gw.ingest.take(), gw.ingest.take(), gw.ingest.take()) if r] == [
        b"0",
        b"1",
        b"2",
    ]
    assert gw.status()["received"] == 3
    await gw.close()
