"""Which key a SubMesh peer verifies manifests with: the source-key trust policy.

Two places may name the source's Ed25519 key: the operator (a key pinned with
``--source-key``) and the HOMS (the ``source-key`` it recorded when the SubMesh was created).
A source or standby may also hold a signing key file. This is the one place that decides,
as a pure function, so that the daemon and the tests (and any other shell) apply the same
rules:

* the pinned key wins over the HOMS's record; a disagreement is reported, not hidden;
* a record that is not a valid key is refused outright (an unusable trust root);
* a source that would publish unsigned while a key is recorded is refused: every peer would
  refuse every manifest;
* a source whose signing key is not the recorded one is refused for the same reason; a
  standby whose key file is not the source's keeps running but must not sign after a
  take-over (its manifests would be refused), so it drops its signer.
"""

from __future__ import annotations

from dataclasses import dataclass

from hp2p.peer.mesh_objects import parse_public_key


class TrustError(ValueError):
    """The keys cannot work together; the message says what to do."""


@dataclass(frozen=True, slots=True)
class KeyChoice:
    key: str | None  # the key manifests are verified with; None: none known
    keep_signer: bool  # False: the signing key must not be used (a standby's wrong key file)
    warnings: tuple[str, ...] = ()


def choose_source_key(
    *,
    source_id: str,
    peer_id: str,
    pinned: str | None,
    recorded: str | None,
    signer_key: str | None,
) -> KeyChoice:
    """The key to verify with, whether the signer may sign, and what to tell the operator."""
    if recorded is not None:
        try:
            parse_public_key(recorded)
        except ValueError as exc:
            raise TrustError(f"the HOMS records an unusable source-key: {exc}") from None
    warnings: list[str] = []
    if pinned is not None and recorded is not None and pinned != recorded:
        warnings.append(
            f"the pinned source key {pinned} is not the one the HOMS records ({recorded}); "
            "manifests are verified with the pinned key"
        )
    key = pinned or recorded
    is_source = source_id == peer_id
    if is_source and signer_key is None and key is not None:
        raise TrustError(
            f"SubMesh source {source_id!r} would publish unsigned manifests (--unsigned), "
            f"but its key {key} is recorded: peers would refuse every manifest. Sign with "
            "the source's key file (--signing-key): drop --unsigned."
        )
    if signer_key is not None and key is not None and signer_key != key:
        if is_source:
            raise TrustError(
                f"this source's signing key {signer_key} is not the key the SubMesh "
                f"records for {source_id!r} ({key}); peers would refuse every manifest. "
                "Start it with the key file it was first started with (--signing-key), or "
                "have the owner record the new key (HOMP PUT /homs with source-key)."
            )
        warnings.append(
            f"the standby's key file holds {signer_key}, not the source's key {key}: after "
            "a take-over its manifests would be refused"
        )
        return KeyChoice(key, False, tuple(warnings))
    return KeyChoice(key, True, tuple(warnings))
