"""Peer-list selection: the OPM FE of Q.4100 §7.3 (overlay peer management).

Pure functions, no I/O, no clock and no global randomness: the HOMS routes call them with
rows read inside the join transaction, and the simulator calls them unchanged with its own
plain data. Everything they need comes in as arguments, so the same inputs always give the
same peer list (mesh selection takes an injected ``random.Random``).

The tree rules reproduce the reference HOMS (etri-2023-protocol.md §2.5) exactly, because a
reference peer relies on them:

* *active* peers are those whose last report had ``num_primary > 0``, ranked 1..N by ticket;
* a normal join gets the first ``size`` active peers at or after the rank
  ``floor(active × pct / 100)``, with ``pct`` from :data:`INITIAL_ENTRY_POINT_POS`; this keeps
  the root side as entry point while the overlay is small and moves entry points down the
  join order as it grows, which spreads HELLO load away from the root;
* a recovery join gets up to ``size`` active peers with a ticket *lower* than the requester's,
  highest first (the closest older peers). An older ticket can never be a descendant in a
  loop-free tree, which is why recovery never offers a younger peer;
* when that leaves nothing, the single lowest-ticket peer (normally the root) is returned,
  whatever its ``num_primary``: a joiner always gets somewhere to say HELLO to.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Reference entry-point positions: {minimum active peers: percentile of the ranked list}.
INITIAL_ENTRY_POINT_POS: Mapping[int, int] = {5: 30, 10: 40, 20: 60, 30: 80}

#: Reference recovery rank limit, in percent of the active peers (100 = every active peer).
RECOVERY_ENTRY_POINT_POS = 100

#: A member whose last sign of life (join, refresh, report) is older than this fraction of its
#: ``expires`` missed its refresh (due at 0.8 × expires, etri-2023-protocol.md §2.6) by a
#: margin: the HOMS has evidence that it is dead. Lists for keyless (reference) joiners leave
#: such peers out, as they leave out suspects: a Go peer dials the first entry and waits for
#: ever on an offer the relay drops (go-peer-2023 README, "Hang"); docs/homs.md.
OVERDUE_FRACTION = 0.9

#: Default list sizes (issue #3): 3 for a tree (the reference ``PEER_INFO_LIST_COUNT``), 8 for
#: a mesh, where a peer wants several neighbours at once.
DEFAULT_TREE_LIST_SIZE = 3
DEFAULT_MESH_LIST_SIZE = 8


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """What the selection needs to know about one live member of an overlay."""

    peer_id: str
    address: str
    ticket: int
    num_primary: int = 0

    @property
    def active(self) -> bool:
        """Whether the peer reported at least one primary path, i.e. it is attached."""
        return self.num_primary > 0


def _ranked_active(peers: Sequence[PeerEntry]) -> list[PeerEntry]:
    return sorted((p for p in peers if p.active), key=lambda p: p.ticket)


def _fallback(peers: Sequence[PeerEntry]) -> list[PeerEntry]:
    if not peers:
        return []
    return [min(peers, key=lambda p: p.ticket)]


def entry_start_rank(active: int, positions: Mapping[int, int] = INITIAL_ENTRY_POINT_POS) -> int:
    """The first rank (1-based) handed out to a joiner when ``active`` peers are attached.

    The largest threshold not above ``active`` picks the percentile; below the smallest
    threshold the smallest one applies (the reference does the same).
    """
    if not positions:
        return 0
    thresholds = sorted(positions)
    i = bisect.bisect_right(thresholds, active) - 1
    key = thresholds[max(i, 0)]
    return (active * positions[key]) // 100


def entry_window(
    active: int,
    size: int = DEFAULT_TREE_LIST_SIZE,
    positions: Mapping[int, int] = INITIAL_ENTRY_POINT_POS,
) -> tuple[int, int]:
    """(offset, count) of the entry points within the ticket-ordered active peers.

    The HOMS store uses this to fetch only the window with ``OFFSET … LIMIT …`` instead of
    loading every active peer on each join; :func:`tree_entry_points` uses it on a list.
    """
    if size < 1:
        raise ValueError(f"peer list size must be at least 1, got {size}")
    # rank r (1-based) is index r - 1; "rank >= start" with start 0 or 1 means everyone.
    return max(entry_start_rank(active, positions) - 1, 0), size


def tree_entry_points(
    peers: Sequence[PeerEntry],
    size: int = DEFAULT_TREE_LIST_SIZE,
    positions: Mapping[int, int] = INITIAL_ENTRY_POINT_POS,
) -> list[PeerEntry]:
    """The peer list for a normal join into a tree (CoreTree or SubTree).

    ``peers`` are the live members, the joiner included (it is the fallback of a first join:
    the first peer of an overlay is told about itself and so knows it is the root).
    """
    ranked = _ranked_active(peers)
    offset, count = entry_window(len(ranked), size, positions)
    return ranked[offset : offset + count] or _fallback(peers)


def tree_recovery_points(
    peers: Sequence[PeerEntry],
    ticket: int,
    size: int = DEFAULT_TREE_LIST_SIZE,
    recovery_pos: int = RECOVERY_ENTRY_POINT_POS,
) -> list[PeerEntry]:
    """The peer list for a recovery join of the peer holding ``ticket``.

    Only older (lower-ticket) active peers, nearest first, so that a recovering peer never
    attaches below its own subtree.
    """
    if size < 1:
        raise ValueError(f"peer list size must be at least 1, got {size}")
    ranked = _ranked_active(peers)
    limit = max((len(ranked) * recovery_pos) // 100, 1)
    older = [p for p in ranked[:limit] if p.ticket < ticket]
    older.reverse()
    return older[:size] or _fallback(peers)


def mesh_neighbours(
    peers: Sequence[PeerEntry],
    requester_id: str,
    rng: random.Random,
    size: int = DEFAULT_MESH_LIST_SIZE,
) -> list[PeerEntry]:
    """The peer list for a SubMesh join: a uniformly random subset of the other live peers.

    A mesh has no ticket order to respect, and a uniform choice spreads links evenly. The
    first member gets itself back, like the tree fallback, so a client can tell "you are
    alone" from an error. The result is sorted by ticket so that it is stable for a seed.
    """
    if size < 1:
        raise ValueError(f"peer list size must be at least 1, got {size}")
    others = sorted((p for p in peers if p.peer_id != requester_id), key=lambda p: p.ticket)
    if not others:
        return [p for p in peers if p.peer_id == requester_id][:1]
    chosen = rng.sample(others, min(size, len(others)))
    return sorted(chosen, key=lambda p: p.ticket)
