"""Initial HOMS schema: overlay, peer, auth_peer, peer_info.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID_LEN = 256
TEXT_LEN = 1024


def upgrade() -> None:
    op.create_table(
        "overlay",
        sa.Column("overlay_id", sa.String(ID_LEN), primary_key=True),
        sa.Column("title", sa.String(TEXT_LEN), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("sub_type", sa.String(16), nullable=False),
        sa.Column("owner_id", sa.String(ID_LEN), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("description", sa.String(TEXT_LEN), nullable=False),
        sa.Column("heartbeat_interval", sa.Integer, nullable=False),
        sa.Column("heartbeat_timeout", sa.Integer, nullable=False),
        sa.Column("auth_type", sa.String(16), nullable=False),
        sa.Column("auth_keyword", sa.String(TEXT_LEN), nullable=True),
        sa.Column("admin_key_hash", sa.String(200), nullable=False),
        sa.Column("access_key_hash", sa.String(200), nullable=True),
        sa.Column("app_id", sa.String(32), nullable=True),
        sa.Column("mn_cache", sa.Integer, nullable=True),
        sa.Column("md_cache", sa.Integer, nullable=True),
        sa.Column("recovery_by", sa.String(16), nullable=True),
        sa.Column("parent_overlay_id", sa.String(ID_LEN), nullable=True),
        sa.Column("source_peer_id", sa.String(ID_LEN), nullable=True),
        sa.Column("delete_when_empty", sa.Boolean, nullable=False),
        sa.Column("last_ticket", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("overlay_id", name="pk_overlay"),
    )
    op.create_table(
        "peer",
        sa.Column("overlay_id", sa.String(ID_LEN), nullable=False),
        sa.Column("peer_id", sa.String(ID_LEN), nullable=False),
        sa.Column("ticket", sa.Integer, nullable=False),
        sa.Column("address", sa.String(TEXT_LEN), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("expires", sa.Integer, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("num_primary", sa.Integer, nullable=False),
        sa.Column("num_out_candidate", sa.Integer, nullable=False),
        sa.Column("num_in_candidate", sa.Integer, nullable=False),
        sa.Column("costmap", sa.Text, nullable=True),
        sa.Column("report_time", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("overlay_id", "peer_id", name="pk_peer"),
        sa.ForeignKeyConstraint(
            ["overlay_id"],
            ["overlay.overlay_id"],
            name="fk_peer_overlay_id_overlay",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("overlay_id", "ticket", name="uq_peer_overlay_id_ticket"),
    )
    op.create_index("ix_peer_expires_at", "peer", ["expires_at"])
    op.create_table(
        "auth_peer",
        sa.Column("overlay_id", sa.String(ID_LEN), nullable=False),
        sa.Column("peer_id", sa.String(ID_LEN), nullable=False),
        sa.PrimaryKeyConstraint("overlay_id", "peer_id", name="pk_auth_peer"),
        sa.ForeignKeyConstraint(
            ["overlay_id"],
            ["overlay.overlay_id"],
            name="fk_auth_peer_overlay_id_overlay",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "peer_info",
        sa.Column("peer_id", sa.String(ID_LEN), nullable=False),
        sa.Column("addresses", sa.Text, nullable=False),
        sa.Column("preferences", sa.Text, nullable=True),
        sa.Column("capabilities", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("peer_id", name="pk_peer_info"),
    )


def downgrade() -> None:
    op.drop_table("peer_info")
    op.drop_table("auth_peer")
    op.drop_index("ix_peer_expires_at", table_name="peer")
    op.drop_table("peer")
    op.drop_table("overlay")
