"""Proof of key possession on one R2 connection.

A credential is public: anyone who saw it on the wire could present it. What makes a link
belong to the credential's peer is a signature by the credential's key over a transcript both
ends helped make fresh: the dialer's nonce, the responder's nonce, the overlay and the two
credentials. Each side signs with its own role in the transcript, so a proof cannot be
reflected back at its maker. Over plain TCP this stops anyone who can reach a port; it cannot
stop an attacker on the path from taking over the connection afterwards, which is what TLS is
for (docs/security.md).
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

from hp2p.trust.keys import SigningKey, Verifier, length_prefixed

CONTEXT: Final = b"hp2p-link-v1\x00"
NONCE_BYTES: Final = 16

Side = Literal["dialer", "responder"]


def transcript(
    side: Side,
    overlay_id: str,
    dialer_nonce: bytes,
    responder_nonce: bytes,
    dialer_credential: bytes,
    responder_credential: bytes,
) -> bytes:
    """What ``side`` signs; the credentials enter as their digests (``Credential.digest``)."""
    return (
        CONTEXT
        + hashlib.sha256(
            length_prefixed(
                side.encode(),
                overlay_id.encode(),
                dialer_nonce,
                responder_nonce,
                dialer_credential,
                responder_credential,
            )
        ).digest()
    )


def prove(key: SigningKey, side: Side, *parts: bytes, overlay_id: str) -> bytes:
    """``side``'s proof over the transcript of ``parts`` (nonces then credential digests)."""
    d_nonce, r_nonce, d_cred, r_cred = parts
    return key.sign(transcript(side, overlay_id, d_nonce, r_nonce, d_cred, r_cred))


def check(
    verifier: Verifier,
    public: bytes,
    proof: bytes,
    side: Side,
    *parts: bytes,
    overlay_id: str,
) -> bool:
    d_nonce, r_nonce, d_cred, r_cred = parts
    return verifier.verify(
        public, proof, transcript(side, overlay_id, d_nonce, r_nonce, d_cred, r_cred)
    )
