"""The join transaction on SQLite, in plain SQL on the ``sqlite3`` connection (OPM FE hot path).

A join is the one HOMS operation whose rate matters (BENCHMARKS.md metric 6: 2,000 joins/s).
Through SQLAlchemy Core its six statements cost ~1 ms of CPU, nearly all of it in
SQLAlchemy's per-execute machinery (compiled-cache lookup, parameter processing, result
wrapping); ``sqlite3`` itself needs a few µs per statement. So on SQLite the join runs here,
on a raw connection of the writer thread, with the same statements and the same rules as
:meth:`hp2p.homs.store.HomsStore.join` (which still runs it on PostgreSQL). SQLAlchemy keeps
the schema and the migrations; ``tests/test_homs_store.py`` runs both paths against the same
expectations.

The statements, in one ``BEGIN IMMEDIATE`` transaction:

1. ``UPDATE overlay … last_ticket + 1 … RETURNING``: the ticket, and the overlay in the same
   round (unknown overlay: nothing returned);
2. the closed-overlay peer-list check (closed overlays only);
3. ``INSERT`` the member (a duplicate peer-id violates the primary key);
4. ``INSERT … ON CONFLICT DO UPDATE`` the peer information (PIR FE);
5. the peer list: count the active peers, read only the window of entry points.

Any refusal raises before ``COMMIT`` and the transaction rolls back: no ticket is burnt.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from hp2p.homs import peerlist
from hp2p.homs.errors import HompError, unknown_overlay
from hp2p.homs.peerlist import PeerEntry

T = TypeVar("T")

#: The overlay columns :func:`hp2p.homs.store.record_from_values` expects, in order.
OVERLAY_COLUMNS = (
    "overlay_id",
    "title",
    "type",
    "sub_type",
    "owner_id",
    "status",
    "description",
    "heartbeat_interval",
    "heartbeat_timeout",
    "auth_type",
    "auth_keyword",
    "access_key_hash",
    "app_id",
    "mn_cache",
    "md_cache",
    "recovery_by",
    "parent_overlay_id",
    "source_peer_id",
    "source_key",
    "delete_when_empty",
    "last_ticket",
    "created_at",
)

BUMP_TICKET = (
    "UPDATE overlay SET last_ticket = last_ticket + 1 WHERE overlay_id = ? RETURNING "
    + ", ".join(OVERLAY_COLUMNS)
)
LISTED = "SELECT 1 FROM auth_peer WHERE overlay_id = ? AND peer_id = ?"
INSERT_PEER = (
    "INSERT INTO peer (overlay_id, peer_id, ticket, address, password_hash, expires, "
    "last_seen, expires_at, num_primary, num_out_candidate, num_in_candidate, costmap, "
    "report_time, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, NULL, NULL, ?)"
)
UPSERT_INFO = (
    "INSERT INTO peer_info (peer_id, addresses, preferences, capabilities, updated_at) "
    "VALUES (?, ?, NULL, ?, ?) ON CONFLICT (peer_id) DO UPDATE SET "
    "addresses = excluded.addresses, preferences = excluded.preferences, "
    "capabilities = excluded.capabilities, updated_at = excluded.updated_at"
)
COUNT_ACTIVE = (
    "SELECT count(*) FROM peer WHERE overlay_id = ? AND expires_at >= ? "
    "AND suspect_since IS NULL AND num_primary > 0"
)
ACTIVE_WINDOW = (
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = ? AND expires_at >= ? AND suspect_since IS NULL AND num_primary > 0 "
    "ORDER BY ticket LIMIT ? OFFSET ?"
)
LIVE_PEERS = (
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = ? AND expires_at >= ? AND suspect_since IS NULL ORDER BY ticket"
)
LOWEST_TICKET = LIVE_PEERS + " LIMIT 1"


class DuplicatePeerError(Exception):
    """The peer-id is already a member of the overlay (the store answers 409)."""


def join_transaction(
    conn: sqlite3.Connection,
    *,
    overlay_id: str,
    peer_id: str,
    member: tuple[str, str, int, float],
    info: tuple[str, str | None, float],
    tree_list_size: int,
    check: Callable[[tuple[Any, ...], Callable[[], bool]], T],
    mesh_choice: Callable[[list[PeerEntry]], list[PeerEntry]],
) -> tuple[T, int, list[PeerEntry]]:
    """Run inside an open transaction; returns ``check``'s result, the ticket and the list.

    ``member`` is (address, password_hash, expires, now); ``info`` is the PIR row (addresses
    JSON, capabilities JSON, now). ``check(row, listed)`` applies the store's own rules to
    the overlay row (kind, closed-overlay admission, calling ``listed()`` only when it needs
    the peer-list lookup) and raises :class:`HompError` to refuse.
    """
    row = conn.execute(BUMP_TICKET, (overlay_id,)).fetchone()
    if row is None:
        raise unknown_overlay(overlay_id)

    def listed() -> bool:
        return conn.execute(LISTED, (overlay_id, peer_id)).fetchone() is not None

    checked = check(row, listed)
    address, password_hash, expires, now = member
    ticket: int = row[OVERLAY_COLUMNS.index("last_ticket")]
    try:
        conn.execute(
            INSERT_PEER,
            (overlay_id, peer_id, ticket, address, password_hash, expires, now, now + expires, now),
        )
    except sqlite3.IntegrityError as exc:
        raise DuplicatePeerError(peer_id) from exc
    conn.execute(UPSERT_INFO, (peer_id, *info))
    if row[OVERLAY_COLUMNS.index("sub_type")] == "mesh":
        live = [PeerEntry(*r) for r in conn.execute(LIVE_PEERS, (overlay_id, now))]
        return checked, ticket, mesh_choice(live)
    active = conn.execute(COUNT_ACTIVE, (overlay_id, now)).fetchone()[0]
    offset, count = peerlist.entry_window(int(active), tree_list_size)
    chosen = [PeerEntry(*r) for r in conn.execute(ACTIVE_WINDOW, (overlay_id, now, count, offset))]
    if not chosen:
        chosen = [PeerEntry(*r) for r in conn.execute(LOWEST_TICKET, (overlay_id, now))]
    return checked, ticket, chosen


__all__ = ["DuplicatePeerError", "HompError", "join_transaction"]
