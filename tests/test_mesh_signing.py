"""Signed SubMesh manifests (issue #7): the source signs, every peer verifies before it trusts.

Three levels: the piece-0 format (sign, verify, every way to break it), the sans-IO core in
the deterministic mesh harness (forged, re-signed and unsigned manifests from a neighbour;
the key missing, late, wrong), and a hypothesis fuzz of the signature/manifest decoding.
"""

from __future__ import annotations

import contextlib
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hp2p.peer.effects import Send
from hp2p.peer.mesh import MeshCore, MeshJoinInfo, SourceKeyWanted
from hp2p.peer.mesh_config import MeshConfig
from hp2p.peer.mesh_node import MeshNodeError, MeshSettings, default_key_path, load_signing_key
from hp2p.peer.mesh_objects import (
    MAX_MANIFEST_BYTES,
    SIGNATURE_PREFIX,
    ManifestError,
    ManifestSigner,
    SignatureError,
    decode_manifest,
    make_object,
    parse_public_key,
    public_key_text,
    sequence_of,
    split_sequence,
    split_signature,
    verify_piece0,
)
from hp2p.peer.mesh_store import MemoryPieceStore
from hp2p.sim.mesh import MeshNetwork
from hp2p.wire.r2.messages import (
    BuffermapEntry,
    BuffermapResponse,
    GetData,
    GetDataResponse,
    Hello,
    HelloExt,
)

OVERLAY = "sim-mesh"
SOURCE = "source"
BANDWIDTH = 12.5e6


def _piece0(signer: ManifestSigner, number: int = 1, data: bytes = b"x" * 5000) -> bytes:
    manifest, _ = make_object(number, data, 1024, app_id="blockchain", meta={"height": 3})
    return signer.sign(manifest.encode(), OVERLAY, SOURCE)


# === the piece-0 format ==========================================================================
def test_a_signed_manifest_verifies_and_still_decodes_for_a_peer_without_signing():
    signer = ManifestSigner.generate()
    piece = _piece0(signer)
    assert piece.startswith(SIGNATURE_PREFIX)
    unsigned = verify_piece0(piece, signer.public_key, OVERLAY, SOURCE)
    assert decode_manifest(unsigned, 1, 1 << 20).size == 5000
    # an hp2p peer that predates signing decodes piece 0 as it is: the signature is skipped
    assert decode_manifest(piece, 1, 1 << 20) == decode_manifest(unsigned, 1, 1 << 20)


def test_a_tampered_manifest_fails_verification():
    signer = ManifestSigner.generate()
    piece = _piece0(signer)
    forged = piece.replace(b'"size":5000', b'"size":4999')
    assert forged != piece
    with pytest.raises(SignatureError, match="does not verify") as info:
        verify_piece0(forged, signer.public_key, OVERLAY, SOURCE)
    assert not info.value.missing


def test_a_tampered_signature_fails_verification():
    signer = ManifestSigner.generate()
    piece = bytearray(_piece0(signer))
    at = len(SIGNATURE_PREFIX) + 10
    piece[at] = ord("0") if piece[at] != ord("0") else ord("1")
    with pytest.raises(SignatureError, match="does not verify"):
        verify_piece0(bytes(piece), signer.public_key, OVERLAY, SOURCE)


def test_a_manifest_signed_by_another_key_fails_verification():
    honest, other = ManifestSigner.generate(), ManifestSigner.generate()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_piece0(_piece0(other), honest.public_key, OVERLAY, SOURCE)


def test_a_missing_signature_is_refused_when_a_key_is_known():
    signer = ManifestSigner.generate()
    manifest, _ = make_object(1, b"abc", 1024)
    with pytest.raises(SignatureError, match="no signature") as info:
        verify_piece0(manifest.encode(), signer.public_key, OVERLAY, SOURCE)
    assert info.value.missing


def test_a_signature_does_not_carry_over_to_another_overlay_or_source():
    signer = ManifestSigner.generate()
    piece = _piece0(signer)
    with pytest.raises(SignatureError):
        verify_piece0(piece, signer.public_key, "another-mesh", SOURCE)
    with pytest.raises(SignatureError):
        verify_piece0(piece, signer.public_key, OVERLAY, "another-source")


