"""The asyncio shell of the hybrid peer: sockets, one timer, the HOMS client, the application.

It decides nothing. Every input (an accepted or opened TCP connection, a decoded R2 message, a
closed link, the timer, a HOMS answer, an application call) is handed to the sans-IO
:class:`~hp2p.peer.core.PeerCore` with ``loop.time()`` as ``now``; then the core's effects are
executed in order and the single timer is re-armed to ``core.next_timer()``. That is the whole
contract (ARCHITECTURE.md, rule 2), and the in-memory simulator drives the same core the same way.
The connection table, the timer and the effect loop are :class:`hp2p.peer.shell.CoreShell`,
shared with the SubMesh shell; this module adds what only a tree peer does.

Effects and how they are executed:

* ``Connect``: ``hp2p.transport.tcp.connect`` in a task, answered by ``connection_made`` or
  ``connection_failed``. A ``Close`` for a connection still being opened cancels it.
* ``Send``: encoded once, written to every link named. A link whose bounded queue is full
  refuses the frame; refusals are counted and shown in :meth:`PeerNode.status` (back-pressure is
  the link's queue, never an unbounded buffer here).
* ``Close``: the link closes after flushing what was already written.
* ``Deliver``: to every subscriber's bounded queue; a slow subscriber loses its oldest messages
  and is told how many with the next one it gets, and never blocks the peer.
* ``HomsReport`` / ``HomsRecoveryJoin``: the HOMS client (reports coalesced).
* ``Joined``, ``Detached``, ``PathEvent`` …: status, logs and the event callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from hp2p.peer.config import PeerConfig
from hp2p.peer.control import JoinInfo
from hp2p.peer.core import PeerCore
from hp2p.peer.effects import (
    Deliver,
    Detached,
    Gap,
    HomsRecoveryJoin,
    Joined,
    JoinFailed,
    Left,
    PathEvent,
    PeerLost,
    ScanResult,
)
from hp2p.peer.homs_client import (
    HomsClient,
    HomsError,
    Membership,
    PeerForgottenError,
    member_key,
)
from hp2p.peer.settings import NodeSettings
from hp2p.peer.shell import CoreShell, LinkStats
from hp2p.peer.stdio import payload_fields
from hp2p.peer.subscription import Delivery as Delivery
from hp2p.peer.subscription import Subscription as Subscription
from hp2p.peer.subtree import NotSourceError, subtree_source
from hp2p.transport import ice, tcp
from hp2p.transport.faults import FaultPlan
from hp2p.transport.registry import TransportRegistry
from hp2p.trust.keys import KeyFileError
from hp2p.trust.membership import Membership as TrustMembership
from hp2p.wire import homp

log = logging.getLogger("hp2p.peer.node")

EventSink = Callable[[str, dict[str, Any]], None]


class NodeError(Exception):
    """The peer could not start or join; ``str(err)`` says what failed and what to do."""


class MessageTooLargeError(NodeError):
    """``publish`` was given more bytes than one R2 frame on a link may carry."""


#: Room left in a frame for the R2 header and the extension header of a broadcast.
_FRAME_OVERHEAD = 4096


@dataclass
class NodeStats(LinkStats):
    """What the shell counted; the core's own counters are in ``PeerCore.counters``."""

    deliveries: int = 0
    subscriber_drops: int = 0
    recovery_joins: int = 0
    rejoins: int = 0  # fresh HOMP joins after JoinFailed (new ticket)
    gaps: int = 0  # messages no peer could serve any more (data recovery gave up)
    peers_lost: int = 0  # neighbours that died (not RELEASEd)
    forgotten: int = 0  # the HOMS no longer knew this peer: joined again (new ticket)


def _random_peer_id() -> str:
    return f"peer-{secrets.token_hex(4)}"


def _password() -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(16))


