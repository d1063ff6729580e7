"""Path status probe (PSP FE, Q.4100 §7.2.2.3): heartbeats, liveness deadlines, RTT by PROBE.

TCP alone does not tell a peer that the other end hung (§7.2.2.3), so every path is watched:
each side sends HEARTBEAT on every primary and candidate path once per interval (the reference
sends only from the ESTAB receiver side, §4.4, so a hung child goes unnoticed by its parent), and
*any* frame received counts as liveness. A path silent for the heartbeat timeout is dead.

Transient connections have deadlines of their own (an accepted connection that stays silent, a
HELLO link without 1202, a volunteer offer without 2200), checked by the same scan so no
connection can leak.

The scan is not per message: the core keeps one deadline, the earliest instant at which some
link could have expired, computed from the links' last receive times.

RTT is measured from a local send time keyed by an opaque token echoed in ``ntp-time``; the
echoed text is never parsed as a clock (the reference parses it in one time zone, §9.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hp2p.peer.control import Phase
from hp2p.peer.paths import PATH_ROLES, Link, Role
from hp2p.wire.r2.messages import (
    Heartbeat,
    HeartbeatExt,
    HeartbeatResponse,
    Probe,
    ProbeResponse,
)

if TYPE_CHECKING:
    from hp2p.peer.core import PeerCore

TRANSIENT_TIMEOUT_ROLES = (Role.CONNECTING, Role.INCOMING, Role.HELLO)


class LivenessDeadlines:
    """Which links are dead at ``now``, and when to look again."""

    __slots__ = ("estab_timeout", "heartbeat_timeout", "idle_timeout", "reference_timeout")

    def __init__(self, heartbeat_timeout: float, idle_timeout: float, estab_timeout: float):
        self.heartbeat_timeout = heartbeat_timeout
        #: A path to a peer not known to run hp2p: the overlay's timeout if longer than mine.
        #: A reference peer heartbeats every ``int(0.9 * overlay interval)`` s whatever my own
        #: settings are, so my pinned sub-second timeout would drop it between two heartbeats.
        self.reference_timeout = heartbeat_timeout
        self.idle_timeout = idle_timeout
        self.estab_timeout = estab_timeout

    def deadline(self, link: Link) -> float:
        if link.role in PATH_ROLES:
            if link.hp2p:
                return link.last_rx + self.heartbeat_timeout
            return link.last_rx + max(self.heartbeat_timeout, self.reference_timeout)
        if link.role is Role.VOLUNTEER:
            return link.opened + self.estab_timeout
        return link.opened + self.idle_timeout

    def expired(self, links: list[Link], now: float) -> list[Link]:
        return [link for link in links if self.deadline(link) <= now]

    def next_check(self, links: list[Link]) -> float | None:
        return min((self.deadline(link) for link in links), default=None)


class RttProbe:
    """Outstanding PROBEs: token → send time, per connection."""

    __slots__ = ("_counter", "_pending")

    def __init__(self) -> None:
        self._pending: dict[int, tuple[str, float]] = {}
        self._counter = 0

    def start(self, conn: int, now: float) -> str:
        """A fresh token to put in PROBE's ``ntp-time``."""
        self._counter += 1
        token = f"hp2p-{self._counter}-{now:.6f}"
        self._pending[conn] = (token, now)
        return token

    def answer(self, conn: int, token: str, now: float) -> float | None:
        """The RTT if ``token`` answers the PROBE outstanding on ``conn``; else None."""
        pending = self._pending.get(conn)
        if pending is None or pending[0] != token:
            return None
        del self._pending[conn]
        return max(0.0, now - pending[1])

    def outstanding(self) -> int:
        return len(self._pending)

    def forget(self, conn: int) -> None:
        self._pending.pop(conn, None)


_HEADS_MAX = 64


