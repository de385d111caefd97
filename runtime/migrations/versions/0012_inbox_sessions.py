"""web inbox: passwords, sign-in sessions; each approval request's deadline, risk, owner and SLA
stages; an outbox of notifications

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
    # Requests opened before this revision: the default SLA (reminded after 12 h, due after a day, expiring after two).
    with op.batch_alter_table('approval_requests') as batch:
        batch.add_column(sa.Column('due_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('comments', sa.JSON(), nullable=False, server_default='[]'))
        batch.add_column(sa.Column('expires_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('remind_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('reminded_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('escalated_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('owner', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('separate', sa.JSON(), nullable=False, server_default='[]'))
        batch.add_column(sa.Column('risk', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False,
                                   server_default='normal'))
    sqlite = op.get_bind().dialect.name == 'sqlite'
    later = "datetime(created_at, '+{} hours')" if sqlite else "created_at + interval '{} hours'"
    op.execute(f"UPDATE approval_requests SET remind_at = {later.format(12)}, due_at = {later.format(24)}, "
               f"expires_at = {later.format(48)}")
    with op.batch_alter_table('approval_requests') as batch:
        batch.alter_column('due_at', existing_type=sa.DateTime(), nullable=False)
        batch.create_index('ix_approval_requests_status_workflow_created_at', ['status', 'workflow', 'created_at', 'id'],
                           unique=False)
        batch.create_index('ix_approval_requests_status_risk_created_at', ['status', 'risk', 'created_at', 'id'],
                           unique=False)
        batch.create_index('ix_approval_requests_status_due_at', ['status', 'due_at'], unique=False)
        batch.create_index('ix_approval_requests_status_remind_at', ['status', 'remind_at'], unique=False)
        batch.create_index('ix_approval_requests_status_expires_at', ['status', 'expires_at'], unique=False)
    op.create_table('notifications',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('approval_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('recipients', sa.JSON(), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('sent_at', sa.DateTime(), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('notifications') as batch:
        batch.create_index('ix_notifications_sent_at_next_attempt_at', ['sent_at', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    op.drop_table('notifications')
    with op.batch_alter_table('approval_requests') as batch:
        for index in ('due_at', 'remind_at', 'expires_at'):
            batch.drop_index(f'ix_approval_requests_status_{index}')
        for column in ('separate', 'owner', 'escalated_at', 'reminded_at', 'remind_at', 'expires_at'):
            batch.drop_column(column)
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
