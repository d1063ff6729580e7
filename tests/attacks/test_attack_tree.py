"""Issue #11 findings 1, 2, 5 and 9 (HELLO part) against the tree core: membership and origin.

Each test states what an attacker did to main before the fix and checks it no longer works.
The core is driven directly (sans-IO): what it refuses here, every daemon and the simulator
refuse, since they run this same core.
"""

from __future__ import annotations

import random

import msgspec
from trust_helpers import OV, Authority, admit, member_core, signed

from hp2p.peer.config import PeerConfig
from hp2p.peer.control import JoinInfo, Phase
from hp2p.peer.core import PeerCore
from hp2p.peer.effects import Connect, Deliver, ProtocolError, Send
from hp2p.peer.paths import Link, Role
from hp2p.trust.credential import decode
from hp2p.trust.keys import SigningKey
from hp2p.trust.membership import REFERENCE_COMPAT, Membership
from hp2p.wire.r2.messages import (
    AUTH_OK,
    AUTH_REFUSED,
    Auth,
    AuthResponse,
    BroadcastData,
    Estab,
    Hello,
    HelloExt,
    ScanTree,
    SetPrimary,
)
from hp2p.wire.r2.schema import SetPrimaryExt


def _estab(core_ticket_below: int, peer_id: str) -> Estab:
    return Estab(overlay_id=OV, peer_id=peer_id, ticket_id=core_ticket_below)


def test_a_non_member_gets_no_path_and_no_data_in() -> None:
    """#11 finding 1 (critical): an ESTAB with ticket 0 from anyone gave a data path.

    Now nothing but AUTH is read on a connection before its peer proved membership; the
    ESTAB is refused with a reason, the connection closed, and forged data never delivered.
    """
    authority = Authority()
    victim = member_core(authority, "victim", root=True)
    conn = victim.accept(1.0)
    victim.receive(conn, _estab(0, "attacker"), 1.0)
    victim.receive(conn, BroadcastData(source="victim", sequence=1, data=b"forged"), 1.0)
    effects = victim.take_effects()
    assert not [e for e in effects if isinstance(e, Deliver)]
    refusals = [
        e.message for e in effects if isinstance(e, Send) and isinstance(e.message, AuthResponse)
    ]
    assert refusals
    assert refusals[0].code == AUTH_REFUSED
    assert "before link admission" in (refusals[0].reason or "")
    assert conn not in victim.paths.links
    assert victim.admission.counters.refused >= 1


def test_credentials_that_are_not_the_callers_are_refused() -> None:
    """A stolen, foreign-HOMS, other-overlay or expired credential admits no one."""
    authority = Authority()
    victim = member_core(authority, "victim", root=True)
    honest = authority.member("honest")
    stolen = Membership(
        SigningKey.generate(), honest.credential, honest.homs_keys, honest.clock_offset
    )
    cases = {
        "stolen": stolen,  # someone else's token, the thief's key: the proof fails
        "foreign": Authority().member("x"),
        "overlay": authority.member("y", overlay="other"),
        "expired": authority.member("z", ttl=-3600),
    }
    for name, membership in cases.items():
        conn, answers = admit(victim, membership)
        codes = [a.code for a in answers if isinstance(a, AuthResponse)]
        assert codes[-1] == AUTH_REFUSED, name
        assert victim.paths.links.get(conn) is None, name
    assert victim.admission.counters.admitted == 0


def test_a_member_is_admitted_and_its_estab_must_match_its_credential() -> None:
    authority = Authority()
    victim = member_core(authority, "victim")
    liar = authority.member("liar", ticket=1)
    conn, answers = admit(victim, liar)
    assert [a.code for a in answers if isinstance(a, AuthResponse)] == [AUTH_OK, AUTH_OK]
    assert victim.paths.links[conn].cred is not None
    victim.receive(conn, _estab(0, "someone-else"), 2.0)
    effects = victim.take_effects()
    assert any(
        isinstance(e, ProtocolError) and "another peer-id or ticket" in e.reason for e in effects
    )
    assert conn not in victim.paths.links


