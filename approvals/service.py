"""Approval commands: a person decides; the run resumes through the engine's port.

>>> approval = await decide(steward, approval_id="a1…", decision="approve", actor="pricing.manager",
...                         comment="margin ok")
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from opentelemetry.trace import Link
from sqlalchemy import update
from sqlalchemy.orm import Session

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals import notifications, users
from approvals.store import get_approval, list_approvals
from runtime import audit
from runtime import store as runtime_store
from runtime.errors import Conflict, Forbidden, InputInvalid, SeparationOfDuties
from runtime.models import RunStatus, utcnow
from runtime.telemetry import current_trace_id, run_root, tracer


async def decide(steward: Any, *, approval_id: str, decision: str, actor: str, comment: str = "",
                 arguments_hash: str | None = None, check_roles: bool = False, expired_at: datetime | None = None,
                 notify: bool = False) -> ApprovalRequest:
    """Record a person's decision; when the run has no undecided request left, it is queued to resume.

    A request that needs several people (a policy's ``@approvals``) counts each approver once (the same
    person again is a :class:`Conflict`) and is approved at the last one needed; a rejection decides it.
    Whoever started the run may reject it but never approve it (:class:`SeparationOfDuties`, audited as
    ``approval.sod_violation``); so may the workflow's owner (the user with the owner's email) when the
    policy says ``@separate("owner")``. With ``arguments_hash`` (what the decider was shown), a request whose
    arguments are no longer those is a :class:`Conflict`: nobody approves something other than what
    they saw. With ``check_roles`` (every person's entry point: the API, the inbox), a request that
    names roles (a policy's ``@escalate``) is decided only by someone holding one of them now
    (:class:`Forbidden`, audited as ``authz.denied``); engine code that vouches for the person leaves it
    off. With ``expired_at`` (the SLA sweep's now), the rejection is the request's expiry: refused
    (:class:`Conflict`) unless it has expired by then, audited also as ``approval.expired`` and, with
    ``notify``, reported to the workflow's owner and backup.

    One transaction, locks in the engine's order: the run's row, then the approval, then the audit chain."""
    if decision not in ("approve", "reject"):
        raise InputInvalid(f"decision must be 'approve' or 'reject', not {decision!r}",
                           details=[{"loc": ["body", "decision"], "msg": "must be approve or reject"}])
    status = ApprovalStatus.approved if decision == "approve" else ApprovalStatus.rejected

    def record(session: Session) -> ApprovalRequest:
        run_id = get_approval(session=session, approval_id=approval_id).run_id
        run = runtime_store.lock_run(session=session, run_id=run_id)
        approval = get_approval(session=session, approval_id=approval_id)
        session.refresh(approval)  # as it is now that the run is locked (deciders of one run queue on it)
        if expired_at is not None and (approval.expires_at is None or approval.expires_at > expired_at):
            raise Conflict(f"approval {approval_id} has not expired")
        if approval.status != ApprovalStatus.pending:
            raise Conflict(
                f"approval {approval_id} is already {approval.status.value}"
                + (f" by {approval.decided_by}" if approval.decided_by else "")
                + "; a decision cannot be changed"
            )
        if decision == "approve" and actor == approval.requested_by:
            raise SeparationOfDuties(f"{actor} started run {run.id} and so may not approve its request "
                                     f"{approval_id}; another person with the right role must")
        if decision == "approve" and "owner" in (approval.separate or []) and users.is_owner(
                session=session, name=actor, owner=approval.owner):
            raise SeparationOfDuties(f"{actor} owns workflow {approval.workflow}, and the policy that asked for "
                                     f"request {approval_id} keeps its owner from approving it; another person "
                                     "with the right role must")
        if arguments_hash is not None and arguments_hash != approval.arguments_hash:
            raise Conflict(f"approval {approval_id} no longer proposes the arguments you were shown (they were "
                           f"{arguments_hash[:12]}…, they are {approval.arguments_hash[:12]}…); read it again and "
                           "decide on what it proposes now", details={"arguments_hash": approval.arguments_hash})
        if check_roles and approval.roles:
            held = users.roles_of(session=session, name=actor)
            if not held & set(approval.roles):
                raise Forbidden(f"approval {approval_id} is for {' or '.join(approval.roles)}, which {actor} is not"
                                f"{' (holds ' + ', '.join(sorted(held)) + ')' if held else ''}; an administrator "
                                f"gives the role with `steward users add NAME --role {approval.roles[0]}`",
                                details={"roles": list(approval.roles), "held": sorted(held)})
        approvers = list(approval.approvers or [])
        if decision == "approve" and any(entry["approver"] == actor for entry in approvers):
            raise Conflict(f"{actor} has already approved {approval_id}; it needs "
                           f"{approval.required_approvals - len(approvers)} more approval(s) from other people")
        values: dict[str, Any] = {}
        if decision == "approve":
            approvers.append({"approver": actor, "comment": comment, "at": utcnow().isoformat()})
            values["approvers"] = approvers
        counted = approvers
        if check_roles and approval.roles:  # a vote counts while its person still holds the role
            needed = set(approval.roles)
            counted = [e for e in approvers if users.roles_of(session=session, name=e["approver"]) & needed]
        complete = decision == "reject" or len(counted) >= approval.required_approvals
        if complete:
            values |= {"status": status, "decided_by": actor, "comment": comment, "decided_at": utcnow()}
        result = session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == approval_id, ApprovalRequest.status == ApprovalStatus.pending)
            .values(**values)
        )
        session.refresh(approval)
        if result.rowcount != 1:
            raise Conflict(f"approval {approval_id} is already {approval.status.value}; a decision cannot be changed")
        attrs = {"steward.run_id": run.id, "steward.approval_id": approval_id, "steward.decision": decision}
        # In the decision's own trace (its HTTP request's), linked to the run's root span; the audit event
        # stays in the run's trace and names the decision's.
        root = run_root(run.trace_id, run.root_span_id)
        with tracer().start_as_current_span("steward.approval.decide", attributes=attrs,
                                            links=[Link(root)] if root is not None else None):
            audit.append(session, kind="approval.decided", actor=actor, run=run, trace_id=run.trace_id, data={
                "approval_id": approval_id, "decision": decision, "comment": comment,
                "action": approval.action, "arguments_hash": approval.arguments_hash,
                "decision_trace_id": current_trace_id(), "approvals": len(approvers),
                "required_approvals": approval.required_approvals, "complete": complete,
            })
            if expired_at is not None:
                recipients = notifications.owners(approval)
                audit.append(session, kind="approval.expired", actor=actor, run=run, trace_id=run.trace_id, data={
                    "approval_id": approval_id, "expires_at": approval.expires_at.isoformat(),
                    "recipients": recipients})
                if notify:
                    notifications.enqueue(session, kind="approval.expired", approval=approval, recipients=recipients,
                                          now=expired_at, data={"expires_at": approval.expires_at.isoformat()})
            undecided = list_approvals(session=session, run_id=run.id, status=ApprovalStatus.pending)
            if complete and not undecided and run.status == RunStatus.waiting_approval:
                steward.executor.queue_resume(session, run=run, actor=actor, reason="approval decided")
        return approval

    try:
        approval = await steward.db.run(record)
    except Forbidden as refused:
        await steward.db.run(functools.partial(_refused, approval_id=approval_id, actor=actor, refused=refused))
        raise
    steward.executor.wake()
    return approval


def _refused(session: Session, *, approval_id: str, actor: str, refused: Forbidden) -> None:
    """The attempt on record, in a transaction of its own (the decision's was rolled back)."""
    approval = get_approval(session=session, approval_id=approval_id)
    run = runtime_store.get_run(session=session, run_id=approval.run_id)
    kind = "approval.sod_violation" if isinstance(refused, SeparationOfDuties) else "authz.denied"
    audit.append(session, kind=kind, actor=actor, run=run, data={
        "approval_id": approval_id, "action": approval.action, "arguments_hash": approval.arguments_hash,
        "requested_by": approval.requested_by, "reason": refused.message})


async def comment(steward: Any, *, approval_id: str, actor: str, text: str) -> ApprovalRequest:
    """A remark on a request without deciding it (audited ``approval.commented``); a decided request
    takes no more remarks (:class:`Conflict`). Locks in the engine's order: run, request, audit."""
    text = text.strip()
    if not 1 <= len(text) <= 4000:
        raise InputInvalid("a comment is 1 to 4000 characters",
                           details=[{"loc": ["body", "comment"], "msg": "1 to 4000 characters", "type": "string_length"}])

    def record(session: Session) -> ApprovalRequest:
        run = runtime_store.lock_run(session=session, run_id=get_approval(session=session, approval_id=approval_id).run_id)
        approval = get_approval(session=session, approval_id=approval_id)
        session.refresh(approval)
        if approval.status != ApprovalStatus.pending:
            raise Conflict(f"approval {approval_id} is already {approval.status.value}; it takes no more comments")
        approval.comments = [*(approval.comments or []), {"by": actor, "text": text, "at": utcnow().isoformat()}]
        session.flush()
        audit.append(session, kind="approval.commented", actor=actor, run=run,
                     data={"approval_id": approval_id, "comment": text})
        return approval

    return await steward.db.run(record)
