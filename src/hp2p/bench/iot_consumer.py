"""One consumer of ``hp2p bench iot``: a CoreTree member, or an MQTT subscriber (the baseline).

``python -m hp2p.bench.iot_consumer --homs URL --join TITLE`` is an hp2p peer in the
gateway's CoreTree (it forwards to its children like any member) that decodes each IoT reading
(:func:`~hp2p.apps.iot.reading.decode_reading`); ``--mqtt PORT`` subscribes to ``sensors/#``
on the broker directly. Both print, per reading, the same line that ``hp2p peer
--json-events`` prints per delivery, with the reading's number and device time added::

    {"event":"deliver","source":"sensors","sequence":N,"t":RECEIVED,"ts":DEVICE_TS}

(a CoreTree member adds ``"gw"``: when the gateway received the reading from the broker)

so the harness counts them with one reader (:class:`~hp2p.bench.procs.Fleet`) and both
systems pay the same for being measured. ``t`` is taken on receipt; lines are flushed every
``FLUSH_S`` (the timestamps do not depend on when a line reaches the harness). The process
leaves at the end of its stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

FLUSH_S = 0.05
MAX_BAD_REPORTED = 5
SUBSCRIPTION_QUEUE = 100_000


class LinePrinter:
    """Buffered JSON lines on stdout, flushed by :meth:`flush_every` (one task)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self.bad = 0

    def event(self, fields: dict[str, Any]) -> None:
        self._lines.append(json.dumps(fields, separators=(",", ":")))

    def reading(self, body: bytes, received: float, gateway_ts: float | None = None) -> None:
        """One reading's JSON payload: its ``n`` and ``ts`` (anything else is counted bad);
        ``gateway_ts``: when the gateway got it from the broker (``gw``, hp2p only)."""
        try:
            value = json.loads(body)
            n, ts = int(value["n"]), float(value["ts"])
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            self.bad_reading(f"payload is not a bench reading: {exc}")
            return
        gw = "" if gateway_ts is None else f',"gw":{gateway_ts:.6f}'
        self._lines.append(
            f'{{"event":"deliver","source":"sensors","sequence":{n},"t":{received:.6f},'
            f'"ts":{ts:.6f}{gw}}}'
        )

    def bad_reading(self, reason: str) -> None:
        self.bad += 1
        if self.bad <= MAX_BAD_REPORTED:
            self.event({"event": "bad", "reason": reason[:200], "t": time.time()})

    def flush(self) -> None:
        if self._lines:
            sys.stdout.write("\n".join(self._lines) + "\n")
            sys.stdout.flush()
            self._lines.clear()

    async def flush_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.flush()


async def _stdin_closed() -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        pass


async def _run(printer: LinePrinter, work: Callable[[], Awaitable[None]]) -> None:
    """``work`` until stdin ends (or it fails); then the last lines."""
    tasks = [
        asyncio.ensure_future(work()),
        asyncio.ensure_future(_stdin_closed()),
        asyncio.ensure_future(printer.flush_every(FLUSH_S)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        printer.flush()


async def mqtt_consumer(port: int, name: str, printer: LinePrinter) -> None:
    """Subscribe to ``sensors/#`` (QoS 0) and report each reading."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=name) as client:
        await client.subscribe("sensors/#", qos=0)
        printer.event({"event": "joined", "peer_id": name, "t": time.time()})
        printer.flush()
        async for message in client.messages:
            printer.reading(message.payload, time.time())


async def hp2p_consumer(homs: str, join: str, name: str, printer: LinePrinter) -> None:
    """Join the gateway's CoreTree and report each IoT reading it delivers."""
    from hp2p.apps.iot.reading import APP_ID, ReadingError, decode_reading
    from hp2p.peer.api import Gap, Peer

    async with Peer(homs, join=join, peer_id=name) as peer:
        messages = peer.messages(SUBSCRIPTION_QUEUE)
        status = peer.status()
        printer.event(
            {"event": "joined", "peer_id": name, "depth": status.get("depth"), "t": time.time()}
        )
        printer.flush()
        async for message in messages:
            received = time.time()
            if isinstance(message, Gap):
                printer.event({"event": "gap", "first": message.first, "last": message.last})
                continue
            if message.app_id != APP_ID:
                continue
            try:
                reading = decode_reading(message.data)
            except ReadingError as exc:
                printer.bad_reading(str(exc))
                continue
            printer.reading(reading.payload, received, reading.received_ts)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="peer-id or MQTT client id")
    parser.add_argument("--mqtt", type=int, help="baseline: subscribe on 127.0.0.1:PORT")
    parser.add_argument("--homs", help="hp2p: the HOMS URL")
    parser.add_argument("--join", help="hp2p: the overlay title or id of the gateway")
    args = parser.parse_args()
    printer = LinePrinter()
    if args.mqtt is not None:
        work: Callable[[], Awaitable[None]] = lambda: mqtt_consumer(args.mqtt, args.name, printer)  # noqa: E731
    elif args.homs and args.join:
        work = lambda: hp2p_consumer(args.homs, args.join, args.name, printer)  # noqa: E731
    else:
        parser.error("give --mqtt PORT, or --homs URL and --join TITLE")
    try:
        asyncio.run(_run(printer, work))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # one line for the harness's log, not a traceback
        print(f"iot_consumer {args.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    cli()
