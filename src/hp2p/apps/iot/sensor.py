"""``hp2p iot sensor``: simulated devices publishing JSON readings to MQTT at a steady rate.

For demos and benchmarks of the IoT service: ``--devices`` devices share a total ``--rate``
(messages per second), each publishing ``{"ts", "device", "value", "pad"}`` to
``PREFIX/dev-K/temperature``. ``ts`` is the wall clock at sending (unix seconds), so the
latency from device to any peer is ``received - ts``; ``pad`` brings the payload to
``--size`` bytes (one size, or a range ``MIN..MAX`` drawn per message).

The schedule is :class:`SensorPlan` (pure: message k is due ``k / rate`` seconds after the
start, from device ``k mod devices``); the asyncio shell sends what is due, keeps a bounded
window of QoS 1 publications awaiting the broker's acknowledgement, and reports what it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from hp2p.apps.iot.broker import BrokerAddress, BrokerError, parse_broker
from hp2p.apps.iot.reading import MAX_PAYLOAD

if TYPE_CHECKING:
    import aiomqtt

__all__ = ["EPILOG", "SensorPlan", "SensorReport", "command", "parse_size", "run_sensors"]

#: QoS 1 publications awaiting their PUBACK, at most (paho's in-flight window is set to it).
WINDOW = 256


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class SensorError(ValueError):
    """Options that do not make a schedule; the message says which and why."""


def parse_size(text: str) -> tuple[int, int]:
    """``"256"`` or ``"64..1024"`` → (min, max) payload bytes."""
    low, sep, high = text.partition("..")
    try:
        lo, hi = (int(low), int(high)) if sep else (int(low), int(low))
    except ValueError:
        raise SensorError(
            f"--size is BYTES or MIN..MAX, e.g. 128 or 64..1024, not {text!r}"
        ) from None
    if not 1 <= lo <= hi <= MAX_PAYLOAD:
        raise SensorError(f"--size must be within 1..{MAX_PAYLOAD} bytes with MIN <= MAX")
    return lo, hi


@dataclass(frozen=True, slots=True)
class SensorPlan:
    """Which message is due when, from which device, with what payload (no I/O, no clock)."""

    devices: int = 10
    rate: float = 100.0
    size: tuple[int, int] = (128, 128)
    prefix: str = "sensors"
    count: int | None = None
    duration: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 1_000_000:
            raise SensorError("--devices must be 1..1,000,000")
        if not (math.isfinite(self.rate) and 0 < self.rate <= 1_000_000):
            raise SensorError("--rate must be > 0 and at most 1,000,000 messages/s")
        if self.count is not None and self.count < 1:
            raise SensorError("--count must be at least 1")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise SensorError("--duration must be > 0 seconds")
        if not self.prefix or any(c in self.prefix for c in "+#\0") or not _utf8(self.prefix):
            raise SensorError("--prefix must be a UTF-8 topic without wildcards, e.g. sensors")

    @property
    def total(self) -> int | None:
        """How many messages the run sends (None: until stopped)."""
        by_time = None if self.duration is None else max(1, math.ceil(self.duration * self.rate))
        if self.count is None:
            return by_time
        return self.count if by_time is None else min(self.count, by_time)

    def due(self, elapsed: float) -> int:
        """How many messages should have been sent ``elapsed`` seconds after the start."""
        n = math.floor(elapsed * self.rate) + 1 if elapsed >= 0 else 0
        total = self.total
        return n if total is None else min(n, total)

    def at(self, k: int) -> float:
        """When message ``k`` (from 0) is due, in seconds after the start."""
        return k / self.rate

    def device(self, k: int) -> str:
        return f"dev-{k % self.devices}"

    def topic(self, k: int) -> str:
        return f"{self.prefix}/{self.device(k)}/temperature"

    def payload(self, k: int, ts: float, rng: random.Random) -> bytes:
        """Message ``k``'s JSON, sent at unix time ``ts``, padded to a size of the range."""
        d = k % self.devices
        value = round(20.0 + 5.0 * math.sin(k / (self.devices * 10.0) + d) + rng.random(), 3)
        doc: dict[str, Any] = {"ts": ts, "device": self.device(k), "value": value, "pad": ""}
        base = len(json.dumps(doc, separators=(",", ":")))
        target = rng.randint(*self.size)
        doc["pad"] = "x" * max(0, target - base)
        return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class SensorReport:
    """What a run sent: ``sent`` handed to the client, ``acked`` confirmed by the broker
    (QoS 1; equal to ``sent`` for QoS 0), ``failed`` refused or lost with the connection."""

    broker: str = ""
    qos: int = 0
    devices: int = 0
    sent: int = 0
    acked: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    error: str | None = None
    first_topics: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Window:
    """QoS 1 publications in flight, at most ``size``; counts acknowledgements and failures."""

    def __init__(self, report: SensorReport, size: int) -> None:
        self.report = report
        self.size = size
        self.tasks: set[asyncio.Task[None]] = set()
        #: The first failure (a refused publication, the connection lost): the run ends.
        self.error: str | None = None

    async def add(self, publication: Any) -> None:
        while len(self.tasks) >= self.size:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(publication)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            self.report.failed += 1
            if self.error is None and not task.cancelled():
                self.error = str(task.exception()) or type(task.exception()).__name__
        else:
            self.report.acked += 1

    async def drain(self, within: float) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=within)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks)


