"""The R3 bridge (Q.4100 §8.3, §9): CoreTree data forwarded, at the application level, to the
source peers of SubTree and SubMesh overlays.

Q.4100 says hybrid peers and sub-overlay peers "do not use the same protocol because interaction
at the application level is sufficient": a peer of the CoreTree (H-PEER B in figures 9-2, 9-4,
9-6) hands selected data to the source of each sub-overlay. Here one process does both: it is an
ordinary CoreTree peer (:class:`~hp2p.peer.node.PeerNode`) and, for each configured target, the
source peer of that sub-overlay (a ``PeerNode`` on a SubTree, a
:class:`~hp2p.peer.mesh_node.MeshNode` on a SubMesh). A target selects CoreTree messages by
app-id and/or a filter function; each selected message is published once on the target.

SubMesh objects carry ``meta = {"core-source", "core-sequence"}`` so that any SubMesh peer (and
a standby bridge) can tell which CoreTree message an object is.

**Packers.** A SubMesh target may instead have a *packer* (:class:`Packer`): it takes the
selected CoreTree messages and hands back objects ``(data, app_id, meta)`` on its own schedule
(the IoT history packs readings into time segments, :mod:`hp2p.apps.iot.segments`). The
bridge asks it for due objects at the time it names (wall-clock seconds). A standby bridge
does not take packer targets (it could not tell which packed objects the SubMesh holds).

**Standby for a SubMesh.** A standby bridge (``standby=True``) is also a CoreTree peer, so it
receives every CoreTree message, and keeps the selected ones in a bounded buffer. It joins each
SubMesh as an ordinary peer in *standby* mode: its mesh core keeps a link to the source and, when
the source has been unreachable for ``takeover_after`` seconds, becomes the publisher under the
same source id, numbering after the last object it has heard of. The bridge then waits
``settle`` seconds for the objects already announced to be pulled, and re-publishes from its
buffer every selected CoreTree message that the SubMesh does not hold yet (known by ``meta``),
then forwards live. SubMesh peers catch up by pulling, as always.

**Standby for a SubTree.** A tree has no standby mode and its data carries no ``meta``, so the
bridge does it (:mod:`hp2p.apps.bridge_standby`): the standby joins the SubTree as an ordinary
member (the *watcher*, peer-id ``ID-TITLE``) and keeps a ledger of the selected CoreTree
messages the SubTree does not carry yet, matched by content, plus the source's last sequence.
It pings the source with a ticket-0 HELLO; after ``takeover_after`` seconds without an answer
(more for a standby of a later ``rank``) it waits ``settle`` seconds (messages in flight around
the failure reach the watcher by the tree's own recovery), removes the dead source's HOMS
membership with the group's shared ``group_key``, joins the SubTree under the source's peer-id,
numbers on after the last sequence (``PeerCore.continue_as_source``), replays what the ledger
holds, and forwards live. A bridge whose source was replaced (it hung, then woke up) fences
itself: it forwards only within a lease the HOMS renews (see ``_guard_source``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import typer

from hp2p.apps.bridge_standby import AbsenceClock, CoreKeys, ForwardLedger, source_answers
from hp2p.peer.config import PeerConfig
from hp2p.peer.homs_client import HomsError, OverlayNotFoundError
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_node import (
    MeshNode,
    MeshNodeError,
    MeshSettings,
    default_key_path,
    load_signing_key,
)
from hp2p.peer.node import Delivery, NodeError, PeerNode
from hp2p.peer.settings import NodeSettings
from hp2p.peer.subscription import Subscription
from hp2p.peer.subtree import SubOverlayHomsClient
from hp2p.trust.keys import SigningKey

log = logging.getLogger("hp2p.apps.bridge")

EventSink = Callable[[str, dict[str, Any]], None]
Selector = Callable[[Delivery], bool]


def source_member_key(group_key: str, overlay_id: str, source_id: str) -> SigningKey:
    """The membership key of a SubTree's source, the same in every bridge of the group.

    Members check every message against the key its source's credential names. A standby
    that took over the source's peer-id with a key of its own would make the messages still
    in flight from the old source (and the caches' copies of them) fail that check; with the
    group's derived key the source keeps one key across takeovers, only its credential changes.
    """
    seed = hashlib.sha256(
        b"hp2p-subtree-source\0"
        + group_key.encode()
        + b"\0"
        + overlay_id.encode()
        + b"\0"
        + source_id.encode()
    ).digest()
    return SigningKey.from_seed(seed)


#: One packed object for a SubMesh: its bytes, app-id and meta.
Packed = tuple[bytes, str | None, dict[str, Any]]

#: Longest sleep (s) of a packer's timer: a packer may name no time while it holds nothing.
_PACK_TICK = 1.0


class Packer(Protocol):
    """Turns a SubMesh target's selected CoreTree messages into objects on its own schedule.

    ``now`` is wall-clock unix seconds. ``add`` may return objects at once (a size cap
    reached), ``due`` those whose time has come; ``next_due`` is when to ask again (None:
    nothing pending). Bad input is the packer's to count, never an exception.
    """

    def add(self, delivery: Delivery, now: float) -> list[Packed]: ...

    def due(self, now: float) -> list[Packed]: ...

    def next_due(self) -> float | None: ...


class BridgeError(Exception):
    """The bridge could not start; ``str(err)`` says what failed and what to do."""


@dataclass(frozen=True)
class BridgeTarget:
    """One sub-overlay fed by the bridge: its kind, title, source peer-id and selection.

    ``app_ids`` empty and ``where`` None select every CoreTree message.
    """

    kind: str  # "tree" (SubTree) or "mesh" (SubMesh)
    title: str
    source_id: str
    app_ids: frozenset[str] = frozenset()
    where: Selector | None = None
    #: SubMesh only: pack the selected messages into objects (None: one object per message)
    packer: Packer | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("tree", "mesh"):
            raise BridgeError(f"a target is 'tree' or 'mesh', not {self.kind!r}")
        if self.packer is not None and self.kind != "mesh":
            raise BridgeError("only a SubMesh target takes a packer")
        if not self.title or not self.source_id:
            raise BridgeError("a target needs a title and a source peer-id")

    def selects(self, delivery: Delivery) -> bool:
        if self.app_ids and delivery.app_id not in self.app_ids:
            return False
        return self.where is None or self.where(delivery)

    @classmethod
    def parse(cls, kind: str, spec: str, bridge_id: str) -> BridgeTarget:
        """``TITLE[:APP-ID,APP-ID…]`` from the command line; the source id is derived."""
        title, _, ids = spec.partition(":")
        app_ids = frozenset(i for i in ids.split(",") if i)
        return cls(kind, title, f"{bridge_id}-{title}", app_ids)


@dataclass
class BridgeStats:
    received: int = 0
    selected: int = 0
    forwarded: int = 0
    refused: int = 0
    replayed: int = 0
    buffered_dropped: int = 0
    already_carried: int = 0


@dataclass(eq=False)
class _Running:
    target: BridgeTarget
    overlay_id: str
    tree: PeerNode | None = None
    mesh: MeshNode | None = None
    active: bool = True
    buffer: deque[Delivery] = field(default_factory=deque)
    watcher: PeerNode | None = None  # a SubTree standby's ordinary membership
    watching: Subscription[Delivery] | None = None  # its deliveries, until the takeover
    source_seen: bool = False  # the source answered a probe once
    # SubTree source fencing: forward only while the HOMS confirmed, within the lease, that
    # this bridge still holds the source peer-id; meanwhile hold (bounded) what is selected
    lease_until: float = math.inf
    held: deque[Delivery] = field(default_factory=deque)
    retired: bool = False  # replaced by another bridge of the group: this one feeds it no more
    ledger: ForwardLedger | None = None
    carried: CoreKeys | None = None  # a SubMesh standby after its takeover: never publish twice


#: Seconds a standby allows the one ranked before it for joining the SubTree as the source.
_JOIN_ALLOWANCE = 2.0

#: How often (s) a settling standby looks whether its watcher still has data to pull.
_SETTLE_POLL = 0.1

#: How many times a SubTree standby goes back to watching after another peer became the source.
_TAKEOVER_ROUNDS = 100


class Bridge:
    """A CoreTree peer feeding sub-overlay sources. ``await start()``, then ``await close()``."""

    def __init__(
        self,
        homs: str,
        core_overlay: str,
        targets: Sequence[BridgeTarget],
        *,
        bridge_id: str | None = None,
        standby: bool = False,
        rank: int = 1,
        group_key: str | None = None,
        takeover_after: float | None = None,
        probe_interval: float = 0.5,
        source_wait: float = 60.0,
        buffer: int = 10_000,
        settle: float = 1.0,
        mesh_config: MeshConfig | None = None,
        core_config: PeerConfig | None = None,
        on_event: EventSink | None = None,
        create_missing: bool = True,
        core_admin_key: str | None = None,
    ) -> None:
        if not targets:
            raise BridgeError("give at least one target (--subtree TITLE or --submesh TITLE)")
        if rank < 1:
            raise BridgeError("the standby rank starts at 1 (the first standby to take over)")
        if standby and rank > 1 and any(t.kind == "mesh" for t in targets):
            raise BridgeError(
                "several standbys (--standby-rank above 1) work for SubTree targets only: a "
                "SubMesh takes one standby per bridge (docs/sub-overlays.md); drop the "
                "--submesh targets or the rank"
            )
        if standby and any(t.packer is not None for t in targets):
            raise BridgeError(
                "a standby bridge does not take packed SubMesh targets (segments): run it "
                "without --standby-for, or without the packed target"
            )
        if buffer < 1:
            raise BridgeError("buffer must be at least 1 message")
        if settle < 0:
            raise BridgeError(f"settle (--settle) must be 0 or more seconds, not {settle:g}")
        if probe_interval <= 0 or source_wait <= 0:
            raise BridgeError("the probe interval and the source wait must be > 0 seconds")
        if group_key is not None and not group_key:
            raise BridgeError("the group key is empty; give the bridge group's shared key")
        mesh_config = mesh_config or MeshConfig()
        self.takeover_after = (
            mesh_config.takeover_after if takeover_after is None else takeover_after
        )
        if self.takeover_after <= 0:
            raise BridgeError("takeover-after must be > 0 seconds")
        self.homs_url = homs
        self.core_overlay = core_overlay
        self.targets = list(targets)
        self.bridge_id = bridge_id or f"bridge-{secrets.token_hex(3)}"
        self.standby = standby
        self.rank = rank
        self.group_key = group_key
        self.probe_interval = probe_interval
        #: What standby r-1 needs to take over before standby r may (AbsenceClock)
        self.rank_gap = self.takeover_after + 3 * settle + 2 * probe_interval + _JOIN_ALLOWANCE
        self.source_wait = source_wait
        self.buffer = buffer
        self.settle = settle
        self.mesh_config = mesh_config
        self.core_config = core_config
        self.on_event = on_event
        self.create_missing = create_missing
        #: The CoreTree's admin key: its owner's consent to the sub-overlays this bridge creates.
        self.core_admin_key = core_admin_key
        self.stats = BridgeStats()
        self.core: PeerNode | None = None
        self._running: list[_Running] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._homs = SubOverlayHomsClient(homs)

    # === life cycle ==============================================================================
    async def start(self) -> None:
        try:
            self.core = PeerNode(
                NodeSettings(homs=self.homs_url, join=self.core_overlay, peer_id=self.bridge_id),
                self.core_config,
                on_event=None,
            )
            await self.core.start()
            core_id = self.core.membership.overlay_id if self.core.membership else ""
            for target in self.targets:
                overlay_id = await self._sub_overlay(target, core_id)
                running = _Running(target, overlay_id, active=not self.standby)
                self._running.append(running)
                await self._start_target(running)
        except (NodeError, MeshNodeError, HomsError) as exc:
            await self.close()
            raise BridgeError(str(exc)) from None
        subscription = self.core.subscribe()
        self._spawn(self._pump(subscription.__aiter__()), "hp2p-bridge-pump")
        self._emit(
            "joined",
            {
                "bridge": self.bridge_id,
                "core_overlay": core_id,
                "standby": self.standby,
                "targets": [
                    {
                        "kind": r.target.kind,
                        "title": r.target.title,
                        "overlay_id": r.overlay_id,
                        "source": r.target.source_id,
                        "app_ids": sorted(r.target.app_ids),
                    }
                    for r in self._running
                ],
            },
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for running in self._running:
            if running.mesh is not None:
                await running.mesh.close()
            if running.tree is not None:
                await running.tree.close()
            if running.watcher is not None:
                await running.watcher.close()
        if self.core is not None:
            await self.core.close()
        await self._homs.aclose()

    def status(self) -> dict[str, Any]:
        return {
            "bridge": self.bridge_id,
            "standby": self.standby,
            "stats": vars(self.stats),
            "targets": [
                {
                    "title": r.target.title,
                    "kind": r.target.kind,
                    "overlay_id": r.overlay_id,
                    "active": r.active,
                    "retired": r.retired,
                    "buffered": len(r.buffer) if r.ledger is None else r.ledger.waiting,
                    "held": len(r.held),
                    **(
                        {}
                        if r.ledger is None
                        else {
                            "last_sequence": r.ledger.last_sequence,
                            "matched": r.ledger.matched,
                            "dropped": r.ledger.dropped,
                        }
                    ),
                }
                for r in self._running
            ],
        }

    # === set-up ==================================================================================
    async def _sub_overlay(self, target: BridgeTarget, parent: str) -> str:
        """The sub-overlay's id; the active bridge creates it (parent, source) if missing."""
        try:
            overlay = await self._homs.find_overlay(target.title)
        except OverlayNotFoundError:
            if self.standby or not self.create_missing:
                raise
            key = None
            if target.kind == "mesh":  # the key its source will sign manifests with
                signer = load_signing_key(default_key_path(target.source_id), create=True)
                key = signer.public_text if signer is not None else None
            return await self._homs.create_sub_overlay(
                target.title,
                sub_type=target.kind,
                parent_overlay_id=parent,
                source_peer_id=target.source_id,
                owner_id=self.bridge_id,
                admin_key=secrets.token_urlsafe(16),
                source_key=key,
                parent_admin_key=self.core_admin_key,
            )
        if overlay.type != "sub" or overlay.sub_type != target.kind:
            raise BridgeError(
                f"overlay {target.title!r} is {overlay.type}/{overlay.sub_type}, "
                f"not sub/{target.kind}"
            )
        if overlay.source_peer_id != target.source_id:
            raise BridgeError(
                f"overlay {target.title!r} has source {overlay.source_peer_id!r}; this bridge "
                f"would publish as {target.source_id!r} (use the same --id as its bridge)"
            )
        overlay_id: str = overlay.overlay_id
        return overlay_id

    async def _start_target(self, running: _Running) -> None:
        target = running.target
        if target.kind == "tree":
            if self.standby:
                await self._start_tree_standby(running)
                return
            running.tree = self._source_node(running)
            await running.tree.start()
            self._guard(running)
            return
        settings = MeshSettings(
            homs=self.homs_url,
            join=running.overlay_id,
            peer_id=target.source_id if not self.standby else f"{self.bridge_id}-{target.title}",
            standby=self.standby,
            config=self.mesh_config,
        )
        running.mesh = MeshNode(settings)
        await running.mesh.start()
        if target.packer is not None:
            self._spawn(self._pack_timer(running, target.packer), "hp2p-bridge-packer")
        if self.standby:
            self._spawn(self._await_takeover(running), "hp2p-bridge-takeover")

    # === forwarding ==============================================================================
    async def _pump(self, deliveries: Any) -> None:
        async for delivery in deliveries:
            self.stats.received += 1
            for running in self._running:
                if running.retired:
                    continue
                if running.target.selects(delivery):
                    self.stats.selected += 1
                    if running.active:
                        self._offer(running, delivery)
                    elif running.ledger is not None:
                        running.ledger.core_message(delivery)
                    else:
                        running.buffer.append(delivery)
                        if len(running.buffer) > self.buffer:
                            running.buffer.popleft()
                            self.stats.buffered_dropped += 1

    def _offer(self, running: _Running, delivery: Delivery) -> None:
        """Forward now, or hold while a SubTree source's lease waits for the HOMS's word."""
        if running.tree is not None and asyncio.get_running_loop().time() > running.lease_until:
            running.held.append(delivery)
            if len(running.held) > self.buffer:
                running.held.popleft()
                self.stats.buffered_dropped += 1
            return
        self._forward(running, delivery)

    async def _pack_timer(self, running: _Running, packer: Packer) -> None:
        """Publish what the packer says is due, at the time it names (at least every tick)."""
        while True:  # ends with the bridge (task cancelled)
            due = packer.next_due()
            wait = _PACK_TICK if due is None else min(_PACK_TICK, due - time.time())
            if wait > 0:
                await asyncio.sleep(wait)
            self._publish_packed(running, packer.due(time.time()))

    def _publish_packed(self, running: _Running, objects: list[Packed]) -> None:
        mesh = running.mesh
        for data, app_id, meta in objects:
            if mesh is None:
                return
            try:
                number = mesh.publish(data, app_id=app_id, meta=meta)
            except (MeshNodeError, PermissionError, ValueError) as exc:
                self.stats.refused += 1
                self._emit("error", {"target": running.target.title, "reason": str(exc)})
                continue
            self.stats.forwarded += 1
            self._emit(
                "packed",
                {"target": running.target.title, "object": number, "size": len(data), **meta},
            )

    def _forward(self, running: _Running, delivery: Delivery, replay: bool = False) -> None:
        packer = running.target.packer
        if packer is not None and running.mesh is not None:
            self._publish_packed(running, packer.add(delivery, time.time()))
            return
        try:
            if running.mesh is not None:
                carried = running.carried
                if carried is not None and not carried.add(delivery.source, delivery.sequence):
                    self.stats.already_carried += 1
                    return
                meta: dict[str, Any] = {
                    "core-source": delivery.source,
                    "core-sequence": delivery.sequence,
                }
                number = running.mesh.publish(delivery.data, app_id=delivery.app_id, meta=meta)
                where: dict[str, Any] = {"object": number}
            elif running.tree is not None:
                sequence = running.tree.publish(
                    delivery.data,
                    app_id=delivery.app_id or "etri_data",
                    payload_type=delivery.payload_type,
                )
                where = {"sequence": sequence}
            else:
                return
        except (NodeError, MeshNodeError, PermissionError, ValueError) as exc:
            self.stats.refused += 1
            self._emit("error", {"target": running.target.title, "reason": str(exc)})
            return
        self.stats.forwarded += 1
        self.stats.replayed += replay
        self._emit(
            "forwarded",
            {
                "target": running.target.title,
                "core_source": delivery.source,
                "core_sequence": delivery.sequence,
                "replay": replay,
                **where,
            },
        )

    async def _await_takeover(self, running: _Running) -> None:
        mesh = running.mesh
        assert mesh is not None
        await mesh.became_source.wait()
        await asyncio.sleep(self.settle)  # let objects already announced be pulled (bounded)
        carried = CoreKeys(self.buffer)
        if mesh.core is not None:
            for number in mesh.core.objects():
                manifest = mesh.core.manifest(number)
                carried.add_meta(manifest.meta if manifest is not None else None)
        running.carried = carried
        running.active = True
        pending = list(running.buffer)
        running.buffer.clear()
        for delivery in pending:
            if (delivery.source, delivery.sequence) not in carried:
                self._forward(running, delivery, replay=True)
        self._emit("active", {"target": running.target.title, "replayed": self.stats.replayed})

    # === SubTree standby (hp2p.apps.bridge_standby) ==============================================
    def _source_node(self, running: _Running) -> PeerNode:
        """The SubTree's source peer; with a group key, joined with the shared password and
        the group's membership key for that source (:func:`source_member_key`)."""
        source = running.target.source_id
        key = None
        if self.group_key is not None:
            key = source_member_key(self.group_key, running.overlay_id, source)
        return PeerNode(
            NodeSettings(homs=self.homs_url, join=running.overlay_id, peer_id=source),
            homs_client=SubOverlayHomsClient(
                self.homs_url, source_password=self.group_key, key=key
            ),
        )

    async def _start_tree_standby(self, running: _Running) -> None:
        target = running.target
        running.ledger = ForwardLedger(target.source_id, self.buffer)
        running.watcher = PeerNode(
            NodeSettings(
                homs=self.homs_url,
                join=running.overlay_id,
                peer_id=f"{self.bridge_id}-{target.title}",
            )
        )
        # before start: not one message missed; as deep as the ledger, so none is dropped
        subscription = running.watcher.subscribe(max(self.buffer, 10_000))
        running.watching = subscription
        await running.watcher.start()
        self._spawn(self._watch_tree(running, subscription), "hp2p-bridge-watch")
        self._spawn(self._tree_takeover(running), "hp2p-bridge-tree-takeover")

    async def _watch_tree(self, running: _Running, deliveries: Any) -> None:
        ledger = running.ledger
        assert ledger is not None
        async for delivery in deliveries:
            ledger.tree_message(delivery)

    async def _probe(self, running: _Running, address: str) -> bool:
        watcher = running.watcher
        assert watcher is not None
        return await source_answers(
            address,
            overlay_id=running.overlay_id,
            prober_id=watcher.peer_id,
            prober_address=watcher.address,
            limit=self.probe_interval,
        )

    async def _source_address(self, running: _Running) -> str | None:
        try:
            return await self._homs.peer_address(running.overlay_id, running.target.source_id)
        except HomsError as exc:
            log.warning("cannot read the SubTree source's address (will retry): %s", exc)
            return None

    async def _until_source_gone(self, running: _Running) -> str | None:
        """Wait until the source has not answered for the rank's wait (:class:`AbsenceClock`).

        Returns the address that stopped answering (None if the HOMS no longer lists any).
        The clock starts only after the source has answered once (in this bridge's life, not
        this round's: a source that took over and died before this standby probed it still
        counts): a standby started before its active bridge must not take over a source that
        has not come up yet.
        """
        loop = asyncio.get_running_loop()
        clock = AbsenceClock(self.takeover_after, self.rank, self.rank_gap)
        address: str | None = None
        while True:  # ends when the source is gone, or with the bridge (task cancelled)
            answered = False
            if address is not None:
                answered = await self._probe(running, address)
            if not answered:
                listed = await self._source_address(running)
                if listed is not None and listed != address:
                    address = listed  # a new source (another standby took over): ask it
                    answered = await self._probe(running, address)
            running.source_seen = running.source_seen or answered
            if running.source_seen and clock.observe(answered, loop.time()):
                return address
            await asyncio.sleep(self.probe_interval)  # the probe period

    async def _join_as_source(self, running: _Running, dead: str | None) -> PeerNode | None:
        """Become the SubTree's source peer; None when another peer became it first.

        Only the membership at the ``dead`` address is removed: a different address means
        another standby has just taken over (its listener may not answer for the overlay yet),
        and this one goes back to watching. When two standbys still race, the HOMS admits one
        of them under the source peer-id and refuses the other (409).
        """
        target = running.target
        loop = asyncio.get_running_loop()
        current = await self._source_address(running)
        if current is not None and (current != dead or await self._probe(running, current)):
            return None
        if self.group_key is not None and current is not None:
            try:
                await self._homs.remove_member(running.overlay_id, target.source_id, self.group_key)
            except HomsError as exc:
                self._emit(
                    "warning",
                    {
                        "target": target.title,
                        "reason": f"cannot remove the dead source's membership ({exc}); "
                        "waiting for the HOMS to expire it (is --group-key the active "
                        "bridge's?)",
                    },
                )
        deadline = loop.time() + self.source_wait
        while current is not None:  # bounded by source_wait
            if loop.time() >= deadline:
                self._emit(
                    "warning",
                    {
                        "target": target.title,
                        "reason": f"the HOMS still lists source {target.source_id!r} after "
                        f"{self.source_wait:g} s; give every bridge of the group the same "
                        "--group-key so that a standby can remove a dead source at once",
                    },
                )
                return None
            await asyncio.sleep(self.probe_interval)  # the HOMS expiry is not announced
            current = await self._source_address(running)
            if current is not None and current != dead:
                return None
        node = self._source_node(running)
        try:
            await node.start()
        except NodeError as exc:
            self._emit(
                "warning",
                {"target": target.title, "reason": f"could not join as the source: {exc}"},
            )
            return None
        return node

    async def _settle(self, running: _Running) -> None:
        """Let data in flight around the failure reach the watcher before its count is taken.

        At least ``settle`` seconds; then, for up to twice that, until the watcher's data
        recovery has nothing left to pull: a sequence it heard of (heads on heartbeats,
        buffermaps) but does not hold yet would otherwise be numbered again by the new source.
        """
        await asyncio.sleep(self.settle)
        watcher = running.watcher
        core = watcher.core if watcher is not None else None
        if core is None:
            return
        for _ in range(max(1, round(2 * self.settle / _SETTLE_POLL))):  # bounded: 2 x settle
            if not len(core.recovery):
                return
            await asyncio.sleep(_SETTLE_POLL)

    async def _tree_takeover(self, running: _Running) -> None:
        ledger = running.ledger
        assert ledger is not None
        for _ in range(_TAKEOVER_ROUNDS):
            dead = await self._until_source_gone(running)
            self._emit("source_lost", {"target": running.target.title, "rank": self.rank})
            await self._settle(running)
            node = await self._join_as_source(running, dead)
            if node is not None:
                break
        else:
            self._emit(
                "error",
                {
                    "target": running.target.title,
                    "reason": f"gave up taking over after {_TAKEOVER_ROUNDS} rounds",
                },
            )
            return
        assert node.core is not None
        node.core.continue_as_source(ledger.last_sequence)
        running.tree = node
        running.active = True
        self._guard(running)
        if running.watching is not None:
            running.watching.close()  # from now on this bridge is the source it watched
        pending = ledger.unforwarded()
        replayed = self.stats.replayed
        for delivery in pending:
            self._forward(running, delivery, replay=True)
        self._emit(
            "active",
            {
                "target": running.target.title,
                "replayed": self.stats.replayed - replayed,
                "first_sequence": ledger.last_sequence + 1,
            },
        )

    def _guard(self, running: _Running) -> None:
        running.lease_until = asyncio.get_running_loop().time() + self.takeover_after
        self._spawn(self._guard_source(running), "hp2p-bridge-source-guard")

    async def _guard_source(self, running: _Running) -> None:
        """Fence this bridge's SubTree source when another bridge of the group replaced it.

        A bridge that hung longer than ``takeover_after`` has been replaced by a standby
        publishing under the same peer-id and numbering; if it resumed forwarding, SubTree
        peers would get two different messages under one sequence. So forwarding runs on a
        lease of ``takeover_after`` seconds, renewed each time the HOMS still lists this
        bridge's address for the source peer-id (checked every third of the lease). A
        standby takes over only after ``takeover_after`` + ``settle`` seconds of silence, so
        a hung bridge's lease has run out by then and, once resumed, it holds what it selects
        until the HOMS answers: that it was replaced (the held messages are dropped and the
        source peer closes, without removing the new holder's membership).
        """
        node = running.tree
        assert node is not None
        client = node.homs
        assert isinstance(client, SubOverlayHomsClient)
        loop = asyncio.get_running_loop()
        reason: str | None = None
        while reason is None:  # ends when replaced or failed, or with the bridge (cancelled)
            asked = loop.time()
            if node.failed.is_set():
                reason = f"the SubTree source peer failed: {node.failure}"
            elif not await client.holds_id():
                reason = (
                    f"another bridge of the group holds source peer-id "
                    f"{running.target.source_id!r} now"
                )
            else:
                running.lease_until = asked + self.takeover_after
                held = list(running.held)
                running.held.clear()
                for delivery in held:
                    self._forward(running, delivery)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(node.failed.wait(), self.takeover_after / 3)
        running.active = False
        running.retired = True
        dropped = len(running.held)
        running.held.clear()
        self._emit(
            "replaced",
            {
                "target": running.target.title,
                "reason": f"{reason}; this bridge stops feeding it",
                "dropped": dropped,
            },
        )
        await node.close()

    # === helpers =================================================================================
    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A bridge task that dies of a bug must say so, not stop feeding a target silently."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("bridge task %s failed", task.get_name(), exc_info=exc)
            self._emit("error", {"task": task.get_name(), "reason": repr(exc)})

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, fields)
            except Exception:
                log.exception("bridge event callback failed on %s", kind)


