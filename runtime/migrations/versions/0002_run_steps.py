"""run steps in their own table (filled from the step events already in the audit chain)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:00:00
"""
import json
from datetime import datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    steps = op.create_table(
        'run_steps',
        sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('task_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('node', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('status', sa.Enum('running', 'succeeded', 'failed', 'interrupted', name='stepstatus'),
                  nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=False),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.Column('error', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id']),
        sa.PrimaryKeyConstraint('run_id', 'task_id'),
    )
    # Steps were folded from the audit chain's step events until now: fold them once more, into rows.
    events = op.get_bind().execute(sa.text(
        "SELECT run_id, kind, created_at, data FROM audit_events "
        "WHERE kind IN ('step.started', 'step.finished') ORDER BY seq"))
    rows: dict[tuple[str, str], dict] = {}
    for run_id, kind, created_at, data in events:
        data = json.loads(data) if isinstance(data, str) else data
        at = datetime.fromisoformat(created_at).replace(tzinfo=None)
        key = (run_id, data["task_id"])
        if kind == "step.started":
            rows[key] = {"run_id": run_id, "task_id": data["task_id"], "node": data["node"], "status": "running",
                         "started_at": at, "finished_at": None, "error": None}
        elif key in rows:
            rows[key].update(status=data["status"], finished_at=at, error=data.get("error"))
    if rows:
        op.bulk_insert(steps, list(rows.values()))


def downgrade() -> None:
    op.drop_table('run_steps')
    sa.Enum(name='stepstatus').drop(op.get_bind(), checkfirst=True)