class PathProbe:
    """The PSP FE's procedures: heartbeats out, liveness in, PROBE/RTT, depth adverts.

    A HEARTBEAT also carries (hp2p extension) my depth, the shallowest free child slot in my
    subtree, and my *heads*: the newest sequence per source, for the sources that moved
    since the last heartbeat. A message lost on a link is noticed by the next one of its
    source (n+2 after n), but the *last* message of a burst, or of a source that just died,
    has no next one: the neighbour's heads reveal it within a heartbeat interval. Data and
    heartbeats share the connection, so the heads never run ahead of the data sent on it.
    """

    def __init__(self, core: PeerCore) -> None:
        self.core = core
        config = core.config
        self.rtt = RttProbe()
        self.deadlines = LivenessDeadlines(
            config.heartbeat_timeout, config.idle_link_timeout, config.estab_timeout
        )
        self.next_heartbeat: float | None = None
        self.next_check: float | None = None
        self.advert_dirty = False
        self._advertised: tuple[int | None, int | None] = (None, None)
        self._heads_sent: dict[str, int] = {}

    def stop(self) -> None:
        self.next_heartbeat = None
        self.next_check = None

    def watch(self, link: Link) -> None:
        """``link`` was added or became a path: look at it again by its deadline."""
        deadline = self.deadlines.deadline(link)
        if self.next_check is None or deadline < self.next_check:
            self.next_check = deadline

    def next_time(self) -> float | None:
        a, b = self.next_heartbeat, self.next_check
        if a is None:
            return b
        return a if b is None or a < b else b

    def tick(self, now: float) -> None:
        """Heartbeats due, and every link whose liveness deadline passed is dropped."""
        core = self.core
        if self.next_heartbeat is not None and now >= self.next_heartbeat:
            self.next_heartbeat = now + core.config.heartbeat_interval
            conns = tuple(link.conn for link in core.paths.paths())
            if conns:
                core.send(conns, self.heartbeat())
        if self.next_check is not None and now >= self.next_check:
            for link in self.deadlines.expired(list(core.paths.links.values()), now):
                reason = "heartbeat timeout" if link.role in PATH_ROLES else "timeout"
                core.drop(link, reason, now)
            self.next_check = self.deadlines.next_check(list(core.paths.links.values()))

    def heartbeat(self) -> Heartbeat:
        """A HEARTBEAT carrying my depth, the shallowest free slot below me and my heads."""
        depth = self.core.depth
        slot = self.slot_depth()
        self._advertised = (depth, slot)
        self.advert_dirty = False
        return Heartbeat(hp2p=HeartbeatExt(depth=depth, slot=slot, heads=self._heads()))

    def _heads(self) -> dict[str, int]:
        sources = self.core.duplicates.sources
        sent = self._heads_sent
        heads: dict[str, int] = {}
        for source, win in sources.items():
            if sent.get(source) != win.newest:
                heads[source] = win.newest
                if len(heads) >= _HEADS_MAX:
                    break
        sent.update(heads)
        if len(sent) > 4 * _HEADS_MAX and len(sent) > 2 * len(sources):
            self._heads_sent = {s: n for s, n in sent.items() if s in sources}
        return heads

    def advertise(self) -> None:
        """Tell the neighbours at once when my depth or free-slot depth changed.

        Waiting for the next heartbeat would leave the slot hints a heartbeat interval stale
        per level, and fast joins would all be steered to the same, by then full, peer.
        """
        core = self.core
        self.advert_dirty = False
        if core.phase is Phase.LEFT or (core.depth, self.slot_depth()) == self._advertised:
            return
        conns = tuple(link.conn for link in core.paths.paths())
        if conns:
            core.send(conns, self.heartbeat())

    def slot_depth(self) -> int | None:
        """The depth of the shallowest free child slot in my subtree, as far as I know."""
        core = self.core
        if core.depth is None:
            return None
        if core.paths.child_slot_free():
            return core.depth
        slots = [c.slot for c in core.paths.with_role(Role.CHILD) if c.slot is not None]
        return min(slots) if slots else None

    def on_heartbeat(self, link: Link, msg: Heartbeat, now: float) -> None:
        core = self.core
        if not link.hp2p:
            # A reference peer's HEARTBEAT expects 8200 (go-peer-2023 README, R2 6); hp2p
            # peers heartbeat both ways and need no answer.
            core.send((link.conn,), HeartbeatResponse())
        extra = msg.hp2p
        if extra.heads:
            core.dr.check_heads(extra.heads, now)
        depth = extra.depth
        if depth is None:
            return
        link.depth = depth
        slot = extra.slot
        if slot != link.slot:
            link.slot = slot
            if link.role is Role.CHILD:
                self.advert_dirty = True
        if link.role is Role.PARENT and core.depth != depth + 1:
            core.depth = depth + 1
            self.advert_dirty = True

    def on_probe(self, link: Link, msg: Probe, now: float) -> None:
        self.core.send((link.conn,), ProbeResponse(ntp_time=msg.ntp_time))

    def on_probe_response(self, link: Link, msg: ProbeResponse, now: float) -> None:
        rtt = self.rtt.answer(link.conn, msg.ntp_time, now)
        if rtt is None:
            self.core.error(link.conn, "PROBE answer that matches no PROBE")
            return
        link.rtt = rtt
        self.core.poc.probed(now)
