"""Suspect peers: reported gone by a neighbour, left out of peer lists until they show life.

A crashed peer keeps being offered as an entry or recovery point until it expires (up to
0.8 × its ``expires`` after its last refresh), and orphans of a mass failure spend their
recovery attempts on it. One neighbour's word must not evict a member, but it may stop the
HOMS from recommending it; the peer's next refresh, report or recovery join clears the mark.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("peer") as batch:
        batch.add_column(sa.Column("suspect_since", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("peer") as batch:
        batch.drop_column("suspect_since")