# === command line ================================================================================
EXAMPLES = """
Examples:

  # forward CoreTree blocks and transactions to a SubMesh, IoT readings to a SubTree
  hp2p bridge --homs http://127.0.0.1:8081 --core chain --id b1 \\
      --submesh blocks:blockchain --subtree live:iot --json-events

  # bridge b2 stands by for the SubMesh targets of bridge b1
  hp2p bridge --core chain --id b2 --standby-for b1 --submesh blocks:blockchain

  # a SubTree with two standbys: the bridge group shares one key (here from the environment)
  export HP2P_BRIDGE_GROUP_KEY=$(python -c 'import secrets; print(secrets.token_hex(16))')
  hp2p bridge --core chain --id b1 --subtree live:iot
  hp2p bridge --core chain --id b2 --standby-for b1 --subtree live:iot
  hp2p bridge --core chain --id b3 --standby-for b1 --standby-rank 2 --subtree live:iot

A target is TITLE[:APP-ID,…]; without app-ids it takes every CoreTree message. The
sub-overlay is created under the CoreTree (source peer-id ID-TITLE) when it does not exist.
A standby takes over when the source has not answered for --takeover-after seconds (standby
N waits (N-1) x (--takeover-after + 3 x --settle + 3 s) longer, so that N-1 goes first);
for a SubTree it joins under the source's peer-id, which needs the same --group-key as the
active bridge (without it, the takeover waits for the HOMS to expire the dead source).
"""


