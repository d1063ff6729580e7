"""The pure trust modules (hp2p.trust): keys, credentials, link proofs, source signatures.

Every decoder that reads what a remote sent is fuzzed: it either returns a value or raises its
own error type, never anything else.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p.trust import link, origin
from hp2p.trust.credential import (
    CredentialBody,
    CredentialError,
    CredentialVerifier,
    decode,
    issue,
    key_id,
)
from hp2p.trust.keys import KeyFileError, SigningKey, Verifier, parse_public_key, public_key_text

HOMS = SigningKey.from_seed(bytes(range(32)))
PEER = SigningKey.from_seed(bytes(range(1, 33)))
NOW = 1_800_000_000


def _token(**changes: object) -> str:
    fields: dict[str, object] = {
        "homs_key": key_id(HOMS.public),
        "overlay_id": "ov",
        "peer_id": "alice",
        "ticket_id": 3,
        "public_key": PEER.public,
        "role": "peer",
        "address": "tcp://127.0.0.1:7000",
        "issued_at": NOW,
        "expires_at": NOW + 120,
    }
    fields.update(changes)
    return issue(HOMS, CredentialBody(**fields))  # type: ignore[arg-type]


def _verifier() -> CredentialVerifier:
    return CredentialVerifier({key_id(HOMS.public): HOMS.public})


# --- keys ------------------------------------------------------------------------------------
def test_a_key_file_is_made_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "peer.key"
    made = SigningKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load_or_create(path).public == made.public


def test_a_key_file_others_can_read_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "peer.key"
    SigningKey.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        SigningKey.load(path)


@given(st.text(max_size=100))
def test_public_key_text_parses_only_its_own_form(text: str) -> None:
    try:
        raw = parse_public_key(text)
    except ValueError:
        return
    assert public_key_text(raw) == text


# --- credentials -----------------------------------------------------------------------------
def test_a_credential_verifies_and_says_who_it_is_for() -> None:
    cred = _verifier().check(_token(), NOW + 1, "ov", peer_id="alice")
    assert (cred.body.peer_id, cred.body.ticket_id, cred.body.public_key) == (
        "alice",
        3,
        PEER.public,
    )


@pytest.mark.parametrize(
    ("token", "overlay", "peer", "now", "reason"),
    [
        (_token(), "other", None, NOW, "for overlay"),
        (_token(), "ov", "bob", NOW, "not 'bob'"),
        (_token(), "ov", None, NOW + 120 + 61, "expired"),
        (_token(issued_at=NOW + 1000, expires_at=NOW + 2000), "ov", None, NOW, "not valid yet"),
    ],
)
def test_a_credential_for_someone_else_or_another_time_is_refused(
    token: str, overlay: str, peer: str | None, now: float, reason: str
) -> None:
    with pytest.raises(CredentialError, match=reason):
        _verifier().check(token, now, overlay, peer_id=peer)


def test_a_relabelled_or_foreign_credential_is_refused() -> None:
    token = _token()
    body, sig = token.removeprefix("hp2pc1.").split(".")
    other = _token(peer_id="mallory").removeprefix("hp2pc1.").split(".")[0]
    with pytest.raises(CredentialError, match="does not verify"):
        _verifier().check(f"hp2pc1.{other}.{sig}", NOW, "ov")
    foreign = SigningKey.generate()
    with pytest.raises(CredentialError, match="does not trust"):
        CredentialVerifier({key_id(foreign.public): foreign.public}).check(token, NOW, "ov")
    assert body  # the original still verifies
    _verifier().check(token, NOW, "ov")


def test_a_cached_credential_still_expires() -> None:
    verifier, token = _verifier(), _token()
    verifier.check(token, NOW, "ov")
    with pytest.raises(CredentialError, match="expired"):
        verifier.check(token, NOW + 10_000, "ov")


@given(st.text(max_size=400))
def test_decoding_any_text_gives_a_credential_or_a_credential_error(text: str) -> None:
    try:
        cred = decode(text)
    except CredentialError:
        return
    assert cred.token == text


@given(st.binary(max_size=300), st.binary(min_size=64, max_size=64))
def test_decoding_any_body_gives_a_credential_or_a_credential_error(
    body: bytes, sig: bytes
) -> None:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    token = f"hp2pc1.{b64(body)}.{b64(sig)}"
    try:
        cred = decode(token)
    except CredentialError:
        return
    assert (cred.signed, cred.signature) == (body, sig)


# --- link proofs -----------------------------------------------------------------------------
def test_a_link_proof_binds_side_nonces_credentials_and_overlay() -> None:
    parts = (b"d" * 16, b"r" * 16, b"D" * 32, b"R" * 32)
    proof = link.prove(PEER, "dialer", *parts, overlay_id="ov")
    v = Verifier()
    assert link.check(v, PEER.public, proof, "dialer", *parts, overlay_id="ov")
    assert not link.check(v, PEER.public, proof, "responder", *parts, overlay_id="ov")
    assert not link.check(v, PEER.public, proof, "dialer", *parts, overlay_id="ov2")
    swapped = (parts[1], parts[0], parts[2], parts[3])
    assert not link.check(v, PEER.public, proof, "dialer", *swapped, overlay_id="ov")
    assert not link.check(v, HOMS.public, proof, "dialer", *parts, overlay_id="ov")


# --- source signatures -----------------------------------------------------------------------
def _leaves(n: int) -> list[bytes]:
    return [origin.leaf("ov", "src", i, "text/plain", b"{}", b"m%d" % i) for i in range(n)]


@given(st.integers(min_value=1, max_value=70))
def test_every_message_of_a_batch_folds_to_the_signed_root(n: int) -> None:
    leaves = _leaves(n)
    sig, paths = origin.sign_batch(PEER, leaves)
    checker = origin.OriginVerifier()
    for index, (digest, path) in enumerate(zip(leaves, paths, strict=True)):
        assert checker.check(PEER.public, sig, digest, index, path)
    assert checker.crypto.verified == 1  # one Ed25519 verification for the whole batch
    if n > 1:
        assert not checker.check(PEER.public, sig, leaves[0], 1, paths[0])  # wrong index
        assert not checker.check(PEER.public, sig, b"x" * 32, 0, paths[0])  # wrong message


def test_a_leaf_covers_every_field_the_source_vouches_for() -> None:
    base = ("ov", "src", 1, "text/plain", b"{}", b"data")
    digest = origin.leaf(*base)
    for i, changed in enumerate(("ov2", "src2", 2, "text/html", b'{"a":1}', b"data2")):
        fields = list(base)
        fields[i] = changed
        assert origin.leaf(*fields) != digest  # type: ignore[arg-type]


def test_a_path_longer_than_allowed_is_refused_without_crypto() -> None:
    checker = origin.OriginVerifier()
    path = [b"\x00" * 32] * (origin.MAX_BATCH_DEPTH + 1)
    assert not checker.check(PEER.public, b"\x00" * 64, b"\x00" * 32, 0, path)
    assert checker.crypto.verified == 0
