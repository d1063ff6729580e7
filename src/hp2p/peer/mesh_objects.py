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
import struct
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

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


#: How piece 0 of a signed manifest begins; the 128 hex digits and ``",`` follow.
SIGNATURE_PREFIX = b'{"signature":"'
_SIG_HEX = 128
_SIGNED_HEAD = len(SIGNATURE_PREFIX) + _SIG_HEX + 2
#: Domain separation: these bytes start every signed message, so a signature made for a
#: manifest can never be taken for a signature over anything else the key may sign.
SIGNATURE_CONTEXT = b"hp2p/submesh-manifest/v1"
#: How a source public key is written (HOMS ``source-key``, ``--source-key``, status).
KEY_PREFIX = "ed25519:"
_KEY_TEXT = re.compile(r"ed25519:[0-9a-f]{64}")
_HEX_BYTES = re.compile(rb"[0-9a-f]{128}")


class ManifestError(ValueError):
    """A manifest is malformed or inconsistent; the message says which field and why."""


class SignatureError(ManifestError):
    """A manifest's signature is missing, malformed or does not verify; the message says which."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def public_key_text(key: Ed25519PublicKey) -> str:
    """``ed25519:<64 hex>``: the one spelling of a source key in hp2p."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + raw.hex()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The key written as ``ed25519:<64 hex>``; ``ValueError`` says what is wrong."""
    if not isinstance(text, str) or not _KEY_TEXT.fullmatch(text):
        shown = text[:80] if isinstance(text, str) else type(text).__name__
        raise ValueError(
            f"a source key is written ed25519:<64 lower-case hex digits>, not {shown!r}"
        )
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text[len(KEY_PREFIX) :]))


def signed_message(overlay_id: str, source_id: str, unsigned: bytes) -> bytes:
    """What the signature covers: context, overlay-id, source peer-id, the manifest bytes.

    Every part is length-prefixed, so no choice of ids can make two different triples
    produce the same message.
    """
    parts = [SIGNATURE_CONTEXT, overlay_id.encode(), source_id.encode(), unsigned]
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


class ManifestSigner:
    """The source's private key, and the one operation it is used for (piece 0 bytes)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.public_text = public_key_text(self.public_key)

    @classmethod
    def generate(cls) -> ManifestSigner:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, unsigned: bytes, overlay_id: str, source_id: str) -> bytes:
        """Piece 0 of a signed manifest: the signature as the first JSON member."""
        if len(unsigned) < 3 or not unsigned.startswith(b"{") or unsigned.startswith(b"{}"):
            raise ValueError("only a non-empty JSON object manifest can be signed")
        signature = self._key.sign(signed_message(overlay_id, source_id, unsigned))
        return SIGNATURE_PREFIX + signature.hex().encode() + b'",' + unsigned[1:]


def split_signature(data: bytes) -> tuple[bytes | None, bytes]:
    """``(signature, unsigned bytes)`` of piece 0; no signature member: ``(None, data)``.

    Raises :class:`SignatureError` for a piece that starts like a signed manifest but whose
    signature member is malformed (a forgery or damage, never something to guess around).
    """
    if not data.startswith(SIGNATURE_PREFIX):
        return None, data
    head = data[len(SIGNATURE_PREFIX) : _SIGNED_HEAD]
    if not _HEX_BYTES.fullmatch(head[:_SIG_HEX]):
        raise SignatureError("the manifest's signature is not 128 lower-case hex digits")
    if head[_SIG_HEX:] != b'",' or len(data) == _SIGNED_HEAD:
        raise SignatureError("the manifest's signature member is not followed by more members")
    return bytes.fromhex(head[:_SIG_HEX].decode()), b"{" + data[_SIGNED_HEAD:]


def verify_piece0(data: bytes, key: Ed25519PublicKey, overlay_id: str, source_id: str) -> bytes:
    """The unsigned manifest bytes of piece 0 if its signature verifies; else SignatureError.

    Checked before the JSON is parsed, so a forger cannot make a peer parse megabytes.
    """
    if len(data) > MAX_MANIFEST_BYTES + _SIGNED_HEAD:
        raise ManifestError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
    signature, unsigned = split_signature(data)
    if signature is None:
        raise SignatureError(
            "the manifest carries no signature, but the source's key is known", missing=True
        )
    try:
        key.verify(signature, signed_message(overlay_id, source_id, unsigned))
    except InvalidSignature:
        raise SignatureError(
            f"the manifest's signature does not verify against the source key "
            f"{public_key_text(key)[:24]}… (forged or altered manifest)"
        ) from None
    return unsigned


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
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 is no DecodeError
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
