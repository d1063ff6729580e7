"""SubMesh objects: piece numbering, the object manifest, splitting and verification.

A SubMesh (Q.4100 §6) carries *objects* (a block, a media segment, one bridged CoreTree
message) that may be far larger than one R2 frame should be, so each object is cut into pieces
that peers pull from each other with GET_DATA. R2 names a piece by ``(source, sequence)``, the
same pair BUFFERMAP lists (``{SourcePeerId, Sequence}``), so the numbering lives in the sequence:

    sequence = object_number << 16 | piece_index

* ``object_number`` counts the source's objects from 1;
* ``piece_index`` 0 is the object's **manifest**, 1..k its data pieces in order.

A buffermap is therefore self-describing: a receiver sees which objects exist and where their
manifests are without any extra field, and a reference R2 decoder still reads plain integers.

The manifest (JSON, the payload of piece 0) gives the object's size, piece size, SHA-256 of the
whole object and of every piece. A piece is accepted only if its SHA-256 matches the manifest,
so a corrupted or forged piece is detected and fetched again from another neighbour; the whole
object is checked once more before it is delivered.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

#: Bits of the sequence that hold the piece index: up to 65,535 data pieces per object.
PIECE_BITS = 16
PIECE_MASK = (1 << PIECE_BITS) - 1
MAX_PIECES = PIECE_MASK
#: Largest object number that keeps the sequence inside R2's 0 … 2⁶³−1.
MAX_OBJECT = (1 << (63 - PIECE_BITS)) - 1
#: The ext-header app-id of a manifest piece (data pieces carry the object's own app-id).
MANIFEST_APP_ID = "hp2p-manifest"
#: Bound on a manifest's JSON (65,535 digests of 64 hex chars fit; anything above is refused).
MAX_MANIFEST_BYTES = 8 * 1024 * 1024

_HEX64 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest is malformed or inconsistent; the message says which field and why."""


def sequence_of(object_number: int, piece_index: int) -> int:
    """The R2 sequence of piece ``piece_index`` (0 = manifest) of object ``object_number``."""
    if not 1 <= object_number <= MAX_OBJECT:
        raise ValueError(f"object number {object_number} outside 1..{MAX_OBJECT}")
    if not 0 <= piece_index <= MAX_PIECES:
        raise ValueError(f"piece index {piece_index} outside 0..{MAX_PIECES}")
    return object_number << PIECE_BITS | piece_index


def split_sequence(sequence: int) -> tuple[int, int]:
    """``(object_number, piece_index)`` of an R2 sequence; object 0 means "not a mesh piece"."""
    return sequence >> PIECE_BITS, sequence & PIECE_MASK


class Manifest(msgspec.Struct, frozen=True, rename="kebab", forbid_unknown_fields=False):
    """What a receiver needs to check every piece of one object (piece 0 of the object)."""

    object: int
    size: int
    piece_size: int
    sha256: str
    pieces: list[str]
    app_id: str | None = None
    #: Free, small, flat facts about the object (e.g. the CoreTree source and sequence a bridge
    #: forwarded it from); carried verbatim to every receiver.
    meta: dict[str, str | int | float | bool | None] | None = None

    @property
    def count(self) -> int:
        """Number of data pieces."""
        return len(self.pieces)

    def piece_length(self, index: int) -> int:
        """Exact length of data piece ``index`` (1-based), so a short or long piece is caught."""
        if index < self.count:
            return self.piece_size
        return self.size - (self.count - 1) * self.piece_size

    def encode(self) -> bytes:
        return msgspec.json.encode(self)


_decoder = msgspec.json.Decoder(Manifest)


def decode_manifest(data: bytes, object_number: int, max_piece_size: int) -> Manifest:
    """Parse and check a manifest received for ``object_number``; raises ``ManifestError``."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
    try:
        m = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ManifestError(f"manifest is not valid JSON of the expected shape: {exc}") from None
    if m.object != object_number:
        raise ManifestError(f"manifest names object {m.object}, expected {object_number}")
    if not 1 <= m.piece_size <= max_piece_size:
        raise ManifestError(f"piece-size {m.piece_size} outside 1..{max_piece_size}")
    if m.size < 0:
        raise ManifestError(f"size {m.size} is negative")
    expected = -(-m.size // m.piece_size)
    if m.count != expected or m.count > MAX_PIECES:
        raise ManifestError(
            f"{m.count} piece digests for {m.size} bytes in pieces of {m.piece_size} "
            f"(expected {expected}, at most {MAX_PIECES})"
        )
    if not _HEX64.fullmatch(m.sha256) or not all(_HEX64.fullmatch(d) for d in m.pieces):
        raise ManifestError("digests must be 64 lower-case hex characters (SHA-256)")
    return m


def make_object(
    object_number: int,
    data: bytes,
    piece_size: int,
    *,
    app_id: str | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[Manifest, list[bytes]]:
    """Cut ``data`` into pieces and build its manifest (the source's side)."""
    if piece_size < 1:
        raise ValueError(f"piece size must be positive, got {piece_size}")
    pieces = [data[i : i + piece_size] for i in range(0, len(data), piece_size)]
    if len(pieces) > MAX_PIECES:
        raise ValueError(
            f"an object of {len(data)} bytes needs {len(pieces)} pieces of {piece_size}; "
            f"at most {MAX_PIECES} fit: use a larger piece size"
        )
    manifest = Manifest(
        object=object_number,
        size=len(data),
        piece_size=piece_size,
        sha256=hashlib.sha256(data).hexdigest(),
        pieces=[hashlib.sha256(p).hexdigest() for p in pieces],
        app_id=app_id,
        meta=meta,
    )
    return manifest, pieces


def piece_ok(manifest: Manifest, index: int, data: bytes) -> bool:
    """Does ``data`` match data piece ``index`` (1-based) of the manifest, length and hash?"""
    if not 1 <= index <= manifest.count or len(data) != manifest.piece_length(index):
        return False
    return hashlib.sha256(data).hexdigest() == manifest.pieces[index - 1]


def object_ok(manifest: Manifest, data: bytes) -> bool:
    """The whole-object check, done once more before delivery."""
    return len(data) == manifest.size and hashlib.sha256(data).hexdigest() == manifest.sha256
