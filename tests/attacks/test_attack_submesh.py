"""Issue #11 finding 6 (SubMesh part): bans keyed by a claimed peer-id, links without proof.

Before: a SubMesh link was up after any HELLO, and a peer that served bad pieces was banned
under the peer-id its HELLO *claimed*: an attacker claiming an honest peer's id (or the
source's) got that peer banned. Now, on an overlay with credentials, nothing but AUTH moves
before the remote proved its credential, the HELLO must name the credential's peer-id, and a
ban names only a peer-id the link vouched for.
"""

from __future__ import annotations

import random

import msgspec
from trust_helpers import Authority, replies

from hp2p.peer.mesh import MeshCore, MeshJoinInfo
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_objects import split_sequence
from hp2p.sim.mesh import MeshNetwork
from hp2p.trust import link as link_proof
from hp2p.trust.credential import decode
from hp2p.trust.membership import Membership
from hp2p.wire.r2.messages import (
    AUTH_OK,
    AUTH_REFUSED,
    Auth,
    AuthResponse,
    GetDataResponse,
    Hello,
    HelloExt,
)

OV = "ov"


def _mesh_core(membership: Membership | None, peer_id: str = "victim") -> MeshCore:
    core = MeshCore(MeshConfig(), peer_id, f"mem://{peer_id}", random.Random(1))
    info = MeshJoinInfo(OV, "source", 5, (), membership=membership)
    core.start(info, 0.0)
    core.take_effects()
    return core


def _hello(peer_id: str) -> Hello:
    return Hello(
        overlay_id=OV,
        peer_id=peer_id,
        address=f"mem://{peer_id}",
        ticket_id=1,
        conn_num=0,
        ttl=0,
        hp2p=HelloExt(mesh=1),
    )


def test_a_non_member_gets_no_mesh_link() -> None:
    authority = Authority()
    victim = _mesh_core(authority.member("victim"))
    conn = victim.accept(1.0)
    victim.receive(conn, _hello("source"), 1.0)
    answers = [m for m in replies(victim, conn) if isinstance(m, AuthResponse)]
    assert answers
    assert answers[0].code == AUTH_REFUSED
    assert "before link admission" in (answers[0].reason or "")
    assert "source" not in victim.neighbours
    assert conn not in victim.links.links


def _admit(victim: MeshCore, membership: Membership) -> int:
    """Run the responder side of AUTH on ``victim`` as the dialer holding ``membership``."""
    conn = victim.accept(1.0)
    victim.receive(conn, Auth(credential=membership.credential, nonce=b"n" * 16), 1.0)
    answer = replies(victim, conn)[-1]
    assert isinstance(answer, AuthResponse)
    assert answer.code == AUTH_OK
    assert answer.nonce is not None
    assert answer.credential is not None
    mine, theirs = decode(membership.credential).digest, decode(answer.credential).digest
    proof = link_proof.prove(
        membership.key, "dialer", b"n" * 16, answer.nonce, mine, theirs, overlay_id=OV
    )
    victim.receive(conn, Auth(proof=proof), 1.0)
    assert [m.code for m in replies(victim, conn) if isinstance(m, AuthResponse)] == [AUTH_OK]
    return conn


def test_a_member_cannot_hello_as_another_peer() -> None:
    authority = Authority()
    victim = _mesh_core(authority.member("victim"))
    conn = _admit(victim, authority.member("mallory"))
    victim.receive(conn, _hello("source"), 1.5)
    assert "source" not in victim.neighbours
    assert conn not in victim.links.links
    # the same member under its own name is welcome
    conn = _admit(victim, authority.member("mallory"))
    victim.receive(conn, _hello("mallory"), 2.0)
    assert "mallory" in victim.neighbours


def test_a_claimed_peer_id_is_never_banned() -> None:
    """On an open overlay an incoming link's peer-id is only a claim: bad pieces drop the
    link, but the claimed peer-id (here the source's) is not banned."""
    victim = _mesh_core(None)
    conn = victim.accept(1.0)
    victim.receive(conn, _hello("source"), 1.0)
    assert "source" in victim.neighbours
    link = victim.links.links[conn]
    victim.links.ban(link, "bad pieces", 2.0)
    assert conn not in victim.links.links
    assert "source" not in victim.links.banned
    assert victim.counters.banned == 1


def test_a_proven_peer_id_is_banned() -> None:
    authority = Authority()
    victim = _mesh_core(authority.member("victim"))
    conn = _admit(victim, authority.member("mallory"))
    victim.receive(conn, _hello("mallory"), 1.5)
    victim.links.ban(victim.links.links[conn], "bad pieces", 2.0)
    assert "mallory" in victim.links.banned


def test_a_mesh_with_credentials_delivers_and_bans_a_forger_by_its_own_name() -> None:
    net = MeshNetwork(seed=2, bandwidth=12.5e6, credentials=True)
    net.add_peer("source")
    for _ in range(40):
        net.add_peer()
    net.run(1.0)
    assert all(p.core.gated for p in net.peers.values())
    assert all(p.core.admission.counters.refused == 0 for p in net.peers.values())
    forger = next(p for p in net.receivers() if "source" in p.core.neighbours)

    def corrupt(message: object) -> object:
        if (
            isinstance(message, GetDataResponse)
            and message.data
            and split_sequence(message.sequence)[1]
        ):
            return msgspec.structs.replace(message, data=b"\x00" + message.data[1:])
        return message

    net.tamper[forger.peer_id] = corrupt
    data = random.Random(3).randbytes(1 << 20)
    obj = net.publish(data)
    honest = [p for p in net.receivers() if p is not forger]
    assert net.run_until(lambda: net.all_have(obj, honest), deadline=net.now + 30)
    assert all(p.data[obj] == data for p in honest)
    banned = [p for p in honest if p.core.counters.banned]
    assert banned, "the forger served nobody: the test proves nothing"
    for p in banned:
        assert set(p.core.links.banned) <= {forger.peer_id}
    assert all("source" not in p.core.links.banned for p in net.peers.values())
    assert not [e for p in honest for e in p.errors if "credential refused" in e]
