"""Mesh neighbours of a SubMesh peer: who is linked, who is known, who is banned.

A SubMesh peer keeps ``target_neighbours`` links picked from the HOMS's random peer lists (PLM
FE), opens them with a HELLO carrying ``hp2p.mesh``, watches them with heartbeats, and drops a
neighbour that goes silent, breaks the protocol or serves bad pieces (strikes, then a ban).
Every table here is keyed by a remote's peer-id and bounded: known peers, bans, back-offs.
A standby bridge and the source itself get one of a few spare slots, so that failure
detection never depends on a free slot.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hp2p.peer.effects import Costmap, HomsReport, Send
from hp2p.wire.r2.messages import (
    Buffermap,
    BuffermapEntry,
    BuffermapResponse,
    Heartbeat,
    Hello,
    HelloExt,
    HelloResponse,
    Message,
    Release,
    ReleaseExt,
)
from hp2p.wire.r2.schema import MAX_TEXT

if TYPE_CHECKING:
    from hp2p.peer.mesh import MeshCore
    from hp2p.trust.credential import Credential

#: Extra neighbour slots for the source and for standbys watching it.
SPARE_SLOTS = 4


@dataclass(eq=False)
class MeshLink:
    conn: int
    outgoing: bool
    opened_at: float
    state: str = "opening"  # opening -> hello (sent HELLO) | incoming -> up
    peer_id: str | None = None
    address: str | None = None
    last_rx: float = 0.0
    last_tx: float = 0.0
    have: set[int] = field(default_factory=set)
    inflight: int = 0
    strikes: int = 0
    #: The peer's membership credential, proven on this link (issue #11); its peer-id is the
    #: only one this link may speak for, and the only one a ban may name.
    cred: Credential | None = None


def _release(reason: str) -> Release:
    """A RELEASE saying why, for the remote's log; cut to what the wire field allows."""
    return Release(hp2p=ReleaseExt(reason=reason[:MAX_TEXT]))


