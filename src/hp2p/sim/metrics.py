"""Figures of BENCHMARKS.md from a simulated run: delivery, repair, RMR, overhead, latency.

Definitions (kept identical to the process benchmarks so the numbers compare):

* a message is *due* at every peer that was attached when it was published, is still alive
  at the end of the run, and is not its source; ``delivery_ratio`` = due deliveries that
  happened / deliveries due;
* with a mass failure at ``t_f``: ``delivery_ratio_during`` for messages published in
  ``[t_f, t_f + 2 s)``, ``delivery_ratio_after`` for those published later;
* ``repair_*``: per orphan (a survivor whose parent failed), the time from the failure to its
  first ``Joined(repaired=True)``; orphans never repaired are counted in ``unrepaired``;
* ``rmr`` = payload copies put on links / deliveries − 1 (during the traffic window);
* ``control_overhead`` = bytes of every non-payload R2 message / payload bytes (same window);
* latency = deliver time − publish time; per depth only for messages the root published
  (so that depth is the hop count).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from typing import Any

from hp2p.sim.scenario import RunRecord

DURING_WINDOW_S = 2.0
TIMELINE_BIN_S = 0.5
ON_TIME_S = 0.5  # the timeline also shows deliveries within this, which dip during a repair


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of ``values`` (None when empty); ``values`` need not be sorted."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def analyse(record: RunRecord) -> dict[str, Any]:
    """Metrics and series (for plots) of one run."""
    obs = record.observer
    pub = obs.published_at
    survivors = [i for i, died in enumerate(obs.died_at) if died == math.inf]
    attach_sorted = sorted(obs.attached_at[i] for i in survivors)
    survivor = bytearray(len(obs.died_at))
    for i in survivors:
        survivor[i] = 1
    due = []
    for m, t in enumerate(pub):
        count = bisect.bisect_right(attach_sorted, t)
        src = obs.source_of[m]
        if survivor[src] and obs.attached_at[src] <= t:
            count -= 1
        due.append(count)

    got = [0] * len(pub)
    on_time = [0] * len(pub)
    last = [0.0] * len(pub)
    latencies: list[float] = []
    by_depth: dict[int, list[float]] = {}
    pairs: set[int] = set()
    stride = len(obs.died_at) + 1
    duplicates = 0
    attached_at = obs.attached_at
    for m, p, t, depth in zip(obs.d_message, obs.d_peer, obs.d_time, obs.d_depth, strict=True):
        key = m * stride + p
        if key in pairs:
            duplicates += 1
            continue
        pairs.add(key)
        if not survivor[p] or attached_at[p] > pub[m]:
            continue
        got[m] += 1
        latency = t - pub[m]
        if latency <= ON_TIME_S:
            on_time[m] += 1
        latencies.append(latency)
        if latency > last[m]:
            last[m] = latency
        if obs.from_root[m] and depth >= 0:
            by_depth.setdefault(depth, []).append(latency)

    metrics: dict[str, Any] = {
        "sim_peers": record.scenario.peers,
        "messages": len(pub),
        "delivery_ratio": _ratio(sum(got), sum(due)),
        "duplicates_to_app": duplicates,
        "latency_p50_ms": _ms(quantile(latencies, 0.5)),
        "latency_p99_ms": _ms(quantile(latencies, 0.99)),
    }
    lasts = [last[m] for m in range(len(pub)) if got[m]]
    metrics["last_delivery_p50_ms"] = _ms(quantile(lasts, 0.5))
    metrics["last_delivery_p99_ms"] = _ms(quantile(lasts, 0.99))
    fault = record.fault_time
    if fault is not None:
        during = [m for m, t in enumerate(pub) if fault <= t < fault + DURING_WINDOW_S]
        after = [m for m, t in enumerate(pub) if t >= fault + DURING_WINDOW_S]
        metrics["delivery_ratio_during"] = _ratio(
            sum(got[m] for m in during), sum(due[m] for m in during)
        )
        metrics["delivery_ratio_after"] = _ratio(
            sum(got[m] for m in after), sum(due[m] for m in after)
        )
        repairs = []
        for p in record.orphans:
            times = [t for t in obs.repaired_at[p] if t >= fault]
            if times and survivor[p]:
                repairs.append(min(times) - fault)
        metrics["orphans"] = len(record.orphans)
        metrics["unrepaired"] = sum(1 for p in record.orphans if survivor[p]) - len(repairs)
        metrics["repair_p50_ms"] = _ms(quantile(repairs, 0.5))
        metrics["repair_p99_ms"] = _ms(quantile(repairs, 0.99))
    traffic = record.traffic
    metrics["rmr"] = (
        None
        if record.deliveries_in_window == 0
        else round(traffic.payload_copies / record.deliveries_in_window - 1, 4)
    )
    metrics["control_overhead"] = (
        None
        if traffic.payload_bytes == 0
        else round(traffic.control_bytes / traffic.payload_bytes, 4)
    )
    metrics["link_drops"] = traffic.dropped
    depths = record.depths_at_start
    metrics["max_depth"] = max(depths, default=None)
    metrics["mean_depth"] = round(statistics.fmean(depths), 3) if depths else None
    metrics["unattached_at_start"] = record.unattached_at_start
    metrics["roots_at_start"] = record.roots_at_start
    metrics["loop_free"] = record.loop_free
    metrics["sim_deliveries_per_s"] = (
        round(record.deliveries_in_window / record.traffic_wall_s)
        if record.traffic_wall_s > 0
        else None
    )
    metrics["sim_deliveries_per_cpu_s"] = (
        round(record.deliveries_in_window / record.traffic_cpu_s)
        if record.traffic_cpu_s > 0
        else None
    )
    metrics["sim_events_per_s"] = round(record.events / record.wall_s) if record.wall_s else None
    metrics["wall_s"] = round(record.wall_s, 2)
    for depth, values in sorted(by_depth.items()):
        metrics[f"latency_depth{depth}_p50_ms"] = _ms(quantile(values, 0.5))
        metrics[f"latency_depth{depth}_p99_ms"] = _ms(quantile(values, 0.99))

    series = {
        "latencies_ms": [round(v * 1000, 3) for v in latencies],
        "depths": depths,
        "timeline": _timeline(record, pub, got, due),
        "timeline_on_time": _timeline(record, pub, on_time, due),
        "fault_time": None if fault is None else fault - record.scenario.traffic_start,
    }
    return {"metrics": metrics, "series": series}


def _timeline(
    record: RunRecord, pub: Sequence[float], got: list[int], due: list[int]
) -> list[tuple[float, float | None]]:
    """Delivery ratio per bin of publish time, relative to the start of traffic."""
    start = record.scenario.traffic_start
    bins: dict[int, list[int]] = {}
    for m, t in enumerate(pub):
        slot = bins.setdefault(int((t - start) / TIMELINE_BIN_S), [0, 0])
        slot[0] += got[m]
        slot[1] += due[m]
    return [(k * TIMELINE_BIN_S, None if d == 0 else g / d) for k, (g, d) in sorted(bins.items())]


def combine(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over seeds of every numeric metric; booleans must hold for every seed."""
    keys: list[str] = []
    for figures in per_seed:
        keys.extend(k for k in figures if k not in keys)
    out: dict[str, Any] = {}
    for key in keys:
        values = [f.get(key) for f in per_seed]
        if all(isinstance(v, bool) for v in values):
            out[key] = all(values)
            continue
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if not numbers:
            out[key] = None
            continue
        median = statistics.median(numbers)
        out[key] = round(median, 6) if isinstance(median, float) else median
    if len(per_seed) > 1:
        worst = [f["delivery_ratio"] for f in per_seed if f.get("delivery_ratio") is not None]
        out["delivery_ratio_min"] = min(worst, default=None)
    return out