async def run_sensors(
    plan: SensorPlan,
    broker: BrokerAddress,
    *,
    qos: int = 1,
    seed: int | None = None,
    client_id: str | None = None,
    stop: asyncio.Event | None = None,
    progress: Any = None,
) -> SensorReport:
    """Send ``plan`` to ``broker`` until done or ``stop``; ``progress(report)`` after each batch."""
    import aiomqtt

    report = SensorReport(broker=str(broker), qos=qos, devices=plan.devices)
    rng = random.Random(seed)
    stop = stop or asyncio.Event()
    started = time.monotonic()
    try:
        async with aiomqtt.Client(
            **broker.client_kwargs(),
            identifier=client_id or f"hp2p-sensor-{secrets.token_hex(4)}",
            max_inflight_messages=WINDOW,
            timeout=10,
        ) as client:
            client.pending_calls_threshold = WINDOW + 1  # the window is bounded on purpose
            started = time.monotonic()
            await _send_plan(client, plan, qos, rng, report, stop, started, progress)
    except aiomqtt.MqttError as exc:
        report.error = f"MQTT broker {broker}: {exc}"
    report.seconds = round(time.monotonic() - started, 3)
    report.rate = round(report.sent / report.seconds, 1) if report.seconds > 0 else 0.0
    return report


async def _send_plan(
    client: aiomqtt.Client,
    plan: SensorPlan,
    qos: int,
    rng: random.Random,
    report: SensorReport,
    stop: asyncio.Event,
    started: float,
    progress: Any,
) -> None:
    window = _Window(report, WINDOW)
    total = plan.total
    try:
        while not stop.is_set() and (total is None or report.sent < total):
            due = plan.due(time.monotonic() - started)
            if window.error is not None:
                report.error = f"MQTT broker {report.broker}: {window.error}"
                break
            while report.sent < due and not stop.is_set():
                k = report.sent
                payload = plan.payload(k, time.time(), rng)
                if len(report.first_topics) < 3:
                    report.first_topics.append(plan.topic(k))
                await window.add(client.publish(plan.topic(k), payload, qos=qos))
                report.sent += 1
                report.bytes += len(payload)
            if progress is not None:
                progress(report)
            wait = started + plan.at(report.sent) - time.monotonic()
            if wait > 0:  # pacing to the schedule (the stop event ends it early)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(wait, 0.25))
    finally:
        await window.drain(10.0)
        if window.error is not None and report.error is None:
            report.error = f"MQTT broker {report.broker}: {window.error}"
        if progress is not None:
            progress(report)


