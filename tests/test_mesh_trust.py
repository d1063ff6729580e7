"""The source-key trust policy of a SubMesh peer, as the pure function every shell calls."""

from __future__ import annotations

import pytest

from hp2p.peer.mesh_objects import ManifestSigner
from hp2p.peer.mesh_trust import KeyChoice, TrustError, choose_source_key

A = ManifestSigner.generate().public_text
B = ManifestSigner.generate().public_text


def choose(**kw: object) -> KeyChoice:
    args: dict[str, object] = {
        "source_id": "src",
        "peer_id": "member",
        "pinned": None,
        "recorded": None,
        "signer_key": None,
    }
    args.update(kw)
    return choose_source_key(**args)  # type: ignore[arg-type]


def test_no_key_anywhere_means_none() -> None:
    assert choose() == KeyChoice(None, True, ())


def test_the_homs_record_is_used_when_nothing_is_pinned() -> None:
    assert choose(recorded=A).key == A


def test_a_pinned_key_wins_and_a_disagreement_is_reported() -> None:
    choice = choose(pinned=A, recorded=B)
    assert choice.key == A
    assert "pinned source key" in choice.warnings[0]


def test_an_unusable_record_is_refused() -> None:
    with pytest.raises(TrustError, match="unusable source-key"):
        choose(recorded="ed25519:zz")


def test_a_source_publishing_unsigned_while_a_key_is_recorded_is_refused() -> None:
    with pytest.raises(TrustError, match="drop --unsigned"):
        choose(peer_id="src", recorded=A)


def test_a_source_with_the_wrong_key_file_is_refused() -> None:
    with pytest.raises(TrustError, match="signing key"):
        choose(peer_id="src", recorded=A, signer_key=B)


def test_a_standby_with_the_wrong_key_file_keeps_running_but_must_not_sign() -> None:
    choice = choose(peer_id="standby", recorded=A, signer_key=B)
    assert choice.key == A
    assert choice.keep_signer is False
    assert "standby's key file" in choice.warnings[0]


def test_a_source_with_its_recorded_key_signs() -> None:
    assert choose(peer_id="src", recorded=A, signer_key=A) == KeyChoice(A, True, ())