def _member_parent(authority: Authority, victim_id: str = "victim") -> tuple[object, int, object]:
    """A victim core with a credentialed older member attached as its outgoing candidate."""
    victim = member_core(authority, victim_id, root=True, max_outgoing_candidates=2)
    victim.ticket = 50  # younger than the parent: the ticket rule lets the parent in
    parent = authority.member("parent", ticket=1)
    conn, _ = admit(victim, parent)
    victim.receive(conn, _estab(1, "parent"), 1.0)
    victim.take_effects()
    return victim, conn, parent


def test_a_member_cannot_speak_for_another_source() -> None:
    """#11 finding 1: a member relayed data "from" any source id, even the victim's own."""
    authority = Authority()
    victim, conn, parent = _member_parent(authority)
    assert victim.paths.links[conn].role is Role.OUT_CANDIDATE
    source = authority.member("source")
    victim.receive(conn, signed(source, "source", 1, b"real"), 2.0)
    assert [d.data for d in victim.take_effects() if isinstance(d, Deliver)] == [b"real"]
    # the member signs with its own key under the source's id and credential: refused
    forged = signed(source, "source", 2, b"forged", key=parent.key)  # type: ignore[attr-defined]
    victim.receive(conn, forged, 2.1)
    # and under the victim's own id, with no credential for it
    victim.receive(conn, signed(parent, "victim", 1, b"me?", with_credential=False), 2.2)  # type: ignore[arg-type]
    effects = victim.take_effects()
    assert not [e for e in effects if isinstance(e, Deliver)]
    # both fail the signature check: the victim knows its own key and the source's
    assert victim.counters.bad_signatures == 2
    # the real message 2 still gets through: the forgery moved no window
    victim.receive(conn, signed(source, "source", 2, b"real 2", with_credential=False), 3.0)
    assert [d.data for d in victim.take_effects() if isinstance(d, Deliver)] == [b"real 2"]


def test_forged_sequences_cannot_silence_a_source() -> None:
    """#11 finding 2: a forged next sequence made the real one a "duplicate"; one forged
    message at 10^15 blocked a source for good. Unsigned or badly signed messages touch no
    window now, and a signed jump beyond ``max_ahead`` is refused without moving it."""
    authority = Authority()
    victim, conn, parent = _member_parent(authority)
    source = authority.member("source")
    victim.receive(conn, signed(source, "source", 1, b"one"), 1.0)
    for sequence in (2, 10**15):
        victim.receive(conn, BroadcastData(source="source", sequence=sequence, data=b"x"), 1.1)
        forged = signed(source, "source", sequence, b"x", key=parent.key)  # type: ignore[attr-defined]
        victim.receive(conn, forged, 1.2)
    victim.receive(conn, signed(source, "source", 2, b"two", with_credential=False), 2.0)
    delivered = [d.data for d in victim.take_effects() if isinstance(d, Deliver)]
    assert delivered == [b"one", b"two"]
    assert victim.duplicates.newest("source") == 2


def test_bad_data_is_charged_to_its_link_until_the_link_is_dropped() -> None:
    authority = Authority()
    victim, conn, _parent = _member_parent(authority)
    for n in range(1, 20):
        if conn not in victim.paths.links:
            break
        victim.receive(conn, BroadcastData(source="nobody", sequence=n, data=b"x"), 1.0 + n)
    assert conn not in victim.paths.links
    assert victim.counters.unknown_sources == 8


