"""The sans-IO hybrid peer (Q.4100 §7.2): one object composing the FEs, fed ``(input, now)``.

``PeerCore`` owns no socket, clock, task or global random state. The shell (asyncio TCP node,
the in-memory simulator, a hypothesis state machine) calls its input methods with the current
time and drains ``take_effects()`` after each call; ``next_timer()`` says when to call
``handle_timer``. The same inputs in the same order give the same outputs, which is what makes
10,000 simulated peers and stateful property tests possible.

Connections are integers. The core allocates them for connections it opens (``Connect``) and
for incoming ones (``accept``), so a connection is known to the core before any byte arrives.

A peer that misbehaves never raises out of here: every unexpected message becomes a counted
``ProtocolError`` effect (and, where the link has no purpose left, a ``Close``).

Hot path: ``receive(conn, BroadcastData)`` is one dict lookup, one duplicate-window check, one
cache insert, one precomputed fan-out tuple and two effects; no logging, no payload copy.
"""

from __future__ import annotations

import dataclasses
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from hp2p.peer.broadcast import ACCEPTED, DuplicateFilter
from hp2p.peer.cache import MessageCache
from hp2p.peer.config import PeerConfig
from hp2p.peer.control import (
    JoinInfo,
    Phase,
    backoff_delay,
    may_displace,
    may_volunteer,
    offer_rank,
    parent_rank,
    recovery_rank,
    relay_conn_num,
)
from hp2p.peer.effects import (
    Close,
    Connect,
    Costmap,
    Deliver,
    Detached,
    Effect,
    Gap,
    HomsRecoveryJoin,
    HomsReport,
    Joined,
    JoinFailed,
    Left,
    PathEvent,
    PeerLost,
    ProtocolError,
    ScanPath,
    ScanResult,
    Send,
)
from hp2p.peer.paths import PATH_ROLES, Link, PathLimitError, PathTable, Role
from hp2p.peer.probe import LivenessDeadlines, RttProbe
from hp2p.peer.recovery import RECOVERED, PullQueue, PullSettings, lacking, missing_from, summarise
from hp2p.peer.scan import ScanDone, ScanForward, on_leaf_response, on_scan_request
from hp2p.peer.timers import Timers
from hp2p.wire.r2.messages import (
    ESTAB_NO,
    ESTAB_YES,
    GET_DATA_MISSING,
    GET_DATA_OK,
    PRIMARY_NO,
    PRIMARY_YES,
    SCAN_TREE_LEAF,
    BroadcastData,
    BroadcastDataResponse,
    Buffermap,
    BuffermapEntry,
    BuffermapResponse,
    Estab,
    EstabExt,
    EstabResponse,
    GetData,
    GetDataResponse,
    Heartbeat,
    HeartbeatExt,
    HeartbeatResponse,
    Hello,
    HelloExt,
    HelloResponse,
    Message,
    PeerAddress,
    Probe,
    ProbeResponse,
    Release,
    ReleaseResponse,
    ScanTree,
    ScanTreeResponse,
    SetCandidate,
    SetCandidateResponse,
    SetPrimary,
    SetPrimaryExt,
    SetPrimaryResponse,
    SetPrimaryResponseExt,
)
from hp2p.wire.r2.schema import MAX_HOPS

_DATA_ROLES = PATH_ROLES
_SCAN_MEMORY = 64
_HELLO_MEMORY = 256
_VERTICAL_TRIES = 3

# Timer names.
_T_HELLO = "hello"
_T_WINDOW = "window"
_T_PROBE = "probe"
_T_ASK = "set_primary"
_T_RETRY = "retry"
_T_VERTICAL = "vertical"
_T_SCAN = "scan"
_T_PULL = "pull"
_T_REFILL = "refill"
_T_DEFER = "defer"
_REFILL_TRIES = 3
_RECOVERY_WINDOW = 0.05
_NEW_SOURCE_BACKFILL = 64
_HEADS_MAX = 64
_HOLD_MAX = 0.05
_FAULTS = frozenset({"connection closed", "heartbeat timeout"})


def _pull_settings(config: PeerConfig) -> PullSettings:
    return PullSettings(
        gap_wait=config.gap_wait,
        timeout=config.pull_timeout,
        rounds=config.pull_rounds,
        round_delay=config.pull_round_delay,
        per_peer=config.pull_per_peer,
        total=config.pull_total,
        max_wanted=config.pull_max_wanted,
    )


@dataclass(slots=True)
class CoreCounters:
    """Events worth a metric; protocol errors are counted here, never raised."""

    protocol_errors: int = 0
    delivered: int = 0
    forwarded: int = 0
    published: int = 0
    hellos: int = 0
    volunteered: int = 0
    attempts: int = 0
    repairs: int = 0
    paths_lost: int = 0


