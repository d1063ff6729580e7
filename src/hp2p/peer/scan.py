"""SCAN_TREE (etri-2023-protocol.md §4.8): discover the tree one leaf path at a time.

The request travels along primary paths away from the initiator, each hop prepending itself to
``via`` (the way back). A peer with no other primary path is a leaf: it answers 9200 with itself
as the first ``path`` element; each hop on the way back checks that it is ``via[0]``, pops itself
and prepends itself to ``path``, until ``via`` is empty at the initiator. Non-leaves answer 9100
to say they relayed. A peer relays each (initiator, cseq) once, so a scan terminates even if a
bug ever made a cycle; the initiator collects leaf paths until its timeout.

These functions only compute the next messages; the core sends them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hp2p.peer.effects import ScanPath, ScanResult
from hp2p.peer.paths import Link, Role
from hp2p.wire.r2.messages import SCAN_TREE_LEAF, SCAN_TREE_NON_LEAF, ScanTree, ScanTreeResponse

if TYPE_CHECKING:
    from hp2p.peer.core import PeerCore

_SCAN_MEMORY = 64
T_SCAN = "scan"


@dataclass(frozen=True, slots=True)
class ScanStep:
    """What a scan receiver does: answer the arrival path, maybe relay to other primaries."""

    response: ScanTreeResponse
    relay: ScanTree | None


def _response(msg: ScanTree, code: int, path: list[list[str]]) -> ScanTreeResponse:
    return ScanTreeResponse(
        code=code,
        cseq=msg.cseq,
        overlay_id=msg.overlay_id,
        peer_id=msg.peer_id,
        address=msg.address,
        ticket_id=msg.ticket_id,
        via=list(msg.via),
        path=path,
    )


def on_scan_request(
    msg: ScanTree, me: str, my_ticket: int, my_address: str, has_other_primaries: bool
) -> ScanStep:
    if has_other_primaries:
        relay = ScanTree(
            cseq=msg.cseq,
            overlay_id=msg.overlay_id,
            peer_id=msg.peer_id,
            address=msg.address,
            ticket_id=msg.ticket_id,
            via=[[me, my_address], *msg.via],
            path=list(msg.path),
        )
        return ScanStep(_response(msg, SCAN_TREE_NON_LEAF, list(msg.path)), relay)
    path = [[me, str(my_ticket), my_address], *msg.path]
    return ScanStep(_response(msg, SCAN_TREE_LEAF, path), None)


@dataclass(frozen=True, slots=True)
class ScanDone:
    """The leaf answer reached its initiator: ``path`` runs from my neighbour to the leaf."""

    path: list[list[str]]


@dataclass(frozen=True, slots=True)
class ScanForward:
    """Pass the leaf answer on towards ``next_peer`` (the new ``via[0]``)."""

    next_peer: str
    response: ScanTreeResponse


@dataclass(frozen=True, slots=True)
class ScanInvalid:
    reason: str


def on_leaf_response(
    resp: ScanTreeResponse, me: str, my_ticket: int, my_address: str
) -> ScanDone | ScanForward | ScanInvalid:
    via = resp.via
    if not via or not via[0] or via[0][0] != me:
        return ScanInvalid("SCAN_TREE answer whose via does not start with this peer")
    rest = via[1:]
    if not rest:
        return ScanDone(list(resp.path))
    if not rest[0]:
        return ScanInvalid("SCAN_TREE answer with an empty via element")
    forwarded = ScanTreeResponse(
        code=resp.code,
        cseq=resp.cseq,
        overlay_id=resp.overlay_id,
        peer_id=resp.peer_id,
        address=resp.address,
        ticket_id=resp.ticket_id,
        via=rest,
        path=[[me, str(my_ticket), my_address], *resp.path],
    )
    return ScanForward(rest[0][0], forwarded)


class TreeScan:
    """SCAN_TREE as initiator (collect leaf paths until the timeout) and as a hop."""

    def __init__(self, core: PeerCore) -> None:
        self.core = core
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._cseq = 0
        self._paths: list[ScanPath] | None = None

    def start(self, now: float) -> int:
        core = self.core
        self._cseq += 1
        cseq = self._cseq
        self._paths = []
        self._remember(core.peer_id, str(cseq))
        targets = core.paths.primary
        if targets:
            msg = ScanTree(
                cseq=cseq,
                overlay_id=core.overlay_id,
                peer_id=core.peer_id,
                address=core.address,
                ticket_id=core.ticket,
                via=[[core.peer_id, core.address]],
            )
            core.send(targets, msg)
            core.timers.arm(T_SCAN, now + core.config.scan_timeout)
        else:
            self.finish(now)
        return cseq

    def _remember(self, initiator: str, cseq: str) -> bool:
        key = (initiator, cseq)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > _SCAN_MEMORY:
            self._seen.popitem(last=False)
        return True

    def on_scan(self, link: Link, msg: ScanTree, now: float) -> None:
        core = self.core
        if link.role not in (Role.PARENT, Role.CHILD):
            core.error(link.conn, "SCAN_TREE on a connection that is not a primary path")
            return
        if len(msg.via) <= 1 and link.peer_id != msg.peer_id:
            core.error(link.conn, "SCAN_TREE names another initiator than the peer that sent it")
            return
        if now - link.scan_at < core.config.scan_gap:
            # each request reaches every peer and comes back from every leaf: rate-limited
            core.counters.scans_dropped += 1
            return
        link.scan_at = now
        if not self._remember(msg.peer_id, str(msg.cseq)):
            return
        others = tuple(conn for conn in core.paths.primary if conn != link.conn)
        step = on_scan_request(msg, core.peer_id, core.ticket, core.address, bool(others))
        core.send((link.conn,), step.response)
        if step.relay is not None:
            core.send(others, step.relay)

    def on_scan_response(self, link: Link, msg: ScanTreeResponse, now: float) -> None:
        core = self.core
        if msg.code != SCAN_TREE_LEAF:
            return
        outcome = on_leaf_response(msg, core.peer_id, core.ticket, core.address)
        if isinstance(outcome, ScanDone):
            if self._paths is not None and str(msg.cseq) == str(self._cseq):
                hops = tuple(
                    (hop[0], hop[1], hop[2]) if len(hop) >= 3 else (hop[0], "", "")
                    for hop in outcome.path
                    if hop
                )
                self._paths.append(ScanPath(hops))
        elif isinstance(outcome, ScanForward):
            target = core.paths.by_peer(outcome.next_peer)
            if target is None or target.role not in (Role.PARENT, Role.CHILD):
                core.error(link.conn, "SCAN_TREE answer towards a peer with no primary path")
                return
            core.send((target.conn,), outcome.response)
        else:
            core.error(link.conn, outcome.reason)

    def finish(self, now: float) -> None:
        self.core.timers.cancel(T_SCAN)
        paths = self._paths or []
        self._paths = None
        self.core.effects.append(ScanResult(self._cseq, tuple(paths)))

    def timers(self) -> dict[str, Callable[[float], None]]:
        return {T_SCAN: self.finish}
