"""an index for every list order: runs newest first (by status, by workflow), approvals oldest first
(by status), a run's audit events by seq

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 14:00:00.000000

Lists page by keyset (``runtime.api.paging``): ``(created_at, id)`` for runs and approvals, ``seq``
for audit events. Each composite index replaces the single-column index that is its prefix.
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# (table, new index, its columns, the index it replaces)
_INDEXES = [
    ('runs', 'ix_runs_created_at', ['created_at', 'id'], None),
    ('runs', 'ix_runs_status_created_at', ['status', 'created_at', 'id'], 'ix_runs_status'),
    ('runs', 'ix_runs_workflow_created_at', ['workflow', 'created_at', 'id'], 'ix_runs_workflow'),
    ('approval_requests', 'ix_approval_requests_created_at', ['created_at', 'id'], None),
    ('approval_requests', 'ix_approval_requests_status_created_at', ['status', 'created_at', 'id'],
     'ix_approval_requests_status'),
    ('audit_events', 'ix_audit_events_run_id_seq', ['run_id', 'seq'], 'ix_audit_events_run_id'),
]


def upgrade() -> None:
    for table, name, columns, replaces in _INDEXES:
        op.create_index(name, table, columns)
        if replaces is not None:
            op.drop_index(replaces, table_name=table)


def downgrade() -> None:
    for table, name, columns, replaces in reversed(_INDEXES):
        if replaces is not None:
            op.create_index(replaces, table, [columns[0]])
        op.drop_index(name, table_name=table)