# === command line ================================================================================
EPILOG = """
Examples:

  # 10 devices, 100 messages/s in total, for 30 s, to the local broker
  hp2p iot sensor --mqtt mqtt://127.0.0.1:1883 --devices 10 --rate 100 --duration 30

  # exactly 5000 messages of 64 to 1024 bytes, QoS 0, a JSON report on stdout
  hp2p iot sensor --count 5000 --size 64..1024 --qos 0 --quiet --json

  # feed a gateway: hp2p iot gateway --topic 'plant/#' --overlay iot
  hp2p iot sensor --prefix plant --devices 3 --rate 5

Device K publishes {"ts": <unix seconds>, "device": "dev-K", "value": ..., "pad": "..."} to
PREFIX/dev-K/temperature; devices take turns, so each sends RATE/DEVICES messages/s. Without
--count or --duration it runs until Ctrl-C. The report says how many were sent, acknowledged
by the broker (QoS 1) and failed, and the rate achieved (docs/iot.md).
"""


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"hp2p iot sensor: {message}", err=True)
    raise typer.Exit(code)


def command(
    mqtt: Annotated[
        str, typer.Option("--mqtt", help="MQTT broker, mqtt://[USER@]HOST[:PORT] or mqtts://.")
    ] = "mqtt://127.0.0.1:1883",
    devices: Annotated[int, typer.Option("--devices", help="Simulated devices.")] = 10,
    rate: Annotated[
        float, typer.Option("--rate", help="Messages per second, all devices.")
    ] = 100.0,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Seconds to run (default: until Ctrl-C).")
    ] = None,
    count: Annotated[int | None, typer.Option("--count", help="Messages to send in all.")] = None,
    size: Annotated[
        str, typer.Option("--size", help="Payload bytes: N or MIN..MAX (e.g. 64..1024).")
    ] = "128",
    prefix: Annotated[str, typer.Option("--prefix", help="Topic prefix.")] = "sensors",
    qos: Annotated[int, typer.Option("--qos", help="Publish QoS: 0 or 1.")] = 1,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of values and sizes.")] = None,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="MQTT client id (default random).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.")] = False,
    json_report: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON line on stdout.")
    ] = False,
) -> None:
    """Simulated sensors: devices publishing JSON readings to MQTT at a steady total rate."""
    if qos not in (0, 1):
        _fail(f"--qos is 0 or 1, not {qos}", 2)
    try:
        plan = SensorPlan(
            devices=devices,
            rate=rate,
            size=parse_size(size),
            prefix=prefix.rstrip("/"),
            count=count,
            duration=duration,
        )
        broker = parse_broker(mqtt)
    except (SensorError, BrokerError) as exc:
        _fail(str(exc), 2)
    report = asyncio.run(_main(plan, broker, qos, seed, client_id, quiet))
    if json_report:
        print(json.dumps(report.as_dict()), flush=True)
    elif report.sent or not report.error:
        print(
            f"hp2p iot sensor: sent {report.sent} ({report.acked} acknowledged, {report.failed} "
            f"failed, {report.bytes} bytes) in {report.seconds:g} s = {report.rate:g} msg/s "
            f"to {report.broker}",
            flush=True,
        )
    if report.error:
        _fail(f"{report.error}; is the broker running (mosquitto -p PORT)?", 1)


async def _main(
    plan: SensorPlan,
    broker: BrokerAddress,
    qos: int,
    seed: int | None,
    client_id: str | None,
    quiet: bool,
) -> SensorReport:
    import signal

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    columns = [
        TextColumn("sensors"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    ]
    with Progress(*columns, disable=quiet, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("send", total=plan.total, detail="")
        started = time.monotonic()

        def show(report: SensorReport) -> None:
            elapsed = time.monotonic() - started
            rate = report.sent / elapsed if elapsed > 0 else 0.0
            detail = f"{rate:,.0f} msg/s, acked {report.acked}, failed {report.failed}"
            bar.update(task, completed=report.sent, detail=detail)

        return await run_sensors(
            plan, broker, qos=qos, seed=seed, client_id=client_id, stop=stop, progress=show
        )