def test_a_malformed_signature_member_is_a_signature_error_not_a_crash():
    with pytest.raises(SignatureError, match="128 lower-case hex"):
        split_signature(SIGNATURE_PREFIX + b"zz" * 64 + b'","object":1}')
    with pytest.raises(SignatureError, match="followed by more members"):
        split_signature(SIGNATURE_PREFIX + b"ab" * 64 + b'"}')
    assert split_signature(b'{"object":1}') == (None, b'{"object":1}')


def test_public_keys_round_trip_and_bad_spellings_are_refused_with_the_format():
    signer = ManifestSigner.generate()
    text = signer.public_text
    assert text.startswith("ed25519:")
    assert len(text) == 8 + 64
    assert public_key_text(parse_public_key(text)) == text
    for bad in ("", "ed25519:", "ed25519:" + "AB" * 32, "rsa:" + "ab" * 32, text + "00"):
        with pytest.raises(ValueError, match="ed25519:<64 lower-case hex"):
            parse_public_key(bad)


# === the core, in the deterministic harness =======================================================
def _signed_mesh(peers: int, signer: ManifestSigner, seed: int = 1, **config) -> MeshNetwork:
    net = MeshNetwork(seed=seed, bandwidth=BANDWIDTH, config=MeshConfig(**config))
    source = net.add_peer(SOURCE)
    source.core.signer = signer
    for _ in range(peers):
        peer = net.add_peer()
        peer.core.set_source_key(signer.public_text, net.now)
    net.run(1.0)
    return net


def _forge(kind: str, obj: int, real: bytes, forger_key: ManifestSigner) -> bytes:
    """A manifest for other data than the source published, in one of three disguises."""
    fake, _ = make_object(obj, b"forged" * 10_000, 32 * 1024)
    unsigned = fake.encode()
    if kind == "altered":  # the source's signature kept on a different manifest
        signature = real[len(SIGNATURE_PREFIX) : len(SIGNATURE_PREFIX) + 128]
        return SIGNATURE_PREFIX + signature + b'",' + unsigned[1:]
    if kind == "re-signed":  # signed, but with the forger's own key
        return forger_key.sign(unsigned, OVERLAY, SOURCE)
    return unsigned  # no signature at all


@pytest.mark.parametrize("kind", ["altered", "re-signed", "unsigned"])
def test_honest_peers_refuse_a_forged_manifest_and_complete_from_other_neighbours(kind):
    signer = ManifestSigner.generate()
    # strikes would ban the forger after three lies; here it stays, so the test shows that a
    # refused manifest is never asked of it again (not merely that it was banned)
    net = _signed_mesh(24, signer, max_strikes=1000)
    forger = next(p for p in net.receivers() if SOURCE in p.core.neighbours)
    served = []

    def lie(message):
        obj, index = split_sequence(getattr(message, "sequence", 0))
        if isinstance(message, GetDataResponse) and message.data and index == 0:
            served.append(message.sequence)
            forged = _forge(kind, obj, message.data, ManifestSigner.generate())
            return msgspec.structs.replace(message, data=forged)
        return message

    net.tamper[forger.peer_id] = lie
    blobs = [random.Random(i).randbytes(100_000) for i in range(6)]
    objects = [net.publish(blob) for blob in blobs]
    honest = [p for p in net.receivers() if p is not forger]
    assert net.run_until(
        lambda: all(net.all_have(obj, honest) for obj in objects), deadline=net.now + 60
    )
    for obj, blob in zip(objects, blobs, strict=True):
        assert all(p.data[obj] == blob for p in honest)
    assert all(p.core.counters.manifests_verified == len(objects) for p in honest)
    assert all(p.core.counters.manifests_unverified == 0 for p in honest)
    victims = [p for p in honest if p.core.counters.forged]
    assert victims, "nobody asked the forger for a manifest: the test proves nothing"
    counter = "unsigned_refused" if kind == "unsigned" else "bad_signatures"
    assert sum(getattr(p.core.counters, counter) for p in victims) == len(served)
    assert all(getattr(p.core.counters, counter) <= len(objects) for p in victims)
    assert all(forger.peer_id in p.core.neighbours for p in victims)
    assert all(any("refused: the manifest" in e for e in p.errors) for p in victims)
    # Never asked again: full buffermap refreshes re-announce every manifest each 10 s, and
    # still nobody asks the forger for one it already refused from it.
    asked = len(served)
    net.run(net.now + 35)
    assert len(served) == asked
    assert all(p.core.status()["signatures"]["source-key"] == signer.public_text for p in honest)


