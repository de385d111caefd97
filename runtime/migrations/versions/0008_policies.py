"""policies: the policy set each run is pinned to, policy sets by hash, counters policies read, and
approvals that need a role and several distinct approvers

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 17:00:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('policy_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.create_table('policy_sets',
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('documents', sa.JSON(), nullable=False),
    sa.Column('loaded_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('hash')
    )
    op.create_table('policy_counters',
    sa.Column('counter', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('window_start', sa.DateTime(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('counter', 'window_start')
    )
    op.create_table('policy_slots',
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('counter', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('window_start', sa.DateTime(), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('idempotency_key')
    )
    with op.batch_alter_table('approval_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('roles', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('required_approvals', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('approvers', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('policy', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('approval_requests', schema=None) as batch_op:
        batch_op.drop_column('policy')
        batch_op.drop_column('approvers')
        batch_op.drop_column('required_approvals')
        batch_op.drop_column('roles')
    op.drop_table('policy_slots')
    op.drop_table('policy_counters')
    op.drop_table('policy_sets')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('policy_hash')
