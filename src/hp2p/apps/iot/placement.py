"""Which history members keep which segment: rendezvous hashing over the live members.

With ``--replicas R`` a history member keeps the data of a segment only when it is among the
segment's R *owners*: the R live members with the highest weight
``sha256(peer-id, SubMesh, object number)`` (highest-random-weight, or rendezvous, hashing).
Every member computes the same owners from the same member set without talking to the others,
and when a member dies only the segments it owned move, each to one new owner (the member
with the next weight), so repair pulls about 1/N of the history, not all of it.

The member set is what the HOMS lists for the SubMesh (``GET /api/OverlayStatus``): members
whose registration has not expired and whom the HOMS does not hold a suspect, minus the
SubMesh's source (the bridge). :func:`live_members` reads that answer; it is checked and
bounded like everything from the network.

Pure: the shell hands in the member set and the time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

__all__ = ["MAX_MEMBERS", "MembersError", "Placement", "live_members", "weight"]

#: Most members a placement considers; a larger SubMesh is refused (the answer is an error).
MAX_MEMBERS = 4096
#: Longest peer-id taken from the HOMS.
_MAX_PEER_ID = 256
#: Owners remembered per member set (recomputed after).
_CACHE = 65_536


class MembersError(ValueError):
    """The HOMS's member list cannot be used; ``str(err)`` says why."""


def weight(peer_id: str, namespace: str, obj: int) -> int:
    """The rendezvous weight of ``peer_id`` for object ``obj`` of SubMesh ``namespace``."""
    text = f"{peer_id}\x00{namespace}\x00{obj}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


class Placement:
    """``update(members, now)``, then ``owners(obj)`` / ``mine(obj)``.

    Until the first member set arrives the placement is not ``ready``; the shell decides what
    that means (a history member pulls nothing but manifests until then, and keeps everything
    if the HOMS cannot be read at all). ``replicas`` >= 1.
    """

    def __init__(self, replicas: int, self_id: str, namespace: str) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1 (0 means full replication: no placement)")
        self.replicas = replicas
        self.self_id = self_id
        self.namespace = namespace
        self.members: tuple[str, ...] = ()
        self.ready = False
        self.changed_at: float | None = None
        self.changes = 0
        self._owners: dict[int, tuple[str, ...]] = {}

    def update(self, members: Iterable[str], now: float) -> bool:
        """The live members now (this member is always one); True if the set changed."""
        current = tuple(sorted({*members, self.self_id}))
        if len(current) > MAX_MEMBERS:
            raise MembersError(f"more than {MAX_MEMBERS} history members: not supported")
        if self.ready and current == self.members:
            return False
        self.members = current
        self.ready = True
        self.changed_at = now
        self.changes += 1
        self._owners.clear()
        return True

    def owners(self, obj: int) -> list[str]:
        """The R members that keep object ``obj``, best first ([] before the first update)."""
        cached = self._owners.get(obj)
        if cached is None:
            ranked = sorted(
                self.members, key=lambda p: weight(p, self.namespace, obj), reverse=True
            )
            cached = tuple(ranked[: self.replicas])
            if len(self._owners) >= _CACHE:
                self._owners.clear()
            self._owners[obj] = cached
        return list(cached)

    def mine(self, obj: int) -> bool:
        """Does this member keep ``obj``? (False before the first update.)"""
        return self.self_id in self.owners(obj)


class _Peer(msgspec.Struct):
    peer_id: str = msgspec.field(name="peer-id")
    expires_at: float | None = None
    suspect_since: float | None = None


class _Overlay(msgspec.Struct):
    source_peer_id: str | None = msgspec.field(name="source-peer-id", default=None)


class _Status(msgspec.Struct):
    overlay: _Overlay
    peers: list[_Peer]


_decoder = msgspec.json.Decoder(_Status)


def live_members(body: bytes, now: float, *, source_id: str) -> list[str]:
    """The history members in a HOMS ``OverlayStatus`` answer: not expired at ``now``, not
    suspects, not the SubMesh's source. Raises :class:`MembersError` for an unusable answer."""
    try:
        status = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MembersError(f"the HOMS's OverlayStatus answer is not usable: {exc}") from None
    if len(status.peers) > MAX_MEMBERS + 1:
        raise MembersError(f"the SubMesh has more than {MAX_MEMBERS} members: not supported")
    sources = {source_id, status.overlay.source_peer_id}
    members = []
    for peer in status.peers:
        if not 0 < len(peer.peer_id) <= _MAX_PEER_ID:
            raise MembersError("the HOMS listed a member with an empty or overlong peer-id")
        if peer.peer_id in sources or peer.suspect_since is not None:
            continue
        if peer.expires_at is not None and peer.expires_at < now:
            continue
        members.append(peer.peer_id)
    return members
