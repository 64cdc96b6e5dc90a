"""Covering indexes for resolve: the version columns resolve reads, after its lookup
column (base fingerprint; requirement digest), so that it never visits table rows, whose
manifests (kilobytes each) sit before most of those columns. They replace the plain
indexes on the same leading columns.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = ["id", "adapter_id", "version", "digest", "method", "variant", "size", "yanked",
            "major", "minor", "patch"]


def upgrade() -> None:
    op.create_index("ix_versions_resolve_fp", "versions", ["base_fingerprint", *_COLUMNS])
    op.create_index("ix_versions_resolve_req", "versions", ["req_digest", "base_fingerprint", *_COLUMNS])
    op.drop_index("ix_versions_base_fingerprint", table_name="versions")
    op.drop_index("ix_versions_req_digest", table_name="versions")


def downgrade() -> None:
    op.create_index("ix_versions_req_digest", "versions", ["req_digest"])
    op.create_index("ix_versions_base_fingerprint", "versions", ["base_fingerprint"])
    op.drop_index("ix_versions_resolve_req", table_name="versions")
    op.drop_index("ix_versions_resolve_fp", table_name="versions")
