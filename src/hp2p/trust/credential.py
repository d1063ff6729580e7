"""The membership credential: the HOMS's signed statement that a key is a member of an overlay.

At join a peer presents an Ed25519 public key; the HOMS answers with a credential binding
overlay-id, peer-id, ticket-id, that key, the peer's role (``peer``, or ``source`` for the
single source of a sub-overlay), the address the HOMS registered and an expiry. Refresh renews
it. There is no revocation list: a credential lives only ``ttl`` seconds (two refresh periods
by default), so a peer that left or was removed is out once its last credential expires, and
peers check expiry on every link (docs/security.md).

A credential travels as one ASCII token, ``hp2pc1.<body>.<signature>`` (base64url without
padding), so it fits a HOMP JSON string and an R2 header field unchanged. The body is a
msgpack array; the signature covers a context string and the body bytes exactly as sent, so
verifying never re-encodes anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Annotated, Final, Literal

import msgspec

from hp2p.trust.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey, Verifier

PREFIX: Final = "hp2pc1."
CONTEXT: Final = b"hp2p-credential-v1\x00"
MAX_TOKEN: Final = 2048
"""Longest token accepted anywhere (a real one is about 300 characters)."""
CLOCK_SKEW: Final = 60.0
"""Seconds of disagreement between the HOMS's clock and a peer's that are forgiven."""

Role = Literal["peer", "source"]


class CredentialError(ValueError):
    """A credential is malformed, forged, expired or for someone else; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CredentialBody(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """What the HOMS vouches for. Times are Unix seconds (wall clock)."""

    homs_key: Annotated[str, msgspec.Meta(max_length=64)]
    overlay_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    peer_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    ticket_id: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    public_key: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    role: Role
    address: Annotated[str, msgspec.Meta(max_length=1024)]
    issued_at: Annotated[int, msgspec.Meta(ge=0)]
    expires_at: Annotated[int, msgspec.Meta(ge=0)]


class Credential(msgspec.Struct, frozen=True):
    """A decoded token: the body, and what verifying and caching it need."""

    body: CredentialBody
    signed: bytes
    """The body bytes exactly as sent (what the signature covers)."""
    signature: bytes
    token: str
    digest: bytes
    """sha256 of the token: its identity in caches and in link proofs."""


_BODY_DECODER = msgspec.msgpack.Decoder(CredentialBody)
_ENCODER = msgspec.msgpack.Encoder()


def key_id(public: bytes) -> str:
    """The short name of a HOMS signing key: 16 hex digits of its sha256."""
    return hashlib.sha256(public).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: SigningKey, body: CredentialBody) -> str:
    """The token for ``body``, signed with the HOMS key ``key`` (whose id ``body`` must name)."""
    if body.homs_key != key_id(key.public):
        raise ValueError("the credential names another HOMS key than the one signing it")
    if len(body.public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("a credential binds a 32-byte Ed25519 public key")
    signed = _ENCODER.encode(body)
    return PREFIX + _b64(signed) + "." + _b64(key.sign(CONTEXT + signed))


def decode(token: str) -> Credential:
    """Parse ``token`` without checking its signature; :class:`CredentialError` if malformed."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise CredentialError(f"a credential is a string of at most {MAX_TOKEN} characters")
    if not token.startswith(PREFIX):
        raise CredentialError(f"a credential starts with {PREFIX!r}")
    parts = token[len(PREFIX) :].split(".")
    if len(parts) != 2:
        raise CredentialError("a credential has two dot-separated parts after its prefix")
    try:
        signed, signature = _unb64(parts[0]), _unb64(parts[1])
    except (binascii.Error, ValueError) as exc:
        raise CredentialError(f"a credential is base64url: {exc}") from exc
    if len(signature) != SIGNATURE_BYTES:
        raise CredentialError("a credential's signature has 64 bytes")
    try:
        body = _BODY_DECODER.decode(signed)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError: a DecodeError
        # msgspec's msgpack decoder lets a string that is not UTF-8 through as UnicodeDecodeError
        raise CredentialError(f"a credential's body is malformed: {exc}") from exc
    return Credential(body, signed, signature, token, hashlib.sha256(token.encode()).digest())


class CredentialVerifier:
    """Checks credentials against the HOMS keys an overlay trusts, caching what verified.

    ``homs_keys`` maps key ids to raw public keys (from the join response or ``GET
    /homs/keys``); during a rotation it holds the old and the new key. Verified tokens are
    cached (bounded, least recently used out first) so that a credential seen on every HELLO
    relay and every link costs one Ed25519 verification per process, not one per use.
    """

    def __init__(self, homs_keys: Mapping[str, bytes], max_cached: int = 4096) -> None:
        self.homs_keys = dict(homs_keys)
        self._ok: OrderedDict[str, Credential] = OrderedDict()
        self._max = max_cached
        self.crypto = Verifier(max_keys=16)

    def set_keys(self, homs_keys: Mapping[str, bytes]) -> None:
        if dict(homs_keys) != self.homs_keys:
            self.homs_keys = dict(homs_keys)
            self._ok.clear()

    def check(
        self,
        token: str,
        now: float,
        overlay_id: str,
        *,
        peer_id: str | None = None,
    ) -> Credential:
        """The verified credential; :class:`CredentialError` says why it is refused.

        ``now`` is wall-clock Unix time. Expiry is checked on every call (a cached credential
        still expires); the signature only the first time.
        """
        cred = self._ok.get(token)
        if cred is None:
            cred = decode(token)
            public = self.homs_keys.get(cred.body.homs_key)
            if public is None:
                raise CredentialError(
                    f"the credential is signed by HOMS key {cred.body.homs_key!r}, "
                    "which this overlay does not trust"
                )
            if not self.crypto.verify(public, cred.signature, CONTEXT + cred.signed):
                raise CredentialError("the credential's HOMS signature does not verify")
            self._ok[token] = cred
            if len(self._ok) > self._max:
                self._ok.popitem(last=False)
        else:
            self._ok.move_to_end(token)
        body = cred.body
        if body.overlay_id != overlay_id:
            raise CredentialError(f"the credential is for overlay {body.overlay_id!r}")
        if peer_id is not None and body.peer_id != peer_id:
            raise CredentialError(f"the credential is {body.peer_id!r}'s, not {peer_id!r}'s")
        if now > body.expires_at + CLOCK_SKEW:
            raise CredentialError("the credential has expired (the peer must refresh)")
        if now < body.issued_at - CLOCK_SKEW:
            raise CredentialError("the credential is not valid yet (clocks disagree)")
        return cred
