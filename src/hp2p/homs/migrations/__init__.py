"""Schema migrations (Alembic), run programmatically: the HOMS upgrades to head at start.

The user needs no ``alembic.ini``: :func:`upgrade_to_head` builds the Alembic configuration
in code and points it at the scripts shipped in this package. On PostgreSQL the upgrade holds
a transaction-level advisory lock, so several HOMS processes starting together on one database
migrate it once, one after another, instead of racing on ``CREATE TABLE``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

SCRIPT_LOCATION = Path(__file__).resolve().parent

#: An arbitrary constant naming the HOMS schema lock among PostgreSQL advisory locks.
_PG_LOCK_KEY = 0x48503250  # "HP2P"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the shipped scripts, bound to ``connection`` if given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade_to_head(connection: Connection) -> None:
    """Create or upgrade the schema inside the caller's transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    command.upgrade(alembic_config(connection), "head")
