"""The join transaction (OPM FE hot path), written once and run on SQLite or PostgreSQL.

A join is the one HOMS operation whose rate matters (BENCHMARKS.md metric 6: 2,000 joins/s).
Through SQLAlchemy its statements cost ~1 ms of CPU on SQLite and ~5 ms on PostgreSQL, nearly
all of it in SQLAlchemy's per-execute machinery (compiled-cache lookup, parameter processing,
result wrapping, and the greenlet bridge of the async engine); ``sqlite3`` needs a few µs per
statement and asyncpg, with its per-connection cache of prepared statements, a few tens. So a
join runs in plain SQL on the driver's own connection; SQLAlchemy keeps the schema, the
migrations and every other operation (:mod:`hp2p.homs.store`).

:func:`join_steps` is the transaction: a generator that yields each statement and receives its
result, so that the same rules run on both drivers: :func:`run_on_sqlite` (a raw connection of
the SQLite writer thread) and :func:`run_on_postgres` (an asyncpg connection). The statements,
in one transaction:

1. ``UPDATE overlay … last_ticket + 1 … RETURNING``: the ticket, and the overlay in the same
   round (unknown overlay: nothing returned). On PostgreSQL its row lock makes tickets unique
   and gap-free across HOMS instances;
2. the closed-overlay peer-list check (closed overlays only);
3. ``INSERT`` the member (a duplicate peer-id violates the primary key);
4. ``INSERT … ON CONFLICT DO UPDATE`` the peer information (PIR FE);
5. the peer list: count the active peers, read only the window of entry points (a SubMesh:
   every live peer, for the random choice).

Any refusal raises before the commit and the transaction rolls back: no ticket is burnt.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Generator
from typing import Any, Literal, NamedTuple, TypeVar

import asyncpg  # type: ignore[import-untyped]  # no stubs published

from hp2p.homs import peerlist
from hp2p.homs.errors import unknown_overlay
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
    "security",
    "last_ticket",
    "created_at",
)
_AUTH_TYPE = OVERLAY_COLUMNS.index("auth_type")
_SUB_TYPE = OVERLAY_COLUMNS.index("sub_type")
_LAST_TICKET = OVERLAY_COLUMNS.index("last_ticket")


class Statement(NamedTuple):
    """One SQL statement in both placeholder styles, and the result the transaction wants."""

    sqlite: str  # ``?`` placeholders
    postgres: str  # ``$1 … $n``
    result: Literal["row", "rows", "value", "none"]


def _statement(sql: str, result: Literal["row", "rows", "value", "none"]) -> Statement:
    head, *rest = sql.split("?")
    numbered = head + "".join(f"${n}{part}" for n, part in enumerate(rest, 1))
    return Statement(sql, numbered, result)


BUMP_TICKET = _statement(
    "UPDATE overlay SET last_ticket = last_ticket + 1 WHERE overlay_id = ? RETURNING "
    + ", ".join(OVERLAY_COLUMNS),
    "row",
)
LISTED = _statement("SELECT 1 FROM auth_peer WHERE overlay_id = ? AND peer_id = ?", "row")
INSERT_PEER = _statement(
    "INSERT INTO peer (overlay_id, peer_id, ticket, address, password_hash, expires, "
    "last_seen, expires_at, num_primary, num_out_candidate, num_in_candidate, costmap, "
    "report_time, created_at, public_key) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, NULL, NULL, ?, ?)",
    "none",
)
#: A membership that expired but was not swept yet ends here, so its peer-id may join again
#: (with any key: the old credentials are expired too). A live one stays, and the INSERT
#: that follows refuses the peer-id (no takeover).
DROP_EXPIRED = _statement(
    "DELETE FROM peer WHERE overlay_id = ? AND peer_id = ? AND expires_at < ?", "none"
)
UPSERT_INFO = _statement(
    "INSERT INTO peer_info (peer_id, addresses, preferences, capabilities, updated_at, "
    "password_hash) VALUES (?, ?, NULL, ?, ?, ?) ON CONFLICT (peer_id) DO UPDATE SET "
    "addresses = excluded.addresses, preferences = excluded.preferences, "
    "capabilities = excluded.capabilities, updated_at = excluded.updated_at, "
    "password_hash = excluded.password_hash",
    "none",
)
INFO_OWNER = _statement("SELECT password_hash FROM peer_info WHERE peer_id = ?", "row")
LIVE_ELSEWHERE = _statement(
    "SELECT overlay_id FROM peer WHERE peer_id = ? AND overlay_id <> ? AND expires_at >= ? LIMIT 1",
    "row",
)
#: Suspects, lowest ticket first: only when nobody else is left to offer (see join_steps).
SUSPECTS = _statement(
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = ? AND expires_at >= ? AND suspect_since IS NOT NULL AND peer_id <> ? "
    "ORDER BY ticket LIMIT ?",
    "rows",
)
#: Suspects not overdue for their refresh, for a keyless joiner left with nobody else.
SUSPECTS_FRESH = _statement(
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = ? AND expires_at >= ? AND suspect_since IS NOT NULL AND peer_id <> ? "
    f"AND last_seen + expires * {peerlist.OVERDUE_FRACTION} >= ? "
    "ORDER BY ticket LIMIT ?",
    "rows",
)
COUNT_ACTIVE = _statement(
    "SELECT count(*) FROM peer WHERE overlay_id = ? AND expires_at >= ? "
    "AND suspect_since IS NULL AND num_primary > 0",
    "value",
)
ACTIVE_WINDOW = _statement(
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = ? AND expires_at >= ? AND suspect_since IS NULL AND num_primary > 0 "
    "ORDER BY ticket LIMIT ? OFFSET ?",
    "rows",
)
#: The same for a keyless (reference) joiner: peers overdue for their refresh are left out too
#: (:data:`hp2p.homs.peerlist.OVERDUE_FRACTION`), and suspects are never offered.
_FRESH = f" AND last_seen + expires * {peerlist.OVERDUE_FRACTION} >= ?"
COUNT_ACTIVE_FRESH = _statement(COUNT_ACTIVE.sqlite + _FRESH, "value")
ACTIVE_WINDOW_FRESH = _statement(
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = ? AND expires_at >= ? AND suspect_since IS NULL AND num_primary > 0"
    + _FRESH
    + " ORDER BY ticket LIMIT ? OFFSET ?",
    "rows",
)
LOWEST_TICKET_FRESH = _statement(
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = ? AND expires_at >= ? AND suspect_since IS NULL"
    + _FRESH
    + " ORDER BY ticket LIMIT 1",
    "rows",
)
_LIVE_PEERS_SQL = (
    "SELECT peer_id, address, ticket, num_primary FROM peer "
    "WHERE overlay_id = ? AND expires_at >= ? AND suspect_since IS NULL ORDER BY ticket"
)
LIVE_PEERS = _statement(_LIVE_PEERS_SQL, "rows")
LOWEST_TICKET = _statement(_LIVE_PEERS_SQL + " LIMIT 1", "rows")

#: A statement to run with its parameters; the transaction gets the statement's result back.
Step = tuple[Statement, tuple[Any, ...]]
Steps = Generator[Step, Any, tuple[T, int, list[PeerEntry]]]


class DuplicatePeerError(Exception):
    """The peer-id is already a member of the overlay (the store answers 409)."""


class PeerIdTakenError(Exception):
    """The peer-id is a live member of another overlay under another password (409).

    Its registry record (PIR FE: addresses, capabilities) must not be overwritten by whoever
    joins next under that name.
    """


def join_steps(
    *,
    overlay_id: str,
    peer_id: str,
    member: tuple[str, str, int, float, str | None],
    info: tuple[str, str | None, float],
    tree_list_size: int,
    check: Callable[[tuple[Any, ...], bool], T],
    mesh_choice: Callable[[list[PeerEntry]], list[PeerEntry]],
    same_peer: Callable[[str], bool] = lambda _hash: True,
    mesh_list_size: int = peerlist.DEFAULT_MESH_LIST_SIZE,
) -> Steps[T]:
    """The join; returns ``check``'s result, the ticket and the peer list.

    ``member`` is (address, password_hash, expires, now, public key or None); ``info`` is the
    PIR row (addresses JSON, capabilities JSON, now). ``check(row, listed)`` applies the
    store's own rules to the overlay row (kind, closed-overlay admission; ``listed``: the
    peer-id is on the overlay's peer list, looked up for a closed overlay only) and raises a
    ``HompError`` to refuse. ``same_peer(hash)`` says whether the joiner's password matches a
    stored hash: a peer-id whose registry record was written by a join with another password,
    and that is still a live member elsewhere, is refused (:class:`PeerIdTakenError`).

    Suspects are never offered while anyone else is; but a joiner is not told it is alone (it
    would make itself a root and split the overlay) while suspects live: it gets them.
    """
    row = yield BUMP_TICKET, (overlay_id,)
    if row is None:
        raise unknown_overlay(overlay_id)
    listed = False
    if row[_AUTH_TYPE] == "closed":
        listed = (yield LISTED, (overlay_id, peer_id)) is not None
    checked = check(row, listed)
    address, password_hash, expires, now, public_key = member
    ticket: int = row[_LAST_TICKET]
    expires_at = now + expires
    owner = yield INFO_OWNER, (peer_id,)
    foreign = owner is not None and owner[0] is not None and not same_peer(owner[0])
    if foreign and (yield LIVE_ELSEWHERE, (peer_id, overlay_id, now)) is not None:
        raise PeerIdTakenError(peer_id)
    yield DROP_EXPIRED, (overlay_id, peer_id, now)
    yield (
        INSERT_PEER,
        (
            overlay_id,
            peer_id,
            ticket,
            address,
            password_hash,
            expires,
            now,
            expires_at,
            now,
            public_key,
        ),
    )
    yield UPSERT_INFO, (peer_id, *info, password_hash)
    if row[_SUB_TYPE] == "mesh":
        live = yield LIVE_PEERS, (overlay_id, now)
        chosen = mesh_choice([PeerEntry(*r) for r in live])
    elif public_key is None:
        # A keyless joiner is a reference peer (hp2p peers always send a key): it dials the
        # first entry and, if that peer is dead, waits for ever. Peers overdue for their
        # refresh (the HOMS's own evidence) are never offered; suspects (two neighbours'
        # word, which liars can fake) only when nobody else is left, as for everyone.
        active = yield COUNT_ACTIVE_FRESH, (overlay_id, now, now)
        offset, count = peerlist.entry_window(int(active), tree_list_size)
        rows = yield ACTIVE_WINDOW_FRESH, (overlay_id, now, now, count, offset)
        if not rows:
            rows = yield LOWEST_TICKET_FRESH, (overlay_id, now, now)
        chosen = [PeerEntry(*r) for r in rows]
        if all(e.peer_id == peer_id for e in chosen):
            suspects = yield SUSPECTS_FRESH, (overlay_id, now, peer_id, now, tree_list_size)
            if suspects:
                chosen = [PeerEntry(*r) for r in suspects]
        return checked, ticket, chosen
    else:
        active = yield COUNT_ACTIVE, (overlay_id, now)
        offset, count = peerlist.entry_window(int(active), tree_list_size)
        rows = yield ACTIVE_WINDOW, (overlay_id, now, count, offset)
        if not rows:
            rows = yield LOWEST_TICKET, (overlay_id, now)
        chosen = [PeerEntry(*r) for r in rows]
    if all(e.peer_id == peer_id for e in chosen):
        size = mesh_list_size if row[_SUB_TYPE] == "mesh" else tree_list_size
        suspects = yield SUSPECTS, (overlay_id, now, peer_id, size)
        if suspects:
            chosen = [PeerEntry(*r) for r in suspects]
    return checked, ticket, chosen


def run_on_sqlite(conn: sqlite3.Connection, steps: Steps[T]) -> tuple[T, int, list[PeerEntry]]:
    """Run the join inside an open transaction of ``conn``."""
    result: Any = None
    try:
        while True:
            statement, params = steps.send(result)
            try:
                cursor = conn.execute(statement.sqlite, params)
            except sqlite3.IntegrityError as exc:
                if statement is INSERT_PEER:
                    raise DuplicatePeerError(params[1]) from exc
                raise
            if statement.result == "row":
                result = cursor.fetchone()
            elif statement.result == "rows":
                result = cursor.fetchall()
            elif statement.result == "value":
                result = cursor.fetchone()[0]
            else:
                result = None
    except StopIteration as done:
        value: tuple[T, int, list[PeerEntry]] = done.value
        return value


async def run_on_postgres(conn: Any, steps: Steps[T]) -> tuple[T, int, list[PeerEntry]]:
    """Run the join inside an open transaction of an asyncpg connection ``conn``."""
    result: Any = None
    try:
        while True:
            statement, params = steps.send(result)
            sql = statement.postgres
            if statement.result == "row":
                found = await conn.fetchrow(sql, *params)
                result = None if found is None else tuple(found)
            elif statement.result == "rows":
                result = await conn.fetch(sql, *params)
            elif statement.result == "value":
                result = await conn.fetchval(sql, *params)
            else:
                try:
                    result = await conn.execute(sql, *params)
                except asyncpg.UniqueViolationError as exc:
                    if statement is INSERT_PEER:
                        raise DuplicatePeerError(params[1]) from exc
                    raise
    except StopIteration as done:
        value: tuple[T, int, list[PeerEntry]] = done.value
        return value
