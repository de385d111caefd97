"""Data-access verbs of the approval domain, and :class:`SqlApprovals`, the engine's approval port.

>>> pending = await db.run(lambda session: list_approvals(session=session, status=ApprovalStatus.pending))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datetime import datetime, timedelta

from sqlalchemy import String, cast, func, select, tuple_, update
from sqlalchemy.orm import Session

from approvals import notifications, users
from approvals.models import DEFAULT_SLA, ApprovalRequest, ApprovalStatus
from runtime.approval import ApprovalDecision, ApprovalNeed
from runtime.db import json_rows
from runtime.models import AuditEvent
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
        edited_from=approval.proposed_arguments_hash,
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
                    editable=list(need.editable),
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


    def disagreements(self, session: Session) -> list[str]:
        """Approval rows that differ from the audit events they project (see :func:`disagreements`)."""
        return disagreements(session)

    def decision_counts(self, session: Session, *, workflow: str,
                        since: datetime | None = None) -> dict[str, tuple[int, int]]:
        query = (select(ApprovalRequest.version, ApprovalRequest.status, func.count())
                 .where(ApprovalRequest.workflow == workflow, ApprovalRequest.status.in_(DECIDED))
                 .group_by(ApprovalRequest.version, ApprovalRequest.status))
        if since is not None:
            query = query.where(ApprovalRequest.created_at >= since)
        rows = session.execute(query).all()
        counts: dict[str, tuple[int, int]] = {}
        for version, status, count in rows:
            decided, rejected = counts.get(version, (0, 0))
            counts[version] = (decided + count, rejected + (count if status == ApprovalStatus.rejected else 0))
        return counts

    def notify(self, session: Session, *, kind: str, recipients: Sequence[str], data: dict[str, Any],
               channels: Sequence[str]) -> None:
        notifications.enqueue_message(session, kind=kind, recipients=list(recipients), data=data,
                                      channels=tuple(channels), now=utcnow())

    def disabled(self, session: Session, *, user: str) -> bool:
        return users.is_disabled(session=session, name=user)

    def seed_demo(self, session: Session) -> None:
        users.seed_demo(session)


PORT = SqlApprovals()


PROJECTED = ("approval.requested", "approval.edited", "approval.decided")


def disagreements(session: Session, *, batch: int = 5000) -> list[str]:
    """Each approval row whose state is not what its audit events say: the arguments hash of the last
    ``approval.requested``/``approval.edited`` event, and, for a decided request, the status and decider
    of its deciding ``approval.decided`` event and every approver's own approving event. The events are
    the record; the rows are their projection, so a row edited behind Steward's back is named here."""
    expected: dict[str, dict[str, Any]] = {}
    after = 0
    while True:  # the events in chain order, a batch at a time
        events = session.scalars(select(AuditEvent).where(AuditEvent.kind.in_(PROJECTED), AuditEvent.seq > after)
                                 .order_by(AuditEvent.seq).limit(batch)).all()
        if not events:
            break
        after = events[-1].seq
        for event in events:
            data = event.data or {}
            approval_id = data.get("approval_id")
            if not approval_id:
                continue
            state = expected.setdefault(approval_id, {"hash": None, "approvers": set(), "decision": None,
                                                      "decider": None, "seq": event.seq})
            if event.kind == "approval.requested" or event.kind == "approval.edited":
                state["hash"] = data.get("arguments_hash")
                if event.kind == "approval.edited":
                    state["approvers"] = set()
            elif data.get("decision") == "approve" or data.get("complete"):
                if data.get("decision") == "approve":
                    state["approvers"].add(event.actor)
                if data.get("complete"):
                    state["decision"], state["decider"] = data.get("decision"), event.actor
    problems: list[str] = []
    after_id = ""
    while True:
        rows = session.scalars(select(ApprovalRequest).where(ApprovalRequest.id > after_id)
                               .order_by(ApprovalRequest.id).limit(batch)).all()
        if not rows:
            break
        after_id = rows[-1].id
        for row in rows:
            problems += _disagreement(row, expected.get(row.id))
    return problems


def _disagreement(row: ApprovalRequest, state: dict[str, Any] | None) -> list[str]:
    name = f"approval {row.id}"
    if state is None:
        return [f"{name} has no approval.requested event: the row was not written by Steward"]
    found = []
    if state["hash"] != row.arguments_hash:
        found.append(f"{name} proposes arguments {row.arguments_hash[:12]}… but its events say "
                     f"{(state['hash'] or 'none')[:12]}…")
    decided = {ApprovalStatus.approved: "approve", ApprovalStatus.rejected: "reject"}.get(row.status)
    if decided is not None and (state["decision"], state["decider"]) != (decided, row.decided_by):
        found.append(f"{name} is {row.status.value} by {row.decided_by} but its events say "
                     + (f"{state['decision']} by {state['decider']}" if state["decision"] else "undecided"))
    if row.status == ApprovalStatus.pending and state["decision"] is not None:
        found.append(f"{name} is pending but its events say {state['decision']} by {state['decider']}")
    approvers = {entry.get("approver") for entry in row.approvers or []}
    if not approvers <= state["approvers"]:
        found.append(f"{name} counts approvals by {', '.join(sorted(approvers - state['approvers']))} that no "
                     "approval.decided event records")
    return found
