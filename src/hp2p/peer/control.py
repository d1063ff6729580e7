"""Peer operation control (POC FE, Q.4100 §7.2.1.3): the decisions of join and tree recovery.

The procedure (Q.4101 tree construction, as the reference speaks it on R2, §4.2 and §4.6 of
etri-2023-protocol.md) with hp2p's corrections:

1. The joiner sends HELLO to *every* entry peer of its HOMS peer list (the reference uses only
   the first that answers), on a short-lived connection, and waits for 1202.
2. A HELLO floods down the entry peer's subtree for ``ttl`` levels, its ``conn_num`` split among
   the children (:func:`relay_conn_num`); each receiver decides with :func:`may_volunteer` and,
   if it may, opens a *new* connection to the joiner and sends ESTAB, carrying its depth.
3. The joiner collects ESTABs for a short window, PROBEs them, ranks them with
   :func:`parent_rank` (depth first, then RTT) and sends SET_PRIMARY in that order until one
   answers 4200; the next ones become outgoing candidates, the rest are released.
4. On parent loss the outgoing candidates are tried the same way, the grandparent (the vertical
   candidate) first (:func:`recovery_rank`); only when none accepts does the peer ask the HOMS
   for a recovery peer list and start again at 1, keeping its ticket.
5. Attempts are bounded; the delay between them grows exponentially with jitter
   (:func:`backoff_delay`).

Loop freedom rests on the ticket rule alone: a peer volunteers only to a joiner with a *higher*
ticket, and accepts SET_PRIMARY only from one, so tickets strictly increase from parent to child
and no peer can become an ancestor of itself — also while subtrees move during recovery.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from hp2p.peer.config import PeerConfig
from hp2p.peer.effects import Detached, HomsRecoveryJoin, Joined, JoinFailed
from hp2p.peer.paths import Link, PathTable, Role
from hp2p.trust.membership import Membership
from hp2p.wire.r2.messages import (
    ESTAB_YES,
    PRIMARY_YES,
    EstabResponse,
    Hello,
    HelloExt,
    HelloResponse,
    Probe,
    SetCandidate,
    SetPrimary,
    SetPrimaryExt,
    SetPrimaryResponse,
)
from hp2p.wire.r2.schema import MAX_HOPS

if TYPE_CHECKING:
    from hp2p.peer.core import PeerCore


class Phase(enum.Enum):
    IDLE = "idle"  # not started
    HELLO = "hello"  # HELLOs out, collecting ESTABs
    PROBING = "probing"  # PROBEs out to the volunteers
    SELECTING = "selecting"  # SET_PRIMARY to the ranked volunteers / candidates, one by one
    WAITING = "waiting"  # back-off, or waiting for the HOMS recovery peer list
    ATTACHED = "attached"  # has a parent, or is the root
    FAILED = "failed"  # every bounded attempt failed
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class CrPolicy:
    """The overlay's cache/recovery policy from HOMP (``cr-policy``)."""

    cache_count: int = 0  # mN_Cache
    cache_age_minutes: int = 0  # mD_Cache
    recovery_by: str = "push"


@dataclass(frozen=True, slots=True)
class JoinInfo:
    """What the shell learned from its HOMP join, handed to ``PeerCore.start``."""

    overlay_id: str
    ticket: int
    peers: tuple[tuple[str, str], ...] = ()
    heartbeat_interval: float | None = None
    heartbeat_timeout: float | None = None
    cr_policy: CrPolicy = field(default_factory=CrPolicy)
    root: bool = False
    #: A SubTree's source peer: only it publishes, data of any other source is refused.
    #: None on a CoreTree, where every member may publish.
    source_peer_id: str | None = None
    #: This peer's key and HOMS credential, and the HOMS keys to check others' (issue #11).
    #: None: the overlay runs without credentials (a reference HOMS; docs/security.md).
    membership: Membership | None = None


