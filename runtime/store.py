"""Data-access verbs over Steward's tables; keyword-only arguments, the caller owns the session.

>>> run = await db.run(lambda session: get_run(session=session, run_id="4f1c…"))
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from runtime.errors import ApprovalNotFound, RunNotFound, Unauthorized
from runtime.models import (
    ApiToken,
    ApprovalRequest,
    ApprovalStatus,
    AuditEvent,
    ConnectorCall,
    Run,
    RunStatus,
    RunStep,
    utcnow,
)


def get_run(*, session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    return run


def list_runs(
    *, session: Session, status: RunStatus | None = None, workflow: str | None = None, limit: int = 100
) -> Sequence[Run]:
    query = select(Run).order_by(Run.created_at.desc()).limit(limit)
    if status is not None:
        query = query.where(Run.status == status)
    if workflow is not None:
        query = query.where(Run.workflow == workflow)
    return session.scalars(query).all()


def find_run_by_idempotency_key(*, session: Session, key: str) -> Run | None:
    return session.scalars(select(Run).where(Run.idempotency_key == key)).first()


def list_steps(*, session: Session, run_id: str) -> Sequence[RunStep]:
    return session.scalars(select(RunStep).where(RunStep.run_id == run_id).order_by(RunStep.id)).all()


def step_states(*, session: Session, run_id: str) -> dict[str, tuple[str, str]]:
    """task id -> (node, status name) for every recorded step of a run."""
    query = select(RunStep.task_id, RunStep.node, RunStep.status).where(RunStep.run_id == run_id)
    return {task_id: (node, status.name) for task_id, node, status in session.execute(query).all()}


def get_step(*, session: Session, run_id: str, task_id: str) -> RunStep | None:
    query = select(RunStep).where(RunStep.run_id == run_id, RunStep.task_id == task_id)
    return session.scalars(query).first()


def claim_run(
    *, session: Session, run_id: str, worker_id: str, lease_seconds: float, force_from: str | None = None
) -> Run | None:
    """Take a queued run, or a running run whose lease ran out (or whose worker ``force_from`` is dead).

    Returns the claimed run, or None when it is not there to take."""
    now = utcnow()
    takeable = [Run.status == RunStatus.queued, (Run.status == RunStatus.running) & (Run.lease_expires_at < now)]
    if force_from is not None:
        takeable.append((Run.status == RunStatus.running) & (Run.worker_id == force_from))
    statement = (
        update(Run)
        .where(Run.id == run_id, or_(*takeable))
        .values(status=RunStatus.running, worker_id=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now, executions=Run.executions + 1)
        .returning(Run)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return session.scalars(statement).first()


def renew_leases(*, session: Session, worker_id: str, lease_seconds: float) -> None:
    now = utcnow()
    session.execute(
        update(Run)
        .where(Run.worker_id == worker_id, Run.status == RunStatus.running)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
    )


def claimable_run_ids(*, session: Session, limit: int) -> list[str]:
    now = utcnow()
    query = (
        select(Run.id)
        .where(or_(Run.status == RunStatus.queued, (Run.status == RunStatus.running) & (Run.lease_expires_at < now)))
        .order_by(Run.created_at)
        .limit(limit)
    )
    return list(session.scalars(query).all())


def running_runs_by_worker_prefix(*, session: Session, prefix: str) -> Sequence[tuple[str, str]]:
    query = select(Run.id, Run.worker_id).where(Run.status == RunStatus.running, Run.worker_id.startswith(prefix))
    return session.execute(query).all()


def cancel_requested_ids(*, session: Session, worker_id: str) -> list[str]:
    query = select(Run.id).where(Run.worker_id == worker_id, Run.status == RunStatus.running, Run.cancel_requested)
    return list(session.scalars(query).all())


def get_approval(*, session: Session, approval_id: str, for_update: bool = False) -> ApprovalRequest:
    query = select(ApprovalRequest).where(ApprovalRequest.id == approval_id)
    if for_update:
        query = query.with_for_update()
    approval = session.scalars(query).first()
    if approval is None:
        raise ApprovalNotFound(f"no approval request with id {approval_id!r}")
    return approval


def list_approvals(
    *, session: Session, status: ApprovalStatus | None = None, run_id: str | None = None, limit: int = 100
) -> Sequence[ApprovalRequest]:
    query = select(ApprovalRequest).order_by(ApprovalRequest.created_at).limit(limit)
    if status is not None:
        query = query.where(ApprovalRequest.status == status)
    if run_id is not None:
        query = query.where(ApprovalRequest.run_id == run_id)
    return session.scalars(query).all()


def approvals_by_interrupt(*, session: Session, interrupt_ids: Sequence[str]) -> dict[str, ApprovalRequest]:
    query = select(ApprovalRequest).where(ApprovalRequest.interrupt_id.in_(list(interrupt_ids)))
    return {a.interrupt_id: a for a in session.scalars(query).all()}


def get_connector_call(*, session: Session, key: str) -> ConnectorCall | None:
    return session.get(ConnectorCall, key)


def recorded_responses(*, session: Session, run_id: str) -> dict[str, Any]:
    """Every recorded connector response of a run, by idempotency key (loaded once per execution)."""
    query = select(ConnectorCall.idempotency_key, ConnectorCall.response).where(ConnectorCall.run_id == run_id)
    return {key: response for key, response in session.execute(query).all()}


def list_connector_calls(*, session: Session, run_id: str) -> Sequence[ConnectorCall]:
    query = select(ConnectorCall).where(ConnectorCall.run_id == run_id).order_by(ConnectorCall.created_at)
    return session.scalars(query).all()


def list_audit(
    *, session: Session, run_id: str | None = None, after_seq: int = 0, limit: int = 1000
) -> Sequence[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.seq > after_seq).order_by(AuditEvent.seq).limit(limit)
    if run_id is not None:
        query = query.where(AuditEvent.run_id == run_id)
    return session.scalars(query).all()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(*, session: Session, user: str) -> tuple[ApiToken, str]:
    """A new API token for ``user``; the plain token is returned once and stored only as a hash."""
    plain = "stw_" + secrets.token_urlsafe(32)
    token = ApiToken(user=user, token_hash=hash_token(plain))
    session.add(token)
    return token, plain


def store_token(*, session: Session, user: str, plain: str) -> ApiToken:
    """Register a token chosen by the caller (demo mode's well-known token)."""
    existing = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(plain))).first()
    if existing is not None:
        return existing
    token = ApiToken(user=user, token_hash=hash_token(plain))
    session.add(token)
    return token


def authenticate(*, session: Session, plain: str) -> str:
    """The user a bearer token belongs to, or :class:`Unauthorized`."""
    query = select(ApiToken).where(ApiToken.token_hash == hash_token(plain), ApiToken.revoked_at.is_(None))
    token = session.scalars(query).first()
    if token is None:
        raise Unauthorized("the bearer token is unknown or revoked; create one with `steward tokens create`")
    return token.user


def lease_deadline(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
