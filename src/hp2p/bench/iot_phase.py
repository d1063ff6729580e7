"""One measured phase of ``hp2p bench iot`` and the figures it yields.

A phase asks the sensors for COUNT readings at RATE, waits (bounded) until every consumer
has them or deliveries stop coming, and reads around it: the processes' CPU time
(``/proc/PID/stat``), the TCP byte counters of every socket (:mod:`hp2p.bench.sockets`) and the
broker's ``$SYS/broker/bytes/sent``. Readings are numbered by the sensors across the whole run,
so a straggler of an earlier phase is never counted in a later one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from hp2p.bench import sockets
from hp2p.bench.broker import SysCounter
from hp2p.bench.phases import quantile
from hp2p.bench.procs import Fleet, Proc, cpu_seconds

KEPT_UP_DELIVERY = 0.999
KEPT_UP_P99_MS = 1000.0
IDLE_S = 3.0  # a drain ends early when no delivery came for this long


class IotSystem(Protocol):
    kind: str
    fleet: Fleet
    consumers: list[Proc]

    @property
    def source_pid(self) -> int: ...

    def cost_pids(self) -> dict[str, list[int]]: ...


@dataclass(slots=True)
class IotPhase:
    """Raw outcome of one phase: what was sent, received, spent."""

    rate: float
    count: int
    first: int
    sensors: dict[str, Any] = field(default_factory=dict)
    #: per consumer: (n, received, device ts, gateway ts or None)
    rows: list[list[tuple[int, float, float, float | None]]] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    source_bytes: int = 0
    source_links: list[int] = field(default_factory=list)  # bytes per connection, largest first
    broker_to_gateway_bytes: int | None = None
    sys_bytes: int | None = None
    drain_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after


_decoder = msgspec.json.Decoder()


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {role: sum(cpu_seconds(p) or 0.0 for p in group) for role, group in pids.items()}


def run_iot_phase(
    system: IotSystem,
    sensors: Proc,
    counter: SysCounter | None,
    *,
    rate: float,
    count: int,
    first: int,
    seed: int,
    drain_s: float,
    gateway_pid: int | None = None,
    broker_pid: int | None = None,
) -> IotPhase:
    """COUNT readings numbered from ``first`` at RATE; every counter read around them."""
    phase = IotPhase(rate, count, first)
    consumers = system.consumers
    marks = [len(p.deliveries) for p in consumers]
    pids = system.cost_pids()
    sys0 = counter.fresh() if counter is not None else None
    cpu0 = _cpu(pids)
    snap0 = sockets.snapshot()
    before = system.fleet.deliveries
    load0 = os.getloadavg()[0]
    sensors.command(f"run {rate:g} {count} {seed} {first}")
    phase.sensors = dict(sensors.wait_event({"done"}, count / rate * 3 + 60))
    phase.drain_s = _drain(system.fleet, before + count * len(consumers), drain_s)
    snap1 = sockets.snapshot()
    phase.load = (round(load0, 2), round(os.getloadavg()[0], 2))
    cpu1 = _cpu(pids)
    sys1 = counter.fresh() if counter is not None else None
    phase.cpu_s = {role: cpu1[role] - cpu0[role] for role in cpu0}
    receivers = [p.pid for p in consumers]
    phase.source_links = sockets.sent_per_socket(snap0, snap1, system.source_pid, receivers)
    phase.source_bytes = sum(phase.source_links)
    if gateway_pid is not None and broker_pid is not None:
        phase.broker_to_gateway_bytes = sockets.sent_to(snap0, snap1, broker_pid, [gateway_pid])
    if sys0 is not None and sys1 is not None:
        phase.sys_bytes = sys1 - sys0
    last = first + count
    for proc, mark in zip(consumers, marks, strict=True):
        mine = []
        for raw in proc.deliveries[mark:]:
            event = _decoder.decode(raw)
            n = int(event["sequence"])
            if first <= n < last:
                gw = event.get("gw")
                gateway = float(gw) if isinstance(gw, int | float) else None
                mine.append((n, float(event["t"]), float(event["ts"]), gateway))
        phase.rows.append(mine)
    return phase


def _drain(fleet: Fleet, target: int, limit_s: float) -> float:
    """Wait for ``target`` deliveries, at most ``limit_s``, less when they stop coming."""
    start = time.monotonic()
    end = start + limit_s
    seen, last_change = fleet.deliveries, start
    while fleet.deliveries < target and (now := time.monotonic()) < end:
        if fleet.deliveries != seen:
            seen, last_change = fleet.deliveries, now
        elif now - last_change > IDLE_S:
            break
        fleet.wait_deliveries(target, 0.2)
    return round(time.monotonic() - start, 2)


def quiesce(fleet: Fleet, limit_s: float, idle_s: float = 2.0) -> float:
    """After an overloaded phase: wait until no delivery came for ``idle_s`` (at most
    ``limit_s``), so that the backlog of one phase does not load the next; the seconds it took."""
    start = time.monotonic()
    seen, last_change = fleet.deliveries, start
    while (now := time.monotonic()) - last_change < idle_s and now - start < limit_s:
        fleet.wait_deliveries(seen + 1, 0.2)
        if fleet.deliveries != seen:
            seen, last_change = fleet.deliveries, time.monotonic()
    return round(time.monotonic() - start, 2)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _per(value: float | None, count: int, scale: float = 1.0, digits: int = 1) -> float | None:
    return None if value is None or not count else round(value / count * scale, digits)


def _rate(count: int, elapsed: Any) -> float | None:
    return round(count / elapsed, 1) if isinstance(elapsed, int | float) and elapsed > 0 else None


@dataclass(slots=True)
class _Received:
    """What the consumers got, each reading counted once per consumer."""

    delivered: int = 0
    duplicates: int = 0
    latencies: list[float] = field(default_factory=list)
    ingest: list[float] = field(default_factory=list)  # device ts -> gateway (broker, MQTT)
    tree: list[float] = field(default_factory=list)  # gateway -> consumer (queue, CoreTree)


def _received(phase: IotPhase) -> _Received:
    got = _Received()
    for rows in phase.rows:
        seen: set[int] = set()
        for n, t, ts, gw in rows:
            if n in seen:
                got.duplicates += 1
                continue
            seen.add(n)
            got.delivered += 1
            got.latencies.append(t - ts)
            if gw is not None:
                got.ingest.append(gw - ts)
                got.tree.append(t - gw)
    return got


def iot_figures(phase: IotPhase) -> dict[str, Any]:
    """Delivery, duplicates, latency (device ts → receipt), source bytes and CPU per delivery."""
    published = int(phase.sensors.get("published", phase.count))
    due = published * len(phase.rows)
    got = _received(phase)
    delivered, latencies = got.delivered, got.latencies
    cpu_total = sum(phase.cpu_s.values())
    out: dict[str, Any] = {
        "rate": phase.rate,
        "consumers": len(phase.rows),
        "messages": published,
        "achieved_publish_rate": _rate(published, phase.sensors.get("elapsed_s")),
        "sensor_late_max_ms": phase.sensors.get("late_max_ms"),
        "sensor_publish_errors": phase.sensors.get("publish_errors"),
        "delivery_ratio": round(delivered / due, 6) if due else None,
        "duplicates": got.duplicates,
        "latency_p50_ms": _ms(quantile(latencies, 0.5)),
        "latency_p99_ms": _ms(quantile(latencies, 0.99)),
        "latency_max_ms": _ms(max(latencies, default=None)),
        "source_bytes_per_msg": _per(phase.source_bytes, published),
        # connections that carried readings (>= 64 bytes, the smallest, per reading)
        "source_data_links": sum(1 for b in phase.source_links if b >= 64 * published),
        "source_link_bytes_per_msg": [
            round(b / published) for b in phase.source_links[:8] if published
        ],
        "cpu_us_per_delivery": _per(cpu_total, delivered, 1e6),
        "drain_s": phase.drain_s,
        # the machine's load (other jobs share it): 1-minute average before and after
        "load_avg_1m": list(phase.load),
    }
    for role, spent in sorted(phase.cpu_s.items()):
        out[f"cpu_us_per_delivery_{role}"] = _per(spent, delivered, 1e6)
    if phase.broker_to_gateway_bytes is not None:
        out["broker_to_gateway_bytes_per_msg"] = _per(phase.broker_to_gateway_bytes, published)
    out["broker_sys_bytes_per_msg"] = _per(phase.sys_bytes, published)
    if got.tree:
        out["latency_to_gateway_p50_ms"] = _ms(quantile(got.ingest, 0.5))
        out["latency_to_gateway_p99_ms"] = _ms(quantile(got.ingest, 0.99))
        out["latency_gateway_to_consumer_p50_ms"] = _ms(quantile(got.tree, 0.5))
        out["latency_gateway_to_consumer_p99_ms"] = _ms(quantile(got.tree, 0.99))
    ratio, p99 = out["delivery_ratio"], out["latency_p99_ms"]
    out["kept_up"] = bool(
        ratio is not None
        and ratio >= KEPT_UP_DELIVERY
        and p99 is not None
        and p99 <= KEPT_UP_P99_MS
    )
    out["_latencies_ms"] = [round(v * 1000, 3) for v in latencies]
    return out
