"""The HOMS's credential signing keys (issue #11, docs/security.md "Membership credentials").

The HOMS signs each member's credential (:mod:`hp2p.trust.credential`) with an Ed25519 key it
keeps in a key directory (``hp2p homs --key-dir``), one file per key, mode 0600 like a peer's
key, so that a HOMS restart keeps issuing credentials the running peers accept. Rotation
(``hp2p homs --rotate-key``) makes a new current key and *retires* the old one: a retired key
signs nothing more but is still published (``GET /homs/keys``, ``homs-keys`` in join and
refresh answers) until ``not-after``, the moment every credential it signed has expired (the
rotation time plus the credential TTL plus the allowed clock skew). After that it is dropped
from the ring and its file deleted, since no valid credential can name it any more.

The directory holds ``<key-id>.key`` (the seed in hex) per key and ``ring.json``
(``{"current": id, "retired": {id: not-after}}``). Several HOMS processes may share one
directory (the PostgreSQL deployment): each re-reads ``ring.json`` when its modification time
changes (looked at no more than once a second), so a rotation done by one is picked up by all
within a second.

Revocation model: there is no revocation list. A credential lives ``--credential-ttl`` seconds
(120 by default); a member renews it with every refresh. Leave, expiry and removal delete the
membership, so the next refresh is refused and no new credential is issued: a departed peer
is out of every link once its last credential expires.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hp2p.trust.credential import CLOCK_SKEW, CredentialBody, Role, issue, key_id
from hp2p.trust.keys import SigningKey, parse_public_key

DEFAULT_TTL: Final = 120
"""Seconds a credential is valid; a peer refreshes well within it (docs/security.md)."""
RING_FILE: Final = "ring.json"
RECHECK_S: Final = 1.0
"""How often ``ring.json`` is looked at for a rotation made elsewhere: a stat per credential
would cost a join more than the signature itself."""


class KeyDirError(ValueError):
    """The key directory cannot be used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """One verification key as ``GET /homs/keys`` shows it."""

    key_id: str
    public_key: str
    """``ed25519:<hex>``."""
    not_after: float | None
    """Unix time after which no credential it signed is valid; ``None`` for the current key."""


class KeyRing:
    """The current signing key and the retired keys still published.

    ``directory`` ``None`` keeps one fresh key in memory only (tests, ``create_app`` without a
    key directory): credentials then do not survive a HOMS restart.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        ttl: int = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl < 1:
            raise KeyDirError(f"--credential-ttl must be at least 1 second, got {ttl}")
        self.directory = directory
        self.ttl = ttl
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._current = ""
        self._retired: dict[str, float] = {}
        self._stamp: float | None = None
        self._checked = -RECHECK_S  # monotonic time of the last look at ring.json
        if directory is None:
            key = SigningKey.generate()
            self._current = key_id(key.public)
            self._keys[self._current] = key
        else:
            self._open(directory)

    # ------------------------------------------------------------------ files

    def _open(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (directory / RING_FILE).exists():
            key = self._new_key(directory)
            self._write_ring(directory, key_id(key.public), {})
        self._reload(force=True)

    def _new_key(self, directory: Path) -> SigningKey:
        key = SigningKey.generate()  # the file format of SigningKey.load (a peer's key file)
        path = directory / f"{key_id(key.public)}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key.seed().hex() + "\n")
        return key

    @staticmethod
    def _write_ring(directory: Path, current: str, retired: dict[str, float]) -> None:
        tmp = directory / (RING_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            json.dump({"current": current, "retired": retired}, out)
        tmp.replace(directory / RING_FILE)

    def _reload(self, *, force: bool = False) -> None:
        """Re-read the ring if another process (or ``--rotate-key``) changed it."""
        directory = self.directory
        if directory is None:
            return
        checked = time.monotonic()
        if not force and checked - self._checked < RECHECK_S:
            return
        self._checked = checked
        ring = directory / RING_FILE
        try:
            stamp = ring.stat().st_mtime_ns
        except OSError as exc:
            raise KeyDirError(f"cannot read {ring}: {exc}") from exc
        if not force and stamp == self._stamp:
            return
        try:
            data = json.loads(ring.read_text(encoding="ascii"))
            current = str(data["current"])
            retired = {str(k): float(v) for k, v in dict(data["retired"]).items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyDirError(f"{ring} is not a key ring written by hp2p: {exc}") from exc
        keys: dict[str, SigningKey] = {}
        for kid in (current, *retired):
            key = self._keys.get(kid)
            if key is None:
                key = SigningKey.load(directory / f"{kid}.key")
                if key_id(key.public) != kid:
                    raise KeyDirError(f"{directory / (kid + '.key')} holds another key than {kid}")
            keys[kid] = key
        self._keys, self._current, self._retired = keys, current, retired
        self._stamp = float(stamp)

    # ------------------------------------------------------------------ operations

    def rotate(self) -> str:
        """A new current key; the old one is published until its credentials expired."""
        self._reload(force=True)  # rotate what is on disk now, not what was a second ago
        now = self._clock()
        old = self._current
        retired = {k: t for k, t in self._retired.items() if t > now}
        retired[old] = now + self.ttl + CLOCK_SKEW
        directory = self.directory
        key = SigningKey.generate() if directory is None else self._new_key(directory)
        new = key_id(key.public)
        self._keys[new] = key
        if directory is not None:
            self._write_ring(directory, new, retired)
            for gone in set(self._retired) - set(retired):
                (directory / f"{gone}.key").unlink(missing_ok=True)
            self._reload(force=True)
        else:
            self._current, self._retired = new, retired
            self._keys = {k: v for k, v in self._keys.items() if k == new or k in retired}
        return new

    @property
    def current_id(self) -> str:
        self._reload()
        return self._current

    def published(self) -> list[PublishedKey]:
        """The current key and every retired key whose credentials may still be valid."""
        self._reload()
        now = self._clock()
        out = [PublishedKey(self._current, self._keys[self._current].public_text, None)]
        for kid, not_after in sorted(self._retired.items()):
            if not_after > now and kid in self._keys:
                out.append(PublishedKey(kid, self._keys[kid].public_text, not_after))
        return out

    def homs_keys(self) -> dict[str, str]:
        """``homs-keys`` of a join or refresh answer: key id → ``ed25519:<hex>``."""
        return {k.key_id: k.public_key for k in self.published()}

    def issue(
        self,
        *,
        overlay_id: str,
        peer_id: str,
        ticket_id: int,
        public_key: str,
        role: Role,
        address: str,
        now: float | None = None,
    ) -> str:
        """A credential signed with the current key, valid ``ttl`` seconds from ``now``."""
        self._reload()
        at = int(self._clock() if now is None else now)
        key = self._keys[self._current]
        body = CredentialBody(
            homs_key=self._current,
            overlay_id=overlay_id,
            peer_id=peer_id,
            ticket_id=ticket_id,
            public_key=parse_public_key(public_key),
            role=role,
            address=address,
            issued_at=at,
            expires_at=at + self.ttl,
        )
        return issue(key, body)


def default_key_dir(database: str) -> Path:
    """Where ``--key-dir`` defaults to: beside a SQLite file, else the user's state directory."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(database)
    except Exception:  # an unparsable URL is reported by the database set-up, not here
        url = None
    if url is not None and url.get_backend_name() == "sqlite" and url.database:
        db = Path(url.database)
        return db.resolve().parent / f"{db.name}.keys"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "hp2p" / "homs-keys"


__all__ = [
    "DEFAULT_TTL",
    "KeyDirError",
    "KeyRing",
    "PublishedKey",
    "default_key_dir",
]
