"""What a SubMesh peer holds: verified manifests and pieces, bounded, oldest objects first out.

Every piece in the store matched its manifest's digest when it came in, and every manifest was
accepted under the source-key rules of :mod:`hp2p.peer.mesh_pull`; an object is delivered
once all its pieces are in *and* the whole object matches the manifest's hash. The store is
bounded in bytes and in objects; the oldest objects go whole, and the *floor* makes sure an
evicted object is never fetched again. A persistent store is re-read on start and whatever
still verifies is served again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hp2p.peer.mesh_objects import (
    MANIFEST_APP_ID,
    MAX_OBJECT,
    Manifest,
    ManifestError,
    SignatureError,
    decode_manifest,
    make_object,
    object_ok,
    piece_ok,
    sequence_of,
    split_sequence,
    split_signature,
    verify_piece0,
)
from hp2p.wire.r2.messages import GET_DATA_MISSING, GetData, GetDataResponse

if TYPE_CHECKING:
    from hp2p.peer.mesh import MeshCore
    from hp2p.peer.mesh_links import MeshLink


class MeshHoldings:
    """Manifests, held pieces and delivered objects of one SubMesh peer."""

    def __init__(self, core: MeshCore) -> None:
        self.core = core
        self.manifests: dict[int, Manifest] = {}
        self.manifest_from: dict[int, str] = {}
        self.objects: dict[int, set[int]] = {}  # object -> piece indexes held (0 = manifest)
        self.have: set[int] = set()
        self.bytes = 0
        self.floor = 1  # objects below are never fetched again (evicted or not wanted)
        self.delivered: set[int] = set()
        self.news: list[int] = []
        self.next_object = 1

    # === queries =================================================================================
    def holds(self, obj: int) -> bool:
        """Is the whole object held (and verified)?"""
        m = self.manifests.get(obj)
        held = self.objects.get(obj)
        return m is not None and held is not None and len(held) == m.count + 1

    def read_object(self, obj: int) -> bytes | None:
        """The object's bytes from the store, if wholly held."""
        m = self.manifests.get(obj)
        if m is None or not self.holds(obj):
            return None
        store = self.core.store
        parts = [store.get(sequence_of(obj, i)) for i in range(1, m.count + 1)]
        if any(p is None for p in parts):
            return None
        return b"".join(p for p in parts if p is not None)

    # === the source ==============================================================================
    def publish(self, data: bytes, app_id: str | None, meta: dict[str, Any] | None) -> int:
        """Cut, sign and keep one object at the source; the caller checked it may publish."""
        core = self.core
        config = core.config
        if len(data) > config.max_object_size:
            raise ValueError(
                f"object of {len(data)} bytes exceeds max_object_size "
                f"{config.max_object_size}; split it or raise the limit"
            )
        if len(data) > config.store_bytes:
            raise ValueError(
                f"object of {len(data)} bytes does not fit the piece store "
                f"({config.store_bytes} bytes); raise store_bytes"
            )
        number = self.next_object
        if number > MAX_OBJECT:
            raise ValueError("object numbers exhausted for this source")
        manifest, pieces = make_object(number, data, config.piece_size, app_id=app_id, meta=meta)
        self.next_object += 1
        self.manifests[number] = manifest
        piece0 = manifest.encode()
        if core.signer is not None:
            piece0 = core.signer.sign(piece0, core.overlay_id, core.source_id)
        self.keep(sequence_of(number, 0), piece0)
        for index, piece in enumerate(pieces, 1):
            self.keep(sequence_of(number, index), piece)
        self.delivered.add(number)
        self.evict()
        return number

    # === serving =================================================================================
    def serve(self, link: MeshLink, msg: GetData, now: float) -> None:
        """Answer GET_DATA from the store (11200), or 11404 for what is not held."""
        core = self.core
        seq = msg.sequence
        held = seq in self.have and msg.source_id == core.source_id
        data = core.store.get(seq) if held else None
        if data is None:
            core.counters.misses_served += 1
            response = GetDataResponse(
                source=msg.source_id, sequence=seq, data=b"", code=GET_DATA_MISSING
            )
            core.links.send(link, response, now)
            return
        obj, index = split_sequence(seq)
        if index == 0:
            ext: dict[str, Any] = {"app-id": MANIFEST_APP_ID}
            payload_type = "application/json"
        else:
            m = self.manifests.get(obj)
            ext = {"app-id": (m.app_id if m is not None else None) or "etri_data"}
            payload_type = "application/octet-stream"
        core.counters.pieces_served += 1
        core.counters.bytes_served += len(data)
        response = GetDataResponse(
            source=core.source_id,
            sequence=seq,
            data=data,
            ext_header=ext,
            payload_type=payload_type,
        )
        core.links.send(link, response, now)

    # === keeping =================================================================================
    def keep(self, seq: int, data: bytes) -> None:
        obj, index = split_sequence(seq)
        self.core.store.put(seq, data)
        self.objects.setdefault(obj, set()).add(index)
        self.have.add(seq)
        self.bytes += len(data)
        self.core.pull.now_held(obj, seq)
        self.news.append(seq)

    def complete(self, obj: int, now: float) -> None:
        """Deliver ``obj`` if it is whole and matches its manifest; strike a lying supplier."""
        core = self.core
        if obj in self.delivered or not self.holds(obj):
            self.evict()
            return
        manifest = self.manifests[obj]
        data = self.read_object(obj)
        if data is None or not object_ok(manifest, data):
            # Every piece matched its digest, so the manifest itself lied: forget it all.
            core.counters.bad_objects += 1
            supplier = core.links.neighbours.get(self.manifest_from.get(obj, ""))
            self.discard_object(obj)
            if supplier is not None:
                core.links.strike(
                    supplier, f"manifest of object {obj} does not match its data", now
                )
            return
        self.delivered.add(obj)
        core.counters.objects_delivered += 1
        core.object_received(obj, data, manifest)
        self.evict()

    def discard_object(self, obj: int) -> None:
        store = self.core.store
        held = self.objects.pop(obj, set())
        for index in held:
            seq = sequence_of(obj, index)
            self.have.discard(seq)
            data = store.get(seq)
            self.bytes -= len(data) if data is not None else 0
        store.drop_object(obj)
        self.manifests.pop(obj, None)
        self.manifest_from.pop(obj, None)

    def release_data(self, obj: int) -> bool:
        """Drop the data pieces of ``obj``, keep its manifest (``MeshCore.release``)."""
        held = self.objects.get(obj)
        seq0 = sequence_of(obj, 0)
        store = self.core.store
        raw0 = store.get(seq0) if held is not None and 0 in held else None
        if held is None or raw0 is None or len(held) < 2:
            return False
        for index in held - {0}:
            seq = sequence_of(obj, index)
            self.have.discard(seq)
            data = store.get(seq)
            self.bytes -= len(data) if data is not None else 0
        store.drop_object(obj)
        store.put(seq0, raw0)
        self.objects[obj] = {0}
        self.delivered.discard(obj)
        return True

    def evict(self) -> None:
        """Oldest objects first, whole, until under both bounds; never fetched again."""
        core = self.core
        config = core.config
        while self.objects and (
            self.bytes > config.store_bytes or len(self.objects) > config.store_objects
        ):
            oldest = min(self.objects)
            self.discard_object(oldest)
            core.counters.objects_evicted += 1
            self.floor = max(self.floor, oldest + 1)
            self.delivered.discard(oldest)
        if self.floor > 1:
            core.pull.below_floor(self.floor)
            self.delivered = {o for o in self.delivered if o >= self.floor}

    def load(self) -> None:
        """Re-read a persistent store: keep what still verifies, so it is served again."""
        store = self.core.store
        by_object: dict[int, list[int]] = {}
        for seq in store.sequences():
            obj, index = split_sequence(seq)
            if obj >= 1:
                by_object.setdefault(obj, []).append(index)
        for obj in sorted(by_object):
            raw = store.get(sequence_of(obj, 0))
            manifest = self._stored_manifest(obj, raw)
            if manifest is None or raw is None:
                store.drop_object(obj)
                continue
            self.manifests[obj] = manifest
            held = {0}
            self.bytes += len(raw)
            for index in by_object[obj]:
                data = store.get(sequence_of(obj, index)) if index else None
                if data is not None and piece_ok(manifest, index, data):
                    held.add(index)
                    self.bytes += len(data)
            self.objects[obj] = held
            self.have.update(sequence_of(obj, i) for i in held)
            if self.holds(obj):
                self.delivered.add(obj)
        if self.objects:
            self.next_object = max(self.objects) + 1
        self.evict()

    def _stored_manifest(self, obj: int, raw: bytes | None) -> Manifest | None:
        core = self.core
        try:
            if raw is None:
                raise ManifestError("no manifest")
            if core.source_key is not None:
                unsigned = verify_piece0(raw, core.source_key, core.overlay_id, core.source_id)
            elif core.config.require_signatures:
                raise SignatureError("no source key to check a stored manifest with")
            else:
                unsigned = split_signature(raw)[1]
            return decode_manifest(unsigned, obj, core.config.max_piece_size)
        except ManifestError:
            return None