class PeerCore:
    """The hybrid peer core. See docs/peer-core.md for the inputs, effects and procedures."""

    def __init__(self, config: PeerConfig, peer_id: str, address: str, rng: random.Random) -> None:
        self.config = config
        self.peer_id = peer_id
        self.address = address
        self.rng = rng
        self.overlay_id = ""
        self.ticket = 0
        self.phase = Phase.IDLE
        self.depth: int | None = None
        self.recovery_by = "push"
        self.paths = PathTable(
            config.max_children,
            config.max_outgoing_candidates,
            config.max_incoming_candidates,
            config.recovery_children,
        )
        self.duplicates = DuplicateFilter(config.duplicate_window, config.max_ahead)
        self.cache = MessageCache(config.cache_count, config.cache_bytes, config.cache_age)
        self.counters = CoreCounters()
        self.grandparent: PeerAddress | None = None
        self.buffermaps: dict[str, list[BuffermapEntry]] = {}  # last buffermap per peer
        self.recovery = PullQueue(_pull_settings(config))
        self._detached_at: float | None = None
        self._pull_since: float | None = None
        self._pull_at: float | None = None
        self._refills = 0
        self._attached_at: float | None = None
        self._heads_sent: dict[str, int] = {}
        self._rtt = RttProbe()
        self._deadlines = LivenessDeadlines(
            config.heartbeat_timeout, config.idle_link_timeout, config.estab_timeout
        )
        self._timers = Timers()
        self._effects: list[Effect] = []
        self._next_conn = 0
        self._sequence = 0
        self._attempt = 0
        self._offers: list[Link] = []
        self._selection: list[Link] = []
        self._asking: Link | None = None
        self._deferred: list[tuple[Link, SetPrimary]] = []
        self._holding = False  # my own candidate round runs: SET_PRIMARYs wait for its end
        self._hellos_out: set[int] = set()
        self._hello_accepted = False
        self._recovering = False
        self._candidates_only = False
        self._homs_pending = False
        self._vertical_tries = 0
        self._next_heartbeat: float | None = None
        self._next_check: float | None = None
        self._dirty = False
        self._advert_dirty = False
        self._advertised: tuple[int | None, int | None] = (None, None)
        self._last_costmap: Costmap | None = None
        self._scan_seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._hello_seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._scan_cseq = 0
        self._scan_paths: list[ScanPath] | None = None
        self._handlers: dict[type[Any], Callable[[Link, Any, float], None]] = {
            Hello: self._on_hello,
            Estab: self._on_estab,
            Probe: self._on_probe,
            SetPrimary: self._on_set_primary,
            SetCandidate: self._on_set_candidate,
            Release: self._on_release,
            Heartbeat: self._on_heartbeat,
            ScanTree: self._on_scan,
            Buffermap: self._on_buffermap,
            GetData: self._on_get_data,
            HelloResponse: self._on_hello_response,
            EstabResponse: self._on_estab_response,
            ProbeResponse: self._on_probe_response,
            SetPrimaryResponse: self._on_set_primary_response,
            ScanTreeResponse: self._on_scan_response,
            BuffermapResponse: self._on_buffermap_response,
            GetDataResponse: self._on_get_data_response,
            SetCandidateResponse: self._ignore,
            HeartbeatResponse: self._ignore,
            ReleaseResponse: self._ignore,
            BroadcastDataResponse: self._ignore,
        }

    # === outputs =================================================================================
    def take_effects(self) -> list[Effect]:
        """Everything the core decided since the last call, in order."""
        if self._dirty:
            self._dirty = False
            self._advertise()
            costmap = self.paths.costmap()
            if costmap != self._last_costmap and self.phase is not Phase.LEFT:
                self._last_costmap = costmap
                self._effects.append(HomsReport(costmap))
        elif self._advert_dirty:
            self._advertise()
        effects = self._effects
        self._effects = []
        return effects

    def next_timer(self) -> float | None:
        """The earliest instant at which ``handle_timer`` has something to do."""
        when = self._timers.next()
        for other in (self._next_heartbeat, self._next_check):
            if other is not None and (when is None or other < when):
                when = other
        return when

    def status(self) -> dict[str, Any]:
        """A plain snapshot for the local API, logs and the demo (no live references)."""
        links = self.paths.links.values()
        return {
            "peer_id": self.peer_id,
            "address": self.address,
            "overlay_id": self.overlay_id,
            "ticket": self.ticket,
            "phase": self.phase.value,
            "depth": self.depth,
            "parent": self.parent,
            "paths": [
                {"peer_id": x.peer_id, "role": x.role.value, "depth": x.depth, "rtt": x.rtt}
                for x in links
                if x.role in PATH_ROLES
            ],
            "counters": dataclasses.asdict(self.counters),
            "duplicates": dataclasses.asdict(self.duplicates.counters),
            "cache": {"messages": len(self.cache), "bytes": self.cache.bytes}
            | dataclasses.asdict(self.cache.counters),
            "recovery": {"wanted_now": len(self.recovery)}
            | dataclasses.asdict(self.recovery.counters),
        }

    @property
    def attached(self) -> bool:
        return self.phase is Phase.ATTACHED

    @property
    def _needs_spare_slot(self) -> bool:
        """Orphans and joiners whose first attempt failed may take the spare child slots.

        A low ticket can attach only below the few older peers, which later joiners fill
        quickly; without the spare slots such a peer could retry until it gives up.
        """
        return self._recovering or self._attempt > 1

    @property
    def _displacing(self) -> bool:
        """An orphan whose first attempt found no free slot asks full older peers to make one.

        Only older peers are legal parents (ticket rule); with the oldest levels full, an old
        orphan would otherwise wait out every attempt and take a new ticket, releasing its
        whole subtree (docs/recovery.md, "an old orphan and a full top").
        """
        return self._recovering and self._attempt >= 2

    @property
    def parent(self) -> str | None:
        link = self.paths.parent
        return None if link is None else link.peer_id

    # === inputs: life cycle ======================================================================
    def start(self, info: JoinInfo, now: float) -> None:
        """Begin after the shell's HOMP join: become the root, or HELLO the listed peers.

        After ``JoinFailed`` the shell may join the HOMS afresh and call ``start`` again with
        the *new* ticket. Every path is released first: children hold tickets that need not
        be higher than the new one, and the ticket rule must hold on every primary path.
        """
        if self.phase is Phase.FAILED:
            self._reset(now)
        elif self.phase is not Phase.IDLE:
            self._error(None, f"start() in phase {self.phase.value}")
            return
        self.overlay_id = info.overlay_id
        self.ticket = info.ticket
        policy = info.cr_policy
        self.recovery_by = policy.recovery_by
        self.config = self.config.with_overlay(
            info.heartbeat_interval,
            info.heartbeat_timeout,
            policy.cache_count,
            policy.cache_age_minutes,
        )
        self.cache.max_count = self.config.cache_count
        self.cache.max_age = self.config.cache_age
        self.recovery.settings = _pull_settings(self.config)
        self._deadlines.heartbeat_timeout = self.config.heartbeat_timeout
        self._next_heartbeat = now + self.config.heartbeat_interval
        if info.root:
            self._become_root(now)
            return
        self._begin_attempt(info.peers, now)

    def homs_result(self, peers: list[tuple[str, str]], now: float, root: bool = False) -> None:
        """The HOMS answered a ``HomsRecoveryJoin``.

        ``root`` says the HOMS knows no active peer older than this one: it becomes the root.
        """
        if not self._homs_pending:
            return  # a stale answer: the peer attached (or left) meanwhile
        self._homs_pending = False
        if self.phase is not Phase.WAITING:
            return
        if root:
            self._become_root(now)
            return
        entries = list(peers)
        gp = self.grandparent
        if self._recovering and gp is not None and all(p != gp.peer_id for p, _ in entries):
            # The grandparent outlived my parent more often than not, and it is older than
            # me: a HELLO to it climbs from there even when the HOMS still lists the dead.
            entries.append((gp.peer_id, gp.address))
        self._begin_attempt(tuple(entries), now)

    def restart(self, info: JoinInfo, now: float) -> None:
        """Start over under a new HOMP membership (a new ticket), from any phase but LEFT.

        The shell calls this when the HOMS forgot the peer and it joined again: a younger
        ticket keeps the ticket rule only with every path released first. The duplicate
        filter and the cache stay, so nothing is delivered twice and neighbours can still
        pull from this peer.
        """
        if self.phase is Phase.LEFT:
            self._error(None, "restart() after leave")
            return
        self._reset(now)
        self.start(info, now)

    def leave(self, now: float) -> None:
        """RELEASE every path, close every connection, then ``Left``."""
        if self.phase is Phase.LEFT:
            return
        self._reset(now)
        self._detached_at = None
        self.phase = Phase.LEFT
        self._next_heartbeat = None
        self._next_check = None
        self._dirty = False
        self._effects.append(Left())

    def _reset(self, now: float) -> None:
        """Release every path, close every connection and forget the procedure state."""
        paths = tuple(link.conn for link in self.paths.paths())
        if paths:
            self._effects.append(Send(paths, Release()))
        for conn in list(self.paths.links):
            self.paths.remove(conn)
            self.recovery.conn_lost(conn)
            self._effects.append(Close(conn))
        self.phase = Phase.IDLE
        self.depth = None
        self.grandparent = None
        self._offers.clear()
        self._selection.clear()
        self._hellos_out.clear()
        self._asking = None
        self._deferred.clear()
        self._holding = False
        self._attempt = 0
        self._recovering = False
        self._candidates_only = False
        self._homs_pending = False
        self._dirty = True
        for name in (
            _T_DEFER,
            _T_HELLO,
            _T_WINDOW,
            _T_PROBE,
            _T_ASK,
            _T_RETRY,
            _T_VERTICAL,
            _T_SCAN,
            _T_PULL,
            _T_REFILL,
        ):
            self._timers.cancel(name)

    # === inputs: connections =====================================================================
    def accept(self, now: float) -> int:
        """A remote peer opened a connection to us; returns the conn id to use for it."""
        conn = self._new_conn()
        self._add(Link(conn, Role.INCOMING, last_rx=now, opened=now), now)
        return conn

    def connection_made(self, conn: int, now: float) -> None:
        link = self.paths.get(conn)
        if link is None:
            self._error(conn, "connection_made for an unknown connection")
            return
        link.last_rx = now
        purpose = link.purpose
        link.purpose = None
        if isinstance(purpose, Hello):
            self.paths.set_role(link, Role.HELLO)
            self._effects.append(Send((conn,), purpose))
        elif isinstance(purpose, Estab):
            self._effects.append(Send((conn,), purpose))
        else:
            self._error(conn, "connection_made without a purpose")
            self._drop(link, "no purpose", now)

    def connection_failed(self, conn: int, now: float) -> None:
        self.connection_lost(conn, now)

    def connection_lost(self, conn: int, now: float) -> None:
        link = self.paths.remove(conn)
        if link is not None:
            try:
                self._lost(link, "connection closed", now)
            except PathLimitError as exc:  # a state the procedures should never reach
                self._error(conn, f"internal path-table error on connection loss: {exc}")

    # === inputs: messages ========================================================================
    def receive(self, conn: int, message: Message, now: float) -> None:
        """A decoded R2 message arrived on ``conn``."""
        link = self.paths.links.get(conn)
        if link is None:
            if self.phase is not Phase.LEFT:
                self._error(conn, f"{type(message).__name__} on an unknown connection")
            return
        link.last_rx = now
        if type(message) is BroadcastData:
            self._on_data(link, message, now, False)
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            self._error(conn, f"unexpected message {type(message).__name__}")
            return
        try:
            handler(link, message, now)
        except PathLimitError as exc:  # a state the procedures should never reach
            self._error(conn, f"internal path-table error on {type(message).__name__}: {exc}")

    def publish(
        self,
        data: bytes,
        now: float,
        app_id: str = "etri_data",
        payload_type: str = "text/plain",
        candidate_path: bool = False,
    ) -> int:
        """Broadcast ``data`` from this peer (CoreTree is multi-source); returns its sequence."""
        self._sequence += 1
        message = BroadcastData(
            source=self.peer_id,
            sequence=self._sequence,
            data=data,
            ext_header={"app-id": app_id},
            payload_type=payload_type,
            candidate_path=candidate_path,
        )
        self.duplicates.check(self.peer_id, self._sequence)
        self.cache.put(message, now)
        targets = self.paths.fanout(None, candidate_path)
        if targets:
            self._effects.append(Send(targets, message))
        self.counters.published += 1
        return self._sequence

    def continue_as_source(self, last_sequence: int) -> None:
        """Publish on after ``last_sequence``: a standby taking over a source's peer-id.

        Every peer's duplicate filter already holds the failed source's sequences, so a
        takeover that numbered from 1 again would be refused as old or duplicate data; the
        standby learns the last sequence it saw from that source and goes on from there.
        """
        if last_sequence < 0:
            raise ValueError(f"last_sequence must be ≥ 0, got {last_sequence}")
        self._sequence = max(self._sequence, last_sequence)

    def scan_tree(self, now: float) -> int:
        """Start SCAN_TREE over the primary paths; ``ScanResult`` comes at the timeout."""
        self._scan_cseq += 1
        cseq = self._scan_cseq
        self._scan_paths = []
        self._remember_scan(self.peer_id, str(cseq))
        targets = self.paths.primary
        if targets:
            msg = ScanTree(
                cseq=cseq,
                overlay_id=self.overlay_id,
                peer_id=self.peer_id,
                address=self.address,
                ticket_id=self.ticket,
                via=[[self.peer_id, self.address]],
            )
            self._effects.append(Send(targets, msg))
            self._timers.arm(_T_SCAN, now + self.config.scan_timeout)
        else:
            self._finish_scan()
        return cseq

    def handle_timer(self, now: float) -> None:
        """Run everything due at ``now``: protocol timeouts, heartbeats, liveness checks."""
        if self.phase is Phase.LEFT:
            return
        for name in self._timers.pop_due(now):
            try:
                self._on_timer(name, now)
            except PathLimitError as exc:  # a state the procedures should never reach
                self._error(None, f"internal path-table error on timer {name}: {exc}")
        if self._next_heartbeat is not None and now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat_interval
            conns = tuple(link.conn for link in self.paths.paths())
            if conns:
                self._effects.append(Send(conns, self._heartbeat()))
        if self._next_check is not None and now >= self._next_check:
            links = list(self.paths.links.values())
            for link in self._deadlines.expired(links, now):
                reason = "heartbeat timeout" if link.role in PATH_ROLES else "timeout"
                self._drop(link, reason, now)
            self._next_check = self._deadlines.next_check(list(self.paths.links.values()))

    # === broadcast (DB FE) =======================================================================
    def _on_data(self, link: Link, msg: BroadcastData, now: float, recovered: bool) -> None:
        if link.role not in _DATA_ROLES:
            self._error(link.conn, "BROADCAST_DATA on a connection that is not a path")
            return
        if msg.ack:
            self._effects.append(Send((link.conn,), BroadcastDataResponse()))
        duplicates = self.duplicates
        win = duplicates.sources.get(msg.source)
        previous = None if win is None else win.newest
        if duplicates.check(msg.source, msg.sequence) != ACCEPTED:
            return
        if previous is not None:
            if msg.sequence > previous + 1:
                self._live_gap(msg.source, previous + 1, msg.sequence - 1, now)
        elif 1 < msg.sequence <= _NEW_SOURCE_BACKFILL and self._settled(now):
            self._live_gap(msg.source, 1, msg.sequence - 1, now)
        if msg.hp2p.recovered:
            recovered = True
        self.cache.put(msg, now)
        targets = self.paths.fanout(link.conn, msg.candidate_path)
        effects = self._effects
        if targets:
            effects.append(Send(targets, msg))
            self.counters.forwarded += 1
        effects.append(
            Deliver(msg.source, msg.sequence, msg.data, msg.app_id, msg.payload_type, recovered)
        )
        self.counters.delivered += 1

    # === HELLO / ESTAB (POC FE: volunteering) ====================================================
    def _on_hello(self, link: Link, msg: Hello, now: float) -> None:
        """Answer 1202, volunteer if the rules allow, relay down (and up: hp2p extension).

        Where the HELLO came from decides the relay: from the joiner itself (an entry peer) it
        goes down the subtree for ``ttl`` levels as in the reference, and up towards the root
        for ``up`` levels; from the parent it only goes further down; from a child (climbing)
        it only goes further up. Climbing lets shallower peers with free child slots volunteer:
        the HOMS hands out recent, deep peers as entry points, and down-only flooding could
        never offer the joiner anything shallower than them (docs/peer-core.md).
        """
        role = link.role
        if role is Role.INCOMING:
            self.paths.set_role(link, Role.HELLO)
            role = Role.HELLO
        elif role not in (Role.HELLO, Role.PARENT, Role.CHILD):
            self._error(link.conn, f"HELLO on a {role.value} connection")
            return
        if msg.overlay_id != self.overlay_id:
            self._error(link.conn, "HELLO for another overlay")
            self._drop_if_transient(link, now)
            return
        self.counters.hellos += 1
        self._effects.append(Send((link.conn,), HelloResponse()))
        if msg.peer_id == self.peer_id or msg.ticket_id <= self.ticket:
            return  # the ticket rule: never volunteer to an older (or the same) peer
        extra = msg.hp2p  # typed and bounded at decode (hp2p.wire.r2.schema.HelloExt)
        up = extra.up or 0
        attempt = extra.attempt
        if attempt is not None and not self._remember_hello(msg.peer_id, msg.ticket_id, attempt):
            return  # the same HELLO again by another route: one answer per peer
        vertical = bool(msg.vertical_candidate)
        conn_num = msg.conn_num
        if self.phase is Phase.ATTACHED and self.paths.by_peer(msg.peer_id, pending=True) is None:
            if may_volunteer(
                self.ticket,
                msg.ticket_id,
                self.paths,
                conn_num,
                vertical,
                bool(msg.recovery),
                now,
                self.config.offer_hold,
            ):
                conn_num -= 1
                self._volunteer(msg, vertical, now)
            elif (
                extra.displace
                and msg.recovery
                and may_displace(self.ticket, msg.ticket_id, self.paths, conn_num, vertical)
            ):
                conn_num -= 1
                self._volunteer(msg, vertical, now, displace=True)
        if vertical:
            return
        parent = self.paths.parent
        down = extra.down
        if down is not None and role is Role.PARENT:
            if conn_num == msg.conn_num and down > 0:
                self._descend(msg, extra, down - 1, link.conn)
            return
        if extra.up is not None and role is not Role.PARENT and (up == 0 or parent is None):
            self._descend(msg, extra, min(self.config.hello_up, MAX_HOPS), link.conn)
        if up > 0 and role is not Role.PARENT and parent is not None:
            climbing = Hello(
                overlay_id=msg.overlay_id,
                peer_id=msg.peer_id,
                address=msg.address,
                ticket_id=msg.ticket_id,
                conn_num=1,
                ttl=1,  # a reference parent volunteers but does not relay it down
                recovery=msg.recovery,
                hp2p=msgspec.structs.replace(extra, up=up - 1),
            )
            self._effects.append(Send((parent.conn,), climbing))
        ttl = msg.ttl - 1
        if role is Role.CHILD and extra.cpm:
            ttl = 1  # a candidate refill: the siblings of the climb may volunteer too
        elif role is Role.CHILD or ttl <= 0 or conn_num <= 0:
            return
        conn_num = max(conn_num, 1)
        children = tuple(
            child.conn
            for child in self.paths.with_role(Role.CHILD)
            if child.peer_id != msg.peer_id and child.conn != link.conn
        )
        per_child = relay_conn_num(conn_num, len(children))
        if children and per_child > 0:
            relayed = Hello(
                overlay_id=msg.overlay_id,
                peer_id=msg.peer_id,
                address=msg.address,
                ticket_id=msg.ticket_id,
                conn_num=per_child,
                ttl=ttl,
                recovery=msg.recovery,
                hp2p=extra if extra == HelloExt() else msgspec.structs.replace(extra, up=0),
            )
            self._effects.append(Send(children, relayed))

    def _descend(self, msg: Hello, extra: HelloExt, down: int, arrival: int) -> None:
        """Pass the HELLO to the child whose subtree reports the shallowest free child slot.

        Children report that depth in their heartbeats (hp2p ``slot``), so the peer where a
        climbing HELLO stops can steer it down to the best place for the joiner in O(depth)
        messages instead of flooding whole subtrees.
        """
        best: Link | None = None
        for child in self.paths.with_role(Role.CHILD):
            if child.slot is None or child.conn == arrival or child.peer_id == msg.peer_id:
                continue
            if best is None or (child.slot, child.ticket) < (best.slot or 0, best.ticket):
                best = child
        if best is None or best.slot is None:
            return
        own = self._slot_depth()
        if own is not None and own <= best.slot and self.paths.child_slot_free():
            return  # this peer is already the best place, and it volunteered
        descending = Hello(
            overlay_id=msg.overlay_id,
            peer_id=msg.peer_id,
            address=msg.address,
            ticket_id=msg.ticket_id,
            conn_num=1,
            ttl=1,
            recovery=msg.recovery,
            hp2p=msgspec.structs.replace(extra, up=0, down=down),
        )
        self._effects.append(Send((best.conn,), descending))

    def _heartbeat(self) -> Heartbeat:
        """A HEARTBEAT carrying my depth, the shallowest free slot below me and my heads (hp2p).

        *Heads* are the newest sequence per source, for the sources that moved since the last
        heartbeat. A message lost on a link is noticed by the next one of its source (n+2
        after n), but the *last* message of a burst, or of a source that just died, has no
        next one: the neighbour's heads reveal it within a heartbeat interval. Data and
        heartbeats share the connection, so the heads never run ahead of the data sent on it.
        """
        slot = self._slot_depth()
        self._advertised = (self.depth, slot)
        self._advert_dirty = False
        return Heartbeat(hp2p=HeartbeatExt(depth=self.depth, slot=slot, heads=self._heads()))

    def _heads(self) -> dict[str, int]:
        sent = self._heads_sent
        heads: dict[str, int] = {}
        for source, win in self.duplicates.sources.items():
            if sent.get(source) != win.newest:
                heads[source] = win.newest
                if len(heads) >= _HEADS_MAX:
                    break
        sent.update(heads)
        if len(sent) > 4 * _HEADS_MAX and len(sent) > 2 * len(self.duplicates.sources):
            self._heads_sent = {s: n for s, n in sent.items() if s in self.duplicates.sources}
        return heads

    def _check_heads(self, heads: dict[str, int], now: float) -> None:
        """A neighbour's heads: a newer sequence than mine is a hole at my tail."""
        duplicates = self.duplicates
        # Heads travel on every path, candidates included, and a candidate nearer the source
        # may simply be ahead of me: wait longer than for a hole before calling it a loss.
        wait = max(self.config.gap_wait, self.config.heartbeat_interval / 2)
        for source, newest in heads.items():
            if source == self.peer_id:
                continue
            win = duplicates.sources.get(source)
            if win is None:
                if 1 <= newest <= _NEW_SOURCE_BACKFILL and self._settled(now):
                    self._live_gap(source, 1, newest, now, wait)
            elif win.newest < newest <= win.newest + duplicates.max_ahead:
                self._live_gap(source, win.newest + 1, newest, now, wait)

    def _advertise(self) -> None:
        """Tell the neighbours at once when my depth or free-slot depth changed.

        Waiting for the next heartbeat would leave the slot hints a heartbeat interval stale
        per level, and fast joins would all be steered to the same, by then full, peer.
        """
        self._advert_dirty = False
        if self.phase is Phase.LEFT or (self.depth, self._slot_depth()) == self._advertised:
            return
        conns = tuple(link.conn for link in self.paths.paths())
        if conns:
            self._effects.append(Send(conns, self._heartbeat()))

    def _slot_depth(self) -> int | None:
        """The depth of the shallowest free child slot in my subtree, as far as I know."""
        if self.depth is None:
            return None
        if self.paths.child_slot_free():
            return self.depth
        slots = [c.slot for c in self.paths.with_role(Role.CHILD) if c.slot is not None]
        return min(slots) if slots else None

    def _remember_hello(self, peer_id: str, ticket: int, attempt: object) -> bool:
        key = (peer_id, f"{ticket}/{attempt}")
        if key in self._hello_seen:
            return False
        self._hello_seen[key] = None
        if len(self._hello_seen) > _HELLO_MEMORY:
            self._hello_seen.popitem(last=False)
        return True

    def _volunteer(self, hello: Hello, vertical: bool, now: float, displace: bool = False) -> None:
        conn = self._new_conn()
        # My listening address: the joiner knows only the ephemeral end of my connection, and
        # without it cannot tell its own children where their grandparent is (R2's ESTAB has
        # no address; PeerAddress in 4200 and the vertical-candidate HELLO need it). With
        # displace, the joiner ranks me after every free slot.
        estab = Estab(
            overlay_id=self.overlay_id,
            peer_id=self.peer_id,
            ticket_id=self.ticket,
            allow_primary_req=not vertical,
            hp2p=EstabExt(address=self.address, depth=self.depth, displace=displace),
        )
        link = Link(
            conn,
            Role.VOLUNTEER,
            peer_id=hello.peer_id,
            address=hello.address,
            ticket=hello.ticket_id,
            last_rx=now,
            opened=now,
            purpose=estab,
            offer_pending=not vertical,
        )
        self._add(link, now)
        self.counters.volunteered += 1
        self._effects.append(Connect(conn, hello.address))

    def _on_estab(self, link: Link, msg: Estab, now: float) -> None:
        if link.role is not Role.INCOMING:
            self._error(link.conn, f"ESTAB on a {link.role.value} connection")
            return
        problem = None
        if msg.overlay_id != self.overlay_id:
            problem = "ESTAB for another overlay"
        elif msg.ticket_id >= self.ticket:
            problem = "ESTAB from a younger peer (ticket rule)"
        if problem is not None:
            self._error(link.conn, problem)
            self._refuse(link, now)
            return
        if self.paths.by_peer(msg.peer_id) is not None:
            self._refuse(link, now)
            return
        link.peer_id = msg.peer_id
        link.ticket = msg.ticket_id
        link.depth = msg.hp2p.depth
        link.allow_primary = msg.allow_primary_req
        link.displace = msg.hp2p.displace
        if msg.hp2p.address:
            link.address = msg.hp2p.address
        gp = self.grandparent
        link.vertical = gp is not None and gp.peer_id == msg.peer_id
        if self.phase is Phase.ATTACHED or not msg.allow_primary_req:
            self._accept_candidate(link, now)
            return
        if self.phase in (Phase.HELLO, Phase.PROBING, Phase.SELECTING, Phase.WAITING):
            if len(self._offers) >= self.config.estab_max:
                self._refuse(link, now)
                return
            self.paths.set_role(link, Role.OFFERED)
            self._offers.append(link)
            self._effects.append(Send((link.conn,), EstabResponse(ESTAB_YES)))
            self._note_path(link, now)
            if self.phase is Phase.HELLO and self._recovering and not link.displace:
                # An orphan takes the first free slot offered: its whole subtree is cut off
                # until it is attached, and a later, shallower offer is not worth the wait.
                self._end_window(now)
            elif self.phase is Phase.SELECTING:
                self._selection.append(link)
            elif self.phase is Phase.WAITING:
                self._timers.cancel(_T_RETRY)
                self._select(now)
            return
        self._refuse(link, now)

    def _accept_candidate(self, link: Link, now: float) -> None:
        """Keep an ESTAB as outgoing candidate; a grandparent may evict the worst one."""
        if not self.paths.out_candidate_slot_free() and link.vertical:
            worst = max(self.paths.with_role(Role.OUT_CANDIDATE), key=parent_rank, default=None)
            if worst is not None:
                self._release(worst, "evicted for the grandparent", now)
        if not self.paths.out_candidate_slot_free():
            self._refuse(link, now)
            return
        self.paths.set_role(link, Role.OUT_CANDIDATE)
        self._effects.append(Send((link.conn,), EstabResponse(ESTAB_YES)))
        self._note_path(link, now)

    def _refuse(self, link: Link, now: float) -> None:
        self._effects.append(Send((link.conn,), EstabResponse(ESTAB_NO)))
        self._drop(link, "", now)

    def _on_estab_response(self, link: Link, msg: EstabResponse, now: float) -> None:
        if link.role is not Role.VOLUNTEER:
            self._error(link.conn, "ESTAB answer on a connection that did not volunteer")
            return
        if msg.code == ESTAB_YES:
            self.paths.set_role(link, Role.IN_CANDIDATE)
            self._note_path(link, now)
        else:
            self._drop(link, "", now)

    # === joining: HELLO, window, PROBE, SET_PRIMARY ==============================================
    def _begin_attempt(self, peers: tuple[tuple[str, str], ...], now: float) -> None:
        self._attempt += 1
        self.counters.attempts += 1
        self.phase = Phase.HELLO
        self._hello_accepted = False
        self._hellos_out.clear()
        extra = HelloExt(displace=self._displacing)
        if self.config.hello_up > 0:
            up = min(self.config.hello_up, MAX_HOPS)
            extra = msgspec.structs.replace(extra, up=up, attempt=self._attempt)
        for peer_id, address in peers:
            if peer_id == self.peer_id or self.paths.by_peer(peer_id) is not None:
                continue
            conn = self._new_conn()
            hello = Hello(
                overlay_id=self.overlay_id,
                peer_id=self.peer_id,
                address=self.address,
                ticket_id=self.ticket,
                conn_num=self.config.conn_num,
                ttl=self.config.hello_ttl,
                recovery=True if self._needs_spare_slot else None,
                hp2p=extra,
            )
            link = Link(
                conn, Role.CONNECTING, peer_id=peer_id, address=address, opened=now, last_rx=now
            )
            link.purpose = hello
            self._add(link, now)
            self._hellos_out.add(conn)
            self._effects.append(Connect(conn, address))
        if not self._hellos_out and not self._offers:
            if self.paths.out_candidates:
                # Every listed peer is a candidate path already (the HOMS lists an orphan's
                # nearest older peers, which are its candidates): a HELLO would be refused as
                # a second path, so ask them again; orphans among them may have re-attached.
                self._select(now)
                return
            self._attempt_failed("no entry peer to HELLO", now)
            return
        self._timers.arm(_T_HELLO, now + self.config.hello_timeout)

    def _on_hello_response(self, link: Link, msg: HelloResponse, now: float) -> None:
        if link.conn not in self._hellos_out:
            return  # a relayed HELLO answered by a child: nothing to do
        self._hellos_out.discard(link.conn)
        self._drop(link, "", now)  # the HELLO link is short-lived (reference §7.3)
        if self.phase is Phase.HELLO and not self._hello_accepted:
            self._hello_accepted = True
            window = self.config.estab_window
            if self._recovering:
                # An orphan takes the first volunteers: a late ESTAB is still taken (WAITING
                # accepts it), while every ms here is a ms its whole subtree is cut off.
                window = min(window, _RECOVERY_WINDOW)
            self._timers.arm(_T_WINDOW, now + window)

    def _hello_link_gone(self, conn: int, now: float) -> None:
        self._hellos_out.discard(conn)
        if (
            self.phase is Phase.HELLO
            and not self._hellos_out
            and not self._hello_accepted
            and not self._offers
        ):
            self._end_window(now)  # no volunteer can come; known candidates may still do

    def _end_window(self, now: float) -> None:
        self._timers.cancel(_T_HELLO)
        self._timers.cancel(_T_WINDOW)
        if not self._offers:
            if self.paths.out_candidates:
                self._select(now)  # no new volunteer, but a known candidate may have room now
            else:
                self._attempt_failed("no volunteer", now)
            return
        if self._recovering:
            # An orphan's subtree receives nothing until it is attached again: rank the
            # volunteers by depth alone rather than spend a PROBE round on RTTs.
            self._select(now)
            return
        self.phase = Phase.PROBING
        for link in self._offers:
            token = self._rtt.start(link.conn, now)
            self._effects.append(Send((link.conn,), Probe(ntp_time=token)))
        self._timers.arm(_T_PROBE, now + self.config.probe_timeout)

    def _on_probe(self, link: Link, msg: Probe, now: float) -> None:
        self._effects.append(Send((link.conn,), ProbeResponse(ntp_time=msg.ntp_time)))

    def _on_probe_response(self, link: Link, msg: ProbeResponse, now: float) -> None:
        rtt = self._rtt.answer(link.conn, msg.ntp_time, now)
        if rtt is None:
            self._error(link.conn, "PROBE answer that matches no PROBE")
            return
        link.rtt = rtt
        if self.phase is Phase.PROBING and self._rtt.outstanding() == 0:
            self._timers.cancel(_T_PROBE)
            self._select(now)

    def _select(self, now: float) -> None:
        """Try SET_PRIMARY on the volunteers (join) or candidates (recovery), best first."""
        self.phase = Phase.SELECTING
        offers = [link for link in self._offers if link.allow_primary]
        offers.sort(key=offer_rank)
        candidates = self.paths.with_role(Role.OUT_CANDIDATE)  # disjoint from the offers
        if self._recovering:
            # A candidate silent for longer than a heartbeat period may have died with the
            # parent (a mass failure, or a hang only heartbeats reveal): ask the fresh first.
            stale = now - 1.5 * self.config.heartbeat_interval
            candidates.sort(key=lambda c: (c.last_rx < stale, *recovery_rank(c)))
            if offers:
                # The candidates refused this orphan moments ago (that is why it asked the
                # HOMS); a volunteer has a slot for it now. One that must displace a child
                # for it comes last.
                free = [link for link in offers if not link.displace]
                displacing = [link for link in offers if link.displace]
                self._selection = free + candidates + displacing
            else:
                self._selection = candidates
        else:
            candidates.sort(key=recovery_rank)
            self._selection = offers + candidates
        self._ask_next(now)

    def _ask_next(self, now: float) -> None:
        self._asking = None
        while self._selection:
            link = self._selection.pop(0)
            if self.paths.get(link.conn) is not link:
                continue
            self._asking = link
            extra = SetPrimaryExt()
            if self._needs_spare_slot:
                extra = SetPrimaryExt(recovery=True, displace=self._displacing)
            buffermap = None
            if self._detached_at is not None and self.recovery_by == "push":
                # Push recovery: my buffermap rides on SET_PRIMARY, the parent's on 4200.
                buffermap = self._buffermap(now)
                extra = msgspec.structs.replace(extra, since=round(self._outage(now), 3))
            self._effects.append(Send((link.conn,), SetPrimary(buffermap=buffermap, hp2p=extra)))
            timeout = self.config.set_primary_timeout
            if self._candidates_only:
                timeout = min(timeout, self.config.recovery_ask_timeout)
            self._timers.arm(_T_ASK, now + timeout)
            return
        self._timers.cancel(_T_ASK)
        self._settle_offers(now)
        if self._candidates_only:
            # Recovery: no candidate took us; the HOMS is asked at once, not after a back-off.
            self._candidates_only = False
            self._answer_deferred(now)
            self._ask_homs()
            return
        self._attempt_failed("no volunteer accepted SET_PRIMARY", now)

    def _on_set_primary_response(self, link: Link, msg: SetPrimaryResponse, now: float) -> None:
        if link is not self._asking:
            self._error(link.conn, "SET_PRIMARY answer that was not asked for")
            return
        self._timers.cancel(_T_ASK)
        if msg.code != PRIMARY_YES:
            self._ask_next(now)
            return
        self._asking = None
        self._selection.clear()
        depth = msg.hp2p.depth
        if depth is not None:
            link.depth = depth
        if link.role is Role.OUT_CANDIDATE or link.role is Role.OFFERED:
            self.paths.set_role(link, Role.PARENT)
        else:
            self._error(link.conn, f"SET_PRIMARY accepted on a {link.role.value} connection")
            return
        self.depth = None if link.depth is None else link.depth + 1
        self.grandparent = msg.parent_peer
        if link in self._offers:
            self._offers.remove(link)
        self._settle_offers(now)
        self._emit_path(link, "role")
        repaired = self._recovering
        if repaired:
            self.counters.repairs += 1
        self._recovering = False
        self._candidates_only = False
        self._attempt = 0
        self.phase = Phase.ATTACHED
        self._effects.append(Joined(link.peer_id, self.depth, repaired))
        self._answer_deferred(now)
        if self._attached_at is None:
            self._attached_at = now
        gp = self.grandparent
        if gp is not None and self.paths.by_peer(gp.peer_id) is None:
            self._vertical_tries = 0
            self._timers.arm(_T_VERTICAL, now + self.config.vertical_candidate_delay)
        if self._detached_at is not None:
            self._after_repair(link, msg.buffermap, now)
        if self.paths.out_candidates < self.config.max_outgoing_candidates:
            self._arm_refill(now)
        self._pump(now)

    def _settle_offers(self, now: float) -> None:
        """After the choice: best remaining volunteers become candidates, the rest released."""
        offers = sorted(self._offers, key=parent_rank)
        self._offers = []
        for link in offers:
            if self.paths.get(link.conn) is not link:
                continue
            if self.paths.out_candidate_slot_free():
                self.paths.set_role(link, Role.OUT_CANDIDATE)
                self._effects.append(Send((link.conn,), SetCandidate()))
                self._emit_path(link, "role")
            else:
                self._release(link, "surplus volunteer", now)

    def _attempt_failed(self, reason: str, now: float) -> None:
        self._timers.cancel(_T_HELLO)
        self._timers.cancel(_T_WINDOW)
        self._timers.cancel(_T_PROBE)
        # An orphan carries its whole subtree: it tries for longer than a joiner does,
        # long enough for the HOMS to stop listing the peers that died with its parent.
        limit = self.config.recovery_attempts if self._recovering else self.config.join_attempts
        if self._attempt >= limit:
            self.phase = Phase.FAILED
            self._effects.append(JoinFailed(f"{reason} after {self._attempt} attempt(s)"))
            return
        self.phase = Phase.WAITING
        delay = backoff_delay(self._attempt, self.config, self.rng)
        if self._recovering:
            # The HOMS's picture of who is alive changes on the scale of a heartbeat time-out
            # (the survivors' reports); an orphan asks again at least that often.
            delay = min(delay, self.config.heartbeat_timeout)
        self._timers.arm(_T_RETRY, now + delay)

    def _become_root(self, now: float) -> None:
        if self._attached_at is None:
            self._attached_at = now
        self.phase = Phase.ATTACHED
        self.depth = 0
        self._recovering = False
        self._attempt = 0
        self.grandparent = None
        self._detached_at = None
        self._dirty = True
        self._effects.append(Joined(None, 0, False))

    # === primary paths: SET_PRIMARY / SET_CANDIDATE received (PPM FE) ============================
    def _on_set_primary(self, link: Link, msg: SetPrimary, now: float) -> None:
        link.offer_pending = False
        if link.role is Role.CHILD:
            self._effects.append(Send((link.conn,), self._primary_yes(msg, now)))
            return
        if link.role is Role.VOLUNTEER:
            # A reference joiner asks right after 2200; our 2200 may still be in flight.
            self.paths.set_role(link, Role.IN_CANDIDATE)
        if link.role is not Role.IN_CANDIDATE:
            self._error(link.conn, f"SET_PRIMARY on a {link.role.value} connection")
            self._effects.append(Send((link.conn,), SetPrimaryResponse(code=PRIMARY_NO)))
            return
        if self._holding and link.ticket > self.ticket:
            # I lost my parent too and my own candidates are answering: a moment from now I
            # am attached again (YES) or on my way to the HOMS (NO). Saying NO now would send
            # this orphan to the HOMS, a round trip that costs more than the wait.
            self._deferred.append((link, msg))
            return
        recovery = msg.hp2p.recovery
        if (
            recovery
            and msg.hp2p.displace
            and self.phase is Phase.ATTACHED
            and link.ticket > self.ticket
            and not self.paths.child_slot_free(recovery)
        ):
            victim = self.paths.displaceable(link.ticket)
            if victim is not None:
                # An older orphan has no other legal place; my youngest child has many.
                self._release(victim, "displaced by an older orphan", now)
        if (
            self.phase is Phase.ATTACHED
            and link.ticket > self.ticket
            and self.paths.child_slot_free(recovery)
        ):
            self.paths.set_role(link, Role.CHILD, recovery)
            self._effects.append(Send((link.conn,), self._primary_yes(msg, now)))
            self._emit_path(link, "role")
            if msg.buffermap is not None:
                # Push recovery, parent side: send the new child what its buffermap lacks.
                since = msg.hp2p.since
                start = None if since is None else now - min(since, self.config.cache_age)
                self._push(link, msg.buffermap, start, now)
        else:
            self._effects.append(Send((link.conn,), SetPrimaryResponse(code=PRIMARY_NO)))

    def _answer_deferred(self, now: float) -> None:
        """Answer the SET_PRIMARYs held while my own candidate round ran (bounded wait)."""
        self._holding = False
        self._timers.cancel(_T_DEFER)
        held, self._deferred = self._deferred, []
        for link, request in held:
            if self.paths.get(link.conn) is link:
                self._on_set_primary(link, request, now)

    def _primary_yes(self, request: SetPrimary, now: float) -> SetPrimaryResponse:
        parent = self.paths.parent
        return SetPrimaryResponse(
            code=PRIMARY_YES,
            buffermap=None if request.buffermap is None else self._buffermap(now),
            parent_peer=None if parent is None else PeerAddress(parent.peer_id, parent.address),
            hp2p=SetPrimaryResponseExt(depth=self.depth),
        )

    def _on_set_candidate(self, link: Link, msg: SetCandidate, now: float) -> None:
        link.offer_pending = False
        if link.role is Role.CHILD and self.paths.in_candidate_slot_free():
            self.paths.set_role(link, Role.IN_CANDIDATE)
            self._emit_path(link, "role")
        elif link.role not in (Role.IN_CANDIDATE, Role.CHILD):
            self._error(link.conn, f"SET_CANDIDATE on a {link.role.value} connection")
            return
        self._effects.append(Send((link.conn,), SetCandidateResponse()))

    # === liveness, release, loss (PSP FE, POC FE) ================================================
    def _on_heartbeat(self, link: Link, msg: Heartbeat, now: float) -> None:
        extra = msg.hp2p
        if extra.heads:
            self._check_heads(extra.heads, now)
        depth = extra.depth
        if depth is None:
            return
        link.depth = depth
        slot = extra.slot
        if slot != link.slot:
            link.slot = slot
            if link.role is Role.CHILD:
                self._advert_dirty = True
        if link.role is Role.PARENT and self.depth != depth + 1:
            self.depth = depth + 1
            self._advert_dirty = True

    def _on_release(self, link: Link, msg: Release, now: float) -> None:
        if msg.ack:
            self._effects.append(Send((link.conn,), ReleaseResponse()))
        self._drop(link, "released by peer", now)

    def _release(self, link: Link, reason: str, now: float) -> None:
        self._effects.append(Send((link.conn,), Release()))
        self._drop(link, reason, now)

    def _drop(self, link: Link, reason: str, now: float) -> None:
        """Forget ``link`` and close its connection."""
        if self.paths.remove(link.conn) is None:
            return
        self._effects.append(Close(link.conn))
        self._lost(link, reason, now)

    def _drop_if_transient(self, link: Link, now: float) -> None:
        if link.role not in PATH_ROLES:
            self._drop(link, "", now)

    def _lost(self, link: Link, reason: str, now: float) -> None:
        """``link`` is gone (already removed from the table): update every FE that used it."""
        self._rtt.forget(link.conn)
        self.recovery.conn_lost(link.conn)
        if link.role in PATH_ROLES:
            self.counters.paths_lost += 1
            self._dirty = True
            self._effects.append(PathEvent("removed", link.peer_id, link.role.value, reason))
            self.buffermaps.pop(link.peer_id, None)
            if reason in _FAULTS:
                self._effects.append(PeerLost(link.peer_id, link.role.value, reason))
            if link.role is Role.OUT_CANDIDATE and self.phase is Phase.ATTACHED:
                self._arm_refill(now)
            if self.recovery.total_inflight or len(self.recovery):
                self._pump(now)
        if link.conn in self._hellos_out:
            self._hello_link_gone(link.conn, now)
        if link in self._offers:
            self._offers.remove(link)
            if self.phase is Phase.PROBING and self._rtt.outstanding() == 0:
                self._timers.cancel(_T_PROBE)
                self._select(now)
        if link is self._asking:
            self._timers.cancel(_T_ASK)
            self._ask_next(now)
        if link.role is Role.PARENT and self.phase is Phase.ATTACHED:
            self._parent_lost(reason or "parent lost", now)

    def _parent_lost(self, reason: str, now: float) -> None:
        """Tree recovery: candidates first (grandparent first), then the HOMS."""
        self._recovering = True
        self.depth = None
        self._attempt = 0
        if self._detached_at is None:
            self._detached_at = now
        self._effects.append(Detached(reason))
        self._timers.cancel(_T_VERTICAL)
        if self.paths.out_candidates:
            self._attempt = 1
            self.counters.attempts += 1
            self._candidates_only = True
            # Hold what younger orphans ask me meanwhile, for about a HOMS round trip and
            # well within their ask time-out: after a mass crash the kernel may take a
            # hundred milliseconds and more to close the dead peers' connections, and a
            # round of mine that waits on one must not hold every orphan below me with it.
            self._holding = True
            hold = min(_HOLD_MAX, self.config.recovery_ask_timeout / 2)
            self._timers.arm(_T_DEFER, now + hold)
            self._select(now)
        else:
            self._ask_homs()

    def _ask_homs(self) -> None:
        self.phase = Phase.WAITING
        self._homs_pending = True
        self._effects.append(HomsRecoveryJoin(self.ticket))

    # === timers ==================================================================================
    def _on_timer(self, name: str, now: float) -> None:
        if name == _T_HELLO:
            if self.phase is Phase.HELLO and not self._hello_accepted:
                for conn in list(self._hellos_out):
                    link = self.paths.get(conn)
                    if link is not None:
                        self._drop(link, "", now)
                self._hellos_out.clear()
                if self.phase is Phase.HELLO:
                    self._end_window(now)
        elif name == _T_WINDOW:
            if self.phase is Phase.HELLO:
                self._end_window(now)
        elif name == _T_PROBE:
            if self.phase is Phase.PROBING:
                self._select(now)
        elif name == _T_ASK:
            link = self._asking
            if link is not None:
                self._asking = None
                self._drop(link, "no answer to SET_PRIMARY", now)
                if self._asking is None and self.phase is Phase.SELECTING:
                    self._ask_next(now)
        elif name == _T_RETRY:
            if self.phase is Phase.WAITING:
                self._ask_homs()
        elif name == _T_VERTICAL:
            self._vertical_hello(now)
        elif name == _T_SCAN:
            self._finish_scan()
        elif name == _T_PULL:
            self._pull_at = None
            self._pump(now)
        elif name == _T_REFILL:
            self._refill(now)
        elif name == _T_DEFER:
            self._answer_deferred(now)

    def _vertical_hello(self, now: float) -> None:
        """HELLO the grandparent for a vertical candidate path; retried a bounded number of times.

        The grandparent is the first place an orphan asks, so it is worth a few tries (the
        reference retries every 5 s forever); each retry waits twice as long as the last.
        """
        gp = self.grandparent
        if self.phase is not Phase.ATTACHED or gp is None or self.paths.by_peer(gp.peer_id):
            return
        self._vertical_tries += 1
        if self._vertical_tries < _VERTICAL_TRIES:
            delay = self.config.vertical_candidate_delay * (2**self._vertical_tries) + 1.0
            self._timers.arm(_T_VERTICAL, now + delay)
        conn = self._new_conn()
        hello = Hello(
            overlay_id=self.overlay_id,
            peer_id=self.peer_id,
            address=self.address,
            ticket_id=self.ticket,
            conn_num=1,
            ttl=1,
            vertical_candidate=True,
        )
        link = Link(conn, Role.CONNECTING, peer_id=gp.peer_id, address=gp.address, opened=now)
        link.last_rx = now
        link.purpose = hello
        self._add(link, now)
        self._hellos_out.add(conn)
        self._effects.append(Connect(conn, gp.address))

    # === SCAN_TREE ===============================================================================
    def _remember_scan(self, initiator: str, cseq: str) -> bool:
        key = (initiator, cseq)
        if key in self._scan_seen:
            return False
        self._scan_seen[key] = None
        if len(self._scan_seen) > _SCAN_MEMORY:
            self._scan_seen.popitem(last=False)
        return True

    def _on_scan(self, link: Link, msg: ScanTree, now: float) -> None:
        if link.role not in (Role.PARENT, Role.CHILD):
            self._error(link.conn, "SCAN_TREE on a connection that is not a primary path")
            return
        if not self._remember_scan(msg.peer_id, str(msg.cseq)):
            return
        others = tuple(conn for conn in self.paths.primary if conn != link.conn)
        step = on_scan_request(msg, self.peer_id, self.ticket, self.address, bool(others))
        self._effects.append(Send((link.conn,), step.response))
        if step.relay is not None:
            self._effects.append(Send(others, step.relay))

    def _on_scan_response(self, link: Link, msg: ScanTreeResponse, now: float) -> None:
        if msg.code != SCAN_TREE_LEAF:
            return
        outcome = on_leaf_response(msg, self.peer_id, self.ticket, self.address)
        if isinstance(outcome, ScanDone):
            if self._scan_paths is not None and str(msg.cseq) == str(self._scan_cseq):
                hops = tuple(
                    (hop[0], hop[1], hop[2]) if len(hop) >= 3 else (hop[0], "", "")
                    for hop in outcome.path
                    if hop
                )
                self._scan_paths.append(ScanPath(hops))
        elif isinstance(outcome, ScanForward):
            target = self.paths.by_peer(outcome.next_peer)
            if target is None or target.role not in (Role.PARENT, Role.CHILD):
                self._error(link.conn, "SCAN_TREE answer towards a peer with no primary path")
                return
            self._effects.append(Send((target.conn,), outcome.response))
        else:
            self._error(link.conn, outcome.reason)

    def _finish_scan(self) -> None:
        self._timers.cancel(_T_SCAN)
        paths = self._scan_paths or []
        self._scan_paths = None
        self._effects.append(ScanResult(self._scan_cseq, tuple(paths)))

    # === cache answers (CM FE) and data-recovery hooks (DR FE, issue #5) =========================
    def _on_buffermap(self, link: Link, msg: Buffermap, now: float) -> None:
        if link.role not in PATH_ROLES:
            self._error(link.conn, "BUFFERMAP on a connection that is not a path")
            return
        response = BuffermapResponse(overlay_id=self.overlay_id, buffermap=self._buffermap(now))
        self._effects.append(Send((link.conn,), response))

    def _on_get_data(self, link: Link, msg: GetData, now: float) -> None:
        if link.role not in PATH_ROLES:
            self._error(link.conn, "GET_DATA on a connection that is not a path")
            return
        cached = self.cache.get(msg.source_id, msg.sequence, now)
        if cached is None:
            response = GetDataResponse(
                source=msg.source_id, sequence=msg.sequence, data=b"", code=GET_DATA_MISSING
            )
        else:
            response = GetDataResponse(
                source=cached.source,
                sequence=cached.sequence,
                data=cached.data,
                ext_header=cached.ext_header,
                payload_type=cached.payload_type,
            )
        self._effects.append(Send((link.conn,), response))

    def _on_buffermap_response(self, link: Link, msg: BuffermapResponse, now: float) -> None:
        if link.role not in PATH_ROLES:
            self._error(link.conn, "BUFFERMAP answer on a connection that is not a path")
            return
        self.recovery.counters.buffermaps += 1
        self.buffermaps[link.peer_id] = msg.buffermap
        if link.role is Role.PARENT and self._pull_since is not None:
            # Pull recovery still pushes up what the new parent lacks (etri §4.7): the rest of
            # the tree can get what my subtree published while detached from nobody else.
            self._push(link, msg.buffermap, self._pull_since, now)
            self._pull_since = None
        self._want_from(link, msg.buffermap, now, now)

    def _on_get_data_response(self, link: Link, msg: GetDataResponse, now: float) -> None:
        if msg.code == GET_DATA_OK:
            recovered = BroadcastData(
                source=msg.source,
                sequence=msg.sequence,
                data=msg.data,
                ext_header=msg.ext_header,
                payload_type=msg.payload_type,
                hp2p=RECOVERED,
            )
            self._on_data(link, recovered, now, True)
        found = self.duplicates.seen(msg.source, msg.sequence)
        self.recovery.answered(link.conn, msg.source, msg.sequence, found, now)
        self._pump(now)

    # === data recovery (DR FE): see hp2p.peer.recovery ===========================================
    def _buffermap(self, now: float) -> list[BuffermapEntry]:
        """My buffermap, cut to the newest sequences that fit an R2 header."""
        return summarise(self.cache.buffermap(now), self.config.buffermap_bytes)

    def _outage(self, now: float) -> float:
        """How far back my missed and unshared messages may go: the outage plus detection."""
        start = now if self._detached_at is None else self._detached_at
        return now - start + self.config.heartbeat_timeout

    def _after_repair(self, parent: Link, theirs: list[BuffermapEntry] | None, now: float) -> None:
        """A new primary path after a loss: exchange buffermaps with the new parent.

        Push (4200 carried the parent's buffermap): the parent already pushes what I lack; I
        push what it lacks and want the rest a little later, once the push had its chance.
        Pull, or a parent that sent no buffermap: BUFFERMAP to the parent and every candidate.
        """
        since = now - self._outage(now)
        self._detached_at = None
        if theirs is not None and self.recovery_by == "push":
            self.buffermaps[parent.peer_id] = theirs
            self._push(parent, theirs, since, now)
            self._want_from(parent, theirs, now + self.config.pull_timeout, now)
            return
        self._pull_since = since
        targets = (parent.conn, *(c.conn for c in self.paths.with_role(Role.OUT_CANDIDATE)))
        self._effects.append(Send(targets, Buffermap(overlay_id=self.overlay_id)))

    def _push(
        self, link: Link, theirs: list[BuffermapEntry], since: float | None, now: float
    ) -> None:
        """Send ``link`` the cached messages its buffermap lacks, flagged as recovered."""
        self.cache.expire(now)
        for message in lacking(self.cache, theirs, since, self.config.push_max):
            pushed = msgspec.structs.replace(message, hp2p=RECOVERED, ack=False)
            self._effects.append(Send((link.conn,), pushed))
            self.recovery.counters.pushed += 1

    def _want_from(self, link: Link, theirs: list[BuffermapEntry], when: float, now: float) -> None:
        for source, sequence in missing_from(self.duplicates, theirs, self.peer_id):
            self.recovery.want(source, sequence, when, hint=link.conn)
        self._pump(now)

    def _settled(self, now: float) -> bool:
        """Attached for a while: a source first heard of at sequence 2..64 lost its first ones.

        Sequences start at 1. A peer that has been in the tree for a heartbeat time-out would
        have got a new source's first messages; a peer that just joined simply came late, and
        what was published before it joined is not its gap.
        """
        return self._attached_at is not None and now - self._attached_at > (
            self.config.heartbeat_timeout
        )

    def _live_gap(
        self, source: str, first: int, last: int, now: float, wait: float | None = None
    ) -> None:
        """A hole on the live path: pull it after the reordering tolerance."""
        wait = self.config.gap_wait if wait is None else wait
        self.recovery.want_range(source, first, last, now + wait - self.config.gap_wait)
        when = now + wait
        if self._pull_at is None or when < self._pull_at:
            self._pull_at = when
            self._timers.arm(_T_PULL, when)

    def _holders(self) -> list[int]:
        """Who to ask, in order: the parent, the candidates (best first), then the children."""
        out: list[int] = []
        parent = self.paths.parent
        if parent is not None:
            out.append(parent.conn)
        candidates = self.paths.with_role(Role.OUT_CANDIDATE)
        candidates.sort(key=recovery_rank)
        out.extend(c.conn for c in candidates)
        out.extend(c.conn for c in self.paths.with_role(Role.IN_CANDIDATE, Role.CHILD))
        return out

    def _pump(self, now: float) -> None:
        """Send the GET_DATA requests due, report given-up misses as gaps, re-arm the timer."""
        recovery = self.recovery
        if self.phase is Phase.ATTACHED:
            for req in recovery.pump(now, self._holders(), self.duplicates):
                request = GetData(self.overlay_id, req.source, req.sequence)
                self._effects.append(Send((req.conn,), request))
        if recovery.has_failed():
            for source, first, last in recovery.take_failed(now, self.duplicates):
                self._effects.append(Gap(source, first, last))
        when = recovery.next_deadline()
        if when is None or self.phase is not Phase.ATTACHED:
            self._timers.cancel(_T_PULL)
            self._pull_at = None
        else:
            self._pull_at = when
            self._timers.arm(_T_PULL, when)

    # === candidate paths: refill (CPM FE) ========================================================
    def _arm_refill(self, now: float) -> None:
        if not self._timers.armed(_T_REFILL):
            self._refills = 0
            self._timers.arm(_T_REFILL, now + self.config.candidate_refill_delay)

    def _refill(self, now: float) -> None:
        """Too few outgoing candidates: HELLO up through the parent for older volunteers.

        The HELLO climbs (hp2p ``up``) from ancestor to ancestor, and each ancestor also passes
        it one level down to its other children (hp2p ``cpm``); every older peer with room
        answers with ESTAB, which this attached peer keeps as a candidate path (the ticket
        rule keeps them all older, so none can be a descendant). Bounded: a few tries, each
        after a longer wait, then nothing until the next candidate is lost.
        """
        parent = self.paths.parent
        deficit = self.config.max_outgoing_candidates - self.paths.out_candidates
        if self.phase is not Phase.ATTACHED or parent is None or deficit <= 0:
            return
        self._refills += 1
        hello = Hello(
            overlay_id=self.overlay_id,
            peer_id=self.peer_id,
            address=self.address,
            ticket_id=self.ticket,
            conn_num=deficit,
            ttl=1,
            hp2p=HelloExt(
                up=max(1, min(self.config.hello_up, MAX_HOPS)),
                attempt=f"cpm-{self._refills}-{now:.3f}",
                cpm=True,
            ),
        )
        self._effects.append(Send((parent.conn,), hello))
        if self._refills < _REFILL_TRIES:
            delay = self.config.candidate_refill_delay * 2**self._refills
            self._timers.arm(_T_REFILL, now + delay)

    # === helpers =================================================================================
    def _ignore(self, link: Link, msg: Message, now: float) -> None:
        return

    def _new_conn(self) -> int:
        self._next_conn += 1
        return self._next_conn

    def _add(self, link: Link, now: float) -> None:
        self.paths.add(link)
        deadline = self._deadlines.deadline(link)
        if self._next_check is None or deadline < self._next_check:
            self._next_check = deadline

    def _note_path(self, link: Link, now: float) -> None:
        """``link`` became a path: its heartbeat deadline starts now."""
        link.last_rx = now
        self._emit_path(link, "added")
        deadline = self._deadlines.deadline(link)
        if self._next_check is None or deadline < self._next_check:
            self._next_check = deadline

    def _emit_path(self, link: Link, kind: str) -> None:
        self._dirty = True
        self._effects.append(PathEvent(kind, link.peer_id, link.role.value))

    def _error(self, conn: int | None, reason: str) -> None:
        self.counters.protocol_errors += 1
        self._effects.append(ProtocolError(conn, reason))
