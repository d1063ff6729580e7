"""Simulated sensors for ``hp2p bench iot``: D MQTT clients publishing JSON readings at a rate.

``python -m hp2p.bench.iot_sensors --port P`` connects ``--devices`` clients to the broker,
prints ``{"event": "ready"}`` and then obeys ``run RATE COUNT SEED FIRST`` lines on stdin: it
publishes COUNT readings numbered from FIRST, at RATE per second over the devices in turn, on
``sensors/dev-XX/reading`` with QoS 0, and prints ``{"event": "done", ...}``.

A reading is ``{"ts": unix-seconds, "n": k, "dev": ..., "v": ..., "pad": ...}``, 64 B–1 KiB:
``ts`` is taken just before the publish (latency is measured from it), ``n`` numbers the
readings (the consumers report it, so delivery is counted per reading; the harness numbers on
across phases, so a straggler is never counted twice), and
the sizes come from SEED, so that hp2p and the baseline get the same payloads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

MIN_SIZE = 64
MAX_SIZE = 1024


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


async def publish_run(
    clients: list[Any], rate: float, count: int, seed: int, first: int
) -> dict[str, Any]:
    """COUNT readings at RATE per second, round robin over the clients; paced on the clock."""
    lengths = sizes(count, seed)
    start = time.monotonic()
    late = 0.0
    sent = 0
    n_devices = len(clients)
    while sent < count:
        now = time.monotonic()
        due = min(count, int((now - start) * rate) + 1)
        late = max(late, now - (start + (due - 1) / rate))
        while sent < due:
            device = sent % n_devices
            body = payload(first + sent, device, lengths[sent], time.time())
            await clients[device].publish(f"sensors/dev-{device:02d}/reading", body, qos=0)
            sent += 1
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    elapsed = time.monotonic() - start
    return {"published": sent, "elapsed_s": round(elapsed, 3), "late_max_ms": round(late * 1e3, 1)}


async def main(port: int, devices: int) -> int:
    import aiomqtt

    async with AsyncExitStack() as stack:
        clients = []
        for d in range(devices):
            client = aiomqtt.Client("127.0.0.1", port, identifier=f"bench-sensor-{d:02d}")
            clients.append(await stack.enter_async_context(client))
        emit({"event": "ready", "devices": devices, "t": time.time()})
        async for line in _lines():
            command, *args = line.split()
            if command != "run" or len(args) != 4:
                emit({"event": "error", "reason": f"unknown command {line[:80]!r}"})
                continue
            rate, count, seed, first = float(args[0]), int(args[1]), int(args[2]), int(args[3])
            done = await publish_run(clients, rate, count, seed, first)
            emit({"event": "done", **done, "t": time.time()})
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
