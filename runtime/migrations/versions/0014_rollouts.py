"""rollouts: per workflow, the stable version new runs take and a canary for a share of them

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 03:00:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rollouts',
    sa.Column('workflow', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('stable', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('canary', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True),
    sa.Column('canary_percent', sa.Integer(), nullable=False),
    sa.Column('previous_stable', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True),
    sa.Column('canary_since', sa.DateTime(), nullable=True),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('workflow')
    )


def downgrade() -> None:
    op.drop_table('rollouts')