def may_volunteer(
    own_ticket: int,
    joiner_ticket: int,
    paths: PathTable,
    conn_num: int,
    vertical: bool,
    recovery: bool = False,
    now: float = 0.0,
    hold: float = 0.0,
) -> bool:
    """Whether to answer a HELLO with ESTAB.

    Ticket rule first (loop freedom); then room: a normal volunteer needs a child slot AND an
    incoming-candidate slot and a positive ``conn_num``; a vertical-candidate HELLO (from a
    grandchild) asks only for a candidate path, so it needs the candidate slot alone. A
    recovering joiner may also use the spare recovery child slots.
    """
    if joiner_ticket <= own_ticket:
        return False
    if vertical:
        return paths.in_candidate_slot_free()
    return conn_num >= 1 and paths.can_volunteer(recovery, now, hold)


def may_displace(
    own_ticket: int, joiner_ticket: int, paths: PathTable, conn_num: int, vertical: bool
) -> Link | None:
    """The child to displace for a full peer to volunteer to an older orphan, if any.

    Asked only when :func:`may_volunteer` said no and the orphan asked for it (hp2p
    ``displace``: its earlier attempt found no free slot). The ticket rule still holds for
    both: the orphan is younger than this peer, the displaced child younger than the orphan,
    so every chain of displacements climbs in ticket order and ends.
    """
    if vertical or conn_num < 1 or joiner_ticket <= own_ticket:
        return None
    if not paths.in_candidate_slot_free():
        return None
    return paths.displaceable(joiner_ticket)


def relay_conn_num(conn_num: int, children: int) -> int:
    """``conn_num`` each relayed HELLO carries: the remaining volunteers split among children."""
    if conn_num <= 0 or children <= 0:
        return 0
    return math.ceil(conn_num / children)


_UNKNOWN = math.inf


def parent_rank(link: Link) -> tuple[float, float, int]:
    """Sort key for choosing a parent: shallowest first, then lowest RTT, then oldest ticket.

    A volunteer that did not tell its depth (a reference peer) ranks after every known depth;
    one that did not answer PROBE ranks after every measured RTT at the same depth.
    """
    depth = _UNKNOWN if link.depth is None else float(link.depth)
    rtt = _UNKNOWN if link.rtt is None else link.rtt
    return (depth, rtt, link.ticket)


def recovery_rank(link: Link) -> tuple[int, float, float, int]:
    """Sort key for recovery: the grandparent (vertical candidate) first, then as a parent."""
    depth, rtt, ticket = parent_rank(link)
    return (0 if link.vertical else 1, depth, rtt, ticket)


def offer_rank(link: Link) -> tuple[bool, float, float, int]:
    """Sort key for volunteers: a free slot before one that must displace a child first."""
    return (link.displace, *parent_rank(link))


def backoff_delay(attempt: int, config: PeerConfig, rng: random.Random) -> float:
    """Delay before attempt ``attempt + 1``: exponential, capped, with a random share."""
    growth = 2.0 ** max(0, attempt - 1)
    base: float = min(config.backoff_max, config.backoff_initial * growth)
    return base * (1.0 - config.backoff_jitter * rng.random())


# --- the join / tree-recovery state machine ---------------------------------------------------
class Event(enum.Enum):
    """What moves the POC FE from one phase to the next (the keys of :data:`TRANSITIONS`)."""

    ROOT = "root"  # the HOMS knows no older active peer: become the root
    HELLO = "hello"  # an attempt starts: HELLO the entry peers
    PROBE = "probe"  # the ESTAB window closed with volunteers: PROBE them
    SELECT = "select"  # ask volunteers / candidates SET_PRIMARY, best first
    ATTACH = "attach"  # a SET_PRIMARY was answered 4200
    RETRY = "retry"  # an attempt failed: back off before the next
    GIVE_UP = "give_up"  # the last allowed attempt failed
    ASK_HOMS = "ask_homs"  # no candidate took this orphan: ask the HOMS for a peer list
    RESET = "reset"  # every path released (a new ticket follows)
    LEAVE = "leave"


_ANY = frozenset(Phase) - {Phase.LEFT}

