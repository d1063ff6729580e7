"""Timed publishing phases on a running overlay, and the figures each phase yields.

A phase publishes ``count`` messages at ``rate`` from the overlay's source, waits (bounded) for
the deliveries, and reads the processes' CPU time and write counters before and after. Latency
is ``t`` of a ``deliver`` line minus ``t`` of the source's ``published`` line: every process runs
on this machine, so their ``time.time()`` clocks are the same clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from hp2p.bench.events import NoEventError
from hp2p.bench.procs import Fleet, Proc

PASS_DELIVERY = 0.999
PASS_P99_MS = 100.0


class Overlay(Protocol):
    kind: str
    fleet: Fleet
    peers: list[Proc]
    depth: dict[str, int]

    @property
    def source(self) -> Proc: ...


@dataclass(slots=True)
class Phase:
    """Raw outcome of one phase."""

    rate: float
    count: int
    published: dict[int, float] = field(default_factory=dict)
    received: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    source_name: str = ""
    cpu_s: float = 0.0
    publish_s: float = 0.0
    timed_out: bool = False


_decoder = msgspec.json.Decoder()


def run_phase(overlay: Overlay, rate: float, count: int, payload: int, drain_s: float) -> Phase:
    """Publish ``count`` messages at ``rate``/s from the source; wait up to ``drain_s`` after."""
    fleet = overlay.fleet
    peers = overlay.peers
    source = overlay.source
    phase = Phase(rate, count)
    line = "publish " + "x" * payload
    marks = [len(p.deliveries) for p in peers]
    cpu0 = fleet.cpu_seconds()
    before = fleet.deliveries
    start = time.monotonic()
    for k in range(count):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the publisher, not waiting for a result
        source.command(line)
    phase.publish_s = time.monotonic() - start
    target = before + count * (len(peers) - 1)
    phase.timed_out = fleet.wait_deliveries(target, drain_s) < target
    phase.cpu_s = fleet.cpu_seconds() - cpu0
    _collect_published(source, phase, count)
    for proc, mark in zip(peers, marks, strict=True):
        rows = []
        for raw in proc.deliveries[mark:]:
            event = _decoder.decode(raw)
            if event.get("source") == phase.source_name:
                rows.append((int(event["sequence"]), float(event["t"])))
        phase.received[proc.name] = rows
    return phase


def _collect_published(source: Proc, phase: Phase, count: int) -> None:
    """The source's ``published`` lines for this phase (bounded wait: they come right away)."""
    end = time.monotonic() + 10
    while len(phase.published) < count and (left := end - time.monotonic()) > 0:
        try:
            event = source.inbox.next("published", left)
        except NoEventError:
            return
        phase.source_name, sequence = event.message
        phase.published[sequence] = float(event["t"])


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def figures(overlay: Overlay, phase: Phase) -> dict[str, Any]:
    """Delivery, latency (overall, per depth, last peer), throughput and CPU of one phase."""
    receivers = [p.name for p in overlay.peers if p is not overlay.source]
    due = len(phase.published) * len(receivers)
    latencies: list[float] = []
    by_depth: dict[int, list[float]] = {}
    last: dict[int, float] = {}
    delivered = duplicates = 0
    latest = 0.0
    for name in receivers:
        depth = overlay.depth.get(name, -1)
        seen: set[int] = set()
        for sequence, t in phase.received.get(name, []):
            sent = phase.published.get(sequence)
            if sent is None:
                continue
            if sequence in seen:
                duplicates += 1
                continue
            seen.add(sequence)
            delivered += 1
            latency = t - sent
            latencies.append(latency)
            by_depth.setdefault(depth, []).append(latency)
            last[sequence] = max(last.get(sequence, 0.0), latency)
            latest = max(latest, t)
    first = min(phase.published.values(), default=0.0)
    span = latest - first if delivered else 0.0
    out: dict[str, Any] = {
        "rate": phase.rate,
        "messages": len(phase.published),
        "delivery_ratio": None if due == 0 else round(delivered / due, 6),
        "duplicates_to_app": duplicates,
        "latency_p50_ms": _ms(quantile(latencies, 0.5)),
        "latency_p99_ms": _ms(quantile(latencies, 0.99)),
        "last_delivery_p50_ms": _ms(quantile(list(last.values()), 0.5)),
        "last_delivery_p99_ms": _ms(quantile(list(last.values()), 0.99)),
        "deliveries_per_s": round(delivered / span) if span > 0 else None,
        "achieved_publish_rate": round(len(phase.published) / phase.publish_s, 1)
        if phase.publish_s > 0
        else None,
        "cpu_us_per_hop": round(phase.cpu_s / delivered * 1e6, 1) if delivered else None,
    }
    for depth in sorted(by_depth):
        if depth >= 0:
            out[f"latency_depth{depth}_p50_ms"] = _ms(quantile(by_depth[depth], 0.5))
            out[f"latency_depth{depth}_p99_ms"] = _ms(quantile(by_depth[depth], 0.99))
    out["_latencies_ms"] = [round(v * 1000, 3) for v in latencies]
    out["_delivered"] = delivered
    return out


def passes(result: dict[str, Any]) -> bool:
    """BENCHMARKS metric 5: ≥ 99.9 % delivered and p99 ≤ 100 ms."""
    ratio = result.get("delivery_ratio")
    p99 = result.get("latency_p99_ms")
    return ratio is not None and ratio >= PASS_DELIVERY and p99 is not None and p99 <= PASS_P99_MS
