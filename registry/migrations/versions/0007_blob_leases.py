"""blob_leases: the blobs a publish in progress is about to reference, recorded before it
uploads them, so that gc (whatever its grace period, on S3 as on a directory) never deletes
a blob that a version is about to reference.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lease", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blob_leases")),
    )
    with op.batch_alter_table("blob_leases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_blob_leases_lease"), ["lease"], unique=False)
        batch_op.create_index(batch_op.f("ix_blob_leases_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("blob_leases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_blob_leases_sha256"))
        batch_op.drop_index(batch_op.f("ix_blob_leases_lease"))
    op.drop_table("blob_leases")