def test_made_up_sources_do_not_grow_a_peer() -> None:
    """#11 finding 5: 100,000 empty messages under new source ids grew every peer by
    120-130 MB for good. Unknown sources now create no state at all; on an overlay without
    credentials the per-source windows are bounded by ``max_sources``."""
    authority = Authority()
    victim, conn, _ = _member_parent(authority)
    before = len(victim.duplicates.sources)
    for n in range(5):
        victim.receive(conn, BroadcastData(source=f"s{n}", sequence=1, data=b""), 1.0)
    assert len(victim.duplicates.sources) == before
    assert len(victim.db.trusted) <= victim.config.max_sources


def test_open_overlays_bound_the_windows_too() -> None:
    from hp2p.peer.broadcast import ACCEPTED, DuplicateFilter

    windows = DuplicateFilter(64, 64, max_sources=100)
    for n in range(10_000):
        assert windows.check(f"s{n}", 1) == ACCEPTED
    assert len(windows.sources) == 100
    assert windows.counters.evicted == 9_900


def test_a_hello_cannot_send_volunteers_to_any_address() -> None:
    """#11 finding 9: a HELLO made peers connect to any address it named. A HELLO now
    carries the joiner's credential; a volunteer dials only the address the HOMS registered,
    and a HELLO whose ticket or address disagrees with it is refused."""
    authority = Authority()
    victim = member_core(authority, "victim", root=True)
    victim.ticket = 1
    joiner = authority.member("joiner", ticket=9, address="tcp://10.0.0.9:7000")
    conn, _ = admit(victim, joiner)
    lies = [
        Hello(OV, "joiner", "tcp://203.0.113.7:80", 9, hp2p=HelloExt(cred=joiner.credential)),
        Hello(OV, "joiner", "tcp://10.0.0.9:7000", 2, hp2p=HelloExt(cred=joiner.credential)),
        Hello(OV, "joiner", "tcp://10.0.0.9:7000", 9),
    ]
    for lie in lies:
        conn, _ = admit(victim, joiner)
        victim.receive(conn, lie, 2.0)
        effects = victim.take_effects()
        assert not [e for e in effects if isinstance(e, Connect)], lie
        assert any(isinstance(e, ProtocolError) for e in effects), lie
    conn, _ = admit(victim, joiner)
    honest = Hello(OV, "joiner", "tcp://10.0.0.9:7000", 9, hp2p=HelloExt(cred=joiner.credential))
    victim.receive(conn, honest, 3.0)
    dials = [e for e in victim.take_effects() if isinstance(e, Connect)]
    assert [d.addresses for d in dials] == [("tcp://10.0.0.9:7000",)]


def test_auth_exchanges_in_progress_are_bounded_and_expire() -> None:
    """Half-open AUTH exchanges are state a remote creates: at most ``max_pending``."""
    authority = Authority()
    victim = member_core(authority, "victim", root=True)
    limit = victim.admission.max_pending
    conns = []
    for i in range(limit + 5):
        member = authority.member(f"m{i}")
        conn = victim.accept(1.0)
        victim.receive(conn, Auth(credential=member.credential, nonce=b"n" * 16), 1.0)
        conns.append(conn)
    victim.take_effects()
    assert len(victim.admission.pending) == limit
    assert victim.admission.counters.busy == 5
    victim.handle_timer(1.0 + victim.admission.timeout + 1)
    assert not victim.admission.pending
    assert not [c for c in conns if c in victim.paths.links]


def test_an_orphan_told_it_is_alone_does_not_split_the_tree_while_older_peers_answer() -> None:
    """#11 finding 4: a HOMS misled by false reports answered an orphan's recovery with only
    itself, and the orphan made itself a second root. Now an orphan that still has a live
    candidate path to an older member asks it again; only a second "root" answer is taken."""
    authority = Authority()
    victim, conn, _parent = _member_parent(authority)
    assert victim.paths.links[conn].role is Role.OUT_CANDIDATE
    poc = victim.poc
    poc.phase, poc.recovering, poc.homs_pending = Phase.WAITING, True, True
    victim.homs_result([], 5.0, root=True)
    assert poc.phase is not Phase.ATTACHED
    asked = [e.message for e in victim.take_effects() if isinstance(e, Send) and conn in e.conns]
    assert any(isinstance(m, SetPrimary) for m in asked)
    # the candidate refuses, the HOMS says "root" again: now it is believed
    poc.phase, poc.homs_pending = Phase.WAITING, True
    victim.homs_result([], 6.0, root=True)
    assert poc.phase is Phase.ATTACHED
    assert victim.parent is None


