"""idempotency keys scoped to their actor unambiguously: "<len(actor)>:<actor>:<key>" instead of "<actor>:<key>"

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 12:00:00.000000

Under the old scope, actor "a:b" with key "c" and actor "a" with key "b:c" met. A run's
``created_by`` is the actor that submitted it, so every stored key is rewritten in place and a
client retrying a submit across the upgrade still gets the run it created. The column widens to
hold the longest scoped key (a 200-character actor and a 200-character key).
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def _widen(to: int, since: int) -> None:
    if op.get_bind().dialect.name == "sqlite":  # SQLite keeps any length (and rebuilding `runs` would cascade)
        return
    op.alter_column('runs', 'idempotency_key', type_=sa.String(length=to), existing_type=sa.String(length=since),
                    existing_nullable=True)


def upgrade() -> None:
    _widen(420, 300)
    op.execute("UPDATE runs SET idempotency_key = CAST(length(created_by) AS TEXT) || ':' || idempotency_key"
               " WHERE idempotency_key IS NOT NULL")


def downgrade() -> None:
    op.execute("UPDATE runs SET idempotency_key = substr(idempotency_key, length(CAST(length(created_by) AS TEXT)) + 2)"
               " WHERE idempotency_key IS NOT NULL")
    _widen(300, 420)
