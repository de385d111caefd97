"""approval edits: the arguments a step proposed, kept when an approver edits them within policy;
each notification's channel (webhook or email)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 02:00:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('approval_requests') as batch:
        batch.add_column(sa.Column('editable', sa.JSON(), nullable=False, server_default='[]'))
        batch.add_column(sa.Column('proposed_arguments', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('proposed_arguments_hash', sqlmodel.sql.sqltypes.AutoString(length=64),
                                   nullable=True))
        batch.add_column(sa.Column('edited_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch.add_column(sa.Column('edited_at', sa.DateTime(), nullable=True))
    with op.batch_alter_table('notifications') as batch:
        batch.add_column(sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False,
                                   server_default='webhook'))


def downgrade() -> None:
    with op.batch_alter_table('notifications') as batch:
        batch.drop_column('channel')
    with op.batch_alter_table('approval_requests') as batch:
        batch.drop_column('edited_at')
        batch.drop_column('edited_by')
        batch.drop_column('proposed_arguments_hash')
        batch.drop_column('proposed_arguments')
        batch.drop_column('editable')
