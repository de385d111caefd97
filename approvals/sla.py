"""Deadlines of approval requests: a reminder half way, an escalation to the workflow's owner and
backup when the request is due, and expiry (rejection, the safe default) when it is as long again
overdue; then the notifications those steps wrote are delivered (:mod:`approvals.notifications`).

The executor calls :func:`sweep` every ``STEWARD_SWEEP_SECONDS`` with its clock's now (a test fixes
the clock). Each step is one transaction in the engine's lock order (the run's row, the request, the
audit chain) and conditional on the step not having happened: any number of workers may sweep at
once and each step happens once, audited (``approval.reminded``, ``approval.escalated``,
``approval.expired``). A notification is written in the same transaction (an outbox row) and sent
afterwards to the webhook (``STEWARD_NOTIFY_WEBHOOK_URL``) and by email (``STEWARD_NOTIFY_SMTP_HOST``),
retried with backoff until it is accepted, so a process that dies in between loses none.

>>> await sweep(steward, now=steward.executor.clock())
{'reminded': 1, 'escalated': 0, 'expired': 0, 'sent': 1}
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from approvals import service
from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.notifications import BATCH, deciders, deliver, enqueue, owners
from runtime import audit
from runtime import store as runtime_store
from runtime.errors import Conflict

SYSTEM = "steward:sla"


async def sweep(steward: Any, now: datetime) -> dict[str, int]:
    """One pass: remind, escalate, expire what is due at ``now``, then deliver notifications; returns
    how many of each happened."""
    done = {"reminded": 0, "escalated": 0, "expired": 0, "sent": 0}
    notify = steward.settings.notify_channels()
    for stage, column in (("reminded", ApprovalRequest.remind_at), ("escalated", ApprovalRequest.due_at)):
        for approval_id in await _due(steward, column, now, stage):
            done[stage] += await steward.db.run(lambda s, a=approval_id, st=stage: _step(s, a, st, now, notify))
    for approval_id in await _due(steward, ApprovalRequest.expires_at, now, "expired"):
        try:
            await service.decide(steward, approval_id=approval_id, decision="reject", actor=SYSTEM,
                                 comment="expired: nobody decided before the deadline; rejected (the safe default)",
                                 expired_at=now, notify=notify)
            done["expired"] += 1
        except Conflict:  # decided meanwhile, by a person or another worker's sweep
            continue
    if notify:
        done["sent"] = await deliver(steward, now)
    return done


async def _due(steward: Any, column: Any, now: datetime, stage: str) -> list[str]:
    query = (select(ApprovalRequest.id)
             .where(ApprovalRequest.status == ApprovalStatus.pending, column.is_not(None), column <= now)
             .order_by(column).limit(BATCH))
    if stage == "reminded":
        query = query.where(ApprovalRequest.reminded_at.is_(None), ApprovalRequest.escalated_at.is_(None))
    elif stage == "escalated":
        query = query.where(ApprovalRequest.escalated_at.is_(None))
    return list(await steward.db.run(lambda s: s.scalars(query).all(), read_only=True))


def _step(session: Session, approval_id: str, stage: str, now: datetime, notify: tuple[str, ...]) -> int:
    """Remind or escalate one request, once: 1 if this call did it, 0 if it was done or decided."""
    approval = session.get(ApprovalRequest, approval_id)
    run = runtime_store.lock_run(session=session, run_id=approval.run_id)
    stamp = ApprovalRequest.reminded_at if stage == "reminded" else ApprovalRequest.escalated_at
    result = session.execute(update(ApprovalRequest).where(
        ApprovalRequest.id == approval_id, ApprovalRequest.status == ApprovalStatus.pending, stamp.is_(None))
        .values({stamp: now}))
    if result.rowcount != 1:
        return 0
    session.refresh(approval)
    if stage == "reminded":
        recipients = deciders(session, approval)
        kind, data = "approval.reminded", {"due_at": approval.due_at.isoformat()}
    else:
        recipients = owners(approval)
        kind, data = "approval.escalated", {"due_at": approval.due_at.isoformat(),
                                            "expires_at": approval.expires_at.isoformat() if approval.expires_at else None}
    audit.append(session, kind=kind, actor=SYSTEM, run=run,
                 data={"approval_id": approval_id, "recipients": recipients, **data})
    if notify:
        enqueue(session, kind=kind, approval=approval, recipients=recipients, now=now, data=data, channels=notify)
    return 1
