"""Alembic environment: always run online, on the connection the HOMS hands over."""

from __future__ import annotations

from alembic import context

from hp2p.homs.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running `alembic` by hand
    raise RuntimeError(
        "hp2p migrations run from the HOMS itself (hp2p.homs.migrations.upgrade_to_head); "
        "there is no alembic.ini to use with the alembic command"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
