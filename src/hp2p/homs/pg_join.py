"""The join transaction on PostgreSQL, on an asyncpg connection directly (OPM FE hot path).

Through SQLAlchemy's async engine (greenlet bridge, per-execute compilation and result
wrapping) a join cost ~5 ms of HOMS CPU on PostgreSQL. asyncpg alone, with its per-connection
cache of prepared statements, needs a few tens of µs per statement. The statements and rules
are those of :mod:`hp2p.homs.sqlite_join` (the row lock taken by ``UPDATE … RETURNING`` makes
tickets unique and gap-free across HOMS instances); SQLAlchemy still owns the schema, the
migrations and every other operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # no stubs published

from hp2p.homs import peerlist
from hp2p.homs.errors import unknown_overlay
from hp2p.homs.peerlist import PeerEntry
from hp2p.homs.sqlite_join import OVERLAY_COLUMNS, DuplicatePeerError

T = TypeVar("T")

BUMP_TICKET = (
    "UPDATE overlay SET last_ticket = last_ticket + 1 WHERE overlay_id = $1 RETURNING "
    + ", ".join(OVERLAY_COLUMNS)
)
LISTED = "SELECT 1 FROM auth_peer WHERE overlay_id = $1 AND peer_id = $2"
INSERT_PEER = (
    "INSERT INTO peer (overlay_id, peer_id, ticket, address, password_hash, expires, "
    "last_seen, expires_at, num_primary, num_out_candidate, num_in_candidate, costmap, "
    "report_time, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, 0, NULL, NULL, $7)"
)
UPSERT_INFO = (
    "INSERT INTO peer_info (peer_id, addresses, preferences, capabilities, updated_at) "
    "VALUES ($1, $2, NULL, $3, $4) ON CONFLICT (peer_id) DO UPDATE SET "
    "addresses = excluded.addresses, preferences = excluded.preferences, "
    "capabilities = excluded.capabilities, updated_at = excluded.updated_at"
)
COUNT_ACTIVE = (
    "SELECT count(*) FROM peer WHERE overlay_id = $1 AND expires_at >= $2 "
    "AND suspect_since IS NULL AND num_primary > 0"
)
ACTIVE_WINDOW = (
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = $1 AND expires_at >= $2 AND suspect_since IS NULL AND num_primary > 0 "
    "ORDER BY ticket LIMIT $3 OFFSET $4"
)
LIVE_PEERS = (
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = $1 AND expires_at >= $2 AND suspect_since IS NULL ORDER BY ticket"
)
LOWEST_TICKET = LIVE_PEERS + " LIMIT 1"

_AUTH_TYPE = OVERLAY_COLUMNS.index("auth_type")
_SUB_TYPE = OVERLAY_COLUMNS.index("sub_type")
_LAST_TICKET = OVERLAY_COLUMNS.index("last_ticket")


async def join_transaction(
    conn: Any,
    *,
    overlay_id: str,
    peer_id: str,
    member: tuple[str, str, int, float],
    info: tuple[str, str | None, float],
    tree_list_size: int,
    check: Callable[[tuple[Any, ...], Callable[[], bool]], T],
    mesh_choice: Callable[[list[PeerEntry]], list[PeerEntry]],
) -> tuple[T, int, list[PeerEntry]]:
    """Run inside an open asyncpg transaction; same contract as the SQLite version."""
    row = await conn.fetchrow(BUMP_TICKET, overlay_id)
    if row is None:
        raise unknown_overlay(overlay_id)
    values = tuple(row)
    listed = False
    if values[_AUTH_TYPE] == "closed":
        listed = await conn.fetchval(LISTED, overlay_id, peer_id) is not None
    checked = check(values, lambda: listed)
    address, password_hash, expires, now = member
    ticket: int = values[_LAST_TICKET]
    try:
        await conn.execute(
            INSERT_PEER,
            overlay_id,
            peer_id,
            ticket,
            address,
            password_hash,
            expires,
            now,
            now + expires,
        )
    except asyncpg.UniqueViolationError as exc:
        raise DuplicatePeerError(peer_id) from exc
    await conn.execute(UPSERT_INFO, peer_id, *info)
    if values[_SUB_TYPE] == "mesh":
        live = [PeerEntry(*r) for r in await conn.fetch(LIVE_PEERS, overlay_id, now)]
        return checked, ticket, mesh_choice(live)
    active = await conn.fetchval(COUNT_ACTIVE, overlay_id, now)
    offset, count = peerlist.entry_window(int(active), tree_list_size)
    rows = await conn.fetch(ACTIVE_WINDOW, overlay_id, now, count, offset)
    chosen = [PeerEntry(*r) for r in rows]
    if not chosen:
        chosen = [PeerEntry(*r) for r in await conn.fetch(LOWEST_TICKET, overlay_id, now)]
    return checked, ticket, chosen
