"""Operating a HOMS: ``/metrics`` (Prometheus text) and ``/api/OverlayList`` (``hp2p overlay``).

:class:`RequestMetrics` is an outer ASGI middleware: it times every HTTP request, the join
fast path included (which answers ahead of FastAPI's routing), and counts joins and reports
by their answers. Routes are labelled by the path only when it is one of this HOMS's own
(:data:`ROUTES`), otherwise ``other``, so a client cannot grow the label set. Gauges (members,
suspects per overlay) are read from the database at scrape time; per-overlay series are
limited to the :data:`TOP_OVERLAYS` largest overlays (overlay-ids are chosen by creators), the
totals cover all. Counters are per process: with ``--workers N`` each worker counts its own.

``/metrics`` needs ``Authorization: Bearer <operator token>`` when the HOMS has an operator
token configured (``hp2p homs`` always does, in its token file), like the monitoring views.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from fastapi import APIRouter, Request, Response
from sqlalchemy import Connection, func, select

from hp2p import prometheus
from hp2p.homs.db import overlay, peer
from hp2p.homs.errors import HompError
from hp2p.homs.store import HomsStore

#: Paths labelled as themselves; any other path is ``other``.
ROUTES = frozenset(
    {
        "/homs",
        "/homs/keys",
        "/peer",
        "/peer/report",
        "/api/HybridOverlayRemoval",
        "/api/InitData",
        "/api/OverlayCostMap",
        "/api/OverlayStatus",
        "/api/OverlayMember",
        "/api/OverlayTopology",
        "/api/OverlayComposition",
        "/api/OverlayList",
        "/api/PeerInfo",
        "/api/SignallingStatus",
        "/health",
        "/metrics",
    }
)
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})

#: Overlays with their own ``overlay_id`` series (the largest by members).
TOP_OVERLAYS = 50


@dataclass
class HomsMetrics:
    """What this HOMS process counted since it started."""

    started: float = field(default_factory=time.time)
    joins: int = 0
    join_refusals: int = 0
    reports: int = 0
    requests: dict[tuple[str, str, str], int] = field(default_factory=dict)
    latency: prometheus.Histogram = field(default_factory=prometheus.Histogram)

    def record(self, method: str, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        method = method if method in _METHODS else "other"
        key = (route, method, str(status) if 100 <= status <= 599 else "other")
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency.observe(seconds, {"route": route})
        admitted = 200 <= status < 300  # a join is answered 202 (the reference's code)
        if method == "POST" and route == "/peer":
            if admitted:
                self.joins += 1
            else:
                self.join_refusals += 1
        elif method == "POST" and route == "/peer/report" and admitted:
            self.reports += 1


class RequestMetrics:
    """ASGI middleware feeding :class:`HomsMetrics` (``app.state.metrics``)."""

    def __init__(self, app: Any, metrics: HomsMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.record(scope.get("method", ""), scope.get("path", ""), status[0], elapsed)


@dataclass
class OverlayCounts:
    """Members and suspects of one overlay, read at scrape time."""

    overlay_id: str
    members: int
    suspects: int


async def overlay_counts(store: HomsStore) -> tuple[int, list[OverlayCounts]]:
    """(number of overlays, members and suspects per overlay that has members)."""

    def tx(conn: Connection) -> tuple[int, list[OverlayCounts]]:
        overlays = int(conn.scalar(select(func.count()).select_from(overlay)) or 0)
        rows = conn.execute(
            select(peer.c.overlay_id, func.count(), func.count(peer.c.suspect_since)).group_by(
                peer.c.overlay_id
            )
        )
        return overlays, [OverlayCounts(r[0], int(r[1]), int(r[2])) for r in rows]

    return await store.run_read(tx)


async def exposition(metrics: HomsMetrics, store: HomsStore) -> str:
    """The whole ``/metrics`` text of this HOMS process."""
    overlays, counts = await overlay_counts(store)
    top = sorted(counts, key=lambda c: (-c.members, c.overlay_id))[:TOP_OVERLAYS]
    members = prometheus.gauge(
        "hp2p_homs_overlay_peers",
        f"Members (joined, not expired) of each overlay; the {TOP_OVERLAYS} largest overlays.",
    )
    suspects = prometheus.gauge(
        "hp2p_homs_overlay_suspects",
        f"Members reported gone by neighbours (suspects) per overlay; the {TOP_OVERLAYS} largest.",
    )
    for c in top:
        members.add(c.members, {"overlay_id": c.overlay_id})
        suspects.add(c.suspects, {"overlay_id": c.overlay_id})
    requests = prometheus.Family(
        "hp2p_homs_requests_total", "counter", "HTTP requests answered, by route, method and code."
    )
    for (route, method, code), n in sorted(metrics.requests.items()):
        requests.add(n, {"route": route, "method": method, "code": code})
    return prometheus.render(
        [
            prometheus.counter(
                "hp2p_homs_joins_total", "HybridOverlayJoin requests admitted.", metrics.joins
            ),
            prometheus.counter(
                "hp2p_homs_join_refusals_total",
                "HybridOverlayJoin requests refused (any non-200 answer).",
                metrics.join_refusals,
            ),
            prometheus.counter(
                "hp2p_homs_reports_total",
                "Status reports (POST /peer/report) accepted.",
                metrics.reports,
            ),
            prometheus.gauge("hp2p_homs_overlays", "Overlays this HOMS manages.", overlays),
            prometheus.gauge(
                "hp2p_homs_peers", "Members of all overlays.", sum(c.members for c in counts)
            ),
            prometheus.gauge(
                "hp2p_homs_suspects",
                "Suspect members of all overlays.",
                sum(c.suspects for c in counts),
            ),
            members,
            suspects,
            requests,
            metrics.latency.family(
                "hp2p_homs_request_duration_seconds", "Time to answer an HTTP request, by route."
            ),
            prometheus.gauge(
                "hp2p_homs_start_time_seconds",
                "When this HOMS process started (Unix time).",
                metrics.started,
            ),
        ]
    )


router = APIRouter()


def _check_operator(request: Request) -> None:
    """403 unless the request carries the operator token (when one is configured)."""
    expected = request.app.state.settings.operator_token
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), str(expected).encode()
    ):
        raise HompError(
            403,
            "/metrics needs the operator token: Authorization: Bearer <token from the HOMS's "
            "--operator-token-file>",
            "Authorization",
        )


@router.get("/metrics", summary="Prometheus metrics of this HOMS process")
async def metrics(request: Request) -> Response:
    """Prometheus text format; behind the operator token (see docs/operate.md)."""
    _check_operator(request)
    text = await exposition(request.app.state.metrics, request.app.state.store)
    return Response(text, media_type=prometheus.CONTENT_TYPE)


@router.get("/api/OverlayList", summary="Every overlay with its creation time and members")
async def overlay_list(request: Request) -> Response:
    """What ``GET /homs`` tells (no keys), plus ``created`` and the member and suspect counts:
    the table of ``hp2p overlay list``."""
    store: HomsStore = request.app.state.store
    records = await store.query_overlays()
    _, counts = await overlay_counts(store)
    by_id = {c.overlay_id: c for c in counts}
    items = []
    for ov in records:
        c = by_id.get(ov.overlay_id)
        items.append(
            {
                "overlay-id": ov.overlay_id,
                "title": ov.title,
                "type": ov.type,
                "sub-type": ov.sub_type,
                "owner-id": ov.owner_id,
                "auth-type": ov.auth_type,
                "parent-overlay-id": ov.parent_overlay_id,
                "source-peer-id": ov.source_peer_id,
                "created": ov.created_at,
                "num_peers": c.members if c else 0,
                "num_suspects": c.suspects if c else 0,
            }
        )
    return Response(msgspec.json.encode({"overlays": items}), media_type="application/json")
