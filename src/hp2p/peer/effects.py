"""What the sans-IO peer core asks its shell to do, and what it tells the application.

The core never performs I/O. Every decision leaves as one of these values, drained by the shell
with ``PeerCore.take_effects()`` in order. Connections are opaque integers (``conn``) so the same
core runs over TCP, the in-memory network and, later, WebRTC data channels.

``Send`` names several connections at once so a broadcast fan-out is encoded once by the shell.
"""

from __future__ import annotations

from dataclasses import dataclass

from hp2p.wire.r2.messages import Message


@dataclass(frozen=True, slots=True)
class Connect:
    """Reach ``peer_id`` as connection ``conn``; answer with connection_made/connection_failed.

    Peers are addressed by peer-id: ``addresses`` are the ways it advertised to be reached
    (``tcp://host:port`` today), tried in order by whichever transport of the shell's
    registry serves each address scheme.
    """

    conn: int
    peer_id: str
    addresses: tuple[str, ...]


# Send and Deliver are made once per broadcast hop: not frozen, because a frozen dataclass
# assigns its fields through object.__setattr__ and costs several times more to build.
# Treat every effect as immutable.


@dataclass(slots=True)
class Send:
    """Send ``message`` on every connection in ``conns`` (encode once, write many)."""

    conns: tuple[int, ...]
    message: Message


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection after flushing what was already sent on it."""

    conn: int


@dataclass(slots=True)
class Deliver:
    """Hand one broadcast message to the application: exactly once per (source, sequence)."""

    source: str
    sequence: int
    data: bytes
    app_id: str | None
    payload_type: str
    recovered: bool = False


@dataclass(frozen=True, slots=True)
class Costmap:
    """The path table as HOMP's report wants it (etri-2023-protocol.md §2.3, Report)."""

    primary: tuple[str, ...]
    outgoing_candidate: tuple[str, ...]
    incoming_candidate: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HomsReport:
    """Send a HybridOverlayReport: the path table changed."""

    costmap: Costmap


@dataclass(frozen=True, slots=True)
class HomsRecoveryJoin:
    """Ask the HOMS for a recovery peer list (``POST /peer?recovery=true``, same ticket).

    Answer with ``PeerCore.homs_result(peers, now)``; an empty list counts as a failed attempt.
    """

    ticket: int


@dataclass(frozen=True, slots=True)
class ScanPath:
    """One path found by SCAN_TREE: ``(peer_id, ticket, address)`` from my neighbour to a leaf."""

    hops: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True, slots=True)
class ScanResult:
    """SCAN_TREE finished (timeout reached): every leaf path that answered."""

    cseq: int
    paths: tuple[ScanPath, ...]


@dataclass(frozen=True, slots=True)
class PathEvent:
    """A path changed role (``added``/``role``/``removed``); for logs and monitoring."""

    kind: str
    peer_id: str
    role: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A peer sent something unexpected or malformed; counted, the peer keeps running."""

    conn: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Joined:
    """The peer is attached to the tree (root: ``parent`` is None). Also after a repair."""

    parent: str | None
    depth: int | None  # None: the parent did not tell its depth (a reference peer)
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class Detached:
    """The peer lost its parent and is looking for a new one (tree recovery started)."""

    reason: str


@dataclass(frozen=True, slots=True)
class JoinFailed:
    """Every bounded join/recovery attempt failed.

    ``rejoin``: the core's budget (``rejoins``) allows another try under a fresh HOMP
    membership, so the shell does a HOMP leave and join and calls ``start`` with the new
    ticket; False: the peer gives up for good. The core decides, so the simulator and the
    daemon spend the same budget.
    """

    reason: str
    rejoin: bool = False


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages ``first..last`` of ``source`` are lost for good: no peer could serve them.

    The data-recovery FE asked every holder for several rounds before giving up. Should one of
    them still arrive later (inside the duplicate window), it is delivered then, as recovered.
    """

    source: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class PeerLost:
    """A neighbour died (heartbeat time-out or connection reset), not a RELEASE.

    For the PSM FE of the HOMS: the ``HomsReport`` that follows in the same batch already drops
    the neighbour from the costmap, which is how HOMP reports a lost peer; shells may log it.
    """

    peer_id: str
    role: str
    reason: str


@dataclass(frozen=True, slots=True)
class Left:
    """The peer released every path and closed its connections."""


Effect = (
    Connect
    | Send
    | Close
    | Deliver
    | HomsReport
    | HomsRecoveryJoin
    | ScanResult
    | PathEvent
    | ProtocolError
    | Joined
    | Detached
    | JoinFailed
    | Gap
    | PeerLost
    | Left
)
