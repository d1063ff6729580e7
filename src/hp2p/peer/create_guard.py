"""``hp2p peer --create``: refuse an accidental duplicate, then keep and show the admin key.

Re-running ``--create chat`` used to make a second overlay titled ``chat`` (and joins by title
then failed), and the random admin key was never shown, so nobody could remove the left-over.
Before creating, :func:`prepare_create` asks the HOMS for overlays with exactly that title and
refuses (listing them) unless ``--new``; it also fixes the admin key, so that after the join
:func:`remember_admin_key` can store it (:mod:`hp2p.peer.admin_keys`) and print it once.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import sys

from hp2p.peer.admin_keys import store_admin_key
from hp2p.peer.settings import Settings


class DuplicateTitleError(Exception):
    """An overlay with the title to create exists and ``--new`` was not given."""


async def prepare_create(settings: Settings) -> Settings:
    """``settings`` with an admin key; :class:`DuplicateTitleError` for an existing title.

    HOMS errors (:class:`hp2p.peer.homs_client.HomsError`) propagate: the caller reports them.
    """
    node = settings.node
    assert node.create is not None
    if not node.new:
        from hp2p.peer.homs_client import HomsClient

        client = HomsClient(
            node.homs,
            timeout=node.homs_timeout,
            attempts=node.homs_attempts,
            rng=random.Random(node.seed),
        )
        try:
            existing = await client.overlays_titled(node.create)
            if existing:
                table = await client.describe_overlays(existing)
                raise DuplicateTitleError(
                    f"an overlay titled {node.create!r} exists on {node.homs}; join it with "
                    f"--join {node.create!r} (or by overlay-id), or give --new to make another "
                    f"one anyway:\n{table}"
                )
        finally:
            await client.aclose()
    if node.admin_key is not None:
        return settings
    key = secrets.token_urlsafe(24)
    return dataclasses.replace(settings, node=dataclasses.replace(node, admin_key=key))


def remember_admin_key(settings: Settings, overlay_id: str, *, generated: bool) -> None:
    """Store the created overlay's admin key 0600 and say so on stderr (the key itself only
    when this run made it up: one the user gave is already known to them)."""
    node = settings.node
    if node.create is None or node.admin_key is None or not overlay_id:
        return
    try:
        path = store_admin_key(node.homs, overlay_id, node.admin_key, node.create)
    except OSError as exc:
        print(
            f"hp2p peer: admin key of {overlay_id} NOT stored ({exc}); it is {node.admin_key} "
            "(keep it: `hp2p overlay remove` needs it)",
            file=sys.stderr,
            flush=True,
        )
        return
    shown = f"admin key {node.admin_key} " if generated else "admin key "
    print(
        f"hp2p peer: created overlay {overlay_id}: {shown}stored in {path} "
        "(used by `hp2p overlay remove|modify`)",
        file=sys.stderr,
        flush=True,
    )