def test_without_a_key_and_unsigned_the_mesh_works_as_before_signing():
    net = MeshNetwork(seed=2, bandwidth=BANDWIDTH)
    net.add_peer(SOURCE)
    for _ in range(6):
        net.add_peer()
    net.run(1.0)
    obj = net.publish(b"plain" * 10_000)
    assert net.run_until(lambda: net.all_have(obj), deadline=net.now + 10)
    for peer in net.receivers():
        assert peer.core.counters.manifests_unverified == 1
        assert peer.core.counters.key_requests == 0


# === the core alone: key missing, late, required, wrong ==========================================
def _core(config: MeshConfig | None = None, key: str | None = None, **kw) -> tuple[MeshCore, int]:
    """A receiver with one neighbour ("n1") up, announcing object 1's manifest and one piece."""
    core = MeshCore(config or MeshConfig(), "me", "mem://me", random.Random(0), **kw)
    core.start(MeshJoinInfo(OVERLAY, SOURCE, 2, (), source_key=key), 0.0)
    conn = core.accept(0.0)
    core.receive(conn, Hello(OVERLAY, "n1", "mem://n1", 1, 0, 0, hp2p=HelloExt(mesh=1)), 0.0)
    core.take_effects()
    announce = BuffermapResponse(
        OVERLAY, [BuffermapEntry(SOURCE, [sequence_of(1, 0), sequence_of(1, 1)])]
    )
    core.receive(conn, announce, 0.1)
    return core, conn


def _asked(effects) -> list[int]:
    return [
        e.message.sequence
        for e in effects
        if isinstance(e, Send) and isinstance(e.message, GetData)
    ]


def _answer(core: MeshCore, conn: int, seq: int, data: bytes, now: float) -> None:
    core.receive(conn, GetDataResponse(source=SOURCE, sequence=seq, data=data), now)


def test_required_signatures_without_a_key_fetch_nothing_until_the_homs_answers():
    signer = ManifestSigner.generate()
    core, conn = _core(MeshConfig(require_signatures=True))
    effects = core.take_effects()
    assert _asked(effects) == []  # no manifest is even requested without a key
    core.handle_timer(1.0)
    effects = core.take_effects()
    assert any(isinstance(e, SourceKeyWanted) for e in effects)
    assert core.status()["signatures"]["waiting-for-key"] is True
    core.set_source_key(None, 1.1)  # the HOMS has none: still nothing
    assert _asked(core.take_effects()) == []
    core.set_source_key(signer.public_text, 1.2)
    assert _asked(core.take_effects()) == [sequence_of(1, 0)]
    manifest, pieces = make_object(1, b"payload", 1024)
    _answer(core, conn, sequence_of(1, 0), signer.sign(manifest.encode(), OVERLAY, SOURCE), 1.3)
    assert _asked(core.take_effects()) == [sequence_of(1, 1)]
    _answer(core, conn, sequence_of(1, 1), pieces[0], 1.4)
    assert core.objects() == [1]
    assert core.counters.manifests_verified == 1


def test_required_signatures_refuse_an_unsigned_manifest_even_from_a_good_neighbour():
    signer = ManifestSigner.generate()
    core, conn = _core(MeshConfig(require_signatures=True), key=signer.public_text)
    assert _asked(core.take_effects()) == [sequence_of(1, 0)]
    manifest, _ = make_object(1, b"payload", 1024)
    _answer(core, conn, sequence_of(1, 0), manifest.encode(), 0.2)
    assert core.manifest(1) is None
    assert core.counters.unsigned_refused == 1
    assert core.counters.forged == 1
    # the same neighbour announcing it again is not asked again
    announce = BuffermapResponse(OVERLAY, [BuffermapEntry(SOURCE, [sequence_of(1, 0)])])
    core.receive(conn, announce, 0.3)
    core.handle_timer(5.0)
    assert sequence_of(1, 0) not in _asked(core.take_effects())


def test_a_signed_manifest_without_a_key_first_asks_the_homs_once():
    signer = ManifestSigner.generate()
    core, conn = _core()
    assert _asked(core.take_effects()) == [sequence_of(1, 0)]
    manifest, _ = make_object(1, b"payload", 1024)
    piece0 = signer.sign(manifest.encode(), OVERLAY, SOURCE)
    _answer(core, conn, sequence_of(1, 0), piece0, 0.2)
    effects = core.take_effects()
    assert any(isinstance(e, SourceKeyWanted) for e in effects)
    assert core.manifest(1) is None
    assert core.counters.forged == 0  # nobody blamed
    assert _asked(effects) == []  # held until the answer
    core.set_source_key(signer.public_text, 0.3)
    assert _asked(core.take_effects()) == [sequence_of(1, 0)]
    _answer(core, conn, sequence_of(1, 0), piece0, 0.4)
    assert core.counters.manifests_verified == 1
    assert core.counters.key_requests == 1