_KINDS = {"tree": "SubTree", "mesh": "SubMesh"}


def running_line(joined: dict[str, Any]) -> str:
    """The one human line ``hp2p bridge`` prints once running (the ``joined`` event's facts).

    e.g. ``hp2p bridge: running b1 (active) on CoreTree 0b5f…; SubTree 'live' 7c1d…
    (source b1-live, app-ids iot); SubMesh 'blocks' 9e2a… (source b1-blocks, every message)``
    """
    role = "standby" if joined.get("standby") else "active"
    parts = [
        f"hp2p bridge: running {joined['bridge']} ({role}) on CoreTree {joined['core_overlay']}"
    ]
    for t in joined["targets"]:
        selects = f"app-ids {','.join(t['app_ids'])}" if t["app_ids"] else "every message"
        kind = _KINDS.get(t["kind"], t["kind"])
        parts.append(f"{kind} {t['title']!r} {t['overlay_id']} (source {t['source']}, {selects})")
    return "; ".join(parts)


def build_parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="hp2p bridge",
        description="R3 bridge: a CoreTree peer that forwards selected messages to the source "
        "of SubTree/SubMesh overlays (Q.4100 §8.3).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--homs", default="http://127.0.0.1:8081", help="HOMS URL")
    p.add_argument("--core", required=True, help="CoreTree overlay-id or title to join")
    p.add_argument("--id", dest="bridge_id", required=True, help="bridge id (names the sources)")
    p.add_argument("--subtree", action="append", default=[], help="SubTree target TITLE[:APP-IDS]")
    p.add_argument("--submesh", action="append", default=[], help="SubMesh target TITLE[:APP-IDS]")
    p.add_argument(
        "--standby-for", metavar="ID", help="stand by for bridge ID (take over its sources)"
    )
    p.add_argument(
        "--standby-rank",
        type=int,
        default=1,
        metavar="N",
        help="order among several standbys of one bridge (SubTree targets; default 1): "
        "standby N waits (N-1) x (--takeover-after + 3 x --settle + 3 s) more than standby 1",
    )
    p.add_argument(
        "--group-key",
        default=os.environ.get("HP2P_BRIDGE_GROUP_KEY"),
        help="the bridge group's shared password of the SubTree source peer-ids (default "
        "$HP2P_BRIDGE_GROUP_KEY); lets a standby remove a dead source and take its peer-id",
    )
    p.add_argument(
        "--takeover-after",
        type=float,
        default=3.0,
        help="seconds without the source before a standby takes over (default 3)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds a standby lets data in flight arrive before it takes over (default 1)",
    )
    p.add_argument(
        "--core-admin-key",
        default=os.environ.get("HP2P_CORE_ADMIN_KEY"),
        help="the CoreTree's admin key (default $HP2P_CORE_ADMIN_KEY): its owner's consent, "
        "which the HOMS requires to create a missing SubTree/SubMesh under it",
    )
    p.add_argument("--buffer", type=int, default=10_000, help="messages kept by a standby")
    p.add_argument("--json-events", action="store_true", help="JSON lines on stdout")
    p.add_argument("--log-level", default="warning", help="error, warning, info or debug")
    return p


