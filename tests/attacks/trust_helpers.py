"""A HOMS signing authority in memory and an attacker that speaks R2 to one sans-IO core.

The attacks of issue #11 tried on a real peer are replayed here against the core itself,
because the core is where the decisions are: the shells only move bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hp2p.peer.config import PeerConfig
from hp2p.peer.control import JoinInfo
from hp2p.peer.core import PeerCore
from hp2p.peer.effects import Send
from hp2p.trust import link as link_proof
from hp2p.trust import origin
from hp2p.trust.credential import CredentialBody, Role, decode, issue, key_id
from hp2p.trust.keys import SigningKey
from hp2p.trust.membership import Membership
from hp2p.wire.r2.messages import Auth, AuthResponse, BroadcastData, BroadcastExt

OV = "ov"
NOW = 1_800_000_000.0


@dataclass
class Authority:
    """What the HOMS does for trust: sign credentials with its key."""

    key: SigningKey = field(default_factory=SigningKey.generate)
    tickets: int = 0

    @property
    def keys(self) -> dict[str, bytes]:
        return {key_id(self.key.public): self.key.public}

    def member(
        self,
        peer_id: str,
        *,
        ticket: int | None = None,
        overlay: str = OV,
        role: Role = "peer",
        address: str = "",
        ttl: float = 3600.0,
        key: SigningKey | None = None,
    ) -> Membership:
        if ticket is None:
            self.tickets += 1
            ticket = self.tickets
        own = key or SigningKey.generate()
        body = CredentialBody(
            homs_key=key_id(self.key.public),
            overlay_id=overlay,
            peer_id=peer_id,
            ticket_id=ticket,
            public_key=own.public,
            role=role,
            address=address or f"mem://{peer_id}",
            issued_at=int(NOW),
            expires_at=int(NOW + ttl),
        )
        return Membership(own, issue(self.key, body), self.keys, clock_offset=NOW)


def member_core(
    authority: Authority, peer_id: str, *, root: bool = False, **settings: Any
) -> PeerCore:
    """A core that joined ``OV`` as a credentialed member (clock: ``now`` 0 ≙ ``NOW``)."""
    membership = authority.member(peer_id, address=f"mem://{peer_id}")
    ticket = decode(membership.credential).body.ticket_id
    c = PeerCore(PeerConfig(**settings), peer_id, f"mem://{peer_id}", random.Random(1))
    c.start(JoinInfo(OV, ticket, root=root, membership=membership), 0.0)
    c.take_effects()
    return c


def replies(core: PeerCore, conn: int) -> list[Any]:
    """Messages the core sent on ``conn`` since the last drain (the effects are drained)."""
    return [e.message for e in core.take_effects() if isinstance(e, Send) and conn in e.conns]


def admit(core: PeerCore, membership: Membership, now: float = 1.0) -> tuple[int, list[Any]]:
    """Dial ``core`` as the holder of ``membership`` and run AUTH; (conn, core's answers)."""
    conn = core.accept(now)
    nonce = b"n" * 16
    core.receive(conn, Auth(credential=membership.credential, nonce=nonce), now)
    answers = replies(core, conn)
    response = answers[-1] if answers else None
    if not isinstance(response, AuthResponse) or response.proof is None:
        return conn, answers
    assert response.nonce is not None
    assert response.credential is not None
    mine = decode(membership.credential).digest
    theirs = decode(response.credential).digest
    proof = link_proof.prove(
        membership.key, "dialer", nonce, response.nonce, mine, theirs, overlay_id=OV
    )
    core.receive(conn, Auth(proof=proof), now)
    return conn, answers + replies(core, conn)


def signed(
    membership: Membership,
    source: str,
    sequence: int,
    data: bytes,
    *,
    with_credential: bool = True,
    key: SigningKey | None = None,
) -> BroadcastData:
    """A BROADCAST_DATA signed as ``source`` with ``key`` (default: the membership's own)."""
    ext_header = {"app-id": "etri_data"}
    digest = origin.leaf(OV, source, sequence, "text/plain", b'{"app-id":"etri_data"}', data)
    sig = (key or membership.key).sign(origin.CONTEXT + digest)
    cred = membership.credential if with_credential else None
    return BroadcastData(
        source=source,
        sequence=sequence,
        data=data,
        ext_header=ext_header,
        hp2p=BroadcastExt(sig=sig, cred=cred),
    )
