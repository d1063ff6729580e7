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
from dataclasses import dataclass, field

from hp2p.peer.config import PeerConfig
from hp2p.peer.paths import Link, PathTable


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
