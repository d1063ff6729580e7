"""The HOMS schema (SQLAlchemy 2 Core tables) and the engine set-up for SQLite and PostgreSQL.

Everything the HOMS decides from lives here, not in process memory: the per-overlay ticket
counter, each peer's liveness deadline, its last ``num_primary`` and cost map. The reference
HOMS keeps the ticket counter and the liveness timers in memory and loses them on restart
(etri-2023-protocol.md §9.3); here a ``kill -9`` loses nothing and several HOMS processes can
share one PostgreSQL database.

The schema is created and upgraded by the Alembic scripts in ``hp2p.homs.migrations``; this
module is the one description of it that the code and the migrations share.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import URL, make_url

#: Column widths: the longest id, title/description/address the HOMP decoder accepts
#: (``hp2p.wire.homp``), so that an over-long value is a clear 400 from the decoder and never
#: a database error (the reference answers 500 beyond its 50-character columns).
ID_LEN = 256
TEXT_LEN = 1024
#: ``ed25519:`` and 64 hex digits, with room for a longer algorithm name later.
SOURCE_KEY_LEN = 128

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: OIM FE: one row per overlay (CoreTree, SubTree or SubMesh).
overlay = Table(
    "overlay",
    metadata,
    Column("overlay_id", String(ID_LEN), primary_key=True),
    Column("title", String(TEXT_LEN), nullable=False),
    Column("type", String(16), nullable=False),
    Column("sub_type", String(16), nullable=False),
    Column("owner_id", String(ID_LEN), nullable=False),
    Column("status", String(16), nullable=False, default="active"),
    Column("description", String(TEXT_LEN), nullable=False),
    Column("heartbeat_interval", Integer, nullable=False),
    Column("heartbeat_timeout", Integer, nullable=False),
    Column("auth_type", String(16), nullable=False),
    Column("auth_keyword", String(TEXT_LEN), nullable=True),
    Column("admin_key_hash", String(200), nullable=False),
    Column("access_key_hash", String(200), nullable=True),
    Column("app_id", String(32), nullable=True),
    Column("mn_cache", Integer, nullable=True),
    Column("md_cache", Integer, nullable=True),
    Column("recovery_by", String(16), nullable=True),
    #: SubTree/SubMesh: the overlay it belongs to and its single source peer (R3 bridge).
    Column("parent_overlay_id", String(ID_LEN), nullable=True),
    Column("source_peer_id", String(ID_LEN), nullable=True),
    #: SubMesh: the source's Ed25519 public key (``ed25519:<hex>``) peers verify manifests
    #: with; set at creation by the owner, or by the source's own first join (migration 0003).
    Column("source_key", String(SOURCE_KEY_LEN), nullable=True),
    Column("delete_when_empty", Boolean, nullable=False, default=False),
    #: ``credentials`` or ``reference-compat`` (docs/security.md; migration 0005).
    Column("security", String(32), nullable=False, server_default="reference-compat"),
    #: The last ticket issued; bumped with UPDATE … RETURNING inside each join transaction.
    Column("last_ticket", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def _overlay_key() -> Column[str]:
    """The overlay a row belongs to: part of its key, deleted with the overlay."""
    return Column(
        "overlay_id",
        String(ID_LEN),
        ForeignKey("overlay.overlay_id", ondelete="CASCADE"),
        primary_key=True,
    )


#: OPM/PSM FE: overlay membership, ticket, liveness and the last report of each peer.
peer = Table(
    "peer",
    metadata,
    _overlay_key(),
    Column("peer_id", String(ID_LEN), primary_key=True),
    Column("ticket", Integer, nullable=False),
    Column("address", String(TEXT_LEN), nullable=False),
    Column("password_hash", String(200), nullable=False),
    Column("expires", Integer, nullable=False),
    #: Last join/refresh/report (epoch seconds) and the deadline derived from it.
    Column("last_seen", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("num_primary", Integer, nullable=False, default=0),
    Column("num_out_candidate", Integer, nullable=False, default=0),
    Column("num_in_candidate", Integer, nullable=False, default=0),
    #: JSON {"primary": [...], "outgoing_candidate": [...], "incoming_candidate": [...]}.
    Column("costmap", Text, nullable=True),
    Column("report_time", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    #: When a neighbour last reported this peer gone while it had shown no life for a
    #: heartbeat timeout; NULL again at its next refresh, report or recovery join. A suspect
    #: stays a member but is left out of peer lists (migration 0004).
    Column("suspect_since", Float, nullable=True),
    #: The Ed25519 key (``ed25519:<hex>``) the member's credentials bind; NULL for a keyless
    #: member of a ``reference-compat`` overlay (migration 0006).
    Column("public_key", String(SOURCE_KEY_LEN), nullable=True),
    UniqueConstraint("overlay_id", "ticket"),
)
Index("ix_peer_expires_at", peer.c.expires_at)
#: The active peers (last report had num_primary > 0) of an overlay in ticket order: what every
#: tree join counts and reads a window of (migration 0002).
Index(
    "ix_peer_active",
    peer.c.overlay_id,
    peer.c.ticket,
    peer.c.expires_at,
    sqlite_where=peer.c.num_primary > 0,
    postgresql_where=peer.c.num_primary > 0,
)

#: Closed overlays admitted by peer list: the listed peer-ids.
auth_peer = Table(
    "auth_peer",
    metadata,
    _overlay_key(),
    Column("peer_id", String(ID_LEN), primary_key=True),
)

#: PIR FE: what a peer told about itself at join (addresses, preferences, capabilities),
#: kept apart from membership so that it outlives a leave and serves every overlay.
peer_info = Table(
    "peer_info",
    metadata,
    Column("peer_id", String(ID_LEN), primary_key=True),
    Column("addresses", Text, nullable=False),
    Column("preferences", Text, nullable=True),
    Column("capabilities", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
    #: Hash of the password of the join that wrote this record: a later join under the same
    #: peer-id, while the peer is a live member somewhere, must prove it (migration 0006).
    Column("password_hash", String(200), nullable=True),
)
#: Memberships of one peer-id across overlays (PIR takeover check, signalling hello).
Index("ix_peer_peer_id", peer.c.peer_id)

#: Neighbour reports that a peer is gone ("accusations"): one reporter's word is recorded,
#: not acted on; a second distinct reporter (or the HOMS's own liveness evidence) makes the
#: peer a suspect. Each reporter holds a bounded number of rows (migration 0006).
accusation = Table(
    "accusation",
    metadata,
    _overlay_key(),
    Column("accused_id", String(ID_LEN), primary_key=True),
    Column("reporter_id", String(ID_LEN), primary_key=True),
    Column("at", Float, nullable=False),
)
Index("ix_accusation_reporter", accusation.c.overlay_id, accusation.c.reporter_id)


class DatabaseUrlError(ValueError):
    """A ``--database`` value hp2p cannot use; the message says which forms work."""


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """A parsed ``--database`` value: the async URL and what kind of server it is."""

    url: URL
    is_sqlite: bool

    def describe(self) -> str:
        """Where the data lives, without a password, for the start-up line and logs."""
        if self.is_sqlite:
            return f"SQLite file {Path(self.url.database or '').resolve()}"
        plain = self.url.set(drivername="postgresql")
        return f"PostgreSQL {plain.render_as_string(hide_password=True)}"


def parse_database_url(text: str) -> DatabaseTarget:
    """Turn a plain database URL into the async-driver URL SQLAlchemy needs.

    ``sqlite:///hp2p.db`` (relative to the working directory), ``sqlite:////abs/path.db``,
    ``postgresql://user@host:5432/db`` and ``postgres://…`` are accepted, as are the explicit
    ``sqlite+aiosqlite`` and ``postgresql+asyncpg`` forms.
    """
    try:
        url = make_url(text)
    except Exception as exc:  # sqlalchemy raises ArgumentError, but be safe on odd input
        raise DatabaseUrlError(
            f"cannot parse database URL {text!r}: use sqlite:///FILE.db or "
            "postgresql://USER@HOST:PORT/DB"
        ) from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise DatabaseUrlError(
                "an in-memory SQLite database would lose everything on restart and cannot be "
                "shared between connections: give a file, e.g. sqlite:///hp2p.db"
            )
        return DatabaseTarget(url.set(drivername="sqlite+aiosqlite"), is_sqlite=True)
    if backend in ("postgresql", "postgres"):
        return DatabaseTarget(url.set(drivername="postgresql+asyncpg"), is_sqlite=False)
    raise DatabaseUrlError(
        f"unsupported database {backend!r} in {text!r}: use sqlite:///FILE.db or "
        "postgresql://USER@HOST:PORT/DB"
    )


async def _admin(server: str, sql: str) -> None:
    """Run one statement on the PostgreSQL ``server`` (outside any transaction)."""
    import asyncpg  # type: ignore[import-untyped]  # no stubs published; only this needs it

    conn = await asyncio.wait_for(asyncpg.connect(_plain(server)), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def create_scratch_database(server: str, prefix: str = "hp2p_scratch") -> str:
    """A new, empty database with a random name on the PostgreSQL ``server`` (a
    ``postgresql://`` URL whose user may create databases), for a test or a benchmark; its
    URL. :func:`drop_scratch_database` removes it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _admin(server, f'CREATE DATABASE "{name}"')
    return make_url(_plain(server)).set(database=name).render_as_string(hide_password=False)


async def drop_scratch_database(server: str, url: str) -> None:
    """Drop a database :func:`create_scratch_database` made, whoever is still connected."""
    await _admin(server, f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def scratch_database(server: str, prefix: str = "hp2p_scratch") -> AsyncIterator[str]:
    """:func:`create_scratch_database` for the ``async with`` block, dropped after it."""
    url = await create_scratch_database(server, prefix)
    try:
        yield url
    finally:
        await drop_scratch_database(server, url)