class MeshLinks:
    """The neighbour set and its upkeep; see the module docstring."""

    def __init__(self, core: MeshCore) -> None:
        self.core = core
        self.links: dict[int, MeshLink] = {}
        self.neighbours: dict[str, MeshLink] = {}
        self.known: OrderedDict[str, str] = OrderedDict()
        self.banned: OrderedDict[str, None] = OrderedDict()
        self.retry_after: dict[str, float] = {}
        self.source_address: str | None = None
        self._source_missing_since: float | None = None
        self._next_peer_list = 0.0
        self.next_buffermap = 0.0
        self._reported: tuple[str, ...] | None = None

    # === opening links ===========================================================================
    def learn(self, peers: tuple[tuple[str, str], ...]) -> None:
        core = self.core
        for peer_id, address in peers:
            if peer_id == core.peer_id or not address:
                continue
            self.known[peer_id] = address
            self.known.move_to_end(peer_id)
        while len(self.known) > core.config.max_known_peers:
            self.known.popitem(last=False)

    def connect(self, peer_id: str, address: str, now: float) -> None:
        core = self.core
        conn = core.new_conn()
        link = MeshLink(conn, outgoing=True, opened_at=now, peer_id=peer_id, address=address)
        self.links[conn] = link
        core.connect(conn, peer_id, (address,))
        core.bump_maintenance(now + core.config.connect_timeout)

    def accept(self, now: float) -> int:
        core = self.core
        conn = core.new_conn()
        link = MeshLink(conn, outgoing=False, opened_at=now, state="incoming")
        link.last_rx = now
        self.links[conn] = link
        core.bump_maintenance(now + core.config.connect_timeout)
        return conn

    def connection_made(self, conn: int, now: float) -> None:
        core = self.core
        link = self.links.get(conn)
        if link is None or link.state != "opening":
            return
        link.last_rx = now
        if core.gated:
            link.state = "auth"  # HELLO goes once the responder proved its credential
            core.admission.dial(conn, now)
            return
        self.send_hello(link, now)

    def send_hello(self, link: MeshLink, now: float) -> None:
        core = self.core
        link.state = "hello"
        hello = Hello(
            overlay_id=core.overlay_id,
            peer_id=core.peer_id,
            address=core.address,
            ticket_id=core.ticket,
            conn_num=0,
            ttl=0,
            hp2p=HelloExt(mesh=1, standby=1 if core.standby else 0),
        )
        self.send(link, hello, now)

    def on_hello(self, link: MeshLink, msg: Hello, now: float) -> None:
        core = self.core
        peer = msg.peer_id
        if link.cred is not None and link.cred.body.peer_id != peer:
            self.refuse(link, "HELLO claims another peer-id than its credential", now)
            return
        if msg.overlay_id != core.overlay_id:
            self.refuse(link, f"overlay {msg.overlay_id!r} is not {core.overlay_id!r}", now)
            return
        if not msg.hp2p.mesh:
            self.refuse(link, "this is a SubMesh: HELLO must carry hp2p.mesh", now)
            return
        if peer == core.peer_id or peer in self.banned:
            self.refuse(link, "refused", now)
            return
        if peer in self.neighbours:
            self.refuse(link, "duplicate link", now)
            return
        pending = next(
            (x for x in self.links.values() if x.peer_id == peer and x is not link), None
        )
        if pending is not None:
            # Both sides dialled at once: keep the link opened by the smaller peer-id.
            if peer < core.peer_id:
                self.drop(pending, now, backoff=False)
            else:
                self.refuse(link, "duplicate link", now)
                return
        # A standby watching its source, and the source itself, get a link even when the set
        # is full (a few spare slots), so that failure detection does not depend on luck.
        special = peer == core.source_id or bool(msg.hp2p.standby)
        limit = core.config.max_neighbours + (SPARE_SLOTS if special else 0)
        if len(self.neighbours) >= limit:
            self.refuse(link, "mesh neighbour set full", now)
            return
        link.peer_id = peer
        link.address = msg.address
        if msg.address:
            self.learn(((peer, msg.address),))
        self.send(link, HelloResponse(), now)
        self._up(link, now)

    def on_hello_response(self, link: MeshLink, now: float) -> None:
        assert link.peer_id is not None
        if link.peer_id in self.neighbours:
            self.drop(link, now, backoff=False)
            return
        self._up(link, now)

    def _up(self, link: MeshLink, now: float) -> None:
        assert link.peer_id is not None
        link.state = "up"
        self.neighbours[link.peer_id] = link
        self.retry_after.pop(link.peer_id, None)
        self.send_buffermap(link, sorted(self.core.holdings.have), now)
        self._report()

    # === closing links ===========================================================================
    def refused(self, link: MeshLink, msg: Release, now: float) -> None:
        self.core.counters.refused_links += 1
        self.drop(link, now)

    def refuse(self, link: MeshLink, reason: str, now: float) -> None:
        self.core.counters.refused_links += 1
        self.send(link, _release(reason), now)
        self.drop(link, now, backoff=False)

    def drop(self, link: MeshLink, now: float, backoff: bool = True) -> None:
        if link.conn in self.links:
            self.core.close(link.conn)
            self.remove(link, now, backoff)

    def remove(self, link: MeshLink, now: float, backoff: bool) -> None:
        core = self.core
        self.links.pop(link.conn, None)
        peer = link.peer_id
        if peer is not None and self.neighbours.get(peer) is link:
            del self.neighbours[peer]
            core.pull.neighbour_gone(link)
            self._report()
        if peer is not None and backoff:
            self.retry_after[peer] = now + core.config.retry_backoff
        core.bump_maintenance(now)

    def ban(self, link: MeshLink, reason: str, now: float) -> None:
        """Drop ``link``; remember its peer-id as banned only if the link vouches for it.

        A peer-id in an incoming HELLO is anyone's to claim: banning it would let a liar get an
        honest peer (or the source) banned everywhere by serving bad pieces under its name
        (issue #11). The link vouches for its peer-id when it proved a credential for it, or
        when this peer dialled the address the HOMS lists for that peer-id.
        """
        core = self.core
        vouched = link.cred is not None or link.outgoing
        if link.peer_id is not None and vouched:
            self.banned[link.peer_id] = None
            self.known.pop(link.peer_id, None)
            while len(self.banned) > core.config.max_banned:
                self.banned.popitem(last=False)
        core.counters.banned += 1
        core.link_error(link, f"dropped and banned: {reason}")
        self.send(link, _release(reason), now)
        self.drop(link, now)

    def strike(self, link: MeshLink, reason: str, now: float) -> None:
        link.strikes += 1
        self.core.link_error(link, reason)
        if link.strikes >= self.core.config.max_strikes:
            self.ban(link, f"{link.strikes} bad pieces", now)

    def close_all(self, now: float) -> None:
        """Leaving: RELEASE every up link and close every connection."""
        for link in list(self.links.values()):
            if link.state == "up":
                self.send(link, _release("leaving"), now)
            self.core.close(link.conn)
        self.links.clear()
        self.neighbours.clear()

    # === upkeep ==================================================================================
    def maintain(self, now: float) -> None:
        """Time-outs, heartbeats and the periodic buffermap requests."""
        core = self.core
        c = core.config
        for link in list(self.links.values()):
            if link.state != "up" and now - link.opened_at >= c.connect_timeout:
                self.drop(link, now)
            elif link.state == "up" and now - link.last_rx >= c.heartbeat_timeout:
                core.link_error(link, "heartbeat time-out")
                self.drop(link, now)
            elif link.state == "up" and now - link.last_tx >= c.heartbeat_interval:
                self.send(link, Heartbeat(), now)
        if now >= self.next_buffermap:
            self.next_buffermap = now + c.buffermap_interval
            for link in self.neighbours.values():
                self.send(link, Buffermap(core.overlay_id), now)

    def top_up(self, now: float) -> None:
        """Open links up to the target, and watch the source (a standby)."""
        self._fill(now)
        self._watch_source(now)

    def _fill(self, now: float) -> None:
        """Keep ``target_neighbours`` links; below the low-water mark, ask the HOMS (PLM FE)."""
        core = self.core
        c = core.config
        for peer in [p for p, t in self.retry_after.items() if t <= now]:
            del self.retry_after[peer]  # bounded: only back-offs still running are kept
        linked = {x.peer_id for x in self.links.values()}
        pending = sum(1 for x in self.links.values() if x.state != "up")
        want = c.target_neighbours - len(self.neighbours) - pending
        address = self.source_address or self.known.get(core.source_id)
        watch = core.standby and address is not None and core.source_id not in linked
        if watch and address is not None and self.retry_after.get(core.source_id, 0.0) <= now:
            self.connect(core.source_id, address, now)
            linked.add(core.source_id)
        if want > 0:
            options = [
                p
                for p in self.known
                if p not in linked and p not in self.banned and self.retry_after.get(p, 0.0) <= now
            ]
            core.rng.shuffle(options)
            for peer in options[:want]:
                self.connect(peer, self.known[peer], now)
            want -= min(want, len(options))
        if len(self.neighbours) < c.low_water and want > 0 and now >= self._next_peer_list:
            self._next_peer_list = now + c.peer_list_interval
            core.counters.peer_list_requests += 1
            core.want_peer_list()

    def _watch_source(self, now: float) -> None:
        core = self.core
        if not core.standby or core.is_source:
            return
        known = self.source_address or self.known.get(core.source_id)
        if core.source_id in self.neighbours or known is None:
            # linked to the source, or never told where it is: nothing to judge yet
            self._source_missing_since = None
            return
        if self._source_missing_since is None:
            self._source_missing_since = now
        elif now - self._source_missing_since >= core.config.takeover_after:
            core.take_over(now)

    # === sending =================================================================================
    def announce(self, news: list[int], now: float) -> None:
        """Tell each neighbour the new sequences it is not known to hold."""
        for link in self.neighbours.values():
            fresh = [s for s in news if s not in link.have]
            if fresh:
                self.send_buffermap(link, fresh, now)

    def send_buffermap(self, link: MeshLink, sequences: list[int], now: float) -> None:
        core = self.core
        step = core.config.buffermap_chunk
        for i in range(0, max(len(sequences), 1), step):
            entry = BuffermapEntry(core.source_id, sequences[i : i + step])
            self.send(link, BuffermapResponse(core.overlay_id, [entry]), now)

    def send(self, link: MeshLink, message: Message, now: float) -> None:
        link.last_tx = now
        self.core.effects.append(Send((link.conn,), message))

    def _report(self) -> None:
        neighbours = tuple(sorted(self.neighbours))
        if neighbours != self._reported:
            self._reported = neighbours
            self.core.effects.append(HomsReport(Costmap(neighbours, (), ())))
