"""requirement_sets.probe: one key every base a set fits must have (see
adapterhub_sdk/registry/probes.py), indexed, so that the first resolve against a new
architecture checks the few sets that can fit it instead of every set ever published.
Existing sets get their probe from their body here.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from adapterhub_sdk.registry.probes import PROBE_MAX, requirement_probe

    with op.batch_alter_table("requirement_sets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("probe", sa.String(length=PROBE_MAX), nullable=True))
        batch_op.create_index(batch_op.f("ix_requirement_sets_probe"), ["probe"], unique=False)
    conn = op.get_bind()
    sets = sa.table("requirement_sets", sa.column("digest", sa.String), sa.column("body", sa.Text),
                    sa.column("probe", sa.String))
    rows = conn.execute(sa.select(sets.c.digest, sets.c.body)).all()
    for i in range(0, len(rows), 1000):
        conn.execute(sets.update().where(sets.c.digest == sa.bindparam("d")).values(probe=sa.bindparam("p")),
                     [{"d": d, "p": requirement_probe(json.loads(body))} for d, body in rows[i:i + 1000]])


def downgrade() -> None:
    with op.batch_alter_table("requirement_sets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_requirement_sets_probe"))
        batch_op.drop_column("probe")
