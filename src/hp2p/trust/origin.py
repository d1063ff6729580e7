"""The source signature on BROADCAST_DATA: who originated a message, checked at every hop.

Each message is a **leaf**: the sha256 of the overlay, source peer-id, sequence, payload type,
extension header and payload. A source signs leaves one at a time, or, when it publishes
faster than it wants to sign, several at once: it signs the root of a Merkle tree over the
batch and each message carries the signature, its index and the sibling hashes up to the root.
A relay folds the path to the root and checks the signature once per root: a batch of k
messages costs one Ed25519 verification and k·log2(k) hashes, instead of k verifications
(docs/security.md has the measured costs).

The relay-only parts of a message (``via``, the ``recovered`` flag, the path it took) are not
signed: they are not the source's words.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Final

from hp2p.trust.keys import SigningKey, Verifier, length_prefixed

CONTEXT: Final = b"hp2p-data-v1\x00"
MAX_BATCH_DEPTH: Final = 16
"""Sibling hashes in one proof: batches of at most 65,536 messages."""
_LEAF: Final = b"\x00"
_NODE: Final = b"\x01"


def leaf(
    overlay_id: str,
    source: str,
    sequence: int,
    payload_type: str,
    ext_header: bytes,
    data: bytes,
) -> bytes:
    """The digest a source vouches for; ``ext_header`` as the JSON bytes the codec writes."""
    return hashlib.sha256(
        _LEAF
        + length_prefixed(
            overlay_id.encode(),
            source.encode(),
            sequence.to_bytes(8, "big"),
            payload_type.encode(),
            ext_header,
            data,
        )
    ).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def merkle(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over ``leaves`` (padded to a power of two with the last) and each leaf's path."""
    if not leaves:
        raise ValueError("a batch has at least one message")
    level = list(leaves)
    width = 1
    while width < len(level):
        width *= 2
    level.extend([level[-1]] * (width - len(level)))
    paths: list[list[bytes]] = [[] for _ in leaves]
    positions = list(range(len(leaves)))
    while len(level) > 1:
        for i, pos in enumerate(positions):
            paths[i].append(level[pos ^ 1])
            positions[i] = pos // 2
        level = [_node(level[j], level[j + 1]) for j in range(0, len(level), 2)]
    return level[0], paths


def fold(digest: bytes, index: int, path: list[bytes]) -> bytes:
    """The root that ``digest`` at ``index`` with sibling ``path`` belongs to."""
    for sibling in path:
        digest = _node(sibling, digest) if index & 1 else _node(digest, sibling)
        index >>= 1
    return digest


def sign_batch(key: SigningKey, leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """One signature for the batch, and each leaf's path (empty for a batch of one)."""
    root, paths = merkle(leaves)
    return key.sign(CONTEXT + root), paths


class OriginVerifier:
    """Checks source signatures, one Ed25519 verification per signed root.

    Roots that verified are remembered per source key (bounded, least recently used out
    first), so the other messages of a batch cost only their hashes.
    """

    def __init__(self, max_roots: int = 1024) -> None:
        self.crypto = Verifier()
        self._roots: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self._max = max_roots

    def check(
        self, public: bytes, signature: bytes, digest: bytes, index: int, path: list[bytes]
    ) -> bool:
        if len(path) > MAX_BATCH_DEPTH or index >= 1 << len(path) or index < 0:
            return False
        root = fold(digest, index, path) if path else digest
        known = (public, root + signature)
        if known in self._roots:
            self._roots.move_to_end(known)
            return True
        if not self.crypto.verify(public, signature, CONTEXT + root):
            return False
        self._roots[known] = None
        if len(self._roots) > self._max:
            self._roots.popitem(last=False)
        return True
