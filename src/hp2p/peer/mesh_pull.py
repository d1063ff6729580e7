"""Pulling a SubMesh's pieces: rarest first, from several neighbours, bounded in flight.

Neighbours announce what they hold (additive BUFFERMAP responses); this module counts, per
piece this peer lacks, how many neighbours hold it, and asks for the rarest first (manifests
before data), each from the least-loaded holder, within ``max_requests`` in total and
``max_requests_per_neighbour`` per neighbour. A scheduling pass looks at a bounded window of
objects, not at the whole history. A holder that answered 11404 or timed out is not asked
for that piece again until every holder failed once.

Manifests are taken only under the source-key rules: with a key, only with a valid
signature; without one, the shell is asked once for the HOMS's record before a signed
manifest is taken on trust, and never when signatures are required. A neighbour that served a
refused manifest earns a strike and is never asked for that manifest again.

An application may want only some objects' data (an IoT history keeping R replicas): with a
want-predicate (``MeshCore.set_wants``) an object whose manifest says it is not wanted is
*parked*: its availability is still counted (so the application can tell who holds it and
fetch it on demand with ``MeshCore.prioritise``), but its data pieces are neither requested
nor take a place in the pull window. Manifests are always pulled.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hp2p.peer.mesh_objects import (
    PIECE_BITS,
    PIECE_MASK,
    Manifest,
    ManifestError,
    SignatureError,
    decode_manifest,
    piece_ok,
    split_sequence,
    split_signature,
    verify_piece0,
)
from hp2p.wire.r2.messages import GET_DATA_OK, BuffermapResponse, GetData, GetDataResponse

if TYPE_CHECKING:
    from hp2p.peer.mesh import MeshCore
    from hp2p.peer.mesh_links import MeshLink


@dataclass(slots=True)
class PieceRequest:
    peer_id: str
    deadline: float


class MeshPuller:
    """Availability counts, requests in flight and the pull schedule."""

    def __init__(self, core: MeshCore) -> None:
        self.core = core
        # object -> {sequence I lack -> neighbours holding it}: grouped by object so that a
        # scheduling pass looks at a bounded window of objects, not at the whole history
        self.availability: dict[int, dict[int, int]] = {}
        self.requests: dict[int, PieceRequest] = {}
        self._tried: dict[int, set[str]] = {}
        # peer-id -> manifests (sequences) it served with a bad or missing signature: never
        # asked of it again (bounded like the ban list, each set by max_announced)
        self._refused_manifests: OrderedDict[str, set[int]] = OrderedDict()
        #: objects the application wants first (a history query waiting for them); bounded
        self.priority: frozenset[int] = frozenset()
        #: objects in ``availability`` whose data the application does not want (see module doc)
        self.parked: set[int] = set()

    # === what neighbours hold ====================================================================
    def on_buffermap_response(self, link: MeshLink, msg: BuffermapResponse) -> None:
        core = self.core
        if msg.overlay_id != core.overlay_id:
            core.counters.foreign_source += 1
            return
        refused = self._refused_manifests.get(link.peer_id or "", ())
        have = core.holdings.have
        floor = core.holdings.floor
        for entry in msg.buffermap:
            if entry.source_peer_id != core.source_id:
                core.counters.foreign_source += 1
                continue
            for seq in entry.sequences:
                if seq in link.have or seq in refused:
                    continue
                if len(link.have) >= core.config.max_announced:
                    core.error(
                        link.conn,
                        f"{link.peer_id}: announced more than {core.config.max_announced} "
                        "pieces; the rest of its buffermap is ignored",
                    )
                    return
                obj, _ = split_sequence(seq)
                if obj < 1 or obj < floor:
                    continue
                link.have.add(seq)
                if seq not in have:
                    fresh = obj not in self.availability
                    counts = self.availability.setdefault(obj, {})
                    counts[seq] = counts.get(seq, 0) + 1
                    if fresh:
                        self.consider(obj)

    def neighbour_gone(self, link: MeshLink) -> None:
        for seq in link.have:
            self._avail_less(seq)
        for seq, req in list(self.requests.items()):
            if req.peer_id == link.peer_id:
                self._end_request(seq, req)

    def now_held(self, obj: int, seq: int) -> None:
        counts = self.availability.get(obj)
        if counts is not None:
            counts.pop(seq, None)
            if not counts:
                del self.availability[obj]
                self.parked.discard(obj)

    def consider(self, obj: int) -> None:
        """Park ``obj`` if the application does not want its data (now), else unpark it."""
        if self.core.wanted(obj):
            self.parked.discard(obj)
        else:
            self.parked.add(obj)

    def rewant(self, objects: list[int] | None = None) -> None:
        """The application's wishes changed: ask again for ``objects`` (None: every object
        heard of; bounded like ``availability``)."""
        for obj in list(self.availability) if objects is None else objects:
            if obj in self.availability:
                self.consider(obj)

    def relearn(self, obj: int) -> None:
        """The data of ``obj`` was let go (``MeshCore.release``): count again which
        neighbours hold its pieces, so it can be fetched again on demand."""
        manifest = self.core.holdings.manifests.get(obj)
        if manifest is None:
            return
        counts = self.availability.setdefault(obj, {})
        for link in self.core.links.neighbours.values():
            for index in range(1, manifest.count + 1):
                seq = (obj << PIECE_BITS) | index
                if seq in link.have:
                    counts[seq] = counts.get(seq, 0) + 1
        if not counts:
            del self.availability[obj]
            self.parked.discard(obj)
        else:
            self.consider(obj)

    def below_floor(self, floor: int) -> None:
        """Objects below ``floor`` are never fetched: forget what was known of them."""
        for obj in [o for o in self.availability if o < floor]:
            del self.availability[obj]
            self.parked.discard(obj)
        for seq in [q for q in self._tried if split_sequence(q)[0] < floor]:
            del self._tried[seq]

    # === answers =================================================================================
    def on_piece(self, link: MeshLink, msg: GetDataResponse, now: float) -> None:
        core = self.core
        holdings = core.holdings
        seq = msg.sequence
        req = self.requests.get(seq)
        if req is None or req.peer_id != link.peer_id:
            core.counters.unsolicited += 1
            return
        self._end_request(seq, req)
        if msg.code != GET_DATA_OK:
            core.counters.misses += 1
            self._forget_holder(link, seq)
            return
        if msg.source != core.source_id:
            core.counters.foreign_source += 1
            self._forget_holder(link, seq)
            core.links.strike(link, f"piece of source {msg.source!r}, not {core.source_id!r}", now)
            return
        obj, index = split_sequence(seq)
        if obj < holdings.floor or seq in holdings.have:
            return
        if index == 0:
            manifest = self._take_manifest(link, seq, msg.data, now)
            if manifest is None:
                return
            holdings.manifests[obj] = manifest
            holdings.manifest_from[obj] = link.peer_id or ""
            self.consider(obj)
        else:
            known = holdings.manifests.get(obj)
            if known is None or not piece_ok(known, index, msg.data):
                core.counters.forged += 1
                self._forget_holder(link, seq)
                core.links.strike(link, f"piece {obj}/{index} does not match its manifest", now)
                return
        self._accept_piece(seq, msg.data)
        holdings.complete(obj, now)

    def _take_manifest(self, link: MeshLink, seq: int, data: bytes, now: float) -> Manifest | None:
        """Piece 0 from ``link``: the manifest if it may be trusted, else None (and why)."""
        core = self.core
        config = core.config
        obj = seq >> PIECE_BITS
        key = core.source_key
        try:
            if key is not None:
                unsigned = verify_piece0(data, key, core.overlay_id, core.source_id)
            else:
                signature, unsigned = split_signature(data)
                if config.require_signatures or (signature is not None and not core.key_asked):
                    # No key to check it with: ask the HOMS first; the holder did nothing
                    # wrong, so it stays a holder and the manifest is pulled after the answer.
                    core.want_key(now)
                    return None
                if signature is not None:
                    # Signed, but the HOMS recorded no key when asked: taken on trust, and
                    # the HOMS is asked again now and then (at most once per
                    # peer_list_interval) in case the source has recorded its key since.
                    core.want_key(now)
            manifest = decode_manifest(unsigned, obj, config.max_piece_size)
            if manifest.size > config.max_object_size:
                raise ManifestError(
                    f"object of {manifest.size} bytes exceeds max_object_size "
                    f"{config.max_object_size}"
                )
        except SignatureError as exc:
            core.counters.forged += 1
            if exc.missing:
                core.counters.unsigned_refused += 1
            else:
                core.counters.bad_signatures += 1
            self._refuse_from(link, seq)
            core.links.strike(link, f"manifest of object {obj} refused: {exc}", now)
            return None
        except ManifestError as exc:
            core.counters.forged += 1
            self._forget_holder(link, seq)
            core.links.strike(link, f"bad manifest for object {obj}: {exc}", now)
            return None
        if key is not None:
            core.counters.manifests_verified += 1
        else:
            core.counters.manifests_unverified += 1
        return manifest

    def _refuse_from(self, link: MeshLink, seq: int) -> None:
        """Never ask this neighbour for this manifest again, even if it announces it anew."""
        self._forget_holder(link, seq)
        if link.peer_id is None:
            return
        refused = self._refused_manifests.setdefault(link.peer_id, set())
        self._refused_manifests.move_to_end(link.peer_id)
        config = self.core.config
        if len(refused) < config.max_announced:
            refused.add(seq)
        while len(self._refused_manifests) > config.max_banned:
            self._refused_manifests.popitem(last=False)

    def _accept_piece(self, seq: int, data: bytes) -> None:
        counters = self.core.counters
        counters.pieces_received += 1
        counters.bytes_received += len(data)
        self._tried.pop(seq, None)
        self.core.holdings.keep(seq, data)

    def _forget_holder(self, link: MeshLink, seq: int) -> None:
        if seq in link.have:
            link.have.discard(seq)
            self._avail_less(seq)
        if link.peer_id is not None:
            self._tried.setdefault(seq, set()).add(link.peer_id)

    # === requests ================================================================================
    def expire(self, now: float) -> None:
        """Requests past their deadline: counted, and that holder is tried last."""
        for seq, req in list(self.requests.items()):
            if req.deadline <= now:
                self.core.counters.timeouts += 1
                self._end_request(seq, req)
                self._tried.setdefault(seq, set()).add(req.peer_id)

    def next_deadline(self) -> float | None:
        return min((r.deadline for r in self.requests.values()), default=None)

    def _send_get(self, link: MeshLink, seq: int, now: float) -> None:
        core = self.core
        assert link.peer_id is not None
        link.inflight += 1
        self.requests[seq] = PieceRequest(link.peer_id, now + core.config.request_timeout)
        core.counters.requests_sent += 1
        core.links.send(link, GetData(core.overlay_id, core.source_id, seq), now)

    def _end_request(self, seq: int, req: PieceRequest) -> None:
        self.requests.pop(seq, None)
        link = self.core.links.neighbours.get(req.peer_id)
        if link is not None and link.inflight > 0:
            link.inflight -= 1

    def schedule(self, now: float) -> None:
        """Rarest first (manifests before data), least-loaded holder, bounded in flight."""
        core = self.core
        c = core.config
        free = c.max_requests - len(self.requests)
        if free <= 0 or not self.availability or core.left:
            return
        neighbours = list(core.links.neighbours.values())
        per = c.max_requests_per_neighbour
        if not any(n.inflight < per for n in neighbours):
            return
        for seq in self._candidates():
            if free <= 0:
                break
            tried = self._tried.get(seq, set())
            holders = [n for n in neighbours if seq in n.have and n.inflight < per]
            fresh = [n for n in holders if n.peer_id not in tried]
            if not fresh and holders:
                self._tried.pop(seq, None)  # every holder failed once: start a new round
                fresh = holders
            if not fresh:
                continue
            best = min(n.inflight for n in fresh)
            pick = core.rng.choice([n for n in fresh if n.inflight == best])
            self._send_get(pick, seq, now)
            free -= 1

    def _candidates(self) -> list[int]:
        """Pieces worth asking for now, rarest first (manifests first), ties at random."""
        core = self.core
        manifests = core.holdings.manifests
        candidates: list[tuple[bool, bool, int, float, int]] = []
        hold_manifests = core.awaiting_key()
        for obj in self._window():
            manifest = manifests.get(obj)
            for seq, count in self.availability[obj].items():
                if seq in self.requests:
                    continue
                index = seq & PIECE_MASK
                if index != 0 and (manifest is None or index > manifest.count):
                    continue  # no manifest yet, or a piece the object does not have
                if index == 0 and hold_manifests:
                    continue  # no key yet to check it with (asked of the HOMS)
                later = obj not in self.priority
                candidates.append((later, index != 0, count, core.rng.random(), seq))
        candidates.sort()
        return [seq for _, _, _, _, seq in candidates]

    def _window(self) -> list[int]:
        """Objects a pass may pull from: the oldest ``fetch_window`` and the newest two, after
        up to ``fetch_window`` objects the application asked for first (``MeshCore.prioritise``).

        A late joiner with a long history works through it oldest first, while the newest
        objects (live data) are never starved behind it; either way a pass costs a bounded
        number of pieces, not the whole history. Parked objects (not wanted) take no place
        in it unless asked for first.
        """
        parked = self.parked
        objects = sorted(o for o in self.availability if o not in parked)
        size = self.core.config.fetch_window
        wanted = sorted(o for o in self.priority if o in self.availability)[:size]
        if len(objects) <= size + 2:
            return list(dict.fromkeys([*wanted, *objects]))
        return list(dict.fromkeys([*wanted, *objects[:size], *objects[-2:]]))

    def _avail_less(self, seq: int) -> None:
        obj = seq >> PIECE_BITS
        counts = self.availability.get(obj)
        if counts is None:
            return
        count = counts.get(seq)
        if count is None:
            return
        if count <= 1:
            del counts[seq]
            if not counts:
                del self.availability[obj]
                self.parked.discard(obj)
        else:
            counts[seq] = count - 1
