"""Proof of credential possession for the HOMS signalling hello.

The signalling relay carries WebRTC offers and ICE candidates between peers of an overlay; a
socket that could register another member's peer-id would receive its offers and could
impersonate it. On an overlay that requires credentials a socket registers a peer-id only by
presenting that peer's membership credential and signing a fresh HOMS nonce with the
credential's key. The transcript names its purpose, the overlay, the peer-id, the nonce and
the credential (its digest), so a signature made for one of them is worth nothing for any
other, nor as a link proof (:mod:`hp2p.trust.link` signs another context).
"""

from __future__ import annotations

import hashlib
from typing import Final

from hp2p.trust.keys import SigningKey, Verifier, length_prefixed

CONTEXT: Final = b"hp2p-signalling-hello-v1\x00"
NONCE_BYTES: Final = 16


def transcript(overlay_id: str, peer_id: str, nonce: bytes, credential_digest: bytes) -> bytes:
    """What the peer signs: the context and a hash of the four bound values."""
    bound = length_prefixed(overlay_id.encode(), peer_id.encode(), nonce, credential_digest)
    return CONTEXT + hashlib.sha256(bound).digest()


def prove(
    key: SigningKey, overlay_id: str, peer_id: str, nonce: bytes, credential_digest: bytes
) -> bytes:
    """The peer's proof for the HOMS's ``nonce``."""
    return key.sign(transcript(overlay_id, peer_id, nonce, credential_digest))


def check(
    verifier: Verifier,
    public: bytes,
    proof: bytes,
    overlay_id: str,
    peer_id: str,
    nonce: bytes,
    credential_digest: bytes,
) -> bool:
    """Whether ``proof`` was made by ``public``'s key for exactly these values."""
    return verifier.verify(public, proof, transcript(overlay_id, peer_id, nonce, credential_digest))
