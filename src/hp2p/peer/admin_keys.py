"""Where a creator keeps the admin keys of the overlays it created (0600 files, one per overlay).

``hp2p peer --create`` makes a random admin key; without it nobody can remove or modify the
overlay (HOMP HybridOverlayRemoval/Modification need it). The key is stored here, keyed by the
HOMS URL and the overlay-id, so ``hp2p overlay remove`` finds it without the user copying it.

Location: ``$HP2P_ADMIN_KEY_DIR``, else ``$XDG_STATE_HOME/hp2p/admin-keys``, else
``~/.local/state/hp2p/admin-keys`` (beside the SubMesh source keys); inside it one directory
per HOMS (a digest of its normalised URL) and one file per overlay. A file other users may
read is refused, as ssh does with private keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

#: Environment variable naming the directory of stored admin keys.
ADMIN_KEY_DIR_ENV = "HP2P_ADMIN_KEY_DIR"

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class AdminKeyFileError(Exception):
    """A stored admin key exists but cannot be used (unsafe permissions, unreadable)."""


def admin_key_dir() -> Path:
    """The directory of stored admin keys (not created here)."""
    base = os.environ.get(ADMIN_KEY_DIR_ENV)
    if base:
        return Path(base)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "hp2p" / "admin-keys"


def _homs_name(homs_url: str) -> str:
    """One directory per HOMS: ``http://h:1/`` and ``http://H:1`` are the same HOMS."""
    return hashlib.sha256(homs_url.strip().rstrip("/").lower().encode()).hexdigest()[:24]


def admin_key_path(homs_url: str, overlay_id: str) -> Path:
    """The file of ``overlay_id``'s admin key on ``homs_url`` (whether or not it exists)."""
    name = (
        overlay_id
        if _SAFE_NAME.fullmatch(overlay_id) and not overlay_id.startswith(".")
        else hashlib.sha256(overlay_id.encode()).hexdigest()[:32]
    )
    return admin_key_dir() / _homs_name(homs_url) / f"{name}.json"


def store_admin_key(homs_url: str, overlay_id: str, admin_key: str, title: str = "") -> Path:
    """Write the key 0600 (its directories 0700), replacing an older one atomically."""
    path = admin_key_path(homs_url, overlay_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    document = {"homs": homs_url, "overlay-id": overlay_id, "title": title, "admin-key": admin_key}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def load_admin_key(homs_url: str, overlay_id: str) -> str | None:
    """The stored admin key of ``overlay_id`` on ``homs_url``, None when none was stored.

    Raises :class:`AdminKeyFileError` for a file others may read or that is not ours.
    """
    path = admin_key_path(homs_url, overlay_id)
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AdminKeyFileError(
            f"{path} may be read by other users: make it private (chmod 600 {path}) or give "
            "--admin-key"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        key = document["admin-key"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdminKeyFileError(f"cannot read the admin key in {path}: {exc}") from None
    if not isinstance(key, str) or not key:
        raise AdminKeyFileError(f"{path} holds no admin key: give --admin-key")
    return key


def forget_admin_key(homs_url: str, overlay_id: str) -> None:
    """Remove the stored key of an overlay that no longer exists (no error if absent)."""
    admin_key_path(homs_url, overlay_id).unlink(missing_ok=True)