def main(argv: list[str] | None = None) -> int:
    import json
    import logging as _logging
    import signal
    import sys

    args = build_parser().parse_args(argv)
    level = str(args.log_level).upper()
    if level not in ("ERROR", "WARNING", "INFO", "DEBUG"):
        print("hp2p bridge: --log-level must be error, warning, info or debug", file=sys.stderr)
        return 2
    _logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def on_event(kind: str, fields: dict[str, Any]) -> None:
        if args.json_events:
            with contextlib.suppress(BrokenPipeError, ValueError):
                print(json.dumps({"event": kind, **fields}), flush=True)
        elif kind == "joined":
            print(running_line(fields), flush=True)

    try:
        group = args.standby_for or args.bridge_id  # whose sources the targets are
        targets = [BridgeTarget.parse("tree", s, group) for s in args.subtree]
        targets += [BridgeTarget.parse("mesh", s, group) for s in args.submesh]
        bridge = Bridge(
            args.homs,
            args.core,
            targets,
            bridge_id=args.bridge_id,
            standby=args.standby_for is not None,
            rank=args.standby_rank,
            group_key=args.group_key,
            takeover_after=args.takeover_after,
            buffer=args.buffer,
            settle=args.settle,
            mesh_config=MeshConfig(takeover_after=args.takeover_after),
            on_event=on_event,
            core_admin_key=args.core_admin_key,
        )
    except (BridgeError, ValueError) as exc:
        print(f"hp2p bridge: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await bridge.start()
        except BridgeError as exc:
            print(f"hp2p bridge: {exc}", file=sys.stderr, flush=True)
            return 1
        try:
            await stop.wait()
            return 0
        finally:
            await bridge.close()

    return asyncio.run(run())


#: How ``hp2p`` mounts :func:`command`: the options and ``--help`` are argparse's (``main``).
COMMAND_SETTINGS: dict[str, Any] = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def command(ctx: typer.Context) -> None:
    """R3 bridge: forward selected CoreTree messages to SubTree/SubMesh sources (--help)."""
    raise typer.Exit(main(list(ctx.args)))


if __name__ == "__main__":
    raise SystemExit(main())
