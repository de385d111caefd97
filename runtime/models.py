"""Steward's tables (SQLModel) and the public shapes the API returns.

Data-access verbs live in ``runtime.store``; schema changes go through the
Alembic migrations in ``runtime/migrations``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, TypeDecorator, UniqueConstraint
from sqlmodel import Field, SQLModel

from runtime.states import FINISHED, RunStatus, StepStatus  # noqa: F401 - the states, importable from here too


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, hands back aware UTC: the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, **kw)


def _ts_opt(**kw: Any) -> Any:
    return Field(default=None, sa_type=UTCDateTime, **kw)


def _json(default: Any = None, **kw: Any) -> Any:
    if callable(default):
        return Field(default_factory=default, sa_column=Column(JSON, nullable=False), **kw)
    return Field(default=default, sa_column=Column(JSON, nullable=True), **kw)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (  # lists page newest first by (created_at, id), with or without a filter
        Index("ix_runs_created_at", "created_at", "id"),
        Index("ix_runs_status_created_at", "status", "created_at", "id"),
        Index("ix_runs_workflow_created_at", "workflow", "created_at", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    workflow: str = Field(max_length=100)
    version: str = Field(max_length=50)
    status: RunStatus = Field(default=RunStatus.queued, max_length=20)
    input: dict[str, Any] = _json(dict)
    output: dict[str, Any] | None = _json()
    error: dict[str, Any] | None = _json()
    created_by: str = Field(max_length=200)
    idempotency_key: str | None = Field(default=None, unique=True, max_length=420)
    trace_id: str | None = Field(default=None, max_length=32)
    root_span_id: str | None = Field(default=None, max_length=16,
                                     description="The run's root span (its submit span): every execution's parent")
    policy_hash: str | None = Field(default=None, max_length=64, description=(
        "The policy set the run is evaluated under (see runtime.policy); an operator may re-pin it"))
    cancel_requested: bool = False
    status_reason: str | None = Field(default=None, max_length=500,
                                      description="Why the run is in its status, e.g. parked: its version is not loaded")
    executions: int = Field(default=0, description="How many times a worker has taken up the run")
    worker_id: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = _ts_opt(index=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    finished_at: datetime | None = _ts_opt()


class PolicySetRecord(SQLModel, table=True):
    """A policy set some process has loaded, kept by content hash so that runs pinned to it can be
    evaluated under it after the files have changed (see ``runtime.policy.PolicyBook``)."""

    __tablename__ = "policy_sets"

    hash: str = Field(primary_key=True, max_length=64)
    documents: dict[str, Any] = _json(dict)
    loaded_at: datetime = _ts()


class PolicyCounter(SQLModel, table=True):
    """A count policies read (e.g. a workflow's customer messages in one hour), taken one slot at a time."""

    __tablename__ = "policy_counters"

    counter: str = Field(primary_key=True, max_length=300)
    window_start: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    count: int = 0


class PolicySlot(SQLModel, table=True):
    """The slot of a counter one call took, by the call's idempotency key: a call taken up again
    (after an approval or a crash) keeps its slot instead of counting twice."""

    __tablename__ = "policy_slots"

    idempotency_key: str = Field(primary_key=True, max_length=64)
    counter: str = Field(max_length=300)
    window_start: datetime = Field(sa_type=UTCDateTime)
    slot: int
    created_at: datetime = _ts()


class WorkflowVersion(SQLModel, table=True):
    """A workflow version some process has served, with the hash of its code (see ``runtime.versions``)."""

    __tablename__ = "workflow_versions"

    name: str = Field(primary_key=True, max_length=100)
    version: str = Field(primary_key=True, max_length=50)
    code_hash: str = Field(max_length=64)
    registered_at: datetime = _ts()


class Rollout(SQLModel, table=True):
    """Which version of a workflow new runs take: the stable one, and a canary for a share of them
    (see ``runtime.rollout``). A workflow with no row routes every new run to its lowest loaded version."""

    __tablename__ = "rollouts"

    workflow: str = Field(primary_key=True, max_length=100)
    stable: str = Field(max_length=50)
    canary: str | None = Field(default=None, max_length=50)
    canary_percent: int = Field(default=0, ge=0, le=100)
    previous_stable: str | None = Field(default=None, max_length=50, description="What a rollback returns to")
    canary_since: datetime | None = _ts_opt(description="When the canary began taking traffic (guards measure from it)")
    revision: int = Field(default=1, description="Counts the changes; the routing is the same while it is")
    updated_by: str = Field(max_length=200)
    reason: str = Field(max_length=1000)
    updated_at: datetime = _ts()


class RunStep(SQLModel, table=True):
    """One execution of one graph node (a LangGraph task). A task run again after a resume starts
    its step over; steps live in their own table, so audit retention never changes them."""

    __tablename__ = "run_steps"

    run_id: str = Field(foreign_key="runs.id", primary_key=True, max_length=32)
    task_id: str = Field(primary_key=True, max_length=64)
    node: str = Field(max_length=200)
    status: StepStatus = Field(max_length=20)
    started_at: datetime = _ts()
    finished_at: datetime | None = _ts_opt()
    error: dict[str, Any] | None = _json()


class ConnectorCall(SQLModel, table=True):
    """The recorded outcome of one connector action, keyed by its idempotency key."""

    __tablename__ = "connector_calls"

    idempotency_key: str = Field(primary_key=True, max_length=64)
    run_id: str = Field(foreign_key="runs.id", index=True, max_length=32)
    node: str = Field(max_length=200)
    superstep: int
    position: int
    action: str = Field(max_length=200)
    effect: str = Field(max_length=20)
    request_digest: str = Field(max_length=64)
    response: Any = _json()
    attempts: int = 1
    created_at: datetime = _ts()


class AuditEvent(SQLModel, table=True):
    """One hash-chained audit event. Rows are only ever appended."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_run_id_seq", "run_id", "seq"),)

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    created_at: str = Field(max_length=40)
    actor: str = Field(max_length=200)
    kind: str = Field(max_length=100)
    run_id: str | None = Field(default=None, max_length=32)
    workflow: str | None = Field(default=None, max_length=100)
    version: str | None = Field(default=None, max_length=50)
    trace_id: str | None = Field(default=None, max_length=32)
    data: dict[str, Any] = _json(dict)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The chain's tip: one row, updated first in every appending transaction (a lock)."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str = Field(default="0" * 64, max_length=64)


class WorkerHeartbeat(SQLModel, table=True):
    """A worker process that takes runs, as it last reported itself (``/readyz`` reads ``seen_at``)."""

    __tablename__ = "worker_heartbeats"

    worker_id: str = Field(primary_key=True, max_length=200)
    started_at: datetime = _ts()
    seen_at: datetime = _ts(index=True)
    concurrency: int
    running: int = 0


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user: str = Field(index=True, max_length=200)
    token_hash: str = Field(unique=True, max_length=64)
    scopes: list[str] = _json(list, description="What the token may do (runtime.scopes)")
    demo: bool = Field(default=False, description="Seeded by demo mode: refused by a server outside demo mode")
    created_at: datetime = _ts()
    revoked_at: datetime | None = _ts_opt()


class QuarantineItem(SQLModel, table=True):
    """A record that failed a workflow's data-quality checks, kept with its reasons until a person
    releases or drops it (see ``runtime.quarantine``). One item per workflow, kind and record content:
    the same bad record seen again counts up ``seen_count`` instead of piling up."""

    __tablename__ = "quarantine_items"
    __table_args__ = (
        UniqueConstraint("workflow", "kind", "record_digest", name="uq_quarantine_items_record"),
        Index("ix_quarantine_items_created_at", "created_at", "id"),
        Index("ix_quarantine_items_status_created_at", "status", "created_at", "id"),
        Index("ix_quarantine_items_workflow_created_at", "workflow", "created_at", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    workflow: str = Field(max_length=100)
    version: str = Field(max_length=50, description="The version whose run first quarantined the record")
    kind: str = Field(max_length=64)
    run_id: str = Field(max_length=32, description="The run that first quarantined the record")
    last_run_id: str = Field(max_length=32, description="The run that saw it last")
    node: str = Field(max_length=200)
    record: Any = _json()
    record_digest: str = Field(max_length=64)
    reasons: list[dict[str, Any]] = _json(list)
    status: str = Field(default="quarantined", max_length=20)
    seen_count: int = 1
    decided_by: str | None = Field(default=None, max_length=200)
    decided_at: datetime | None = _ts_opt()
    comment: str | None = Field(default=None, max_length=2000)
    resubmitted_run_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