#: ``(phase, event) -> phase``: every move the POC FE makes. A move that is not here is a
#: bug in the procedures, reported as an internal protocol error (the core never raises).
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.IDLE, Event.ROOT): Phase.ATTACHED,
    (Phase.WAITING, Event.ROOT): Phase.ATTACHED,
    (Phase.IDLE, Event.HELLO): Phase.HELLO,
    (Phase.WAITING, Event.HELLO): Phase.HELLO,
    (Phase.HELLO, Event.PROBE): Phase.PROBING,
    (Phase.HELLO, Event.SELECT): Phase.SELECTING,
    (Phase.PROBING, Event.SELECT): Phase.SELECTING,
    (Phase.WAITING, Event.SELECT): Phase.SELECTING,
    (Phase.ATTACHED, Event.SELECT): Phase.SELECTING,  # parent lost: candidates first
    (Phase.SELECTING, Event.ATTACH): Phase.ATTACHED,
    (Phase.HELLO, Event.RETRY): Phase.WAITING,
    (Phase.SELECTING, Event.RETRY): Phase.WAITING,
    (Phase.HELLO, Event.GIVE_UP): Phase.FAILED,
    (Phase.SELECTING, Event.GIVE_UP): Phase.FAILED,
    (Phase.ATTACHED, Event.ASK_HOMS): Phase.WAITING,  # parent lost, no candidate at all
    (Phase.SELECTING, Event.ASK_HOMS): Phase.WAITING,  # no candidate took me
    (Phase.WAITING, Event.ASK_HOMS): Phase.WAITING,  # back-off over: ask again
    **{(phase, Event.RESET): Phase.IDLE for phase in _ANY},
    (Phase.IDLE, Event.LEAVE): Phase.LEFT,  # leave() releases everything (RESET) first
}


def transition(phase: Phase, event: Event) -> Phase | None:
    """The phase after ``event`` in ``phase``; None when the table has no such move."""
    return TRANSITIONS.get((phase, event))


# Timer names of the POC FE.
T_HELLO = "hello"
T_WINDOW = "window"
T_PROBE = "probe"
T_ASK = "set_primary"
T_RETRY = "retry"
#: Peers one orphan remembers it failed to dial.
_DEAD_MEMORY = 64
#: An orphan's attempts on a HOMS list naming a peer known dead are free, up to this many
#: times ``recovery_attempts`` (a stale HOMS, not a full tree, is why they fail).
_STALE_FACTOR = 4
#: Why a parent link may go that are evidence of its death (not a RELEASE).
_DEATHS = frozenset({"connection closed", "heartbeat timeout"})
_RECOVERY_WINDOW = 0.05
_HOLD_MAX = 0.05


class HomsLag:
    """An orphan's evidence that the HOMS still lists dead peers, and its free attempts.

    A HOMS learns of a crash late: the reference lists a dead peer until its 30 s sweep
    (go-peer-2023 README, HOMP 12). Meanwhile an orphan's recovery lists name the dead, or
    only orphans of the same crash, which answer HELLO but cannot volunteer while the oldest
    of them waits for a list without the dead. Counting those attempts made most of the
    crashed peer's children give up and take new tickets, releasing their subtrees
    (tests/test_recovery_sim.py). Here a peer this orphan failed to dial gets no blind HELLO
    for a while, and such attempts are free, bounded by ``_STALE_FACTOR`` times the orphan's
    attempts. A lost connection alone is no evidence of death (a link closed on a malformed
    frame leaves a live parent): only a failed dial is.
    """

    __slots__ = ("crashed", "dead", "free", "stale")

    def __init__(self) -> None:
        #: Peers I failed to dial in this recovery -> until when no HELLO goes to them.
        self.dead: dict[str, float] = {}
        self.crashed = False  # my parent was lost by a fault (not a RELEASE)
        self.stale = False  # the last recovery list named a peer I failed to dial
        self.free = 0  # attempts not counted so far

    def forget(self) -> None:
        self.dead.clear()
        self.crashed = False
        self.stale = False
        self.free = 0

    def note(self, peer_id: str, until: float) -> None:
        """A dial to ``peer_id`` failed: skip it until ``until`` (then dial it once more)."""
        if peer_id and (peer_id in self.dead or len(self.dead) < _DEAD_MEMORY):
            self.dead[peer_id] = until

    def skipped(self, peer_id: str, now: float) -> bool:
        return self.dead.get(peer_id, now) > now

    def alive(self, peers: Sequence[tuple[str, str]], now: float) -> list[tuple[str, str]]:
        """The HOMS's list without the peers to skip; remembers whether it named a dead one."""
        self.stale = any(p in self.dead for p, _ in peers)
        return [e for e in peers if not self.skipped(e[0], now)]

    def excuses(self, hello_accepted: bool, limit: int) -> bool:
        """Whether a failed attempt is free: the HOMS lags behind a crash.

        Either its list named a peer I failed to dial, or, after my parent's crash, the live
        peers it named answered HELLO but none could volunteer (orphans like me).
        """
        lagging = self.stale or (self.crashed and hello_accepted)
        if not lagging or self.free >= limit * _STALE_FACTOR:
            return False
        self.free += 1
        return True


