"""quarantine: records that failed a workflow's data-quality checks, until a person releases or drops them

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 10:00:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('quarantine_items',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('workflow', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('last_run_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('node', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('record', sa.JSON(), nullable=True),
    sa.Column('record_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('seen_count', sa.Integer(), nullable=False),
    sa.Column('decided_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('decided_at', sa.DateTime(), nullable=True),
    sa.Column('comment', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.Column('resubmitted_run_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('workflow', 'kind', 'record_digest', name='uq_quarantine_items_record')
    )
    op.create_index('ix_quarantine_items_created_at', 'quarantine_items', ['created_at', 'id'], unique=False)
    op.create_index('ix_quarantine_items_status_created_at', 'quarantine_items', ['status', 'created_at', 'id'],
                    unique=False)
    op.create_index('ix_quarantine_items_workflow_created_at', 'quarantine_items', ['workflow', 'created_at', 'id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_quarantine_items_workflow_created_at', table_name='quarantine_items')
    op.drop_index('ix_quarantine_items_status_created_at', table_name='quarantine_items')
    op.drop_index('ix_quarantine_items_created_at', table_name='quarantine_items')
    op.drop_table('quarantine_items')
