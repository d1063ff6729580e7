"""Accusations and the PIR password: one peer's word can neither eclipse nor take over others.

* ``accusation``: a neighbour's report that a peer is gone is recorded per (overlay, accused,
  reporter) instead of marking the peer suspect at once; a second distinct reporter, or the
  HOMS's own evidence (no sign of life for a heartbeat timeout), is needed. Rows per reporter
  are bounded, so a lying reporter cannot fill the table.
* ``peer_info.password_hash``: the registry record remembers who wrote it, so a join under a
  live peer-id with another password cannot overwrite its addresses (409).
* ``ix_peer_peer_id``: that check (and the signalling hello) look memberships up by peer-id.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accusation",
        sa.Column("overlay_id", sa.String(256), nullable=False),
        sa.Column("accused_id", sa.String(256), nullable=False),
        sa.Column("reporter_id", sa.String(256), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("overlay_id", "accused_id", "reporter_id", name="pk_accusation"),
        sa.ForeignKeyConstraint(
            ["overlay_id"],
            ["overlay.overlay_id"],
            name="fk_accusation_overlay_id_overlay",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_accusation_reporter", "accusation", ["overlay_id", "reporter_id"])
    with op.batch_alter_table("peer_info") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(200), nullable=True))
    op.create_index("ix_peer_peer_id", "peer", ["peer_id"])


def downgrade() -> None:
    op.drop_index("ix_peer_peer_id", table_name="peer")
    with op.batch_alter_table("peer_info") as batch:
        batch.drop_column("password_hash")
    op.drop_index("ix_accusation_reporter", table_name="accusation")
    op.drop_table("accusation")
