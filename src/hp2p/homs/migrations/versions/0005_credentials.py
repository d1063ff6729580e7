"""Membership credentials: an overlay's security profile and each member's public key.

The HOMS signs a credential binding a member's Ed25519 key (issue #11), so the key is part of
the membership: a refresh renews the credential for the key given at join, and another key
cannot take over a live peer-id. Overlays created before this migration had no credentials;
they become ``reference-compat`` (keyless peers admitted), which is what they were.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("overlay") as batch:
        batch.add_column(
            sa.Column(
                "security",
                sa.String(32),
                nullable=False,
                server_default="reference-compat",
            )
        )
    with op.batch_alter_table("peer") as batch:
        batch.add_column(sa.Column("public_key", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("peer") as batch:
        batch.drop_column("public_key")
    with op.batch_alter_table("overlay") as batch:
        batch.drop_column("security")
