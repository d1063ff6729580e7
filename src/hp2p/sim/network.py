"""A deterministic in-memory network driving many sans-IO ``PeerCore``s on a virtual clock.

Everything happens in one heap of events ordered by (virtual time, insertion order): message
arrivals, connection set-up and tear-down, core timers, HOMS answers. Per-link latency is drawn
once per peer pair from the seed, and one connection delivers in order (same latency, FIFO tie
break), like a TCP stream. So the same seed and the same calls give the same trace, which lets
tests replay a failure and the simulator (issue #6) scale to thousands of peers.

Connections follow the reference TCP profile (etri-2023-protocol.md §7.3) without bytes: an
``accept`` at the remote after one latency, ``connection_made`` back at the opener after a second
one; a close reaches the other end one latency later, after the data sent before it. A crashed
peer's connections are reset (the others see ``connection_lost``); a *hung* peer's are not, so
only heartbeats can find it, and new connections to it are accepted (by its kernel) and then
never answered, as with SIGSTOP.

``loss`` drops BROADCAST_DATA frames (live data, not recovery traffic) with that probability on
every link, and :meth:`Network.set_loss` sets it per link, from one seeded generator: the same
seed loses the same frames. Control messages are never lost: TCP does not lose them either, and
the loss is there to exercise the live-gap pull of the DR FE, not the join procedure.

A peer whose bounded join attempts all failed (``JoinFailed``) joins the HOMS again with a
new ticket, as a shell would (``rejoin=False`` turns that off).

The real ``hp2p.wire.r2`` message objects travel between cores. With ``codec=True`` every message
is encoded once per ``Send`` and decoded at each receiver, to catch codec/core mismatches.

:class:`MemoryHoms` models the HOMS side the cores need: tickets, peer lists chosen by the real
``hp2p.homs.peerlist`` rules, costmap reports (which make a peer *active*), recovery lists.
"""

from __future__ import annotations

import heapq
import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hp2p.homs.peerlist import PeerEntry, tree_entry_points, tree_recovery_points
from hp2p.peer.config import PeerConfig
from hp2p.peer.control import CrPolicy, JoinInfo
from hp2p.peer.core import PeerCore
from hp2p.peer.effects import (
    Close,
    Connect,
    Costmap,
    Deliver,
    Effect,
    Gap,
    HomsRecoveryJoin,
    HomsReport,
    JoinFailed,
    ProtocolError,
    Send,
)
from hp2p.peer.paths import Role
from hp2p.sim.credentials import sim_membership
from hp2p.sim.heap import CALL, EventHeap
from hp2p.trust.credential import Role as MemberRole
from hp2p.trust.keys import SigningKey
from hp2p.trust.membership import Membership
from hp2p.wire.r2.messages import BroadcastData, Message

_RECV = 0
_TIMER = 1
_ARRIVE = 2
_MADE = 3
_FAILED = 4
_LOST = 5
_HOMS = 6
_CALL = CALL
_REJOIN = 8


class MemoryHoms:
    """The HOMS as the cores see it through their shell: join, recovery, report, leave."""

    def __init__(
        self,
        overlay_id: str = "sim-overlay",
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        cr_policy: CrPolicy | None = None,
        source_peer_id: str | None = None,
        credentials: bool = False,
    ) -> None:
        self.overlay_id = overlay_id
        #: Issue membership credentials (hp2p.trust): links need AUTH, data is signed.
        self.signer = SigningKey.generate() if credentials else None
        #: A SubTree's source peer (only it publishes); None: a CoreTree.
        self.source_peer_id = source_peer_id
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.cr_policy = cr_policy or CrPolicy()
        self.peers: dict[str, PeerEntry] = {}
        self.costmaps: dict[str, Costmap] = {}
        self.reports = 0
        self._tickets = 0

    def join(self, peer_id: str, address: str) -> JoinInfo:
        self._tickets += 1
        entry = PeerEntry(peer_id, address, self._tickets)
        self.peers[peer_id] = entry
        listed = tree_entry_points(list(self.peers.values()))
        root = [p.peer_id for p in listed] == [peer_id]
        return JoinInfo(
            overlay_id=self.overlay_id,
            ticket=entry.ticket,
            peers=tuple((p.peer_id, p.address) for p in listed if p.peer_id != peer_id),
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            cr_policy=self.cr_policy,
            root=root,
            source_peer_id=self.source_peer_id,
            membership=self.membership(entry),
        )

    def membership(self, entry: PeerEntry) -> Membership | None:
        """A credential for ``entry``, valid for the whole run (clock offset: SIM_EPOCH)."""
        if self.signer is None:
            return None
        role: MemberRole = "source" if entry.peer_id == self.source_peer_id else "peer"
        return sim_membership(self.signer, self.overlay_id, entry, role)

    def recovery(self, peer_id: str, ticket: int) -> tuple[list[tuple[str, str]], bool]:
        """Recovery peer list, and whether the requester is now the oldest peer (the root)."""
        listed = tree_recovery_points(list(self.peers.values()), ticket)
        if [p.peer_id for p in listed] == [peer_id]:
            return [], True
        return [(p.peer_id, p.address) for p in listed if p.peer_id != peer_id], False

    def report(self, peer_id: str, costmap: Costmap) -> None:
        entry = self.peers.get(peer_id)
        if entry is None:
            return
        self.reports += 1
        self.costmaps[peer_id] = costmap
        self.peers[peer_id] = PeerEntry(
            entry.peer_id, entry.address, entry.ticket, len(costmap.primary)
        )

    def leave(self, peer_id: str) -> None:
        self.peers.pop(peer_id, None)
        self.costmaps.pop(peer_id, None)


