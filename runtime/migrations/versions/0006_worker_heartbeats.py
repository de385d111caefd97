"""worker heartbeats: every process that takes runs reports itself at each lease renewal (/readyz)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 14:00:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('worker_heartbeats',
    sa.Column('worker_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('seen_at', sa.DateTime(), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('running', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('worker_id')
    )
    op.create_index('ix_worker_heartbeats_seen_at', 'worker_heartbeats', ['seen_at'])


def downgrade() -> None:
    op.drop_index('ix_worker_heartbeats_seen_at', table_name='worker_heartbeats')
    op.drop_table('worker_heartbeats')
