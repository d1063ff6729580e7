"""Salted hashes of the HOMS secrets: admin keys, access keys and peer passwords.

The reference HOMS stores all three in plaintext (etri-2023-protocol.md §9.1). Here only a
salted hash is stored and every check is a constant-time comparison.

Two costs, chosen by how often a secret is checked:

* ``scrypt`` (memory-hard, N=2**14 by default, ~30-50 ms) for **admin keys**: they may be
  chosen by a person, so they deserve a slow KDF, and they are only checked on the rare
  modify/remove requests.
* salted ``SHA-256`` (a few µs) for **peer passwords and access keys**: a password is checked
  on every refresh, report and leave, and an access key on every closed-overlay join, so a
  slow KDF there would cap the HOMS far below its 2,000 joins/s target. The reference peer
  generates 16 random letters per password (~75 bits), which a fast hash protects well
  enough; the salt still defeats precomputed tables and hides equal passwords.

The stored text names its algorithm, so the costs can change later without a migration.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16


class SecretFormatError(ValueError):
    """A stored hash that this module cannot read (a corrupt or foreign database row)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_fast(secret: str) -> str:
    """Hash a frequently checked secret (peer password, access key)."""
    salt = os.urandom(_SALT_BYTES)
    digest = hashlib.sha256(salt + secret.encode("utf-8")).digest()
    return f"sha256${_b64(salt)}${_b64(digest)}"


def hash_slow(secret: str, n: int = SCRYPT_N) -> str:
    """Hash a rarely checked, possibly human-chosen secret (admin key) with scrypt."""
    salt = os.urandom(_SALT_BYTES)
    digest = hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches ``stored``, compared in constant time.

    Raises :class:`SecretFormatError` for a stored value of unknown form, so that a broken
    row is reported instead of silently refusing every peer.
    """
    parts = stored.split("$")
    try:
        if parts[0] == "sha256" and len(parts) == 3:
            salt, expected = _unb64(parts[1]), _unb64(parts[2])
            digest = hashlib.sha256(salt + secret.encode("utf-8")).digest()
        elif parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, expected = _unb64(parts[4]), _unb64(parts[5])
            digest = hashlib.scrypt(
                secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected)
            )
        else:
            raise SecretFormatError(f"unknown secret hash format {parts[0]!r}")
    except (ValueError, TypeError) as exc:
        if isinstance(exc, SecretFormatError):
            raise
        raise SecretFormatError(f"unreadable secret hash: {exc}") from exc
    return hmac.compare_digest(digest, expected)