class Control:
    """The POC FE's procedures: join, attempts, choosing a parent, tree recovery, leaving.

    Owns the phase (moved only through :data:`TRANSITIONS`) and the state of the attempt in
    progress; everything else it reaches through the core it belongs to.
    """

    def __init__(self, core: PeerCore) -> None:
        self.core = core
        self.phase = Phase.IDLE
        self.attempt = 0
        self.recovering = False
        self.candidates_only = False
        self.homs_pending = False
        self.offers: list[Link] = []
        self.selection: list[Link] = []
        self.asking: Link | None = None
        self.hellos_out: set[int] = set()
        self.hello_accepted = False
        self.rejoins = 0  # fresh HOMP joins asked for after giving up (bounded by config)
        self.root_doubted = False  # a HOMS "you are the root" was met with a retry already
        self.lag = HomsLag()  # evidence that the HOMS still lists the dead

    def to(self, event: Event) -> None:
        nxt = transition(self.phase, event)
        if nxt is None:
            self.core.error(None, f"internal: no {event.value} move from {self.phase.value}")
            return
        self.phase = nxt

    @property
    def needs_spare_slot(self) -> bool:
        """Orphans and joiners whose first attempt failed may take the spare child slots.

        A low ticket can attach only below the few older peers, which later joiners fill
        quickly; without the spare slots such a peer could retry until it gives up.
        """
        return self.recovering or self.attempt > 1

    @property
    def displacing(self) -> bool:
        """An orphan whose first attempt found no free slot asks full older peers to make one.

        Only older peers are legal parents (ticket rule); with the oldest levels full, an old
        orphan would otherwise wait out every attempt and take a new ticket, releasing its
        whole subtree (docs/recovery.md, "an old orphan and a full top").
        """
        return self.recovering and self.attempt >= 2

    # === life cycle ==============================================================================
    def start(self, info: JoinInfo, now: float) -> None:
        core = self.core
        if self.phase is Phase.FAILED:
            core.reset(now)
        elif self.phase is not Phase.IDLE:
            core.error(None, f"start() in phase {self.phase.value}")
            return
        core.overlay_id = info.overlay_id
        core.ticket = info.ticket
        policy = info.cr_policy
        core.recovery_by = policy.recovery_by
        core.apply_overlay(info, now)
        if info.root:
            self.become_root(now)
            return
        self.begin_attempt(info.peers, now)

    def homs_result(self, peers: list[tuple[str, str]], now: float, root: bool) -> None:
        if not self.homs_pending:
            return  # a stale answer: the peer attached (or left) meanwhile
        self.homs_pending = False
        if self.phase is not Phase.WAITING:
            return
        if root and self._older_alive() and not self.root_doubted:
            # The HOMS lists only me, yet an older member answers on a live candidate path: a
            # second root would split the tree (issue #11: a HOMS misled by false reports).
            # Ask the live older peers once more; the next "root" answer is taken.
            self.root_doubted = True
            self.begin_attempt((), now)
            return
        if root:
            self.become_root(now)
            return
        entries = self.lag.alive(peers, now) if self.recovering else list(peers)
        gp = self.core.grandparent
        if (
            self.recovering
            and gp is not None
            and not self.lag.skipped(gp.peer_id, now)
            and all(p != gp.peer_id for p, _ in entries)
        ):
            # The grandparent outlived my parent more often than not, and it is older than
            # me: a HELLO to it climbs from there even when the HOMS still lists the dead.
            entries.append((gp.peer_id, gp.address))
        self.begin_attempt(tuple(entries), now)

    def reset(self) -> None:
        """Forget the procedure state (the core released every path)."""
        self.to(Event.RESET)
        self.offers.clear()
        self.selection.clear()
        self.hellos_out.clear()
        self.asking = None
        self.attempt = 0
        self.recovering = False
        self.candidates_only = False
        self.homs_pending = False
        self.root_doubted = False
        self.lag.forget()

    # === an attempt: HELLO, window, PROBE ========================================================
    def begin_attempt(self, peers: tuple[tuple[str, str], ...], now: float) -> None:
        core = self.core
        self.attempt += 1
        core.counters.attempts += 1
        self.to(Event.HELLO)
        self.hello_accepted = False
        self.hellos_out.clear()
        for peer_id, address in peers:
            if peer_id == core.peer_id or core.paths.by_peer(peer_id) is not None:
                continue
            hello = self._hello()
            self.hellos_out.add(core.open_link(peer_id, address, hello, now))
        if not self.hellos_out and not self.offers:
            if core.paths.out_candidates:
                # Every listed peer is a candidate path already (the HOMS lists an orphan's
                # nearest older peers, which are its candidates): a HELLO would be refused as
                # a second path, so ask them again; orphans among them may have re-attached.
                self.select(now)
                return
            self.attempt_failed("no entry peer to HELLO", now)
            return
        core.timers.arm(T_HELLO, now + core.config.hello_timeout)

    def _hello(self) -> Hello:
        core = self.core
        extra = HelloExt(displace=self.displacing, cred=core.own_credential())
        if core.config.hello_up > 0:
            up = min(core.config.hello_up, MAX_HOPS)
            # Unique per attempt (free ones included): volunteers answer one HELLO per id.
            attempt = self.attempt + self.lag.free
            extra = msgspec.structs.replace(extra, up=up, attempt=attempt)
        return Hello(
            overlay_id=core.overlay_id,
            peer_id=core.peer_id,
            address=core.address,
            ticket_id=core.ticket,
            conn_num=core.config.conn_num,
            ttl=core.config.hello_ttl,
            recovery=True if self.needs_spare_slot else None,
            hp2p=extra,
        )

    def on_hello_response(self, link: Link, msg: HelloResponse, now: float) -> None:
        if link.conn not in self.hellos_out:
            return  # a relayed HELLO answered by a child: nothing to do
        self.hellos_out.discard(link.conn)
        self.core.drop(link, "", now)  # the HELLO link is short-lived (reference §7.3)
        if self.phase is Phase.HELLO and not self.hello_accepted:
            self.hello_accepted = True
            window = self.core.config.estab_window
            if self.recovering:
                # An orphan takes the first volunteers: a late ESTAB is still taken (WAITING
                # accepts it), while every ms here is a ms its whole subtree is cut off.
                window = min(window, _RECOVERY_WINDOW)
            self.core.timers.arm(T_WINDOW, now + window)

    def hello_link_gone(self, conn: int, now: float) -> None:
        self.hellos_out.discard(conn)
        if (
            self.phase is Phase.HELLO
            and not self.hellos_out
            and not self.hello_accepted
            and not self.offers
        ):
            self.end_window(now)  # no volunteer can come; known candidates may still do

    def offered(self, link: Link, now: float) -> None:
        """An ESTAB that may become my parent arrived while I look for one."""
        core = self.core
        if len(self.offers) >= core.config.estab_max:
            core.ppm.refuse(link, now)
            return
        core.paths.set_role(link, Role.OFFERED)
        self.offers.append(link)
        core.send((link.conn,), EstabResponse(ESTAB_YES))
        core.note_path(link, now)
        if self.phase is Phase.HELLO and self.recovering and not link.displace:
            # An orphan takes the first free slot offered: its whole subtree is cut off
            # until it is attached, and a later, shallower offer is not worth the wait.
            self.end_window(now)
        elif self.phase is Phase.SELECTING:
            self.selection.append(link)
        elif self.phase is Phase.WAITING:
            core.timers.cancel(T_RETRY)
            self.select(now)

    def end_window(self, now: float) -> None:
        core = self.core
        core.timers.cancel(T_HELLO)
        core.timers.cancel(T_WINDOW)
        if not self.offers:
            if core.paths.out_candidates:
                self.select(now)  # no new volunteer, but a known candidate may have room now
            else:
                self.attempt_failed("no volunteer", now)
            return
        if self.recovering:
            # An orphan's subtree receives nothing until it is attached again: rank the
            # volunteers by depth alone rather than spend a PROBE round on RTTs.
            self.select(now)
            return
        self.to(Event.PROBE)
        for link in self.offers:
            token = core.psp.rtt.start(link.conn, now)
            core.send((link.conn,), Probe(ntp_time=token))
        core.timers.arm(T_PROBE, now + core.config.probe_timeout)

    def probed(self, now: float) -> None:
        """A PROBE answer came (or an offer went): select once every RTT is in."""
        if self.phase is Phase.PROBING and self.core.psp.rtt.outstanding() == 0:
            self.core.timers.cancel(T_PROBE)
            self.select(now)

    # === SET_PRIMARY, best first =================================================================
    def select(self, now: float) -> None:
        """Try SET_PRIMARY on the volunteers (join) or candidates (recovery), best first."""
        self.to(Event.SELECT)
        offers = [link for link in self.offers if link.allow_primary]
        offers.sort(key=offer_rank)
        candidates = self.core.paths.with_role(Role.OUT_CANDIDATE)  # disjoint from the offers
        if self.recovering:
            # A candidate silent for longer than a heartbeat period may have died with the
            # parent (a mass failure, or a hang only heartbeats reveal): ask the fresh first.
            stale = now - 1.5 * self.core.config.heartbeat_interval
            candidates.sort(key=lambda c: (c.last_rx < stale, *recovery_rank(c)))
            if offers:
                # The candidates refused this orphan moments ago (that is why it asked the
                # HOMS); a volunteer has a slot for it now. One that must displace a child
                # for it comes last.
                free = [link for link in offers if not link.displace]
                displacing = [link for link in offers if link.displace]
                self.selection = free + candidates + displacing
            else:
                self.selection = candidates
        else:
            candidates.sort(key=recovery_rank)
            self.selection = offers + candidates
        self.ask_next(now)

    def ask_next(self, now: float) -> None:
        core = self.core
        self.asking = None
        while self.selection:
            link = self.selection.pop(0)
            if core.paths.get(link.conn) is not link:
                continue
            self.asking = link
            core.send((link.conn,), self._set_primary(link, now))
            timeout = core.config.set_primary_timeout
            if self.candidates_only:
                timeout = min(timeout, core.config.recovery_ask_timeout)
            core.timers.arm(T_ASK, now + timeout)
            return
        core.timers.cancel(T_ASK)
        self.settle_offers(now)
        if self.candidates_only:
            # Recovery: no candidate took us; the HOMS is asked at once, not after a back-off.
            self.candidates_only = False
            core.ppm.answer_deferred(now)
            self.ask_homs()
            return
        self.attempt_failed("no volunteer accepted SET_PRIMARY", now)

    def _set_primary(self, link: Link, now: float) -> SetPrimary:
        core = self.core
        extra = SetPrimaryExt()
        if self.needs_spare_slot:
            extra = SetPrimaryExt(recovery=True, displace=self.displacing)
        buffermap = None
        if not link.hp2p and core.recovery_by == "push":
            # A reference parent pushes what my buffermap lacks only if it gets one; it
            # takes an empty list as a Go joiner's (r2 6). No ``since``: it would not read it.
            buffermap = core.cm.buffermap(now)
        if core.dr.detached_at is not None and core.recovery_by == "push":
            # Push recovery: my buffermap rides on SET_PRIMARY, the parent's on 4200.
            buffermap = core.cm.buffermap(now)
            extra = msgspec.structs.replace(extra, since=round(core.dr.outage(now), 3))
        return SetPrimary(buffermap=buffermap, hp2p=extra)

    def on_set_primary_response(self, link: Link, msg: SetPrimaryResponse, now: float) -> None:
        core = self.core
        if link is not self.asking:
            core.error(link.conn, "SET_PRIMARY answer that was not asked for")
            return
        core.timers.cancel(T_ASK)
        if msg.code != PRIMARY_YES:
            self.ask_next(now)
            return
        self.asking = None
        self.selection.clear()
        depth = msg.hp2p.depth
        if depth is not None:
            link.depth = depth
        if link.role is Role.OUT_CANDIDATE or link.role is Role.OFFERED:
            core.paths.set_role(link, Role.PARENT)
        else:
            core.error(link.conn, f"SET_PRIMARY accepted on a {link.role.value} connection")
            return
        core.depth = None if link.depth is None else link.depth + 1
        core.grandparent = msg.parent_peer
        if link in self.offers:
            self.offers.remove(link)
        self.settle_offers(now)
        core.emit_path(link, "role")
        self._attached(link, msg, now)

    def _attached(self, parent: Link, msg: SetPrimaryResponse, now: float) -> None:
        core = self.core
        repaired = self.recovering
        if repaired:
            core.counters.repairs += 1
        self.recovering = False
        self.candidates_only = False
        self.root_doubted = False
        self.attempt = 0
        self.lag.forget()
        self.to(Event.ATTACH)
        core.effects.append(Joined(parent.peer_id, core.depth, repaired))
        core.ppm.answer_deferred(now)
        if core.dr.attached_at is None:
            core.dr.attached_at = now
        gp = core.grandparent
        if gp is not None and core.paths.by_peer(gp.peer_id) is None:
            core.ppm.arm_vertical(now)
        if core.dr.detached_at is not None:
            core.dr.after_repair(parent, msg.buffermap, now)
        if core.paths.out_candidates < core.config.max_outgoing_candidates:
            core.ppm.arm_refill(now)
        core.dr.pump(now)

    def settle_offers(self, now: float) -> None:
        """After the choice: best remaining volunteers become candidates, the rest released."""
        core = self.core
        offers = sorted(self.offers, key=parent_rank)
        self.offers = []
        for link in offers:
            if core.paths.get(link.conn) is not link:
                continue
            if core.paths.out_candidate_slot_free():
                core.paths.set_role(link, Role.OUT_CANDIDATE)
                core.send((link.conn,), SetCandidate())
                core.emit_path(link, "role")
            else:
                core.release(link, "surplus volunteer", now)

    def attempt_failed(self, reason: str, now: float) -> None:
        core = self.core
        core.timers.cancel(T_HELLO)
        core.timers.cancel(T_WINDOW)
        core.timers.cancel(T_PROBE)
        # An orphan carries its whole subtree: it tries for longer than a joiner does,
        # long enough for the HOMS to stop listing the peers that died with its parent.
        config = core.config
        limit = config.recovery_attempts if self.recovering else config.join_attempts
        if self.recovering and self.attempt >= 2 and self.lag.excuses(self.hello_accepted, limit):
            self.attempt -= 1  # a free attempt: the HOMS lags, not the tree (HomsLag)
        if self.attempt >= limit:
            self.to(Event.GIVE_UP)
            rejoin = self.rejoins < config.rejoins
            self.rejoins += rejoin
            message = f"{reason} after {self.attempt} attempt(s)"
            core.effects.append(JoinFailed(message, rejoin))
            return
        self.to(Event.RETRY)
        delay = backoff_delay(self.attempt + self.lag.free, config, core.rng)
        if self.recovering:
            # The HOMS's picture of who is alive changes on the scale of a heartbeat time-out
            # (the survivors' reports); an orphan asks again at least that often.
            delay = min(delay, config.heartbeat_timeout)
        core.timers.arm(T_RETRY, now + delay)

    def _older_alive(self) -> bool:
        """A candidate path to an older peer that still answers heartbeats."""
        core = self.core
        return any(
            link.role is Role.OUT_CANDIDATE and 0 < link.ticket < core.ticket
            for link in core.paths.links.values()
        )

    def become_root(self, now: float) -> None:
        core = self.core
        self.root_doubted = False
        self.lag.forget()
        if core.dr.attached_at is None:
            core.dr.attached_at = now
        self.to(Event.ROOT)
        core.depth = 0
        self.recovering = False
        self.attempt = 0
        core.grandparent = None
        core.dr.detached_at = None
        core.dirty = True
        core.effects.append(Joined(None, 0, False))

    # === tree recovery ===========================================================================
    def parent_lost(self, reason: str, now: float) -> None:
        """Tree recovery: candidates first (grandparent first), then the HOMS."""
        core = self.core
        self.recovering = True
        core.depth = None
        self.attempt = 0
        if core.dr.detached_at is None:
            core.dr.detached_at = now
        core.effects.append(Detached(reason))
        core.ppm.cancel_vertical()
        if core.paths.out_candidates:
            self.attempt = 1
            core.counters.attempts += 1
            self.candidates_only = True
            # Hold what younger orphans ask me meanwhile, for about a HOMS round trip and
            # well within their ask time-out: after a mass crash the kernel may take a
            # hundred milliseconds and more to close the dead peers' connections, and a
            # round of mine that waits on one must not hold every orphan below me with it.
            core.ppm.hold(now + min(_HOLD_MAX, core.config.recovery_ask_timeout / 2))
            self.select(now)
        else:
            self.ask_homs()

    def ask_homs(self) -> None:
        self.to(Event.ASK_HOMS)
        self.homs_pending = True
        self.core.effects.append(HomsRecoveryJoin(self.core.ticket))

    def link_gone(self, link: Link, reason: str, now: float) -> None:
        """A connection the procedure may be using is gone."""
        if link.conn in self.hellos_out and link.role is Role.CONNECTING and self.recovering:
            # the dial failed: skip the peer for two heartbeat time-outs, then try it again
            self.lag.note(link.peer_id, now + 2 * self.core.config.heartbeat_timeout)
        if link.role is Role.PARENT and reason in _DEATHS:
            self.lag.crashed = True
        if link.conn in self.hellos_out:
            self.hello_link_gone(link.conn, now)
        if link in self.offers:
            self.offers.remove(link)
            self.probed(now)
        if link is self.asking:
            self.core.timers.cancel(T_ASK)
            self.ask_next(now)
        if link.role is Role.PARENT and self.phase is Phase.ATTACHED:
            self.parent_lost(reason or "parent lost", now)

    # === timers ==================================================================================
    def on_hello_timer(self, now: float) -> None:
        if self.phase is Phase.HELLO and not self.hello_accepted:
            for conn in list(self.hellos_out):
                link = self.core.paths.get(conn)
                if link is not None:
                    self.core.drop(link, "", now)
            self.hellos_out.clear()
            if self.phase is Phase.HELLO:
                self.end_window(now)

    def on_window_timer(self, now: float) -> None:
        if self.phase is Phase.HELLO:
            self.end_window(now)

    def on_probe_timer(self, now: float) -> None:
        if self.phase is Phase.PROBING:
            self.select(now)

    def on_ask_timer(self, now: float) -> None:
        link = self.asking
        if link is not None:
            self.asking = None
            self.core.drop(link, "no answer to SET_PRIMARY", now)
            if self.asking is None and self.phase is Phase.SELECTING:
                self.ask_next(now)

    def on_retry_timer(self, now: float) -> None:
        if self.phase is Phase.WAITING:
            self.ask_homs()

    def timers(self) -> dict[str, Callable[[float], None]]:
        return {
            T_HELLO: self.on_hello_timer,
            T_WINDOW: self.on_window_timer,
            T_PROBE: self.on_probe_timer,
            T_ASK: self.on_ask_timer,
            T_RETRY: self.on_retry_timer,
        }
