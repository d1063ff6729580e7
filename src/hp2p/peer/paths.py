"""Primary and candidate path management (PPM and CPM FEs, Q.4100 §7.2.2.1–2).

A *path* is a long-lived connection to another peer of the overlay, in one of four roles:

* the **parent** — my outgoing primary path, at most one (none at the root);
* **children** — incoming primary paths, at most ``max_children`` (plus ``recovery_children``
  for peers that lost their parent: see :meth:`PathTable.child_slot_free`);
* **outgoing candidates** — older peers that volunteered (ESTAB) and that I keep as backup
  parents, at most ``max_outgoing_candidates``;
* **incoming candidates** — younger peers I volunteered to, at most ``max_incoming_candidates``.

Q.4100 §7.2.2.2 counts incoming and outgoing candidates separately and apart from primaries; the
reference peer instead counts parent and children together and tests "free primary slot OR free
incoming-candidate slot" before volunteering (etri-2023-protocol.md §9.2). Here each limit is its
own counter, and a pending volunteer offer already holds its incoming-candidate slot.

Connections that are not (yet) paths — a short-lived HELLO link, an ESTAB not yet answered —
live in the same table with a transient role, so every open connection has exactly one record.
The table keeps the fan-out tuples of the broadcast hot path precomputed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hp2p.peer.effects import Costmap

if TYPE_CHECKING:
    from hp2p.trust.credential import Credential


class Role(enum.Enum):
    CONNECTING = "connecting"  # outgoing connection not yet made
    INCOMING = "incoming"  # accepted connection, nothing received yet
    HELLO = "hello"  # short-lived HELLO link (either side)
    VOLUNTEER = "volunteer"  # I sent ESTAB, waiting for 2200 (holds an in-candidate slot)
    OFFERED = "offered"  # I received ESTAB while collecting; not yet decided
    OUT_CANDIDATE = "outgoing_candidate"
    IN_CANDIDATE = "incoming_candidate"
    PARENT = "parent"
    CHILD = "child"

    # Identity hash (C level): roles are set members on the broadcast hot path, and Enum's
    # default __hash__ is a Python function.
    __hash__ = object.__hash__


PATH_ROLES = frozenset(
    {Role.OUT_CANDIDATE, Role.IN_CANDIDATE, Role.PARENT, Role.CHILD, Role.OFFERED}
)

_IN_GROUP = frozenset({Role.VOLUNTEER, Role.IN_CANDIDATE})


@dataclass(slots=True, eq=False)
class Link:
    """One connection and what this peer knows about the peer behind it."""

    conn: int
    role: Role
    peer_id: str = ""
    address: str = ""
    ticket: int = 0
    depth: int | None = None  # the remote's tree depth when it told us (hp2p extension)
    rtt: float | None = None
    slot: int | None = None  # a child's report: shallowest free child slot in its subtree
    last_rx: float = 0.0
    opened: float = 0.0
    vertical: bool = False  # the grandparent, reached by a vertical-candidate HELLO
    allow_primary: bool = True
    offer_pending: bool = False  # I volunteered; the joiner has not settled the offer yet
    displace: bool = False  # the volunteer is full and would displace a younger child for me
    purpose: object = None  # what to send once an outgoing connection is made
    cred: Credential | None = None  # the peer's membership credential, proven on this link
    strikes: int = 0  # forged or unverifiable data received on this link
    scan_at: float = float("-inf")  # when this link last brought a SCAN_TREE request
    #: reference-compat overlays (no AUTH): the joiner's HELLO carried a valid credential for
    #: this peer-id and ticket, and this link dials the address that credential names
    vouched: bool = False
    #: The peer showed it runs hp2p: it proved a credential, or a frame it sent carried an
    #: ``hp2p`` extension (docs/peer.md, "Reference peers"). Until then it is treated as a
    #: reference (Go) peer: no frame that crashes one is sent to it, and lost data is pushed.
    hp2p: bool = False


_EMPTY_EXT: dict[type, object] = {}


def shows_hp2p(message: object) -> bool:
    """``message`` carries a non-empty ``hp2p`` extension, which no reference peer writes.

    Only hp2p writes the extension object, and hp2p writes it only when something is set
    (``Extension`` omits defaults), so an empty one proves nothing either way.
    """
    ext = getattr(message, "hp2p", None)
    if ext is None:
        return False
    kind = type(ext)
    empty = _EMPTY_EXT.get(kind)
    if empty is None:
        empty = _EMPTY_EXT[kind] = kind()
    return bool(ext != empty)


class PathLimitError(Exception):
    """A role change would exceed a configured limit (a bug in the caller, not in a peer)."""


class PathTable:
    """Every connection of the peer with its role; limits and broadcast fan-out tuples."""

    def __init__(
        self, max_children: int, max_out: int, max_in: int, recovery_children: int = 0
    ) -> None:
        self.max_children = max_children
        self.recovery_children = recovery_children
        self.max_out = max_out
        self.max_in = max_in
        self.links: dict[int, Link] = {}
        self.parent: Link | None = None
        self._counts: dict[Role, int] = dict.fromkeys(Role, 0)
        self.primary: tuple[int, ...] = ()
        self.primary_and_candidates: tuple[int, ...] = ()
        self._except: dict[int, tuple[int, ...]] = {}
        self._except_all: dict[int, tuple[int, ...]] = {}

    # --- counting ---------------------------------------------------------------------------
    def count(self, role: Role) -> int:
        return self._counts[role]

    @property
    def children(self) -> int:
        return self._counts[Role.CHILD]

    @property
    def in_candidates(self) -> int:
        """Incoming candidates including offers still pending (their slot is held)."""
        return self._counts[Role.IN_CANDIDATE] + self._counts[Role.VOLUNTEER]

    @property
    def out_candidates(self) -> int:
        return self._counts[Role.OUT_CANDIDATE]

    def child_slot_free(self, recovery: bool = False) -> bool:
        """A free child slot; ``recovery`` also counts the slots kept for orphans.

        The ticket rule lets an orphan attach only below an *older* peer, and in a full tree
        the older peers are the full upper levels; without a few spare slots there, an orphan
        with a low ticket would find no parent at all.
        """
        limit = self.max_children + (self.recovery_children if recovery else 0)
        return self.children < limit

    def in_candidate_slot_free(self) -> bool:
        return self.in_candidates < self.max_in

    def out_candidate_slot_free(self) -> bool:
        return self.out_candidates < self.max_out

    def can_volunteer(self, recovery: bool = False, now: float = 0.0, hold: float = 0.0) -> bool:
        """Volunteer (ESTAB) only with a child slot AND an incoming-candidate slot free.

        The child slot is what the joiner will ask for with SET_PRIMARY; the candidate slot is
        what the path occupies until then. The reference's OR floods ESTABs (§9.2). Offers
        made less than ``hold`` seconds ago and not yet settled by the joiner (SET_PRIMARY,
        SET_CANDIDATE, RELEASE) hold a child slot each: a peer never promises more slots than
        it has, so a joiner that picked it is not turned away by 4603 because of a race.
        """
        if not self.in_candidate_slot_free():
            return False
        limit = self.max_children + (self.recovery_children if recovery else 0)
        held = 0
        if hold > 0:
            for link in self.links.values():
                if link.offer_pending and link.role in _IN_GROUP and now - link.opened < hold:
                    held += 1
        return self.children + held < limit

    def displaceable(self, ticket: int) -> Link | None:
        """The youngest child younger than ``ticket``: what an older orphan may take the slot of.

        The ticket rule lets an orphan attach only below older peers. When every older peer
        is full (spare slots included, often taken by young orphans that had plenty of other
        choices), the old orphan has no legal place at all; the youngest child has the most
        (every older peer) and repairs through its own candidates.
        """
        best: Link | None = None
        for link in self.links.values():
            if (
                link.role is Role.CHILD
                and link.ticket > ticket
                and (best is None or link.ticket > best.ticket)
            ):
                best = link
        return best

    # --- records ------------------------------------------------------------------------------
    def add(self, link: Link) -> Link:
        if link.conn in self.links:
            raise PathLimitError(f"connection {link.conn} already known")
        self._check_room(link.role)
        self.links[link.conn] = link
        self._counts[link.role] += 1
        if link.role is Role.PARENT:
            self.parent = link
        self._refresh()
        return link

    def get(self, conn: int) -> Link | None:
        return self.links.get(conn)

    def set_role(self, link: Link, role: Role, recovery: bool = False) -> None:
        if link.role is role:
            return
        if role is Role.PARENT and self.parent is not None and self.parent is not link:
            raise PathLimitError("a peer has at most one parent")
        if not (link.role in _IN_GROUP and role in _IN_GROUP):
            self._check_room(role, recovery)  # an accepted offer keeps the slot it held
        self._counts[link.role] -= 1
        if link.role is Role.PARENT:
            self.parent = None
        link.role = role
        self._counts[role] += 1
        if role is Role.PARENT:
            self.parent = link
        self._refresh()

    def remove(self, conn: int) -> Link | None:
        link = self.links.pop(conn, None)
        if link is None:
            return None
        self._counts[link.role] -= 1
        if link is self.parent:
            self.parent = None
        self._refresh()
        return link

    def _check_room(self, role: Role, recovery: bool = False) -> None:
        if role is Role.CHILD and not self.child_slot_free(recovery):
            raise PathLimitError("no free child slot")
        if role is Role.OUT_CANDIDATE and not self.out_candidate_slot_free():
            raise PathLimitError("no free outgoing-candidate slot")
        if role in (Role.IN_CANDIDATE, Role.VOLUNTEER) and not self.in_candidate_slot_free():
            raise PathLimitError("no free incoming-candidate slot")
        if role is Role.PARENT and self.parent is not None:
            raise PathLimitError("a peer has at most one parent")

    # --- views ------------------------------------------------------------------------------
    def with_role(self, *roles: Role) -> list[Link]:
        return [link for link in self.links.values() if link.role in roles]

    def paths(self) -> list[Link]:
        """Links that are established paths (heartbeats and liveness apply to them)."""
        return [link for link in self.links.values() if link.role in PATH_ROLES]

    def by_peer(self, peer_id: str, pending: bool = False) -> Link | None:
        """The path to ``peer_id``; with ``pending``, also an unanswered volunteer offer."""
        for link in self.links.values():
            if link.peer_id == peer_id and (
                link.role in PATH_ROLES or (pending and link.role is Role.VOLUNTEER)
            ):
                return link
        return None

    def fanout(self, arrival: int | None, candidates: bool) -> tuple[int, ...]:
        """Connections a broadcast goes to: primary paths (and candidates) except arrival."""
        table = self._except_all if candidates else self._except
        if arrival is None:
            return self.primary_and_candidates if candidates else self.primary
        found = table.get(arrival)
        if found is not None:
            return found
        return self.primary_and_candidates if candidates else self.primary

    def costmap(self) -> Costmap:
        def ids(role: Role) -> tuple[str, ...]:
            return tuple(sorted(link.peer_id for link in self.with_role(role)))

        primary = ids(Role.PARENT) + ids(Role.CHILD)
        return Costmap(
            primary=primary,
            outgoing_candidate=ids(Role.OUT_CANDIDATE),
            incoming_candidate=ids(Role.IN_CANDIDATE),
        )

    def _refresh(self) -> None:
        primary = tuple(
            link.conn for link in self.links.values() if link.role in (Role.PARENT, Role.CHILD)
        )
        both = primary + tuple(
            link.conn
            for link in self.links.values()
            if link.role in (Role.OUT_CANDIDATE, Role.IN_CANDIDATE)
        )
        self.primary = primary
        self.primary_and_candidates = both
        self._except = {c: tuple(x for x in primary if x != c) for c in both}
        self._except_all = {c: tuple(x for x in both if x != c) for c in both}