def test_a_signed_manifest_without_a_key_is_taken_on_trust_when_the_homs_never_answers():
    signer = ManifestSigner.generate()
    core, conn = _core()
    core.take_effects()
    manifest, _ = make_object(1, b"payload", 1024)
    piece0 = signer.sign(manifest.encode(), OVERLAY, SOURCE)
    _answer(core, conn, sequence_of(1, 0), piece0, 0.2)
    core.take_effects()
    deadline = core.next_timer()
    assert deadline is not None
    assert deadline <= 0.2 + core.config.request_timeout
    core.handle_timer(0.2 + core.config.request_timeout)
    assert _asked(core.take_effects()) == [sequence_of(1, 0)]
    _answer(core, conn, sequence_of(1, 0), piece0, 3.0)
    assert core.manifest(1) is not None
    assert core.counters.manifests_unverified == 1


def test_signed_manifests_taken_on_trust_keep_asking_the_homs_until_it_records_a_key():
    """The bridge's order can record the key after a member asked: that member must not stay
    unverified for ever, so a later signed manifest asks again (rate-limited)."""
    signer = ManifestSigner.generate()
    core, conn = _core()
    core.take_effects()
    first, _ = make_object(1, b"payload", 1024)
    _answer(core, conn, sequence_of(1, 0), signer.sign(first.encode(), OVERLAY, SOURCE), 0.2)
    core.take_effects()
    core.set_source_key(None, 0.3)  # the HOMS records no key yet
    core.take_effects()
    _answer(core, conn, sequence_of(1, 0), signer.sign(first.encode(), OVERLAY, SOURCE), 0.4)
    assert core.counters.manifests_unverified == 1  # taken on trust
    assert core.counters.key_requests == 1  # too soon to ask again
    later = 0.4 + core.config.peer_list_interval
    second, _ = make_object(2, b"payload 2", 1024)
    core.receive(
        conn, BuffermapResponse(OVERLAY, [BuffermapEntry(SOURCE, [sequence_of(2, 0)])]), later
    )
    core.take_effects()
    _answer(core, conn, sequence_of(2, 0), signer.sign(second.encode(), OVERLAY, SOURCE), later)
    assert any(isinstance(e, SourceKeyWanted) for e in core.take_effects())
    assert core.counters.key_requests == 2
    core.set_source_key(signer.public_text, later + 0.1)  # recorded since
    third, _ = make_object(3, b"payload 3", 1024)
    core.receive(
        conn,
        BuffermapResponse(OVERLAY, [BuffermapEntry(SOURCE, [sequence_of(3, 0)])]),
        later + 0.2,
    )
    core.take_effects()
    _answer(
        core, conn, sequence_of(3, 0), signer.sign(third.encode(), OVERLAY, SOURCE), later + 0.3
    )
    assert core.counters.manifests_verified == 1
    assert core.manifest(3) is not None


def test_a_source_whose_key_is_not_the_recorded_one_refuses_to_start():
    recorded, other = ManifestSigner.generate(), ManifestSigner.generate()
    core = MeshCore(MeshConfig(), SOURCE, "mem://s", random.Random(0), signer=other)
    with pytest.raises(ValueError, match="not the key the SubMesh records"):
        core.start(MeshJoinInfo(OVERLAY, SOURCE, 1, (), source_key=recorded.public_text), 0.0)


def test_a_store_with_a_tampered_manifest_drops_it_on_restart():
    signer = ManifestSigner.generate()
    store = MemoryPieceStore()
    source = MeshCore(MeshConfig(), SOURCE, "mem://s", random.Random(0), store=store, signer=signer)
    source.start(MeshJoinInfo(OVERLAY, SOURCE, 1, ()), 0.0)
    source.publish(b"first" * 100, 0.0)
    source.publish(b"second" * 100, 0.0)
    seq = sequence_of(2, 0)
    original = store.get(seq)
    assert original is not None
    store.put(seq, original.replace(b'"size":600', b'"size":601'))
    keeper = MeshCore(MeshConfig(), "keeper", "mem://k", random.Random(0), store=store)
    keeper.start(MeshJoinInfo(OVERLAY, SOURCE, 2, (), source_key=signer.public_text), 0.0)
    assert keeper.objects() == [1]
    assert store.get(seq) is None