def test_a_replayed_credential_holds_at_most_two_admission_slots() -> None:
    """A credential travels in the clear; replaying its step 1 without the key must not let
    one onlooker fill every admission slot."""
    authority = Authority()
    victim = member_core(authority, "victim", root=True)
    seen = authority.member("honest")
    for _ in range(10):
        conn = victim.accept(1.0)
        victim.receive(conn, Auth(credential=seen.credential, nonce=b"n" * 16), 1.0)
    assert len(victim.admission.pending) == victim.admission.max_pending_per_peer == 2
    # the honest holder (or anyone else) still gets in
    conn, answers = admit(victim, authority.member("other"), now=1.5)
    assert [a.code for a in answers if isinstance(a, AuthResponse)] == [AUTH_OK, AUTH_OK]


def test_spare_recovery_slots_are_for_orphans_with_a_credential() -> None:
    """#11 finding 6: fake children filled every child slot, the spare recovery slots too.
    On a reference-compat overlay a peer without a credential may still attach, but only
    to the normal slots; the spares are kept for orphans that proved membership."""
    authority = Authority()
    compat = authority.member("victim")
    compat = Membership(
        compat.key,
        compat.credential,
        compat.homs_keys,
        compat.clock_offset,
        profile=REFERENCE_COMPAT,
    )
    victim = PeerCore(
        PeerConfig(max_children=1, recovery_children=2), "victim", "mem://victim", random.Random(1)
    )
    victim.start(JoinInfo(OV, 1, root=True, membership=compat), 0.0)
    victim.take_effects()
    asking = SetPrimary(hp2p=SetPrimaryExt(recovery=True))

    def candidate(peer_id: str, cred: bool, vouched: bool = False) -> int:
        conn = victim.new_conn()
        link = Link(conn, Role.IN_CANDIDATE, peer_id=peer_id, ticket=10 + conn, opened=1.0)
        if cred:
            link.cred = decode(authority.member(peer_id).credential)
        link.vouched = vouched  # its HELLO carried a valid credential (no AUTH on compat)
        victim.add_link(link)
        return conn

    first = candidate("fake-1", cred=False)
    victim.receive(first, asking, 1.0)
    second = candidate("fake-2", cred=False)
    victim.receive(second, asking, 1.0)
    orphan = candidate("orphan", cred=True)
    victim.receive(orphan, asking, 1.0)
    roles = {c: victim.paths.links[c].role for c in (first, second, orphan)}
    assert roles == {first: Role.CHILD, second: Role.IN_CANDIDATE, orphan: Role.CHILD}
    hello_vouched = candidate("orphan-2", cred=False, vouched=True)
    victim.receive(hello_vouched, asking, 1.0)
    assert victim.paths.links[hello_vouched].role is Role.CHILD


def test_scan_tree_is_no_flood_amplifier() -> None:
    """#11 finding 9: relays amplified SCAN_TREE ~6.7×, without limit. A path now brings at
    most one request per ``scan_gap``, and a first hop must be the initiator itself."""
    authority = Authority()
    victim, conn, _parent = _member_parent(authority)
    link = victim.paths.links[conn]
    victim.paths.set_role(link, Role.CHILD)  # a primary path: SCAN_TREE travels on those
    scan = ScanTree(
        cseq=1, overlay_id=OV, peer_id="parent", address="", ticket_id=1, via=[["parent", ""]]
    )
    for k in range(100):
        victim.receive(conn, msgspec.structs.replace(scan, cseq=k + 1), 10.0 + k * 0.001)
    answers = [e for e in victim.take_effects() if isinstance(e, Send)]
    assert len(answers) == 1
    assert victim.counters.scans_dropped == 99
    forged = msgspec.structs.replace(scan, cseq=500, peer_id="someone", via=[["someone", ""]])
    victim.receive(conn, forged, 20.0)
    effects = victim.take_effects()
    assert not [e for e in effects if isinstance(e, Send)]
    assert any(isinstance(e, ProtocolError) and "initiator" in e.reason for e in effects)


