"""A deterministic in-memory SubMesh: many ``MeshCore``s on a virtual clock with a link model.

The same ideas as :mod:`hp2p.sim.network` (one heap of events ordered by virtual time and
insertion order, per-pair latency drawn from the seed, FIFO per connection), plus what a pull
mesh needs to be judged fairly:

* a **bandwidth model**: each peer has an uplink of ``bandwidth`` bytes/s; a frame leaves after
  the frames queued before it (serialisation), then takes the pair's latency. Without it a
  pull mesh and a push tree look equally instant, which says nothing;
* **bytes on the wire**: every message is encoded with the real R2 codec (and decoded at the
  receiver), and its frame length counted, so wire amplification is measured, not estimated;
* **tampering**: ``tamper[peer_id]`` rewrites a peer's outgoing messages (forged pieces);
* **crashes**: a crashed peer's links reset; the HOMS keeps listing it for ``homs_expiry``
  seconds (it did not leave), as a real HOMS does until the membership expires.

``MemoryMeshHoms`` picks peer lists with the real ``hp2p.homs.peerlist.mesh_neighbours`` rule.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hp2p.homs.peerlist import PeerEntry, mesh_neighbours
from hp2p.peer.effects import Close, Connect, HomsReport, ProtocolError, Send
from hp2p.peer.mesh import (
    BecameSource,
    MeshCore,
    MeshJoinInfo,
    ObjectReceived,
    PeerListWanted,
)
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_store import PieceStore
from hp2p.sim.credentials import sim_membership
from hp2p.sim.heap import EventHeap
from hp2p.trust.credential import Role as MemberRole
from hp2p.trust.keys import SigningKey
from hp2p.trust.membership import Membership
from hp2p.wire.r2 import decode, encode
from hp2p.wire.r2.messages import Message

_RECV, _TIMER, _ARRIVE, _MADE, _FAILED, _LOST, _HOMS, _CALL = range(8)


class MemoryMeshHoms:
    """The HOMS of one SubMesh as its peers see it: join lists and fresh random lists."""

    def __init__(
        self,
        overlay_id: str,
        source_id: str,
        rng: random.Random,
        list_size: int = 8,
        expiry: float = 5.0,
        credentials: bool = False,
    ) -> None:
        self.overlay_id = overlay_id
        #: Issue membership credentials (hp2p.trust): every mesh link needs AUTH.
        self.signer = SigningKey.generate() if credentials else None
        self.source_id = source_id
        self.rng = rng
        self.list_size = list_size
        self.expiry = expiry
        self.peers: dict[str, PeerEntry] = {}
        self.gone_at: dict[str, float] = {}
        self._tickets = 0

    def live(self, now: float) -> list[PeerEntry]:
        return [
            p
            for p in self.peers.values()
            if p.peer_id not in self.gone_at or now - self.gone_at[p.peer_id] < self.expiry
        ]

    def join(self, peer_id: str, address: str, now: float) -> tuple[int, list[tuple[str, str]]]:
        self._tickets += 1
        self.peers[peer_id] = PeerEntry(peer_id, address, self._tickets)
        return self._tickets, self.peer_list(peer_id, now)

    def membership(self, peer_id: str) -> Membership | None:
        entry = self.peers[peer_id]
        if self.signer is None:
            return None
        role: MemberRole = "source" if peer_id == self.source_id else "peer"
        return sim_membership(self.signer, self.overlay_id, entry, role)

    def peer_list(self, peer_id: str, now: float) -> list[tuple[str, str]]:
        chosen = mesh_neighbours(self.live(now), peer_id, self.rng, self.list_size)
        return [(p.peer_id, p.address) for p in chosen if p.peer_id != peer_id]


@dataclass(eq=False)
class MeshPeer:
    """One simulated SubMesh peer: its core and what the harness saw of it."""

    peer_id: str
    address: str
    core: MeshCore
    joined_at: float
    alive: bool = True
    armed: float | None = None
    received: dict[int, float] = field(default_factory=dict)  # object -> virtual time
    data: dict[int, bytes] = field(default_factory=dict)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    uplink_free: float = 0.0
    bytes_sent: int = 0
    became_source: int | None = None


class MeshNetwork(EventHeap):
    """The event loop of a simulated SubMesh; all times are virtual seconds."""

    def __init__(
        self,
        seed: int = 0,
        config: MeshConfig | None = None,
        *,
        latency: tuple[float, float] = (0.001, 0.010),
        bandwidth: float | None = None,
        homs_latency: float = 0.005,
        list_size: int = 8,
        homs_expiry: float = 5.0,
        overlay_id: str = "sim-mesh",
        source_id: str = "source",
        keep_data: bool = True,
        credentials: bool = False,
    ) -> None:
        self.seed = seed
        self.config = config or MeshConfig()
        self.latency = latency
        self.bandwidth = bandwidth
        self.homs_latency = homs_latency
        self.keep_data = keep_data
        self.homs = MemoryMeshHoms(
            overlay_id,
            source_id,
            random.Random(f"{seed}:homs"),
            list_size,
            homs_expiry,
            credentials=credentials,
        )
        self.now = 0.0
        self.peers: dict[str, MeshPeer] = {}
        self.tamper: dict[str, Callable[[Message], Message]] = {}
        self.bytes_on_wire = 0
        self.frames_on_wire = 0
        self.bytes_by_type: dict[str, int] = {}
        self._by_address: dict[str, MeshPeer] = {}
        self._ends: dict[tuple[str, int], tuple[MeshPeer, int, float]] = {}
        self._pipe_free: dict[tuple[str, int], float] = {}
        self._pending: set[tuple[str, int]] = set()
        self._init_heap()
        self._count = 0

    # --- scenario API ------------------------------------------------------------------------
    @property
    def source_id(self) -> str:
        return self.homs.source_id

    def add_peer(
        self,
        peer_id: str | None = None,
        *,
        store: PieceStore | None = None,
        standby: bool = False,
        config: MeshConfig | None = None,
    ) -> MeshPeer:
        """Join a peer at the HOMS now and start its core (``source_id`` makes the source)."""
        self._count += 1
        name = peer_id or f"m{self._count:05d}"
        if name in self.peers:
            raise ValueError(f"peer {name} exists")
        address = f"mem://{name}"
        core = MeshCore(
            config or self.config, name, address, random.Random(f"{self.seed}:{name}"), store=store
        )
        peer = MeshPeer(name, address, core, self.now)
        self.peers[name] = peer
        self._by_address[address] = peer
        ticket, peers = self.homs.join(name, address, self.now)
        source = self.peers.get(self.source_id)
        info = MeshJoinInfo(
            overlay_id=self.homs.overlay_id,
            source_id=self.source_id,
            ticket=ticket,
            peers=tuple(peers),
            standby=standby,
            source_address=source.address if source is not None else None,
            membership=self.homs.membership(name),
        )
        core.start(info, self.now)
        self._drain(peer)
        return peer

    def publish(
        self,
        data: bytes,
        *,
        peer_id: str | None = None,
        app_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        peer = self.peers[peer_id or self.source_id]
        number = peer.core.publish(data, self.now, app_id=app_id, meta=meta)
        self._drain(peer)
        return number

    def crash(self, peer_id: str) -> None:
        """SIGKILL: the peer stops; its links reset; the HOMS lists it until expiry."""
        peer = self.peers[peer_id]
        peer.alive = False
        self.homs.gone_at[peer_id] = self.now
        for key in [k for k in self._ends if k[0] == peer_id]:
            remote, rconn, latency = self._ends.pop(key)
            self._push(self.now + latency, _LOST, remote, rconn, None)

    def run(self, until: float, max_events: int = 20_000_000) -> int:
        """Process events up to virtual time ``until`` (bounded by ``max_events``)."""
        done = 0
        heap = self._heap
        while heap and heap[0][0] <= until and done < max_events:
            when, _, kind, peer, conn, payload = heapq.heappop(heap)
            self.now = when
            done += 1
            self._event(kind, peer, conn, payload)
        if not heap or heap[0][0] > until:
            self.now = max(self.now, until)
        return done

    def run_until(self, done: Callable[[], bool], deadline: float, step: float = 0.05) -> bool:
        """Run in steps until ``done()`` or virtual time ``deadline``; returns ``done()``."""
        while self.now < deadline:
            if done():
                return True
            self.run(min(self.now + step, deadline))
        return done()

    # --- observations ----------------------------------------------------------------------
    def alive(self) -> list[MeshPeer]:
        return [p for p in self.peers.values() if p.alive]

    def receivers(self) -> list[MeshPeer]:
        return [p for p in self.alive() if not p.core.is_source]

    def all_have(self, obj: int, peers: list[MeshPeer] | None = None) -> bool:
        return all(obj in p.received for p in (peers if peers is not None else self.receivers()))

    # --- internals -------------------------------------------------------------------------
    def _event(self, kind: int, peer: Any, conn: int, payload: Any) -> None:
        now = self.now
        if kind == _RECV:
            if peer.alive and (peer.peer_id, conn) in self._ends:
                peer.core.receive(conn, decode(payload), now)
                self._drain(peer)
        elif kind == _TIMER:
            if peer.alive and peer.armed == now:
                peer.armed = None
                peer.core.handle_timer(now)
                self._drain(peer)
        elif kind == _CALL:
            payload()
        elif kind == _ARRIVE:
            opener: MeshPeer = payload
            if (opener.peer_id, conn) not in self._pending:
                return
            if not peer.alive:
                self._pending.discard((opener.peer_id, conn))
                self._push(now + self._lat(peer, opener), _FAILED, opener, conn, None)
                return
            rconn = peer.core.accept(now)
            self._ends[(peer.peer_id, rconn)] = (opener, conn, self._lat(peer, opener))
            self._drain(peer)
            self._push(now + self._lat(peer, opener), _MADE, opener, conn, (peer, rconn))
        elif kind == _MADE:
            remote, rconn = payload
            self._pending.discard((peer.peer_id, conn))
            if not peer.alive:
                return
            if (remote.peer_id, rconn) not in self._ends:
                peer.core.connection_failed(conn, now)
            else:
                self._ends[(peer.peer_id, conn)] = (remote, rconn, self._lat(peer, remote))
                peer.core.connection_made(conn, now)
            self._drain(peer)
        elif kind in (_FAILED, _LOST):
            self._pending.discard((peer.peer_id, conn))
            self._ends.pop((peer.peer_id, conn), None)
            if peer.alive:
                peer.core.connection_lost(conn, now)
                self._drain(peer)
        elif kind == _HOMS and peer.alive:
            peer.core.homs_result(self.homs.peer_list(peer.peer_id, now), now)
            self._drain(peer)

    def _drain(self, peer: MeshPeer) -> None:
        now = self.now
        for effect in peer.core.take_effects():
            if isinstance(effect, Send):
                self._send(peer, effect, now)
            elif isinstance(effect, ObjectReceived):
                if effect.object_number in peer.received:
                    peer.duplicates += 1
                peer.received[effect.object_number] = now
                if self.keep_data:
                    peer.data[effect.object_number] = effect.data
            elif isinstance(effect, Connect):
                remote = next(
                    (self._by_address[a] for a in effect.addresses if a in self._by_address),
                    None,
                )
                self._pending.add((peer.peer_id, effect.conn))
                if remote is None:
                    self._push(now + self.latency[1], _FAILED, peer, effect.conn, None)
                else:
                    self._push(now + self._lat(peer, remote), _ARRIVE, remote, effect.conn, peer)
            elif isinstance(effect, Close):
                self._pending.discard((peer.peer_id, effect.conn))
                end = self._ends.pop((peer.peer_id, effect.conn), None)
                if end is not None:
                    remote, rconn, link_latency = end
                    flushed = max(
                        now + link_latency, self._pipe_free.get((peer.peer_id, effect.conn), 0)
                    )
                    self._push(flushed, _LOST, remote, rconn, None)
            elif isinstance(effect, PeerListWanted):
                self._push(now + self.homs_latency, _HOMS, peer, 0, None)
            elif isinstance(effect, ProtocolError):
                peer.errors.append(effect.reason)
            elif isinstance(effect, BecameSource):
                peer.became_source = effect.first_object
            elif isinstance(effect, HomsReport):
                pass
        when = peer.core.next_timer()
        if when is not None and (peer.armed is None or when < peer.armed):
            when = max(when, now)
            peer.armed = when
            self._push(when, _TIMER, peer, 0, None)

    def _send(self, peer: MeshPeer, effect: Send, now: float) -> None:
        message = effect.message
        tamper = self.tamper.get(peer.peer_id)
        if tamper is not None:
            message = tamper(message)
        frame = encode(message)
        size = len(frame)
        kind = type(message).__name__
        for conn in effect.conns:
            end = self._ends.get((peer.peer_id, conn))
            if end is None:
                continue
            remote, rconn, latency = end
            depart = now
            if self.bandwidth:
                depart = max(now, peer.uplink_free) + size / self.bandwidth
                peer.uplink_free = depart
            arrive = max(depart + latency, self._pipe_free.get((peer.peer_id, conn), 0.0))
            self._pipe_free[(peer.peer_id, conn)] = arrive
            self.bytes_on_wire += size
            self.frames_on_wire += 1
            self.bytes_by_type[kind] = self.bytes_by_type.get(kind, 0) + size
            peer.bytes_sent += size
            self._push(arrive, _RECV, remote, rconn, frame)
