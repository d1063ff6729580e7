"""Ed25519 keys as hp2p spells and stores them.

One spelling for a public key everywhere (HOMP fields, credentials, logs): ``ed25519:<64 hex>``.
Private keys live in files of mode 0600 holding the 32-byte seed in hex; a file that is
readable by others is refused rather than used, since anyone who reads it can speak as the peer.
"""

from __future__ import annotations

import os
import re
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_PREFIX: Final = "ed25519:"
PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
_KEY_TEXT = re.compile(r"ed25519:[0-9a-f]{64}")
_SEED_TEXT = re.compile(r"[0-9a-f]{64}")


class KeyFileError(ValueError):
    """A key file is unreadable, malformed or too open; the message says which and what to do."""


def public_key_text(raw: bytes) -> str:
    """``ed25519:<64 hex>`` for a raw 32-byte public key."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    return KEY_PREFIX + raw.hex()


def parse_public_key(text: str) -> bytes:
    """The raw key written as ``ed25519:<64 hex>``; ``ValueError`` says what is wrong."""
    if not isinstance(text, str) or not _KEY_TEXT.fullmatch(text):
        shown = text[:80] if isinstance(text, str) else type(text).__name__
        raise ValueError(f"a key is written ed25519:<64 lower-case hex digits>, not {shown!r}")
    return bytes.fromhex(text[len(KEY_PREFIX) :])


class SigningKey:
    """A private key and the raw public key that goes with it."""

    __slots__ = ("_key", "public", "public_text")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_text = public_key_text(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    @property
    def private(self) -> Ed25519PrivateKey:
        """The key object itself, for a TLS certificate (hp2p.transport.tls)."""
        return self._key

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """The key in ``path``; :class:`KeyFileError` if it is missing, malformed or too open."""
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read the key file {path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"the key file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                f"run `chmod 600 {path}` or delete it to make a new key"
            )
        if not _SEED_TEXT.fullmatch(text):
            raise KeyFileError(f"the key file {path} does not hold a 64-hex-digit Ed25519 seed")
        return cls.from_seed(bytes.fromhex(text))

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """The key in ``path``, made (mode 0600, parent directories 0700) if there is none."""
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key.seed().hex() + "\n")
        tmp.replace(path)
        return key


class Verifier:
    """Ed25519 verification with the parsed public keys kept (bounded) between calls.

    Parsing a public key costs about as much as a hash; a relay checks the same few sources'
    keys thousands of times, so the parsed objects are kept, least recently used out first.
    """

    def __init__(self, max_keys: int = 4096) -> None:
        self._keys: OrderedDict[bytes, Ed25519PublicKey] = OrderedDict()
        self._max = max_keys
        self.verified = 0  # Ed25519 verifications done (each one costs ~100 µs here)

    def verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        key = self._keys.get(public)
        if key is None:
            try:
                key = Ed25519PublicKey.from_public_bytes(public)
            except ValueError:
                return False
            self._keys[public] = key
            if len(self._keys) > self._max:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(public)
        self.verified += 1
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def length_prefixed(*parts: bytes) -> bytes:
    """``parts`` joined so that no two different tuples give the same bytes."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)
