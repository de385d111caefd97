"""Data-access verbs of the approval domain, and :class:`SqlApprovals`, the engine's approval port.

>>> pending = await db.run(lambda session: list_approvals(session=session, status=ApprovalStatus.pending))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datetime import datetime, timedelta

from sqlalchemy import String, cast, func, select, tuple_, update
from sqlalchemy.orm import Session

from approvals import users
from approvals.models import DEFAULT_SLA, ApprovalRequest, ApprovalStatus
from runtime.approval import ApprovalDecision, ApprovalNeed
from runtime.db import json_rows
from runtime.errors import ApprovalNotFound
from runtime.models import utcnow

DECIDED = (ApprovalStatus.approved, ApprovalStatus.rejected)


def get_approval(*, session: Session, approval_id: str) -> ApprovalRequest:
    approval = session.get(ApprovalRequest, approval_id)
    if approval is None:
        raise ApprovalNotFound(f"no approval request with id {approval_id!r}")
    return approval


def _filtered(query: Any, *, status: ApprovalStatus | None = None, run_id: str | None = None,
              workflow: str | None = None, role: str | None = None, risk: str | None = None,
              opened_before: datetime | None = None) -> Any:
    if status is not None:
        query = query.where(ApprovalRequest.status == status)
    if run_id is not None:
        query = query.where(ApprovalRequest.run_id == run_id)
    if workflow is not None:
        query = query.where(ApprovalRequest.workflow == workflow)
    if role is not None:  # roles is a JSON list of names like pricing_manager (no quote can be in one)
        pattern = role.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(cast(ApprovalRequest.roles, String).like(f'%"{pattern}"%', escape="\\"))
    if risk is not None:
        query = query.where(ApprovalRequest.risk == risk)
    if opened_before is not None:
        query = query.where(ApprovalRequest.created_at <= opened_before)
    return query


def list_approvals(
    *, session: Session, status: ApprovalStatus | None = None, run_id: str | None = None, limit: int = 100,
    after: Sequence[Any] | None = None, **filters: Any,
) -> Sequence[ApprovalRequest]:
    """Approval requests oldest first, by ``(created_at, id)``; with ``after``, only those after that key
    (keyset paging, see ``runtime.api.paging``). ``filters``: ``workflow``, ``role`` (one the request is
    for), ``risk``, ``opened_before``."""
    query = select(ApprovalRequest).order_by(ApprovalRequest.created_at, ApprovalRequest.id).limit(limit)
    if after is not None:
        query = query.where(tuple_(ApprovalRequest.created_at, ApprovalRequest.id) > tuple(after))
    return session.scalars(_filtered(query, status=status, run_id=run_id, **filters)).all()


def count_approvals(*, session: Session, status: ApprovalStatus | None = None, **filters: Any) -> int:
    """How many requests :func:`list_approvals` would list with the same filters, over all pages."""
    return session.scalar(_filtered(select(func.count()).select_from(ApprovalRequest), status=status, **filters))


def approvals_by_interrupt(*, session: Session, interrupt_ids: Sequence[str]) -> dict[str, ApprovalRequest]:
    query = select(ApprovalRequest).where(ApprovalRequest.interrupt_id.in_(list(interrupt_ids)))
    return {a.interrupt_id: a for a in session.scalars(query).all()}


def as_decision(approval: ApprovalRequest) -> ApprovalDecision:
    return ApprovalDecision(
        approval_id=approval.id,
        decision="approve" if approval.status == ApprovalStatus.approved else "reject",
        approver=approval.decided_by or "",
        comment=approval.comment or "",
        arguments=approval.arguments,
        arguments_hash=approval.arguments_hash,
        approvers=[entry["approver"] for entry in approval.approvers or []],
    )


class SqlApprovals:
    """The approval port on the ``approval_requests`` table (see :class:`runtime.approval.ApprovalPort`)."""

    def request(self, session: Session, *, needs: Sequence[ApprovalNeed]) -> list[str]:
        known = approvals_by_interrupt(session=session, interrupt_ids=[n.interrupt_id for n in needs])
        ids = []
        for need in needs:
            approval = known.get(need.interrupt_id)
            if approval is None:
                opened = need.opened_at or utcnow()
                sla = timedelta(seconds=need.sla_seconds) if need.sla_seconds else DEFAULT_SLA
                approval = ApprovalRequest(
                    run_id=need.run_id, interrupt_id=need.interrupt_id, workflow=need.workflow,
                    version=need.version, node=need.node, action=need.action, arguments=need.arguments,
                    arguments_hash=need.arguments_hash, reason=need.reason, requested_by=need.requested_by,
                    roles=list(need.roles), required_approvals=need.required_approvals, policy=need.policy,
                    risk="high" if need.required_approvals > 1 else "normal",
                    remind_at=opened + sla / 2, due_at=opened + sla, expires_at=opened + 2 * sla, owner=need.owner, separate=list(need.separate),
                )
                session.add(approval)
            ids.append(approval.id)
        session.flush()
        return ids

    def decisions(self, session: Session, *, interrupt_ids: Sequence[str]) -> dict[str, ApprovalDecision | None]:
        return {
            iid: as_decision(approval) if approval.status in DECIDED else None
            for iid, approval in approvals_by_interrupt(session=session, interrupt_ids=interrupt_ids).items()
        }

    def withdraw(self, session: Session, *, run_id: str) -> int:
        result = session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.run_id == run_id, ApprovalRequest.status == ApprovalStatus.pending)
            .values(status=ApprovalStatus.cancelled)
        )
        return result.rowcount

    def pending_ids(self, session: Session, *, run_id: str) -> list[str]:
        return [a.id for a in list_approvals(session=session, run_id=run_id, status=ApprovalStatus.pending)]

    def pending_summary(self, session: Session) -> tuple[int, Any]:
        count, oldest = session.execute(select(func.count(), func.min(ApprovalRequest.created_at)).where(
            ApprovalRequest.status == ApprovalStatus.pending)).one()
        return count, oldest

    def pending_column(self, run_id: Any, *, postgres: bool) -> Any:
        return (select(json_rows(postgres=postgres, created_at=ApprovalRequest.created_at, id=ApprovalRequest.id))
                .where(ApprovalRequest.run_id == run_id, ApprovalRequest.status == ApprovalStatus.pending)
                .scalar_subquery())


    def disabled(self, session: Session, *, user: str) -> bool:
        return users.is_disabled(session=session, name=user)

    def seed_demo(self, session: Session) -> None:
        users.seed_demo(session)


PORT = SqlApprovals()
