"""SubMesh source key: the Ed25519 public key a sub-overlay's source signs manifests with.

Peers verify every SubMesh manifest against it (issue #7), so it must come from the HOMS, not
from the neighbour that sends the manifest. Nullable: overlays created before, CoreTrees, and
SubMeshes whose source does not sign keep working unsigned.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("overlay") as batch:
        batch.add_column(sa.Column("source_key", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("overlay") as batch:
        batch.drop_column("source_key")
