"""The figures of ``hp2p bench media`` from what viewers and the source recorded: pure.

A viewer *session* runs from a join to a leave (or the end of the run). It plays from the first
segment it lists (the live edge). A player that starts then, with one segment of buffer, needs
segment ``q`` by ``deadline(q) = t_first + (published(q) - published(first)) + D``, where
``published`` is when the source broadcast a segment and ``D`` the segment duration. Segments
whose deadline falls inside the session are *due*; those listed by their deadline were *played
on time*. Continuity is on-time / due per session (CoolStreaming's continuity index); a
session that listed nothing although segments were due scores 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Session", "percentile", "session_due", "summarise"]


@dataclass
class Session:
    name: str
    joined: float  # wall clock when the viewer was asked to join
    left: float | None = None
    listed: dict[int, float] = field(default_factory=dict)  # sequence -> wall time listed
    latencies: list[float] = field(default_factory=list)
    missing: int = 0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def session_due(
    session: Session, published: dict[int, float], duration: float, end: float
) -> list[tuple[int, float, bool]]:
    """(sequence, deadline, played on time) for every segment due in the session."""
    until = session.left if session.left is not None else end
    if not session.listed:
        grace = session.joined + 2 * duration + 1.0  # nothing listed although it could be
        return [(q, t + duration, False) for q, t in published.items() if grace <= t <= until]
    first = min(session.listed)
    t0 = session.listed[first]
    if first not in published:
        return []
    base = published[first]
    out = []
    for q in sorted(p for p in published if p >= first):
        deadline = t0 + (published[q] - base) + duration
        if deadline > until:
            break
        out.append((q, deadline, session.listed.get(q, math.inf) <= deadline))
    return out


def summarise(
    sessions: list[Session],
    published: dict[int, float],
    duration: float,
    end: float,
    start: float,
    bucket: float = 10.0,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The benchmark's keys, and continuity per ``bucket`` seconds (by deadline) for a plot."""
    continuity: list[float] = []
    series: dict[int, list[int]] = {}
    for session in sessions:
        due = session_due(session, published, duration, end)
        if not due:
            continue
        continuity.append(sum(ok for _q, _d, ok in due) / len(due))
        for _q, deadline, ok in due:
            slot = series.setdefault(int((deadline - start) // bucket), [0, 0])
            slot[0] += ok
            slot[1] += 1
    # startup only for viewers that joined a running stream (not those waiting for its start)
    live_from = min(published.values(), default=math.inf)
    startups = [
        min(s.listed.values()) - s.joined for s in sessions if s.listed and s.joined >= live_from
    ]
    latencies = [x for s in sessions for x in s.latencies]
    metrics = {
        "sessions": len(sessions),
        "continuity": sum(continuity) / len(continuity) if continuity else None,
        "continuity_p5": percentile(continuity, 5),
        "startup_sessions": len(startups),
        "startup_p50_s": percentile(startups, 50),
        "startup_p99_s": percentile(startups, 99),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "missing_segments": sum(s.missing for s in sessions),
    }
    points = [
        {"t": (k + 0.5) * bucket, "continuity": ok / n, "due": n}
        for k, (ok, n) in sorted(series.items())
    ]
    return metrics, points
