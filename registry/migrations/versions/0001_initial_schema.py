"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('adapters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('name_key', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapters')),
    sa.UniqueConstraint('name_key', name=op.f('uq_adapters_name_key'))
    )
    op.create_table('bases',
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('arch_signature', sa.String(length=64), nullable=False),
    sa.Column('n_tensors', sa.Integer(), nullable=False),
    sa.Column('n_params', sa.BigInteger(), nullable=False),
    sa.Column('total_bytes', sa.BigInteger(), nullable=False),
    sa.Column('shapes', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('fingerprint', name=op.f('pk_bases'))
    )
    with op.batch_alter_table('bases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bases_arch_signature'), ['arch_signature'], unique=False)

    op.create_table('requirement_sets',
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('digest', name=op.f('pk_requirement_sets'))
    )
    op.create_table('base_sources',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('locator', sa.String(length=1024), nullable=False),
    sa.Column('revision', sa.String(length=128), nullable=False),
    sa.Column('details', sa.Text(), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['fingerprint'], ['bases.fingerprint'], name=op.f('fk_base_sources_fingerprint_bases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_sources')),
    sa.UniqueConstraint('kind', 'locator', 'revision', name=op.f('uq_base_sources_kind'))
    )
    with op.batch_alter_table('base_sources', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_base_sources_fingerprint'), ['fingerprint'], unique=False)

    op.create_table('fits',
    sa.Column('req_digest', sa.String(length=64), nullable=False),
    sa.Column('arch_signature', sa.String(length=64), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('reasons', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['req_digest'], ['requirement_sets.digest'], name=op.f('fk_fits_req_digest_requirement_sets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('req_digest', 'arch_signature', name=op.f('pk_fits'))
    )
    op.create_table('versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=128), nullable=False),
    sa.Column('major', sa.Integer(), nullable=False),
    sa.Column('minor', sa.Integer(), nullable=False),
    sa.Column('patch', sa.Integer(), nullable=False),
    sa.Column('prerelease', sa.String(length=128), nullable=False),
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('manifest', sa.Text(), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('variant', sa.String(length=64), nullable=False),
    sa.Column('base_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('base_arch', sa.String(length=64), nullable=True),
    sa.Column('base_name', sa.String(length=1024), nullable=True),
    sa.Column('req_digest', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('yanked', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name=op.f('fk_versions_adapter_id_adapters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['req_digest'], ['requirement_sets.digest'], name=op.f('fk_versions_req_digest_requirement_sets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_versions')),
    sa.UniqueConstraint('adapter_id', 'version', name=op.f('uq_versions_adapter_id'))
    )
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.create_index('ix_versions_adapter_order', ['adapter_id', 'major', 'minor', 'patch'], unique=False)
        batch_op.create_index(batch_op.f('ix_versions_base_fingerprint'), ['base_fingerprint'], unique=False)
        batch_op.create_index(batch_op.f('ix_versions_digest'), ['digest'], unique=False)
        batch_op.create_index(batch_op.f('ix_versions_method'), ['method'], unique=False)
        batch_op.create_index(batch_op.f('ix_versions_req_digest'), ['req_digest'], unique=False)

    op.create_table('aliases',
    sa.Column('adapter_id', sa.Integer(), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name=op.f('fk_aliases_adapter_id_adapters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], name=op.f('fk_aliases_version_id_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('adapter_id', 'alias', name=op.f('pk_aliases'))
    )
    op.create_table('files',
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=128), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], name=op.f('fk_files_version_id_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'path', name=op.f('pk_files'))
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_files_sha256'), ['sha256'], unique=False)

    op.create_table('version_tasks',
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=100), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], name=op.f('fk_version_tasks_version_id_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'task', name=op.f('pk_version_tasks'))
    )
    with op.batch_alter_table('version_tasks', schema=None) as batch_op:
        batch_op.create_index('ix_version_tasks_task_version', ['task', 'version_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('version_tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_version_tasks_task_version')

    op.drop_table('version_tasks')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_files_sha256'))

    op.drop_table('files')
    op.drop_table('aliases')
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_versions_req_digest'))
        batch_op.drop_index(batch_op.f('ix_versions_method'))
        batch_op.drop_index(batch_op.f('ix_versions_digest'))
        batch_op.drop_index(batch_op.f('ix_versions_base_fingerprint'))
        batch_op.drop_index('ix_versions_adapter_order')

    op.drop_table('versions')
    op.drop_table('fits')
    with op.batch_alter_table('base_sources', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_base_sources_fingerprint'))

    op.drop_table('base_sources')
    op.drop_table('requirement_sets')
    with op.batch_alter_table('bases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bases_arch_signature'))

    op.drop_table('bases')
    op.drop_table('adapters')