def admission_status(core: PeerCore) -> dict[str, Any]:
    """Link admission at a glance: whether links need credentials, this peer's key and
    credential expiry (wall clock), links admitted and refused (docs/security.md)."""
    adm = core.admission
    m, own = adm.membership, adm.own
    return {
        "required": adm.required,
        "public_key": m.key.public_text if m is not None else None,
        "credential_expires_at": own.body.expires_at if own is not None else None,
        **asdict(adm.counters),
    }


async def first_set(*events: asyncio.Event) -> None:
    """Until one of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def deliver_fields(effect: Deliver, payload: bool) -> dict[str, Any]:
    """The ``deliver`` event of ``effect``; with ``payload`` (``--events-payload``) the bytes."""
    fields: dict[str, Any] = {
        "source": effect.source,
        "sequence": effect.sequence,
        "t": time.time(),
        "size": len(effect.data),
    }
    if effect.recovered:
        fields["recovered"] = True
    if payload:
        fields |= {"app_id": effect.app_id, "payload_type": effect.payload_type}
        fields |= payload_fields(effect.data)
    return fields


class PeerNode(CoreShell[PeerCore]):
    """One hybrid peer process: ``await start()``, use it, ``await close()``."""

    stats: NodeStats

    def __init__(
        self,
        settings: NodeSettings,
        config: PeerConfig | None = None,
        *,
        on_event: EventSink | None = None,
        homs_client: HomsClient | None = None,
        transports: TransportRegistry | None = None,
    ) -> None:
        if settings.create is None and settings.join is None:
            raise NodeError("say what to do: create an overlay (title) or join one (id or title)")
        self.settings = settings
        self.config = config or PeerConfig()
        self.peer_id = settings.peer_id or _random_peer_id()
        self.on_event = on_event
        self.event_payload = False  # deliver events carry the payload (--events-payload)
        self.stats = NodeStats()
        self.homs = homs_client or HomsClient(
            settings.homs,
            timeout=settings.homs_timeout,
            attempts=settings.homs_attempts,
            rng=random.Random(settings.seed),
        )
        self.homs.on_forgotten = self._forgotten
        try:
            key = member_key(settings.key_file)
        except KeyFileError as exc:
            raise NodeError(str(exc)) from None
        # A client handed in (tests, the bridge) gets this run's key and security unless set.
        if self.homs.key is None:
            self.homs.key = key
        self._key = self.homs.key
        if self.homs.security is None:
            self.homs.security = settings.security  # type: ignore[assignment]
        self.homs.on_renewed = self._renewed
        largest = min(tcp.DEFAULT_MAX_PAYLOAD, settings.send_queue_bytes)
        if settings.webrtc:
            # one frame is one data-channel message: aiortc accepts at most 256 KiB in one
            largest = min(largest, ice.MAX_MESSAGE)
        self.max_message = largest - _FRAME_OVERHEAD
        try:
            self.fault_plan = (
                FaultPlan.parse(settings.faults, settings.fault_seed) if settings.faults else None
            )
        except ValueError as exc:
            raise NodeError(f"faults: {exc}") from None
        self.core: PeerCore | None = None
        self.address = ""
        self.membership: Membership | None = None
        # SubTree: only its source peer publishes (hp2p.peer.subtree); None on a CoreTree
        self.subtree_source: str | None = None
        self.source_lost_at: float | None = None  # Unix time the SubTree source was lost
        self.joined = asyncio.Event()
        self.state = "starting"
        self.failure: str | None = None
        self._init_shell(settings.send_queue_bytes, transports, settings.r2_limits())
        self._subscribers: list[Subscription[Any]] = []
        self._scans: dict[int, asyncio.Future[ScanResult]] = {}
        self.failed = asyncio.Event()
        self._overlay: homp.QueryOverlay | None = None
        self._links_changed = asyncio.Event()

    # === life cycle ==============================================================================
    async def start(self) -> None:
        """Listen on R2, find or create the overlay, join it and wait until attached."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        self.address = await self._listen(s, self._key, NodeError)
        rng = random.Random(self.settings.seed)
        self.core = PeerCore(self.config, self.peer_id, self.address, rng)
        # link-proof nonces must be unpredictable to other peers, unlike the core's seeded rng
        self.core.admission.entropy = os.urandom
        try:
            self.membership = await self._homp_join()
        except HomsError as exc:
            await self._shutdown_io()
            raise NodeError(str(exc)) from None
        m = self.membership
        await self._signalling_up(self.settings.homs_timeout * 2, NodeError)
        self.homs.start_refresh()
        self.state = "joining"
        self.core.start(self._join_info(m), self._now())
        self._drain()
        try:
            await asyncio.wait_for(first_set(self.joined, self.failed), self.settings.join_timeout)
        except TimeoutError:
            limit = self.settings.join_timeout
            self.failure = self.failure or f"not attached to the tree within {limit:g} s"
        if self.failure is not None and not self.joined.is_set():
            reason = self.failure
            await self.close()
            raise NodeError(
                f"joined overlay {m.overlay_id} at the HOMS but could not attach to its tree: "
                f"{reason}. Are the other peers reachable from here?"
            )

    def _join_info(self, m: Membership) -> JoinInfo:
        return JoinInfo(
            overlay_id=m.overlay_id,
            ticket=m.ticket,
            peers=tuple(p for p in m.peers if p[0] != self.peer_id),
            heartbeat_interval=m.heartbeat_interval,
            heartbeat_timeout=m.heartbeat_timeout,
            cr_policy=m.cr_policy,
            root=m.root,
            source_peer_id=self.subtree_source,
            membership=m.trust,
        )

    def _renewed(self, membership: TrustMembership) -> None:
        """A refresh renewed the credential: the kernel sends it on new links and data."""
        core = self.core
        if core is None or self._stopped or core.admission.membership is None:
            return
        core.admission.renew(membership)
        core.db.renew(membership)

    async def _homp_join(self, overlay: homp.QueryOverlay | None = None) -> Membership:
        """HybridOverlayJoin, after finding (or creating) the overlay the first time."""
        if overlay is None:
            overlay = await self._find_or_create()
            self._overlay = overlay
            self.subtree_source = subtree_source(overlay)
        return await self.homs.join(
            overlay,
            peer_id=self.peer_id,
            address=self.address,
            password=_password(),
            expires=self.settings.expires,
            access_key=self.settings.access_key,
        )

    async def _find_or_create(self) -> homp.QueryOverlay:
        s = self.settings
        if s.create is None:
            assert s.join is not None
            return await self.homs.find_overlay(s.join)
        # HOMP carries whole seconds (rounded by the client, in the HOMP field only); the
        # core keeps its own sub-second values (PeerConfig.with_overlay, pinned).
        overlay_id = await self.homs.create_overlay(
            s.create,
            owner_id=self.peer_id,
            admin_key=s.admin_key or secrets.token_urlsafe(16),
            heartbeat_interval=self.config.heartbeat_interval,
            heartbeat_timeout=self.config.heartbeat_timeout,
            description=s.description,
            access_key=s.access_key,
        )
        return await self.homs.find_overlay(overlay_id)

    async def close(self) -> None:
        """Leave cleanly, bounded by ``leave_timeout``: RELEASE every path, flush, HOMP leave."""
        if self._stopped:
            return
        self._stopped = True
        deadline = self._now() + self.settings.leave_timeout
        core = self.core
        if core is not None and self.state != "left":
            core.leave(self._now())
            self._drain()
        await self._wait_links_closed(deadline)
        if self.homs.membership is not None:
            await self.homs.flush_reports(max(0.0, min(1.0, deadline - self._now())))
            try:
                await asyncio.wait_for(self.homs.leave(), max(0.1, deadline - self._now()))
            except (HomsError, TimeoutError) as exc:
                log.warning("HOMP leave failed (the HOMS will expire this peer): %s", exc)
        self.state = "left"
        await self._shutdown_io()
        self._emit("left", {})

    async def _wait_links_closed(self, deadline: float) -> None:
        """Give the RELEASE frames time to leave: wait (bounded) until every link has closed."""
        for link in list(self._links.values()):
            link.close()
        while self._links and self._now() < deadline:
            self._links_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._links_changed.wait(), deadline - self._now())

    async def _shutdown_io(self) -> None:
        await self._stop_io()
        for sub in list(self._subscribers):
            sub.close()
        for fut in self._scans.values():
            if not fut.done():
                fut.cancel()
        await self.homs.aclose()

    # === application inputs ======================================================================
    def publish(
        self, data: bytes, app_id: str = "etri_data", payload_type: str = "text/plain"
    ) -> int:
        """Broadcast ``data`` to every peer of the overlay; returns its sequence number.

        A message larger than a link can carry is refused here with :class:`MessageTooLargeError`
        instead of being numbered and then refused by every link.
        """
        core = self._running_core()
        if len(data) > self.max_message:
            raise MessageTooLargeError(
                f"a message of {len(data)} bytes is larger than the {self.max_message} bytes a "
                "link carries (R2 payload limit and send_queue_bytes); split it"
            )
        try:
            sequence = core.publish(data, self._now(), app_id=app_id, payload_type=payload_type)
        except NotSourceError as exc:  # a SubTree member that is not its source
            raise NodeError(str(exc)) from None
        self._emit("published", {"source": self.peer_id, "sequence": sequence, "t": time.time()})
        self._drain()
        return sequence

    async def scan_tree(self) -> ScanResult:
        """SCAN_TREE from here; answers after the core's ``scan_timeout`` (or at once if alone)."""
        core = self._running_core()
        assert self._loop is not None
        future: asyncio.Future[ScanResult] = self._loop.create_future()
        cseq = core.scan_tree(self._now())
        self._scans[cseq] = future
        self._drain()
        try:
            return await future
        finally:
            self._scans.pop(cseq, None)

    def subscribe(self, maxsize: int | None = None) -> Subscription[Delivery]:
        """Deliveries only: for applications that learn of gaps elsewhere (events, status)."""
        sub: Subscription[Delivery] = Subscription(
            maxsize or self.settings.subscriber_queue, self._unsubscribe
        )
        self._subscribers.append(sub)
        return sub

    def subscribe_with_gaps(self, maxsize: int | None = None) -> Subscription[Delivery | Gap]:
        """Deliveries and, in their place in the stream, the ranges no peer could serve."""
        sub: Subscription[Delivery | Gap] = Subscription(
            maxsize or self.settings.subscriber_queue, self._unsubscribe, gaps=True
        )
        self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription[Any]) -> None:
        self._subscribers.remove(sub)

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for the local API, ``hp2p peer`` and tests."""
        core = self.core
        links = list(self._links.values())
        out: dict[str, Any] = {
            "peer_id": self.peer_id,
            "state": self.state,
            "address": self.address,
            "homs": self.homs.url,
            "failure": self.failure,
            "node": asdict(self.stats),
            "links": {
                "open": len(links),
                "overflow_drops": sum(link.stats.overflow_drops for link in links),
                "injected_drops": sum(link.stats.injected_drops for link in links),
            },
            "homs_client": asdict(self.homs.stats),
            "r2_limits": self.r2_budget.status(),
            "subscribers": len(self._subscribers),
            "subtree_foreign_dropped": (
                core.counters.foreign_dropped if core and self.subtree_source else None
            ),
            "source_lost_at": self.source_lost_at,  # SubTree: its source unreachable since
        }
        if core is not None:
            costmap = core.paths.costmap()
            out.update(
                overlay_id=core.overlay_id,
                ticket=core.ticket,
                phase=core.phase.value,
                depth=core.depth,
                parent=core.parent,
                paths={
                    "primary": list(costmap.primary),
                    "outgoing_candidate": list(costmap.outgoing_candidate),
                    "incoming_candidate": list(costmap.incoming_candidate),
                },
                core=asdict(core.counters),
                core_status=core.status(),
                admission=admission_status(core),
            )
        return out

    def _running_core(self) -> PeerCore:
        if self.core is None or self.state in ("starting", "left") or self._stopped:
            raise NodeError("the peer is not running (start it first, or it has left)")
        return self.core

    # === transport inputs ========================================================================
    def _link_closed(self) -> None:
        self._links_changed.set()

    # === effects =================================================================================
    def _effect_handlers(self) -> dict[type[Any], Callable[[Any], None]]:
        return {
            Deliver: self._deliver,
            HomsRecoveryJoin: self._recovery_wanted,
            ScanResult: self._scan_done,
            PathEvent: self._path_event,
            Joined: self._joined,
            Detached: self._detached,
            JoinFailed: self._join_failed,
            Gap: self._gap,
            PeerLost: self._peer_lost,
            Left: self._left,
        }

    def _recovery_wanted(self, effect: HomsRecoveryJoin) -> None:
        self.stats.recovery_joins += 1
        self._spawn(self._recovery_join(), "hp2p-recovery-join")

    def _path_event(self, effect: PathEvent) -> None:
        fields = {"kind": effect.kind, "peer": effect.peer_id, "role": effect.role}
        self._emit("path", {**fields, "reason": effect.reason})

    def _detached(self, effect: Detached) -> None:
        self.state = "detached"
        log.info("detached from the tree: %s", effect.reason)
        self._emit("detached", {"reason": effect.reason})

    def _gap(self, effect: Gap) -> None:
        lost = effect.last - effect.first + 1
        self.stats.gaps += lost
        log.warning(
            "lost for good: %d message(s) %d..%d of %s",
            lost,
            effect.first,
            effect.last,
            effect.source,
        )
        self._emit("gap", {"source": effect.source, "first": effect.first, "last": effect.last})
        for sub in self._subscribers:
            sub.put_gap(effect)

    def _peer_lost(self, effect: PeerLost) -> None:
        self.stats.peers_lost += 1
        if effect.peer_id == self.subtree_source and self.subtree_source != self.peer_id:
            self._source_lost(f"{effect.role} path lost: {effect.reason}")
        log.info("neighbour %s (%s) lost: %s", effect.peer_id, effect.role, effect.reason)
        fields = {"peer": effect.peer_id, "role": effect.role, "reason": effect.reason}
        self._emit("peer_lost", fields)

    def _left(self, effect: Left) -> None:
        self.state = "left"

    def _deliver(self, effect: Deliver) -> None:
        self.stats.deliveries += 1
        delivery = Delivery(
            effect.source,
            effect.sequence,
            effect.data,
            effect.app_id,
            effect.payload_type,
            effect.recovered,
        )
        for sub in self._subscribers:
            before = sub.dropped
            sub.put(delivery)
            self.stats.subscriber_drops += sub.dropped - before
        if self.on_event is not None:
            self._emit("deliver", deliver_fields(effect, self.event_payload))
        if self.source_lost_at is not None and effect.source == self.subtree_source:
            self.source_lost_at = None
            self._emit("source_back", {"source": effect.source, "sequence": effect.sequence})

    def _joined(self, effect: Joined) -> None:
        first = not self.joined.is_set()
        self.state = "attached"
        fields = {"parent": effect.parent, "depth": effect.depth, "repaired": effect.repaired}
        if first:
            self.joined.set()
            log.info("attached to the tree (parent %s, depth %s)", effect.parent, effect.depth)
        else:
            self._emit("attached", fields)

    def _join_failed(self, effect: JoinFailed) -> None:
        """The core gave up re-attaching: join the HOMS afresh (bounded), else fail."""
        self._emit("join_failed", {"reason": effect.reason})
        if effect.rejoin and not self._stopped:
            log.warning("could not attach to the tree (%s); joining the HOMS afresh", effect.reason)
            self.state = "rejoining"
            self._spawn(self._rejoin(), "hp2p-rejoin")
            return
        if self.subtree_source not in (None, self.peer_id) and not self._stopped:
            self._wait_for_source(effect.reason)
            return
        self.state = "failed"
        self.failure = effect.reason
        log.error("could not attach to the tree: %s", effect.reason)
        self.failed.set()

    def _wait_for_source(self, reason: str) -> None:
        """A SubTree member that cannot re-attach keeps running: its source may come back or
        be replaced (a standby bridge). It joins the HOMS afresh every ``backoff_max``."""
        delay = self.config.backoff_max
        self.state = "source_unreachable"
        self._source_lost(reason)
        log.warning(
            "SubTree source %s unreachable (%s); retry in %gs", self.subtree_source, reason, delay
        )
        fields = {"source": self.subtree_source, "reason": reason, "retry_in": delay}
        self._emit("waiting_for_source", fields)
        self._spawn(self._retry_for_source(delay), "hp2p-source-wait")

    async def _retry_for_source(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._stopped and self.state == "source_unreachable":
            await self._rejoin(counted=False)  # core.restart: from the FAILED phase too

    def _source_lost(self, reason: str) -> None:
        """Status (``source_lost_at``) and one ``source_unreachable`` event per loss."""
        if self.source_lost_at is None:
            self.source_lost_at = time.time()
            self._emit("source_unreachable", {"source": self.subtree_source, "reason": reason})

    def _forgotten(self, lost: Membership, exc: PeerForgottenError) -> None:
        """The HOMS lost this peer (it expired there while hung, or the HOMS lost its data).

        Staying in the tree unknown to the HOMS would leave a member no peer list offers,
        no status shows and whose reports are refused, so the peer joins again. The old
        ticket cannot be reclaimed (the HOMS would have to trust the peer's word for it), and
        a new, younger ticket keeps the ticket rule only if the peer also takes a new place
        in the tree: the same path as after ``JoinFailed``, not counted against ``rejoins``.
        """
        self.stats.forgotten += 1
        self._emit("forgotten", {"reason": str(exc), "ticket": lost.ticket})
        if self._stopped or self.state == "rejoining":
            return
        self.state = "rejoining"
        self._spawn(self._rejoin(counted=False), "hp2p-rejoin")

    async def _rejoin(self, counted: bool = True) -> None:
        """HOMP leave, then a new join (a new ticket), then ``core.start`` again.

        A second join under the same peer-id is refused while the first membership lives,
        hence the leave first. The core releases every path itself before it starts over.
        """
        if counted:
            self.stats.rejoins += 1
        try:
            with contextlib.suppress(HomsError):
                await self.homs.leave()
            self.membership = await self._homp_join(self._overlay)
        except HomsError as exc:
            self.state = "failed"
            self.failure = f"could not join the HOMS again: {exc}"
            log.error("%s", self.failure)
            self.failed.set()
            return
        core = self.core
        if core is None or self._stopped:
            return
        self.homs.start_refresh()
        info = self._join_info(self.membership)
        if counted:
            core.start(info, self._now())  # after JoinFailed: the core is in phase FAILED
        else:
            core.restart(info, self._now())  # forgotten: the core may still be attached
        self._drain()

    def _scan_done(self, effect: ScanResult) -> None:
        future = self._scans.get(effect.cseq)
        if future is not None and not future.done():
            future.set_result(effect)

    async def _recovery_join(self) -> None:
        try:
            peers, root = await self.homs.recovery_join()
        except HomsError as exc:
            log.warning("recovery join failed: %s", exc)
            peers, root = [], False
        core = self.core
        if core is None or self._stopped:
            return
        core.homs_result(peers, self._now(), root=root)
        self._drain()

    # === helpers =================================================================================
    def joined_info(self) -> dict[str, Any]:
        """The facts of the one 'joined' line: ids, ticket, addresses, place in the tree."""
        core = self.core
        m = self.membership
        return {
            "peer_id": self.peer_id,
            "overlay_id": m.overlay_id if m else None,
            "ticket": m.ticket if m else None,
            "r2": self.address,
            "parent": core.parent if core else None,
            "depth": core.depth if core else None,
        }
