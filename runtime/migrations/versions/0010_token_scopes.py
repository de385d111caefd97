"""token scopes: what each API token may do, and which tokens demo mode seeded

Tokens issued before scopes existed keep working with every scope there is (revoke and re-issue them
with `steward tokens create --scope ...` to narrow them). Demo mode's well-known tokens are marked as
such, so a server outside demo mode refuses them even in a database first created in demo mode.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:00:00.000000
"""
import hashlib

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# The scopes of revision 0010 (runtime/scopes.py may grow; this migration keeps what it meant)
_SCOPES = ["approvals:decide", "approvals:read", "audit:read", "policy:read", "quarantine:read", "quarantine:write",
           "runs:read", "runs:write", "workflows:read"]
_DEMO_TOKENS = ["steward-demo-operator", "steward-demo-approver", "steward-demo-approver-2", "steward-demo-compliance"]


def upgrade() -> None:
    with op.batch_alter_table('api_tokens') as batch:
        batch.add_column(sa.Column('scopes', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('demo', sa.Boolean(), nullable=False, server_default=sa.false()))
    tokens = sa.table('api_tokens', sa.column('scopes', sa.JSON()), sa.column('demo', sa.Boolean()),
                      sa.column('token_hash', sa.String()))
    op.execute(tokens.update().values(scopes=_SCOPES))
    demo = [hashlib.sha256(plain.encode()).hexdigest() for plain in _DEMO_TOKENS]
    op.execute(tokens.update().where(tokens.c.token_hash.in_(demo)).values(demo=True))
    with op.batch_alter_table('api_tokens') as batch:
        batch.alter_column('scopes', existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_column('demo')
        batch.drop_column('scopes')
