"""web inbox: passwords, sign-in sessions, and each approval request's deadline and risk

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 22:00:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
    op.create_table('web_sessions',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('user', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('csrf', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('seen_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('web_sessions') as batch:
        batch.create_index('ix_web_sessions_user', ['user'], unique=False)
    # Requests opened before this revision: due a day after they were opened (the default SLA).
    with op.batch_alter_table('approval_requests') as batch:
        batch.add_column(sa.Column('due_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('comments', sa.JSON(), nullable=False, server_default='[]'))
        batch.add_column(sa.Column('risk', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False,
                                   server_default='normal'))
    later = ("datetime(created_at, '+24 hours')" if op.get_bind().dialect.name == 'sqlite'
             else "created_at + interval '24 hours'")
    op.execute(f"UPDATE approval_requests SET due_at = {later}")
    with op.batch_alter_table('approval_requests') as batch:
        batch.alter_column('due_at', existing_type=sa.DateTime(), nullable=False)
        batch.create_index('ix_approval_requests_status_workflow_created_at', ['status', 'workflow', 'created_at', 'id'],
                           unique=False)
        batch.create_index('ix_approval_requests_status_risk_created_at', ['status', 'risk', 'created_at', 'id'],
                           unique=False)


def downgrade() -> None:
    with op.batch_alter_table('approval_requests') as batch:
        batch.drop_index('ix_approval_requests_status_risk_created_at')
        batch.drop_index('ix_approval_requests_status_workflow_created_at')
        batch.drop_column('risk')
        batch.drop_column('comments')
        batch.drop_column('due_at')
    with op.batch_alter_table('web_sessions') as batch:
        batch.drop_index('ix_web_sessions_user')
    op.drop_table('web_sessions')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('password_hash')
