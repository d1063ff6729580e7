"""What a peer holds once the HOMS admitted it: its key, its credential, the keys to check others'.

Built by the peer's shell from the join (or refresh) response and handed to the sans-IO core
in ``JoinInfo.membership``. ``None`` there means the overlay runs without credentials: a
reference HOMS (which issues none) or an overlay created with the ``reference-compat``
security profile (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from hp2p.trust.keys import SigningKey

CREDENTIALS: Final = "credentials"
"""The default security profile: links need a credential, data needs its source's signature."""
REFERENCE_COMPAT: Final = "reference-compat"
"""The opt-in profile for the reference peers: credentials are used when offered, not required."""
PROFILES: Final = (CREDENTIALS, REFERENCE_COMPAT)


@dataclass(frozen=True)
class Membership:
    key: SigningKey
    """This peer's own key: the credential binds its public half."""
    credential: str
    """The HOMS-signed token (:mod:`hp2p.trust.credential`)."""
    homs_keys: dict[str, bytes] = field(default_factory=dict)
    """Key id → raw public key of every HOMS signing key the overlay trusts now."""
    clock_offset: float = 0.0
    """Wall-clock Unix seconds minus the core's ``now``: the core keeps no clock, credentials
    expire in wall-clock time, so the shell states the difference once."""
    profile: str = CREDENTIALS
    """``credentials``, or ``reference-compat`` (peers without a credential are admitted)."""

    @property
    def required(self) -> bool:
        return self.profile != REFERENCE_COMPAT
