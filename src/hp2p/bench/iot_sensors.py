"""Simulated sensors for ``hp2p bench iot``: D MQTT clients publishing JSON readings at a rate.

``python -m hp2p.bench.iot_sensors --port P`` connects ``--devices`` clients to the broker,
prints ``{"event": "ready"}`` and then obeys ``run RATE COUNT SEED FIRST`` lines on stdin: it
publishes COUNT readings numbered from FIRST, at RATE per second over the devices in turn, on
``sensors/dev-XX/reading`` with QoS 0, and prints ``{"event": "done", ...}``.
``history RATE COUNT SPAN FIRST TOPIC`` publishes COUNT readings on one TOPIC whose ``ts``
spread over SPAN seconds in the past (an hour of history, sent at RATE). A client the broker
drops is connected again and the reading sent again; reconnections are counted
(``publish_errors``), and a reading that failed twice is not counted as published.

A reading is ``{"ts": unix-seconds, "n": k, "dev": ..., "v": ..., "pad": ...}``, 64 B–1 KiB:
``ts`` is taken just before the publish (latency is measured from it), ``n`` numbers the
readings (the consumers report it, so delivery is counted per reading; the harness numbers on
across phases, so a straggler is never counted twice), and
the sizes come from SEED, so that hp2p and the baseline get the same payloads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

MIN_SIZE = 64
MAX_SIZE = 1024
MAX_ERRORS = 100  # reconnections in one process before it gives up
#: ``history`` readings end this long before the command: their slices are closed at once
HISTORY_LAG_S = 30.0


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def sizes(count: int, seed: int) -> list[int]:
    """The payload size of each reading of a run: uniform in 64..1024 bytes, from ``seed``."""
    rng = random.Random(seed)
    return [rng.randint(MIN_SIZE, MAX_SIZE) for _ in range(count)]


def payload(n: int, device: int, size: int, ts: float) -> bytes:
    """One JSON reading padded to ``size`` bytes (or just above, for the smallest sizes)."""
    head = f'{{"ts":{ts:.6f},"n":{n},"dev":"dev-{device:02d}","v":{20 + (n % 97) / 10:.1f},"pad":"'
    pad = max(0, size - len(head) - 2)
    return (head + "x" * pad + '"}').encode()


async def _lines() -> AsyncIterator[str]:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while raw := await reader.readline():
        yield raw.decode("utf-8", "replace").strip()


class Devices:
    """The sensors' MQTT clients; one that the broker dropped is connected again (bounded)."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.clients: list[Any] = [None] * count
        self.stacks = [AsyncExitStack() for _ in range(count)]
        self.errors = 0

    async def connect(self, device: int) -> None:
        import aiomqtt

        await self.stacks[device].aclose()
        self.stacks[device] = AsyncExitStack()
        client = aiomqtt.Client("127.0.0.1", self.port, identifier=f"bench-sensor-{device:02d}")
        self.clients[device] = await self.stacks[device].enter_async_context(client)

    async def publish(self, device: int, topic: str, body: bytes) -> bool:
        """Publish with QoS 0. A client the broker or its keepalive dropped (a broker busy
        with a backlog answers PINGREQ late) is connected again and the reading sent once
        more; False when even that failed. Every reconnection is counted."""
        import aiomqtt

        for attempt in (1, 2):
            try:
                await self.clients[device].publish(topic, body, qos=0)
                return True
            except aiomqtt.MqttError:
                self.errors += 1
                if self.errors > MAX_ERRORS:
                    raise
                if attempt == 1:
                    await self.connect(device)
        return False

    async def close(self) -> None:
        for stack in self.stacks:
            with contextlib.suppress(Exception):
                await stack.aclose()


async def publish_run(
    devices: Devices,
    rate: float,
    count: int,
    first: int,
    make: Callable[[int, int], tuple[str, bytes]],
) -> dict[str, Any]:
    """COUNT readings at RATE per second, round robin over the devices; paced on the clock.

    ``make(i, device)`` gives the topic and body of the i-th reading of the run."""
    start = time.monotonic()
    late = 0.0
    sent = published = 0
    errors = devices.errors
    while sent < count:
        now = time.monotonic()
        due = min(count, int((now - start) * rate) + 1)
        late = max(late, now - (start + (due - 1) / rate))
        while sent < due:
            device = sent % devices.count
            topic, body = make(sent, device)
            published += await devices.publish(device, topic, body)
            sent += 1
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    elapsed = time.monotonic() - start
    return {
        "published": published,
        "first": first,
        "publish_errors": devices.errors - errors,  # reconnections; lost = count - published
        "elapsed_s": round(elapsed, 3),
        "late_max_ms": round(late * 1e3, 1),
    }


def live_readings(count: int, seed: int, first: int) -> Callable[[int, int], tuple[str, bytes]]:
    """Readings of ``run``: one topic per device, ``ts`` = now, sizes from ``seed``."""
    lengths = sizes(count, seed)

    def make(i: int, device: int) -> tuple[str, bytes]:
        body = payload(first + i, device, lengths[i], time.time())
        return f"sensors/dev-{device:02d}/reading", body

    return make


def history_readings(
    count: int, span: float, first: int, topic: str, end: float
) -> Callable[[int, int], tuple[str, bytes]]:
    """Readings of ``history``: all on ``topic``, their ``ts`` spread evenly over the
    ``span`` seconds before ``end`` (an hour of readings, sent in a minute)."""
    start = end - span
    lengths = sizes(count, first)

    def make(i: int, device: int) -> tuple[str, bytes]:
        return topic, payload(first + i, device, lengths[i], start + i * span / count)

    return make


async def main(port: int, count: int) -> int:
    devices = Devices(port, count)
    try:
        for d in range(count):
            await devices.connect(d)
        emit({"event": "ready", "devices": count, "t": time.time()})
        async for line in _lines():
            command, *args = line.split()
            if command == "run" and len(args) == 4:
                rate, n, seed, first = float(args[0]), int(args[1]), int(args[2]), int(args[3])
                make = live_readings(n, seed, first)
            elif command == "history" and len(args) == 5:
                rate, n, span, first = float(args[0]), int(args[1]), float(args[2]), int(args[3])
                make = history_readings(n, span, first, args[4], time.time() - HISTORY_LAG_S)
            else:
                emit({"event": "error", "reason": f"unknown command {line[:80]!r}"})
                continue
            done = await publish_run(devices, rate, n, first, make)
            emit({"event": "done", **done, "t": time.time()})
    finally:
        await devices.close()
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="broker port on 127.0.0.1")
    parser.add_argument("--devices", type=int, default=10)
    args = parser.parse_args()
    if not 1 <= args.devices <= 1000:
        parser.error("--devices must be 1..1000")
    raise SystemExit(asyncio.run(main(args.port, args.devices)))


if __name__ == "__main__":
    cli()
