"""Partial index of the active peers of an overlay (num_primary > 0), by ticket.

Every tree join counts an overlay's active peers and reads a window of them in ticket order
(the entry-point rule, hp2p.homs.peerlist). Without this index both scan every member of the
overlay, so a join into an overlay of N members cost O(N) and N joins O(N²); with it they read
only the active peers, from the index alone for the count.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    where = sa.text("num_primary > 0")
    op.create_index(
        "ix_peer_active",
        "peer",
        ["overlay_id", "ticket", "expires_at"],
        sqlite_where=where,
        postgresql_where=where,
    )


def downgrade() -> None:
    op.drop_index("ix_peer_active", table_name="peer")
