"""The asyncio shell of a history member: a SubMesh peer whose piece store is the history file.

It joins the SubMesh fed by ``hp2p iot bridge`` like any member (:class:`MeshNode`), so it pulls
every segment object its neighbours hold (a late joiner backfills the whole history that way)
and serves every piece it holds from its SQLite file (:mod:`hp2p.apps.iot.history`). Each
delivered object is checked and stored once; retention drops whole oldest objects from the
file and the mesh core; the query API answers from the file, after waiting a bounded time for
segments it knows of but has not pulled yet, with explicit gaps for what is still missing
(:mod:`hp2p.apps.iot.history_gaps`).

Replication is full by default: every history member stores every segment within its
retention. With ``replicas`` R > 0 a member stores only the segments it owns (rendezvous
hashing over the live members the HOMS lists, :mod:`hp2p.apps.iot.placement`, read by
:mod:`hp2p.apps.iot.history_members`): the mesh still pulls every manifest but parks the data
of other segments (``MeshNode.set_wants``); a query fetches those on demand and keeps them in
memory for answers only (:mod:`hp2p.apps.iot.history_cache`); a member set that changes makes
each member pull the segments it now owns (repair). Nothing stored is deleted when a member
stops owning it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from hp2p.apps.iot.history import (
    HistoryError,
    HistoryStore,
    SqlitePieceStore,
    decode_doc,
    segment_rows,
)
from hp2p.apps.iot.history_cache import SegmentCache, merge
from hp2p.apps.iot.history_gaps import Gap, find_gaps
from hp2p.apps.iot.history_members import MemberWatch
from hp2p.apps.iot.placement import Placement
from hp2p.apps.iot.segments import SegmentError
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_node import MeshDelivery, MeshNode, MeshNodeError, MeshSettings
from hp2p.peer.mesh_objects import Manifest

log = logging.getLogger("hp2p.apps.iot.history")

EventSink = Callable[[str, dict[str, Any]], None]

__all__ = ["HistoryMember", "HistorySettings", "QueryError"]

#: The mesh core must never evict on its own: retention here decides what goes. A segment is
#: at least two pieces (manifest and data) and a neighbour may announce a long history, so the
#: per-neighbour bound of announced pieces is raised (about 130,000 segments).
_UNBOUNDED = MeshConfig(store_bytes=1 << 50, store_objects=1 << 31, max_announced=1 << 18)
#: Poll period (s) while a query waits for segments being pulled.
_WAIT_POLL = 0.05
#: Objects a waiting query asks the mesh to pull first, at most.
_PRIORITY = 64
#: Longest wait a query may ask for (s).
MAX_WAIT = 30.0
#: Most readings one answer carries (about 200 bytes of JSON each: an answer stays < 100 MB).
MAX_LIMIT = 500_000
#: Most replicas a member may be asked to keep (0: full replication).
MAX_REPLICAS = 64
#: Gap kinds a waiting query asks the mesh to pull first.
_FETCHABLE = ("pending", "unavailable", "announced")


class QueryError(ValueError):
    """A query with bad parameters; ``str(err)`` says which."""


@dataclass(frozen=True, slots=True)
class HistorySettings:
    homs: str
    join: str
    db: str
    peer_id: str | None = None
    retention_age: float | None = None  # seconds
    retention_bytes: int | None = None
    retention_interval: float = 5.0  # how often retention looks (s)
    listen: str = "127.0.0.1:0"
    config: MeshConfig = field(default_factory=lambda: _UNBOUNDED)
    #: Members that keep each segment (0: every member keeps every segment).
    replicas: int = 0
    members_interval: float = 3.0  # how often the HOMS's member list is read (s)
    cache_bytes: int = 64 << 20  # readings of fetched segments held for answers
    expires: int = 30  # HOMS registration, refreshed at 0.8 of it (how soon death shows)


@dataclass
class HistoryStats:
    segments: int = 0
    readings: int = 0
    duplicates: int = 0
    rejected: int = 0
    dropped: int = 0
    queries: int = 0
    fetched: int = 0  # segments not owned, fetched for a query (memory only)


class HistoryMember:
    """``await start()``, ``await query(...)``, ``status()``, ``await close()``."""

    def __init__(self, settings: HistorySettings, *, on_event: EventSink | None = None) -> None:
        if settings.retention_age is not None and settings.retention_age <= 0:
            raise HistoryError("--retention-age must be more than 0 seconds")
        if settings.retention_bytes is not None and settings.retention_bytes < 1:
            raise HistoryError("--retention-bytes must be at least 1 byte")
        if not 0 <= settings.replicas <= MAX_REPLICAS:
            raise HistoryError(f"--replicas must be 0 (full) .. {MAX_REPLICAS}")
        self.settings = settings
        self.on_event = on_event
        self.stats = HistoryStats()
        self.store = HistoryStore(settings.db)
        self.node = MeshNode(
            MeshSettings(
                homs=settings.homs,
                join=settings.join,
                peer_id=settings.peer_id or f"history-{secrets.token_hex(4)}",
                listen=settings.listen,
                config=settings.config,
                subscriber_queue=4096,
                expires=settings.expires,
            ),
            store=SqlitePieceStore(self.store),
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.cache = SegmentCache(settings.cache_bytes)
        self.placement: Placement | None = None
        self.watch: MemberWatch | None = None
        #: keep everything while no member set could be read (never lose data to a HOMS fault)
        self._unplaced_keeps = False
        if settings.replicas:
            self.node.wants = self._wants  # from the first piece: nothing until placed

    # === life cycle ==============================================================================
    async def start(self) -> None:
        """Join the SubMesh, pick up where the file left off, start pulling and serving."""
        subscription = self.node.subscribe(4096)
        try:
            await self.node.start()
            self.store.bind(self.node.overlay_id, self.node.source_id)
        except (MeshNodeError, HistoryError):
            await self.close()
            raise
        self.node.forget_below(self.store.floor)  # retention survives restarts
        if self.settings.replicas:
            await self._start_placement()
        self._reconcile()
        self._spawn(self._pump(subscription), "hp2p-history-pump")
        self._spawn(self._housekeeping(), "hp2p-history-housekeeping")
        self.emit(
            "joined",
            {
                "peer_id": self.node.peer_id,
                "overlay_id": self.node.overlay_id,
                "db": str(self.store.path),
                **self.store.counts(),
            },
        )

    async def _start_placement(self) -> None:
        """Read the member set once (pulling waits for it), then every few seconds."""
        node = self.node
        self.placement = Placement(self.settings.replicas, node.peer_id, node.overlay_id)
        self.watch = MemberWatch(
            self.settings.homs,
            node.overlay_id,
            node.source_id,
            self.placement,
            on_change=self._members_changed,
            on_error=lambda reason: self.emit("error", {"reason": reason}),
            interval=self.settings.members_interval,
        )
        if not await self.watch.poll():
            self._unplaced_keeps = True  # no member set: keep all until one is read
            node.rewant()
        self._spawn(self.watch.run(), "hp2p-history-members")

    def _members_changed(self) -> None:
        """A new member set: each member pulls what it owns now and lacks (repair)."""
        placement = self.placement
        if placement is None or self._closed:
            return
        with contextlib.suppress(MeshNodeError):  # the member is closing
            self.node.rewant()
        self.emit("placement", {"members": list(placement.members), "replicas": placement.replicas})

    def _keeps(self, obj: int) -> bool:
        """Does this member store ``obj``? (Always without replicas.)"""
        placement = self.placement
        if not self.settings.replicas:
            return True
        if placement is None or not placement.ready:
            return self._unplaced_keeps
        return placement.mine(obj)

    def _wants(self, obj: int, manifest: Manifest) -> bool:
        return self._keeps(obj)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self.node.close()
        self.store.close()

    # === storing =================================================================================
    async def _pump(self, subscription: Any) -> None:
        delivery: MeshDelivery
        async for delivery in subscription:
            self._ingest(delivery.object_number, delivery.data, delivery.app_id, delivery.meta)
            if delivery.lost:
                self._reconcile()  # a full queue dropped deliveries: the core still holds them

    def _ingest(
        self, obj: int, data: bytes, app_id: str | None, meta: dict[str, Any] | None
    ) -> None:
        core = self.node.core
        manifest = core.manifest(obj) if core is not None else None
        if manifest is None or obj in self.store.known:
            return
        if not self._keeps(obj):
            self._fetched(obj, data, app_id, meta)
            return
        result = self.store.ingest(
            obj, data, app_id, meta, piece_size=manifest.piece_size, now=time.time()
        )
        if result.stored:
            self.stats.segments += 1
            self.stats.readings += result.readings
            count = meta.get("count") if meta else None
            if isinstance(count, int) and count > result.readings:
                self.stats.duplicates += count - result.readings
            self.emit(
                "segment",
                {"object": obj, "topic": (meta or {}).get("topic"), "readings": result.readings},
            )
        elif result.reason != "already known":
            self.stats.rejected += 1
            self.emit("rejected", {"object": obj, "reason": result.reason})

    def _fetched(
        self, obj: int, data: bytes, app_id: str | None, meta: dict[str, Any] | None
    ) -> None:
        """A segment this member does not own, fetched for a query: its readings go to the
        memory cache, its data leaves the mesh store (the manifest stays)."""
        try:
            rows = segment_rows(obj, data, app_id, meta)
        except SegmentError as exc:
            result = self.store.reject(obj, str(exc), time.time())
            self.stats.rejected += 1
            self.emit("rejected", {"object": obj, "reason": result.reason})
            return
        self.cache.add(obj, rows)
        self.stats.fetched += 1
        with contextlib.suppress(MeshNodeError):  # the member is closing
            self.node.release(obj)
        self.emit("fetched", {"object": obj, "topic": (meta or {}).get("topic")})

    def _reconcile(self) -> None:
        """Store every object the mesh holds that the file has no row for (after a restart,
        a crash between pulling and storing, or a subscriber queue that overflowed)."""
        core = self.node.core
        if core is None:
            return
        for obj in core.objects():
            if obj not in self.store.known:
                data = core.read_object(obj)
                manifest = core.manifest(obj)
                if data is not None and manifest is not None:
                    meta = dict(manifest.meta) if manifest.meta else None
                    self._ingest(obj, data, manifest.app_id, meta)

    async def _housekeeping(self) -> None:
        """Commit loose pieces and apply retention, every ``retention_interval`` (bounded)."""
        while True:  # ends with the member (task cancelled)
            await asyncio.sleep(min(1.0, self.settings.retention_interval))
            self.store.commit()
            self.apply_retention(time.time())

    def apply_retention(self, now: float) -> int:
        """Drop whole oldest objects past the age or size bound; returns segments dropped."""
        s = self.settings
        if s.retention_age is None and s.retention_bytes is None:
            return 0
        floor = self.store.retention_floor(now, s.retention_age, s.retention_bytes)
        if floor <= self.store.floor or self.node.core is None:
            return 0
        before = self.store.counts()["segments"]
        self.node.forget_below(floor)  # the mesh lets them go and never pulls them again
        self.store.drop_below(floor)
        for obj in [o for o in self.cache.objects if o < floor]:
            self.cache.discard(obj)
        dropped = before - self.store.counts()["segments"]
        self.stats.dropped += dropped
        self.emit("retention", {"floor": floor, "dropped": dropped})
        return dropped

    # === queries =================================================================================
    def gaps(self, topic: str, lo: float, hi: float, now: float) -> list[Gap]:
        core = self.node.core
        known = self.store.known | self.cache.objects
        pending: dict[int, dict[str, Any] | None] = {}
        announced: list[int] = []
        if core is not None:
            for obj, manifest in core.holdings.manifests.items():
                if obj in known:
                    continue
                meta = manifest.meta
                if meta and meta.get("topic") != topic:
                    known.add(obj)  # seen, and none of this query's business
                else:
                    pending[obj] = dict(meta) if meta else None
            announced = list(core.pull.availability)
        kept = [self.store.dropped_until(topic)]
        if self.settings.retention_age is not None:
            kept.append(now - self.settings.retention_age)
        kept_from = max((k for k in kept if k is not None), default=None)
        return find_gaps(
            topic,
            lo,
            hi,
            kept_from=kept_from,
            floor=self.store.floor,
            known=known,
            pending=pending,
            announced=announced,
            notes=self._note if self.placement is not None else None,
        )

    def _note(self, obj: int) -> tuple[str, str]:
        """Why a segment is missing here, naming the members that keep it (replicas)."""
        core, placement = self.node.core, self.placement
        owners = ", ".join(placement.owners(obj)) if placement is not None else ""
        owners = owners or "not placed yet"
        if core is not None and (obj in core.pull.availability or core.holds(obj)):
            return ("pending", f"segment known, data not pulled yet (kept by {owners})")
        return ("unavailable", f"no neighbour holds this segment's data (kept by {owners})")

    async def query(
        self,
        topic: str,
        lo: float,
        hi: float,
        *,
        limit: int = 100_000,
        wait: float = 2.0,
        raw: bool = False,
    ) -> dict[str, Any]:
        """Readings of ``topic`` in ``[lo, hi)`` in time order, each once, with the gaps.

        Segments the member knows of but has not pulled are waited for (the mesh pulls
        everything it hears of) for at most ``wait`` seconds, then reported as gaps.
        ``raw``: each reading as :class:`msgspec.Raw` JSON (for the API), else a dict.
        """
        _check_query(topic, lo, hi, limit, wait)
        self.stats.queries += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        gaps = self.gaps(topic, lo, hi, time.time())
        try:
            while any(g.objects for g in gaps) and loop.time() < deadline:  # bounded by wait
                self._prioritise(gaps)
                await asyncio.sleep(_WAIT_POLL)
                gaps = self.gaps(topic, lo, hi, time.time())
        finally:
            self._prioritise([])
        if len(self.cache):
            cached = self.cache.rows(topic, lo, hi)
            docs = merge(self.store.query_rows(topic, lo, hi, limit), cached, limit)
        else:
            docs = self.store.query(topic, lo, hi, limit)
        truncated = len(docs) >= limit
        readings: list[Any] = [msgspec.Raw(d) for d in docs] if raw else list(map(decode_doc, docs))
        return {
            "topic": topic,
            "from": lo,
            "to": hi,
            "count": len(docs),
            "truncated": truncated,
            "complete": not gaps and not truncated,
            "gaps": [g.json() for g in gaps],
            "readings": readings,
        }

    def _prioritise(self, gaps: list[Gap]) -> None:
        """Ask the mesh to pull first the objects a waiting query misses (bounded)."""
        if self._closed:
            return
        wanted: list[int] = []
        for gap in gaps:
            if gap.objects is not None and gap.kind in _FETCHABLE:
                first, last = gap.objects
                wanted.extend(range(first, min(last, first + _PRIORITY) + 1))
        with contextlib.suppress(MeshNodeError):  # the member is closing
            self.node.prioritise(wanted[:_PRIORITY])

    def status(self) -> dict[str, Any]:
        node = self.node
        mesh = node.core.status() if node.core is not None else {}
        return {
            "peer_id": node.peer_id,
            "state": node.state,
            "overlay_id": node.overlay_id,
            "source_id": node.source_id,
            "db": str(self.store.path),
            "store": self.store.counts(),
            "stats": vars(self.stats),
            "retention": {
                "age": self.settings.retention_age,
                "bytes": self.settings.retention_bytes,
            },
            "replication": "replicas" if self.settings.replicas else "full",
            "placement": self._placement_status(),
            "rejections": self.store.rejections(),
            "mesh": {
                k: mesh.get(k) for k in ("neighbours", "objects", "pieces", "requests-in-flight")
            }
            | {"floor": mesh.get("floor"), "counters": mesh.get("counters")},
        }

    def _placement_status(self) -> dict[str, Any] | None:
        placement, watch = self.placement, self.watch
        if placement is None:
            return None
        return {
            "replicas": placement.replicas,
            "ready": placement.ready,
            "members": list(placement.members),
            "changes": placement.changes,
            "keeps_all_unplaced": self._unplaced_keeps,
            "homs_failures": watch.failures if watch is not None else 0,
            "cache": {"segments": len(self.cache), "bytes": self.cache.bytes},
        }

    # === helpers =================================================================================
    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("history task %s failed", task.get_name(), exc_info=task.exception())
            self.emit("error", {"task": task.get_name(), "reason": repr(task.exception())})

    def emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, fields)
            except Exception:
                log.exception("history event callback failed on %s", kind)


def _check_query(topic: str, lo: float, hi: float, limit: int, wait: float) -> None:
    if not topic or len(topic.encode()) > 256:
        raise QueryError("topic must be 1..256 bytes")
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise QueryError("from and to must be unix seconds with from < to")
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be 1..{MAX_LIMIT}")
    if not 0 <= wait <= MAX_WAIT:
        raise QueryError(f"wait must be 0..{MAX_WAIT:g} seconds")
