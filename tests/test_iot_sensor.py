"""Simulated sensors: the schedule (pure) and ``hp2p iot sensor`` against a real Mosquitto,
alone and feeding a gateway into a CoreTree."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p.apps.iot.gateway import Gateway
from hp2p.apps.iot.reading import APP_ID, decode_reading, device_timestamp
from hp2p.apps.iot.sensor import SensorError, SensorPlan, parse_size
from hp2p.homs.launch import running_homs
from hp2p.peer.api import Peer
from hp2p.peer.settings import NodeSettings
from mqtt_helpers import Events, Mosquitto
from node_helpers import FAST

SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_schedule_spreads_messages_over_devices_at_the_rate() -> None:
    plan = SensorPlan(devices=4, rate=10.0, count=25)
    assert plan.total == 25
    assert [plan.due(t) for t in (-1.0, 0.0, 0.05, 0.1, 0.99, 1.0, 100.0)] == [
        0,
        1,
        1,
        2,
        10,
        11,
        25,
    ]
    assert plan.at(10) == 1.0
    assert [plan.topic(k) for k in (0, 1, 5)] == [
        "sensors/dev-0/temperature",
        "sensors/dev-1/temperature",
        "sensors/dev-1/temperature",
    ]
    assert SensorPlan(rate=100.0, duration=2.5).total == 250
    assert SensorPlan(rate=100.0, duration=2.5, count=10).total == 10
    assert SensorPlan().total is None


def test_payloads_are_json_readings_of_the_size_asked() -> None:
    plan = SensorPlan(devices=3, size=(64, 1024), prefix="plant")
    rng = random.Random(5)
    for k in range(50):
        payload = plan.payload(k, 1_700_000_000.25, rng)
        doc = json.loads(payload)
        assert doc["device"] == f"dev-{k % 3}"
        assert isinstance(doc["value"], float)
        assert 64 <= len(payload) <= 1024
        assert device_timestamp(payload) == 1_700_000_000.25


def test_bad_plans_say_what_is_wrong() -> None:
    assert parse_size("128") == (128, 128)
    assert parse_size("64..1024") == (64, 1024)
    for bad in ["", "x", "10..5", "0", "1..70000", "5..", "..5"]:
        with pytest.raises(SensorError, match="--size"):
            parse_size(bad)
    for kwargs, message in [
        ({"devices": 0}, "--devices"),
        ({"rate": 0.0}, "--rate"),
        ({"rate": float("nan")}, "--rate"),
        ({"count": 0}, "--count"),
        ({"duration": -1.0}, "--duration"),
        ({"prefix": "a/#"}, "--prefix"),
    ]:
        with pytest.raises(SensorError, match=message):
            SensorPlan(**kwargs)  # type: ignore[arg-type]


@given(
    devices=st.integers(1, 1000),
    low=st.integers(1, 3000),
    extra=st.integers(0, 3000),
    k=st.integers(0, 10**9),
    ts=st.floats(0, 4e9),
)
def test_every_payload_fits_its_range_once_the_json_fits(
    devices: int, low: int, extra: int, k: int, ts: float
) -> None:
    plan = SensorPlan(devices=devices, size=(low, low + extra))
    payload = plan.payload(k, ts, random.Random(k))
    bare = len(json.dumps({"ts": ts, "device": plan.device(k), "value": 0.0, "pad": ""}))
    assert len(payload) <= max(low + extra, bare + 8)
    assert json.loads(payload)["ts"] == ts


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    proc = Mosquitto(tmp_path).start()
    yield proc
    proc.stop()


def _sensor(broker: Mosquitto, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-m", "hp2p", "iot", "sensor", "--mqtt", broker.url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def _finish(proc: subprocess.Popen[str], within: float = 60.0) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(asyncio.to_thread(proc.communicate), within)
    return proc.returncode, out, err


@pytest.mark.slow
async def test_the_command_sends_the_messages_it_reports(broker: Mosquitto) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as sub:
        await sub.subscribe("lab/#", qos=1)
        proc = _sensor(
            broker,
            "--devices",
            "3",
            "--rate",
            "200",
            "--count",
            "30",
            "--size",
            "64..256",
            "--prefix",
            "lab",
            "--quiet",
            "--json",
        )
        got: list[aiomqtt.Message] = []
        async with asyncio.timeout(30):
            async for message in sub.messages:
                got.append(message)
                if len(got) == 30:
                    break
        status, out, err = await _finish(proc)
    assert status == 0, err
    report = json.loads(out)
    assert (report["sent"], report["acked"], report["failed"], report["error"]) == (30, 30, 0, None)
    assert report["seconds"] >= 29 / 200  # a steady rate, not a burst
    assert {m.topic.value for m in got} == {f"lab/dev-{d}/temperature" for d in range(3)}
    sizes = [len(m.payload) for m in got if isinstance(m.payload, bytes)]
    assert len(sizes) == 30
    assert all(64 <= n <= 256 for n in sizes)
    assert report["bytes"] == sum(sizes)


@pytest.mark.slow
async def test_a_lost_broker_ends_the_run_with_a_one_line_error(broker: Mosquitto) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as sub:
        await sub.subscribe("sensors/#")
        proc = _sensor(broker, "--rate", "100", "--quiet")  # until stopped
        async with asyncio.timeout(30):
            await anext(aiter(sub.messages))  # it is sending
    broker.stop()
    status, out, err = await _finish(proc)
    assert status == 1
    assert out.startswith("hp2p iot sensor: sent ")
    assert err.startswith("hp2p iot sensor: MQTT broker ")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
async def test_sensors_feed_a_gateway_and_a_peer_gets_every_reading(
    broker: Mosquitto, tmp_path: Path
) -> None:
    events = Events()
    with running_homs(tmp_path) as homs:
        node = NodeSettings(homs=homs.url, create="iot-sim", peer_id="gw-sim", join_timeout=15.0)
        gateway = Gateway(node, config=FAST, broker=broker.url, topics=["sim/#"], on_event=events)
        async with gateway, Peer(homs.url, join="iot-sim", peer_id="p1", config=FAST) as peer:
            sub = peer.messages(gaps=False)
            await events.wait("mqtt_connected")
            proc = _sensor(
                broker,
                "--prefix",
                "sim",
                "--devices",
                "5",
                "--rate",
                "500",
                "--count",
                "400",
                "--quiet",
                "--json",
            )
            readings = []
            async with asyncio.timeout(60):
                while len(readings) < 400:
                    delivery = await sub.get()
                    if delivery.app_id == APP_ID:
                        readings.append(decode_reading(delivery.data))
            status, out, err = await _finish(proc)
            assert status == 0, err
    assert json.loads(out)["acked"] == 400
    assert [r.number for r in readings] == list(range(1, 401))
    assert all(r.device_ts == json.loads(r.payload)["ts"] for r in readings)
    assert all(0 <= r.received_ts - (r.device_ts or 0) < 30 for r in readings)
    assert len({r.topic for r in readings}) == 5
