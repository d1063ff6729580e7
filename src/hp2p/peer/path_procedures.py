"""The procedures of the PPM and CPM FEs (Q.4100 §7.2.2.1–2): who becomes a path, and how.

:mod:`hp2p.peer.paths` keeps the table (roles, limits, fan-out tuples); this module decides
what goes into it: answering HELLO and volunteering with ESTAB (the volunteer side of tree
construction), taking ESTABs as candidate paths, accepting or refusing SET_PRIMARY from a
would-be child (with the push half of lost-data recovery), SET_CANDIDATE, RELEASE, and
keeping enough outgoing candidates (the refill HELLO and the grandparent's vertical
candidate path).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from hp2p.peer.control import (
    Phase,
    may_displace,
    may_volunteer,
    parent_rank,
    relay_conn_num,
)
from hp2p.peer.paths import Link, Role, shows_hp2p
from hp2p.trust.credential import CredentialError
from hp2p.wire.r2.messages import (
    ESTAB_NO,
    ESTAB_YES,
    PRIMARY_NO,
    PRIMARY_YES,
    Estab,
    EstabExt,
    EstabResponse,
    Hello,
    HelloExt,
    HelloResponse,
    PeerAddress,
    Release,
    ReleaseResponse,
    SetCandidate,
    SetCandidateResponse,
    SetPrimary,
    SetPrimaryResponse,
    SetPrimaryResponseExt,
)
from hp2p.wire.r2.schema import MAX_HOPS

if TYPE_CHECKING:
    from hp2p.peer.core import PeerCore

_HELLO_MEMORY = 256
_VERTICAL_TRIES = 3
_REFILL_TRIES = 3
T_VERTICAL = "vertical"
T_REFILL = "refill"
T_DEFER = "defer"


class PathManager:
    """Volunteering, candidate paths and the parent side of SET_PRIMARY."""

    def __init__(self, core: PeerCore) -> None:
        self.core = core
        self.hello_seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.holding = False  # my own candidate round runs: SET_PRIMARYs wait for its end
        self.deferred: list[tuple[Link, SetPrimary]] = []
        self.refills = 0
        self.vertical_tries = 0

    def reset(self) -> None:
        self.deferred.clear()
        self.holding = False

    # === HELLO received: volunteer, relay ========================================================
    def on_hello(self, link: Link, msg: Hello, now: float) -> None:
        """Answer 1202, volunteer if the rules allow, relay down (and up: hp2p extension).

        Where the HELLO came from decides the relay: from the joiner itself (an entry peer) it
        goes down the subtree for ``ttl`` levels as in the reference, and up towards the root
        for ``up`` levels; from the parent it only goes further down; from a child (climbing)
        it only goes further up. Climbing lets shallower peers with free child slots volunteer:
        the HOMS hands out recent, deep peers as entry points, and down-only flooding could
        never offer the joiner anything shallower than them (docs/peer-core.md).
        """
        core = self.core
        role = link.role
        if role is Role.INCOMING:
            core.paths.set_role(link, Role.HELLO)
            role = Role.HELLO
        elif role not in (Role.HELLO, Role.PARENT, Role.CHILD):
            core.error(link.conn, f"HELLO on a {role.value} connection")
            return
        if msg.overlay_id != core.overlay_id:
            core.error(link.conn, "HELLO for another overlay")
            core.drop_if_transient(link, now)
            return
        core.counters.hellos += 1
        extra = msg.hp2p  # typed and bounded at decode (hp2p.wire.r2.schema.HelloExt)
        if core.admission.required:
            problem = self._joiner_problem(msg, now)
            if problem is not None:
                core.error(link.conn, problem)
                core.drop_if_transient(link, now)
                return
        core.send((link.conn,), HelloResponse())
        if msg.peer_id == core.peer_id or msg.ticket_id <= core.ticket:
            return  # the ticket rule: never volunteer to an older (or the same) peer
        attempt = extra.attempt
        if attempt is not None and not self._remember_hello(msg.peer_id, msg.ticket_id, attempt):
            return  # the same HELLO again by another route: one answer per peer
        conn_num = self._maybe_volunteer(msg, extra, now)
        if not msg.vertical_candidate:
            self._relay_hello(link, role, msg, extra, conn_num)

    def _joiner_problem(self, msg: Hello, now: float) -> str | None:
        """Why a HELLO cannot be believed: its joiner must be a member with that ticket.

        The credential names the address the HOMS registered for the joiner, and that is
        the only address a volunteer dials: a HELLO cannot make peers connect anywhere else.
        """
        if msg.hp2p.cred is None:
            return "HELLO without the joiner's membership credential"
        try:
            cred = self.core.admission.check(msg.hp2p.cred, now, peer_id=msg.peer_id)
        except CredentialError as exc:
            return f"HELLO with a refused credential: {exc.reason}"
        if cred.body.ticket_id != msg.ticket_id:
            return f"HELLO claims ticket {msg.ticket_id}; the credential {cred.body.ticket_id}"
        if cred.body.address and cred.body.address != msg.address:
            return f"HELLO names address {msg.address!r}; the credential says {cred.body.address!r}"
        return None

    def _maybe_volunteer(self, msg: Hello, extra: HelloExt, now: float) -> int:
        """Volunteer if the rules allow; the ``conn_num`` left for the relayed HELLOs."""
        core = self.core
        vertical = bool(msg.vertical_candidate)
        conn_num = msg.conn_num
        if core.phase is not Phase.ATTACHED or core.paths.by_peer(msg.peer_id, pending=True):
            return conn_num
        if may_volunteer(
            core.ticket,
            msg.ticket_id,
            core.paths,
            conn_num,
            vertical,
            bool(msg.recovery),
            now,
            core.config.offer_hold,
        ):
            self._volunteer(msg, vertical, now)
            return conn_num - 1
        if (
            extra.displace
            and msg.recovery
            and may_displace(core.ticket, msg.ticket_id, core.paths, conn_num, vertical)
        ):
            self._volunteer(msg, vertical, now, displace=True)
            return conn_num - 1
        return conn_num

    def _relay_hello(
        self, link: Link, role: Role, msg: Hello, extra: HelloExt, conn_num: int
    ) -> None:
        core = self.core
        up = extra.up or 0
        parent = core.paths.parent
        down = extra.down
        if down is not None and role is Role.PARENT:
            if conn_num == msg.conn_num and down > 0:
                self._descend(msg, extra, down - 1, link.conn)
            return
        if extra.up is not None and role is not Role.PARENT and (up == 0 or parent is None):
            self._descend(msg, extra, min(core.config.hello_up, MAX_HOPS), link.conn)
        if up > 0 and role is not Role.PARENT and parent is not None:
            # a reference parent volunteers (ttl 1) but does not relay it down
            climbing = msgspec.structs.replace(extra, up=up - 1)
            core.send((parent.conn,), _relayed(msg, 1, 1, climbing))
        ttl = msg.ttl - 1
        if role is Role.CHILD and extra.cpm:
            ttl = 1  # a candidate refill: the siblings of the climb may volunteer too
        elif role is Role.CHILD or ttl <= 0 or conn_num <= 0:
            return
        conn_num = max(conn_num, 1)
        children = tuple(
            child.conn
            for child in core.paths.with_role(Role.CHILD)
            if child.peer_id != msg.peer_id and child.conn != link.conn
        )
        per_child = relay_conn_num(conn_num, len(children))
        if children and per_child > 0:
            down_only = extra if extra == HelloExt() else msgspec.structs.replace(extra, up=0)
            relayed = _relayed(msg, per_child, ttl, down_only)
            core.send(children, relayed)

    def _descend(self, msg: Hello, extra: HelloExt, down: int, arrival: int) -> None:
        """Pass the HELLO to the child whose subtree reports the shallowest free child slot.

        Children report that depth in their heartbeats (hp2p ``slot``), so the peer where a
        climbing HELLO stops can steer it down to the best place for the joiner in O(depth)
        messages instead of flooding whole subtrees.
        """
        core = self.core
        best: Link | None = None
        for child in core.paths.with_role(Role.CHILD):
            if child.slot is None or child.conn == arrival or child.peer_id == msg.peer_id:
                continue
            if best is None or (child.slot, child.ticket) < (best.slot or 0, best.ticket):
                best = child
        if best is None or best.slot is None:
            return
        own = core.psp.slot_depth()
        if own is not None and own <= best.slot and core.paths.child_slot_free():
            return  # this peer is already the best place, and it volunteered
        descending = _relayed(msg, 1, 1, msgspec.structs.replace(extra, up=0, down=down))
        core.send((best.conn,), descending)

    def _remember_hello(self, peer_id: str, ticket: int, attempt: object) -> bool:
        key = (peer_id, f"{ticket}/{attempt}")
        if key in self.hello_seen:
            return False
        self.hello_seen[key] = None
        if len(self.hello_seen) > _HELLO_MEMORY:
            self.hello_seen.popitem(last=False)
        return True

    def _volunteer(self, hello: Hello, vertical: bool, now: float, displace: bool = False) -> None:
        core = self.core
        conn = core.new_conn()
        # My listening address: the joiner knows only the ephemeral end of my connection, and
        # without it cannot tell its own children where their grandparent is (R2's ESTAB has
        # no address; PeerAddress in 4200 and the vertical-candidate HELLO need it). With
        # displace, the joiner ranks me after every free slot.
        estab = Estab(
            overlay_id=core.overlay_id,
            peer_id=core.peer_id,
            ticket_id=core.ticket,
            allow_primary_req=not vertical,
            hp2p=EstabExt(address=core.address, depth=core.depth, displace=displace),
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
            # A HELLO relayed by a reference peer loses its extension: the joiner may still
            # turn out to run hp2p, from the first frame it sends with one.
            hp2p=shows_hp2p(hello),
        )
        if not core.admission.required and core.admission.own is not None:
            # no AUTH on this overlay: a credential in the HELLO is the best evidence of
            # membership there is (it earns the spare recovery slots, see on_set_primary)
            link.vouched = hello.hp2p.cred is not None and self._joiner_problem(hello, now) is None
        core.add_link(link)
        core.counters.volunteered += 1
        core.connect(conn, hello.peer_id, (hello.address,))

    # === ESTAB received: an offer or a candidate path ============================================
    def on_estab(self, link: Link, msg: Estab, now: float) -> None:
        core = self.core
        if link.role is not Role.INCOMING:
            core.error(link.conn, f"ESTAB on a {link.role.value} connection")
            return
        problem = None
        if msg.overlay_id != core.overlay_id:
            problem = "ESTAB for another overlay"
        elif msg.ticket_id >= core.ticket:
            problem = "ESTAB from a younger peer (ticket rule)"
        if problem is not None:
            core.error(link.conn, problem)
            self.refuse(link, now)
            return
        if core.paths.by_peer(msg.peer_id) is not None:
            self.refuse(link, now)
            return
        cred = link.cred
        if cred is not None and (
            cred.body.peer_id != msg.peer_id or cred.body.ticket_id != msg.ticket_id
        ):
            core.error(link.conn, "ESTAB claims another peer-id or ticket than its credential")
            self.refuse(link, now)
            return
        link.peer_id = msg.peer_id
        link.ticket = msg.ticket_id
        link.depth = msg.hp2p.depth
        link.allow_primary = msg.allow_primary_req
        link.displace = msg.hp2p.displace
        if msg.hp2p.address:
            link.address = msg.hp2p.address
        gp = core.grandparent
        link.vertical = gp is not None and gp.peer_id == msg.peer_id
        if core.phase is Phase.ATTACHED or not msg.allow_primary_req:
            self._accept_candidate(link, now)
        elif core.phase in (Phase.HELLO, Phase.PROBING, Phase.SELECTING, Phase.WAITING):
            core.poc.offered(link, now)
        else:
            self.refuse(link, now)

    def _accept_candidate(self, link: Link, now: float) -> None:
        """Keep an ESTAB as outgoing candidate; a grandparent may evict the worst one."""
        core = self.core
        if not core.paths.out_candidate_slot_free() and link.vertical:
            worst = max(core.paths.with_role(Role.OUT_CANDIDATE), key=parent_rank, default=None)
            if worst is not None:
                core.release(worst, "evicted for the grandparent", now)
        if not core.paths.out_candidate_slot_free():
            self.refuse(link, now)
            return
        core.paths.set_role(link, Role.OUT_CANDIDATE)
        core.send((link.conn,), EstabResponse(ESTAB_YES))
        core.note_path(link, now)

    def refuse(self, link: Link, now: float) -> None:
        self.core.send((link.conn,), EstabResponse(ESTAB_NO))
        self.core.drop(link, "", now)

    def on_estab_response(self, link: Link, msg: EstabResponse, now: float) -> None:
        core = self.core
        if link.role is not Role.VOLUNTEER:
            core.error(link.conn, "ESTAB answer on a connection that did not volunteer")
            return
        if msg.code == ESTAB_YES:
            core.paths.set_role(link, Role.IN_CANDIDATE)
            core.note_path(link, now)
        else:
            core.drop(link, "", now)

    # === SET_PRIMARY / SET_CANDIDATE received ====================================================
    def on_set_primary(self, link: Link, msg: SetPrimary, now: float) -> None:
        core = self.core
        link.offer_pending = False
        if link.role is Role.CHILD:
            core.send((link.conn,), self._primary_yes(msg, now))
            return
        if link.role is Role.VOLUNTEER:
            # A reference joiner asks right after 2200; our 2200 may still be in flight.
            core.paths.set_role(link, Role.IN_CANDIDATE)
        if link.role is not Role.IN_CANDIDATE:
            core.error(link.conn, f"SET_PRIMARY on a {link.role.value} connection")
            core.send((link.conn,), SetPrimaryResponse(code=PRIMARY_NO))
            return
        if self.holding and link.ticket > core.ticket:
            # I lost my parent too and my own candidates are answering: a moment from now I
            # am attached again (YES) or on my way to the HOMS (NO). Saying NO now would send
            # this orphan to the HOMS, a round trip that costs more than the wait.
            self.deferred.append((link, msg))
            return
        # The spare recovery slots are for orphans that proved membership (AUTH, or on a
        # reference-compat overlay a valid credential in their HELLO): a peer without one may
        # not claim them (issue #11).
        proven = link.cred is not None or link.vouched or core.admission.own is None
        recovery = msg.hp2p.recovery and proven
        if recovery and msg.hp2p.displace:
            self._displace_for(link, now)
        if (
            core.phase is Phase.ATTACHED
            and link.ticket > core.ticket
            and core.paths.child_slot_free(recovery)
        ):
            self._adopt(link, msg, recovery, now)
        else:
            core.send((link.conn,), SetPrimaryResponse(code=PRIMARY_NO))

    def _displace_for(self, link: Link, now: float) -> None:
        """An older orphan has no other legal place; my youngest child has many."""
        core = self.core
        if (
            core.phase is Phase.ATTACHED
            and link.ticket > core.ticket
            and not core.paths.child_slot_free(True)
        ):
            victim = core.paths.displaceable(link.ticket)
            if victim is not None:
                core.release(victim, "displaced by an older orphan", now)

    def _adopt(self, link: Link, msg: SetPrimary, recovery: bool, now: float) -> None:
        core = self.core
        core.paths.set_role(link, Role.CHILD, recovery)
        core.send((link.conn,), self._primary_yes(msg, now))
        core.emit_path(link, "role")
        reference = not link.hp2p
        if msg.buffermap is not None or reference:
            # Push recovery, parent side: send the new child what its buffermap lacks. A
            # reference child cannot pull safely (the 11200 answer crashes it), and a Go push
            # child with an empty cache sends ``"buffermap": null``; it states no outage
            # either, so it is pushed all I cache (bounded by push_max): what it would have
            # fetched by GET_DATA.
            since = msg.hp2p.since
            if since is None and reference:
                since = core.config.cache_age
            start = None if since is None else now - min(since, core.config.cache_age)
            core.dr.push(link, msg.buffermap or [], start, now)

    def hold(self, until: float) -> None:
        """Hold SET_PRIMARYs from younger orphans until ``until`` (my own round runs)."""
        self.holding = True
        self.core.timers.arm(T_DEFER, until)

    def answer_deferred(self, now: float) -> None:
        """Answer the SET_PRIMARYs held while my own candidate round ran (bounded wait)."""
        self.holding = False
        self.core.timers.cancel(T_DEFER)
        held, self.deferred = self.deferred, []
        for link, request in held:
            if self.core.paths.get(link.conn) is link:
                self.on_set_primary(link, request, now)

    def _primary_yes(self, request: SetPrimary, now: float) -> SetPrimaryResponse:
        core = self.core
        parent = core.paths.parent
        return SetPrimaryResponse(
            code=PRIMARY_YES,
            buffermap=None if request.buffermap is None else core.cm.buffermap(now),
            parent_peer=None if parent is None else PeerAddress(parent.peer_id, parent.address),
            hp2p=SetPrimaryResponseExt(depth=core.depth),
        )

    def on_set_candidate(self, link: Link, msg: SetCandidate, now: float) -> None:
        core = self.core
        link.offer_pending = False
        if link.role is Role.CHILD and core.paths.in_candidate_slot_free():
            core.paths.set_role(link, Role.IN_CANDIDATE)
            core.emit_path(link, "role")
        elif link.role not in (Role.IN_CANDIDATE, Role.CHILD):
            core.error(link.conn, f"SET_CANDIDATE on a {link.role.value} connection")
            return
        core.send((link.conn,), SetCandidateResponse())

    def on_release(self, link: Link, msg: Release, now: float) -> None:
        if msg.ack:
            self.core.send((link.conn,), ReleaseResponse())
        self.core.drop(link, "released by peer", now)

    # === keeping candidate paths (CPM FE) ========================================================
    def arm_refill(self, now: float) -> None:
        timers = self.core.timers
        if not timers.armed(T_REFILL):
            self.refills = 0
            timers.arm(T_REFILL, now + self.core.config.candidate_refill_delay)

    def refill(self, now: float) -> None:
        """Too few outgoing candidates: HELLO up through the parent for older volunteers.

        The HELLO climbs (hp2p ``up``) from ancestor to ancestor, and each ancestor also passes
        it one level down to its other children (hp2p ``cpm``); every older peer with room
        answers with ESTAB, which this attached peer keeps as a candidate path (the ticket
        rule keeps them all older, so none can be a descendant). Bounded: a few tries, each
        after a longer wait, then nothing until the next candidate is lost.
        """
        core = self.core
        config = core.config
        parent = core.paths.parent
        deficit = config.max_outgoing_candidates - core.paths.out_candidates
        if core.phase is not Phase.ATTACHED or parent is None or deficit <= 0:
            return
        self.refills += 1
        hello = Hello(
            overlay_id=core.overlay_id,
            peer_id=core.peer_id,
            address=core.address,
            ticket_id=core.ticket,
            conn_num=deficit,
            ttl=1,
            hp2p=HelloExt(
                up=max(1, min(config.hello_up, MAX_HOPS)),
                attempt=f"cpm-{self.refills}-{now:.3f}",
                cpm=True,
                cred=core.own_credential(),
            ),
        )
        core.send((parent.conn,), hello)
        if self.refills < _REFILL_TRIES:
            delay = config.candidate_refill_delay * 2**self.refills
            core.timers.arm(T_REFILL, now + delay)

    def arm_vertical(self, now: float) -> None:
        self.vertical_tries = 0
        self.core.timers.arm(T_VERTICAL, now + self.core.config.vertical_candidate_delay)

    def cancel_vertical(self) -> None:
        self.core.timers.cancel(T_VERTICAL)

    def vertical_hello(self, now: float) -> None:
        """HELLO the grandparent for a vertical candidate path; retried a bounded number of times.

        The grandparent is the first place an orphan asks, so it is worth a few tries (the
        reference retries every 5 s forever); each retry waits twice as long as the last.
        """
        core = self.core
        gp = core.grandparent
        if core.phase is not Phase.ATTACHED or gp is None or core.paths.by_peer(gp.peer_id):
            return
        self.vertical_tries += 1
        if self.vertical_tries < _VERTICAL_TRIES:
            delay = core.config.vertical_candidate_delay * (2**self.vertical_tries) + 1.0
            core.timers.arm(T_VERTICAL, now + delay)
        hello = Hello(
            overlay_id=core.overlay_id,
            peer_id=core.peer_id,
            address=core.address,
            ticket_id=core.ticket,
            conn_num=1,
            ttl=1,
            vertical_candidate=True,
            hp2p=HelloExt(cred=core.own_credential()),
        )
        core.poc.hellos_out.add(core.open_link(gp.peer_id, gp.address, hello, now))

    def link_gone(self, link: Link, now: float) -> None:
        if link.role is Role.OUT_CANDIDATE and self.core.phase is Phase.ATTACHED:
            self.arm_refill(now)

    def timers(self) -> dict[str, Callable[[float], None]]:
        return {
            T_VERTICAL: self.vertical_hello,
            T_REFILL: self.refill,
            T_DEFER: self.answer_deferred,
        }


def _relayed(msg: Hello, conn_num: int, ttl: int, extra: HelloExt) -> Hello:
    """``msg`` passed on to another peer with its own ``conn_num``, ``ttl`` and extension."""
    return Hello(
        overlay_id=msg.overlay_id,
        peer_id=msg.peer_id,
        address=msg.address,
        ticket_id=msg.ticket_id,
        conn_num=conn_num,
        ttl=ttl,
        recovery=msg.recovery,
        hp2p=extra,
    )
