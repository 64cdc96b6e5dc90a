"""bases.config: keep each base's config.json, so adapters of any PEFT method can be
validated against a base known only by fingerprint (meta-device injection).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("config", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bases", schema=None) as batch_op:
        batch_op.drop_column("config")