# === fuzz ========================================================================================
_SIGNER = ManifestSigner.generate()
_GOOD = _piece0(_SIGNER, 7, b"fuzz" * 3000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_arbitrary_piece0_bytes_give_a_typed_error_or_a_valid_manifest(data, prefixed):
    if prefixed:
        data = SIGNATURE_PREFIX + data
    try:
        signature, unsigned = split_signature(data)
    except SignatureError:
        return
    assert (signature is None) == (unsigned is data)
    with pytest.raises(SignatureError):
        verify_piece0(data, _SIGNER.public_key, OVERLAY, SOURCE)
    with contextlib.suppress(ManifestError):
        decode_manifest(unsigned, 7, 1 << 20)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_GOOD) - 1), st.integers(1, 255))
def test_fuzz_any_single_byte_change_of_a_signed_manifest_is_refused(at, flip):
    forged = bytearray(_GOOD)
    forged[at] ^= flip
    with pytest.raises(SignatureError):
        verify_piece0(bytes(forged), _SIGNER.public_key, OVERLAY, SOURCE)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.builds(lambda b: SIGNATURE_PREFIX + b, st.binary(max_size=400)),
        st.builds(lambda i, b: _GOOD[:i] + b, st.integers(0, len(_GOOD)), st.binary(max_size=50)),
    )
)
def test_fuzz_the_core_never_raises_and_never_accepts_an_unverified_manifest(data):
    core, conn = _core(key=_SIGNER.public_text)
    core.take_effects()
    _answer(core, conn, sequence_of(1, 0), data, 0.2)
    assert core.manifest(1) is None
    assert core.counters.manifests_verified == 0
    assert core.counters.forged == 1


def test_an_oversized_piece0_is_refused_before_any_parsing():
    with pytest.raises(ManifestError, match="exceeds"):
        verify_piece0(
            b"{" + b" " * (MAX_MANIFEST_BYTES + 1000), _SIGNER.public_key, OVERLAY, SOURCE
        )


def test_only_a_json_object_manifest_can_be_signed():
    for bad in (b"", b"{}", b"[1,2]"):
        with pytest.raises(ValueError, match="JSON object"):
            _SIGNER.sign(bad, OVERLAY, SOURCE)


# === key files (the source's side of the shell) ==================================================
def test_a_key_file_is_created_0600_on_first_use_and_the_same_key_is_loaded_again(tmp_path):
    path = tmp_path / "keys" / "src.ed25519.pem"
    assert load_signing_key(path, create=False) is None
    first = load_signing_key(path, create=True)
    assert first is not None
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_signing_key(path, create=True)
    assert again is not None
    assert again.public_text == first.public_text
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_a_key_file_others_may_read_or_that_is_not_a_key_is_refused_clearly(tmp_path):
    path = tmp_path / "k.pem"
    assert load_signing_key(path, create=True) is not None
    path.chmod(0o644)
    with pytest.raises(MeshNodeError, match="chmod 600"):
        load_signing_key(path, create=True)
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(MeshNodeError, match="not an unencrypted PEM private key"):
        load_signing_key(path, create=True)
    assert path.read_bytes() == b"not a key"  # never overwritten: the operator decides
    with pytest.raises(MeshNodeError, match="cannot read the signing key file"):
        load_signing_key(tmp_path, create=True)  # a directory


def test_the_default_key_path_is_per_source_id_and_safe_for_any_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HP2P_KEY_DIR", str(tmp_path))
    assert default_key_path("block-source") == tmp_path / "block-source.ed25519.pem"
    odd = default_key_path("../../etc/passwd")
    assert odd.parent == tmp_path
    assert odd.name.endswith(".ed25519.pem")
    assert "/" not in odd.name[: -len(".ed25519.pem")]


def test_a_pinned_key_is_checked_when_the_settings_are_made():
    with pytest.raises(MeshNodeError, match="--source-key"):
        MeshSettings(join="blocks", source_key="ed25519:nothex")
    assert MeshSettings(join="blocks", source_key=_SIGNER.public_text).source_key
