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

from dataclasses import dataclass

from hp2p.wire.r2.messages import SCAN_TREE_LEAF, SCAN_TREE_NON_LEAF, ScanTree, ScanTreeResponse


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
