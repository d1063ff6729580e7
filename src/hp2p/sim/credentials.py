"""Membership credentials as a credentials HOMS would issue them, for simulated peers.

Both simulated networks (the tree and the SubMesh) run the real cores, and the cores check
credentials exactly as on a real overlay: the simulator only has to sign them.
"""

from __future__ import annotations

import hashlib
from typing import Final

from hp2p.homs.peerlist import PeerEntry
from hp2p.trust.credential import CredentialBody, issue, key_id
from hp2p.trust.credential import Role as MemberRole
from hp2p.trust.keys import SigningKey
from hp2p.trust.membership import Membership

SIM_EPOCH: Final = 1.8e9
"""Wall-clock time at simulated time 0, for credentials (they expire in wall-clock time)."""


def sim_membership(
    signer: SigningKey, overlay_id: str, entry: PeerEntry, role: MemberRole = "peer"
) -> Membership:
    """What a credentials HOMS hands ``entry`` at join, valid for the whole simulated run.

    The peer's key is derived from its peer-id so that runs stay reproducible per seed.
    """
    key = SigningKey.from_seed(hashlib.sha256(entry.peer_id.encode()).digest())
    body = CredentialBody(
        homs_key=key_id(signer.public),
        overlay_id=overlay_id,
        peer_id=entry.peer_id,
        ticket_id=entry.ticket,
        public_key=key.public,
        role=role,
        address=entry.address,
        issued_at=int(SIM_EPOCH),
        expires_at=int(SIM_EPOCH + 10 * 365 * 86400),
    )
    return Membership(
        key=key,
        credential=issue(signer, body),
        homs_keys={key_id(signer.public): signer.public},
        clock_offset=SIM_EPOCH,
    )