def _dial_over_tls(certificate: str) -> list[object]:
    """The victim dials a member over "TLS"; the certificate it saw carried the responder's
    own key (``right``), someone else's (``mitm``), or there was no TLS (``none``)."""
    authority = Authority()
    victim = member_core(authority, "victim", root=True)
    responder = member_core(authority, "responder", root=True)
    hello = Hello(overlay_id=OV, peer_id="victim", address="mem://victim", ticket_id=9)
    conn = victim.open_link("responder", "mem://responder", hello, 1.0)
    victim.take_effects()
    own = responder.admission.own
    assert own is not None
    keys = {"right": own.body.public_key, "mitm": SigningKey.generate().public}
    if certificate in keys:
        victim.admission.bind(conn, keys[certificate])
    victim.connection_made(conn, 1.0)
    (step1,) = [e.message for e in victim.take_effects() if isinstance(e, Send)]
    rconn = responder.accept(1.0)
    responder.receive(rconn, step1, 1.0)
    (step2,) = [e.message for e in responder.take_effects() if isinstance(e, Send)]
    victim.receive(conn, step2, 1.0)
    return [e.message for e in victim.take_effects() if isinstance(e, Send)]


def test_a_tls_man_in_the_middle_is_refused() -> None:
    """TLS without a CA: the certificate's key must be the one the responder's credential
    names, or the link is refused before anything but AUTH went over it."""
    sent = _dial_over_tls("mitm")
    refusals = [m for m in sent if isinstance(m, AuthResponse) and m.code == AUTH_REFUSED]
    assert refusals
    assert "man in the middle" in (refusals[0].reason or "")
    assert not [m for m in sent if isinstance(m, Hello)]


def test_tls_with_the_credentials_key_is_admitted() -> None:
    for certificate in ("right", "none"):
        sent = _dial_over_tls(certificate)
        assert [type(m) for m in sent] == [Auth, Hello], certificate  # step 3, then the purpose


def test_on_a_compat_overlay_a_hello_credential_vouches_for_the_joiner() -> None:
    """No AUTH on reference-compat links: the volunteer's link to a joiner whose HELLO carried
    a valid credential (for that peer-id, ticket and address) counts as a member's."""
    authority = Authority()
    own = authority.member("victim")
    compat = Membership(
        own.key, own.credential, own.homs_keys, own.clock_offset, profile=REFERENCE_COMPAT
    )
    victim = PeerCore(PeerConfig(), "victim", "mem://victim", random.Random(1))
    victim.start(JoinInfo(OV, 1, root=True, membership=compat), 0.0)
    victim.take_effects()
    joiner = authority.member("joiner", ticket=7, address="mem://joiner")
    for name, cred in (("with", joiner.credential), ("without", None)):
        peer_id = "joiner" if cred else "stranger"
        hello = Hello(
            overlay_id=OV,
            peer_id=peer_id,
            address=f"mem://{peer_id}",
            ticket_id=7,
            hp2p=HelloExt(cred=cred),
        )
        conn = victim.accept(1.0)
        victim.receive(conn, hello, 1.0)
        dials = [e for e in victim.take_effects() if isinstance(e, Connect)]
        assert dials, name
        link = victim.paths.links[dials[0].conn]
        assert link.vouched is (cred is not None), name