@dataclass(eq=False)
class SimPeer:
    """One simulated hybrid peer: its core and what the harness observed of it."""

    peer_id: str
    address: str
    core: PeerCore
    alive: bool = True
    hung: bool = False  # stopped (SIGSTOP): its kernel still accepts connections
    armed: float | None = None
    deliveries: int = 0
    received: dict[tuple[str, int], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    join_failures: int = 0
    recovered: int = 0
    gaps: list[tuple[str, int, int]] = field(default_factory=list)

    def in_gap(self, source: str, sequence: int) -> bool:
        """Whether the core reported ``(source, sequence)`` lost (a ``Gap`` effect)."""
        return any(s == source and a <= sequence <= b for s, a, b in self.gaps)


class Network(EventHeap):
    """The event loop of the simulation; all times are virtual seconds."""

    def __init__(
        self,
        seed: int = 0,
        config: PeerConfig | None = None,
        latency: tuple[float, float] = (0.001, 0.010),
        homs: MemoryHoms | None = None,
        homs_latency: float = 0.002,
        codec: bool = False,
        record: bool = True,
        rejoin: bool = True,
        on_effect: Callable[[SimPeer, Effect, float], None] | None = None,
        loss: float = 0.0,
    ) -> None:
        self.seed = seed
        self.config = config or PeerConfig()
        self.latency = latency
        self.homs = homs or MemoryHoms()
        self.homs_latency = homs_latency
        self.record = record
        self.rejoin = rejoin
        self.on_effect = on_effect
        self.loss = loss
        self.dropped = 0
        self._link_loss: dict[tuple[str, str], float] = {}
        self._loss_rng = random.Random(f"{seed}:loss")
        self.now = 0.0
        self.events_processed = 0
        self.peers: dict[str, SimPeer] = {}
        self._by_address: dict[str, SimPeer] = {}
        # (peer, conn) -> (remote peer, remote conn, one-way latency of the link)
        self._ends: dict[tuple[str, int], tuple[SimPeer, int, float]] = {}
        self._pending: set[tuple[str, int]] = set()
        self._init_heap()
        self._count = 0
        self._encode: Callable[[Message], bytes] | None = None
        self._decode: Callable[[bytes], Message] | None = None
        if codec:
            module = importlib.import_module("hp2p.wire.r2")
            self._encode = module.encode
            self._decode = module.decode

    # --- scenario API ------------------------------------------------------------------------
    def add_peer(self, peer_id: str | None = None) -> str:
        """Create a peer, join it at the HOMS now and start its core."""
        self._count += 1
        name = peer_id or f"p{self._count:05d}"
        if name in self.peers:
            raise ValueError(f"peer {name} exists")
        address = f"mem://{name}"
        rng = random.Random(f"{self.seed}:{name}")
        peer = SimPeer(name, address, PeerCore(self.config, name, address, rng))
        self.peers[name] = peer
        self._by_address[address] = peer
        info = self.homs.join(name, address)
        peer.core.start(info, self.now)
        self._drain(peer)
        return name

    def publish(self, peer_id: str, data: bytes, app_id: str = "etri_data") -> int:
        peer = self.peers[peer_id]
        if not peer.alive:
            raise ValueError(f"peer {peer_id} is not running")
        sequence = peer.core.publish(data, self.now, app_id=app_id)
        self._drain(peer)
        return sequence

    def scan_tree(self, peer_id: str) -> int:
        peer = self.peers[peer_id]
        cseq = peer.core.scan_tree(self.now)
        self._drain(peer)
        return cseq

    def leave(self, peer_id: str) -> None:
        """Graceful leave: RELEASE and close every path, then HOMP leave."""
        peer = self.peers[peer_id]
        peer.core.leave(self.now)
        self._drain(peer)
        peer.alive = False
        self.homs.leave(peer_id)

    def crash(self, peer_id: str, hang: bool = False, homs_expiry: float = 0.0) -> None:
        """Kill a peer. ``hang``: its connections stay open but silent (SIGSTOP).

        ``homs_expiry``: the HOMS keeps listing the dead peer for this long (a real HOMS
        notices only when the peer stops refreshing), so recovery lists may name it.
        """
        peer = self.peers[peer_id]
        peer.alive = False
        peer.hung = hang
        if homs_expiry > 0:
            self.at(self.now + homs_expiry, lambda: self.homs.leave(peer_id))
        else:
            self.homs.leave(peer_id)
        for key in [k for k in self._ends if k[0] == peer_id]:
            remote, rconn, latency = self._ends.pop(key)
            if not hang:
                self._push(self.now + latency, _LOST, remote, rconn, None)

    def set_loss(self, a: str, b: str, probability: float) -> None:
        """Loss probability of BROADCAST_DATA on the link between peers ``a`` and ``b``."""
        key = (a, b) if a < b else (b, a)
        self._link_loss[key] = probability

    def run(self, until: float, max_events: int = 50_000_000) -> int:
        """Process events up to virtual time ``until`` (bounded by ``max_events``)."""
        heap = self._heap
        pop = heapq.heappop
        done = 0
        while heap and heap[0][0] <= until and done < max_events:
            when, _, kind, peer, conn, payload = pop(heap)
            self.now = when
            done += 1
            if kind == _RECV:
                if not peer.alive or (peer.peer_id, conn) not in self._ends:
                    continue
                if self._decode is not None:
                    payload = self._decode(payload)
                peer.core.receive(conn, payload, when)
                self._drain(peer)
            elif kind == _TIMER:
                if not peer.alive or peer.armed != when:
                    continue
                peer.armed = None
                peer.core.handle_timer(when)
                self._drain(peer)
            else:
                self._other(kind, peer, conn, payload)
        if done < max_events and (not heap or heap[0][0] > until):
            self.now = max(self.now, until)
        self.events_processed += done
        return done

    # --- observations ----------------------------------------------------------------------
    def alive(self) -> list[SimPeer]:
        return [p for p in self.peers.values() if p.alive]

    def parents(self) -> dict[str, str | None]:
        return {p.peer_id: p.core.parent for p in self.alive()}

    def depths(self) -> dict[str, int | None]:
        """Depth of each live peer by following parents; None if not connected to a root."""
        parents = self.parents()
        result: dict[str, int | None] = {}
        for start in parents:
            hops = 0
            node: str | None = start
            while node is not None and hops <= len(parents):
                parent = parents.get(node, "<gone>")
                if parent is None:
                    break
                node = parent if parent in parents else None
                hops += 1
                if node is None:
                    hops = -1
                    break
            result[start] = hops if 0 <= hops <= len(parents) else None
        return result

    def loop_free(self) -> bool:
        """No live peer is its own ancestor."""
        parents = self.parents()
        for start in parents:
            seen = {start}
            node = parents.get(start)
            while node is not None and node in parents:
                if node in seen:
                    return False
                seen.add(node)
                node = parents[node]
        return True

    def tree_problems(self) -> list[str]:
        """What keeps the live peers from being one tree: each problem as a sentence.

        A primary path is sound when both ends agree on it (my parent counts me as its child
        and the other way round); the tree is whole when every live peer is reached from the
        root over sound primary paths. ``depths`` trusts each peer's own idea of its parent;
        this is what SCAN_TREE would see, so a half-open path or an island shows here.
        """
        problems: list[str] = []
        sound: dict[str, list[str]] = {}
        for peer in self.alive():
            for conn, link in peer.core.paths.links.items():
                if link.role is not Role.PARENT and link.role is not Role.CHILD:
                    continue
                end = self._ends.get((peer.peer_id, conn))
                other = None
                if end is not None and end[0].alive:
                    other = end[0].core.paths.get(end[1])
                want = Role.CHILD if link.role is Role.PARENT else Role.PARENT
                if other is None or other.role is not want:
                    seen = "nothing" if other is None else other.role.value
                    problems.append(
                        f"{peer.peer_id} has {link.peer_id} as {link.role.value}, which sees {seen}"
                    )
                elif link.role is Role.CHILD:
                    sound.setdefault(peer.peer_id, []).append(link.peer_id)
        roots = self.roots()
        if len(roots) != 1:
            problems.append(f"{len(roots)} roots: {roots}")
        reached: set[str] = set()
        todo = roots[:1]
        for _ in range(len(self.peers) + 1):  # bounded: each peer is expanded once
            if not todo:
                break
            here = todo.pop()
            if here not in reached:
                reached.add(here)
                todo.extend(sound.get(here, ()))
        outside = sorted(p.peer_id for p in self.alive() if p.peer_id not in reached)
        if outside:
            problems.append(f"outside the root's tree: {outside}")
        return problems

    def roots(self) -> list[str]:
        return [p.peer_id for p in self.alive() if p.core.attached and p.core.parent is None]

    # --- internals -------------------------------------------------------------------------
    def _drain(self, peer: SimPeer) -> None:
        """Carry out a core's effects: the simulator's one effect dispatcher.

        A broadcast hop yields one ``Send`` and one ``Deliver``; they are dispatched by exact
        type first, the rest through :meth:`_other_effect`. The observer (``on_effect``) sees
        every effect but ``Send``.
        """
        core = peer.core
        now = self.now
        observe = self.on_effect
        for effect in core.take_effects():
            kind = type(effect)
            if kind is Send:
                self._send(peer, effect, now)  # type: ignore[arg-type]
            elif kind is Deliver:
                self._deliver(peer, effect, now)  # type: ignore[arg-type]
                if observe is not None:
                    observe(peer, effect, now)
            else:
                self._other_effect(peer, effect, now)
        when = core.next_timer()
        if when is not None and (peer.armed is None or when < peer.armed):
            when = max(when, now)
            peer.armed = when
            self._push(when, _TIMER, peer, 0, None)

    def _deliver(self, peer: SimPeer, effect: Deliver, now: float) -> None:
        peer.deliveries += 1
        peer.recovered += effect.recovered
        if self.record:
            key = (effect.source, effect.sequence)
            peer.received[key] = peer.received.get(key, 0) + 1

    def _other_effect(self, peer: SimPeer, effect: Effect, now: float) -> None:
        """Connections, HOMS traffic and errors."""
        if isinstance(effect, Connect):
            self._connect(peer, effect)
        elif isinstance(effect, Close):
            self._close(peer, effect.conn, now)
        elif isinstance(effect, HomsReport):
            self.homs.report(peer.peer_id, effect.costmap)
        elif isinstance(effect, HomsRecoveryJoin):
            self._push(now + self.homs_latency, _HOMS, peer, 0, None)
        elif isinstance(effect, ProtocolError):
            peer.errors.append(effect.reason)
        elif isinstance(effect, Gap):
            peer.gaps.append((effect.source, effect.first, effect.last))
        elif isinstance(effect, JoinFailed):
            peer.join_failures += 1
            if self.rejoin and effect.rejoin:
                self._push(now + self.homs_latency, _REJOIN, peer, 0, None)
        if self.on_effect is not None:
            self.on_effect(peer, effect, now)

    def _send(self, peer: SimPeer, effect: Send, now: float) -> None:
        payload: Any = effect.message
        if self._encode is not None:
            payload = self._encode(payload)
        ends = self._ends
        name = peer.peer_id
        push = heapq.heappush
        heap = self._heap
        message = effect.message
        lossy = (
            (self.loss > 0 or bool(self._link_loss))
            and type(message) is BroadcastData
            and not message.hp2p.recovered  # a recovery push is not live data
        )
        for conn in effect.conns:
            end = ends.get((name, conn))
            if end is None:
                continue  # closed locally, or never opened: the core already knows
            remote, rconn, latency = end
            if lossy and self._lost_frame(name, remote.peer_id):
                continue
            self._seq += 1
            push(heap, (now + latency, self._seq, _RECV, remote, rconn, payload))

    def _lost_frame(self, a: str, b: str) -> bool:
        key = (a, b) if a < b else (b, a)
        probability = self._link_loss.get(key, self.loss)
        if probability > 0 and self._loss_rng.random() < probability:
            self.dropped += 1
            return True
        return False

    def _resolve(self, effect: Connect) -> SimPeer | None:
        """The in-memory transport: the first advertised address some peer listens on."""
        for address in effect.addresses:
            remote = self._by_address.get(address)
            if remote is not None:
                return remote
        return None

    def _connect(self, peer: SimPeer, effect: Connect) -> None:
        remote = self._resolve(effect)
        self._pending.add((peer.peer_id, effect.conn))
        if remote is None:
            self._push(self.now + self.latency[1], _FAILED, peer, effect.conn, None)
            return
        self._push(self.now + self._lat(peer, remote), _ARRIVE, remote, effect.conn, peer)

    def _close(self, peer: SimPeer, conn: int, now: float) -> None:
        self._pending.discard((peer.peer_id, conn))
        end = self._ends.pop((peer.peer_id, conn), None)
        if end is not None:
            remote, rconn, latency = end
            self._push(now + latency, _LOST, remote, rconn, None)

    def _other(self, kind: int, peer: Any, conn: int, payload: Any) -> None:
        now = self.now
        if kind == _CALL:
            payload()
            return
        if kind == _ARRIVE:
            opener: SimPeer = payload
            if (opener.peer_id, conn) not in self._pending:
                return  # the opener gave up before the connection arrived
            if peer.hung:
                # A stopped process's kernel completes the handshake; nobody ever answers.
                self._push(now + self._lat(peer, opener), _MADE, opener, conn, (peer, -1))
                return
            if not peer.alive:
                self._pending.discard((opener.peer_id, conn))
                self._push(now + self._lat(peer, opener), _FAILED, opener, conn, None)
                return
            rconn = peer.core.accept(now)
            self._ends[(peer.peer_id, rconn)] = (opener, conn, self._lat(peer, opener))
            self._push(now + self._lat(peer, opener), _MADE, opener, conn, (peer, rconn))
            self._drain(peer)
        elif kind == _MADE:
            remote, rconn = payload
            if not peer.alive or (peer.peer_id, conn) not in self._pending:
                if (remote.peer_id, rconn) in self._ends:
                    del self._ends[(remote.peer_id, rconn)]
                    self._push(now + self._lat(peer, remote), _LOST, remote, rconn, None)
                return
            self._pending.discard((peer.peer_id, conn))
            if remote.hung:
                self._ends[(peer.peer_id, conn)] = (remote, rconn, self._lat(peer, remote))
                peer.core.connection_made(conn, now)
                self._drain(peer)
                return
            if (remote.peer_id, rconn) not in self._ends:
                # The acceptor closed it already; report the failure to the opener.
                peer.core.connection_failed(conn, now)
                self._drain(peer)
                return
            self._ends[(peer.peer_id, conn)] = (remote, rconn, self._lat(peer, remote))
            peer.core.connection_made(conn, now)
            self._drain(peer)
        elif kind == _FAILED:
            if not peer.alive or (peer.peer_id, conn) not in self._pending:
                return
            self._pending.discard((peer.peer_id, conn))
            peer.core.connection_failed(conn, now)
            self._drain(peer)
        elif kind == _LOST:
            if not peer.alive or self._ends.pop((peer.peer_id, conn), None) is None:
                return
            peer.core.connection_lost(conn, now)
            self._drain(peer)
        elif kind == _REJOIN:
            if not peer.alive:
                return
            # What a shell does after JoinFailed: a fresh HOMP join, hence a new ticket.
            self.homs.leave(peer.peer_id)
            peer.core.start(self.homs.join(peer.peer_id, peer.address), now)
            self._drain(peer)
        elif kind == _HOMS:
            if not peer.alive:
                return
            peers, root = self.homs.recovery(peer.peer_id, peer.core.ticket)
            peer.core.homs_result(peers, now, root=root)
            self._drain(peer)
