"""``/api/v1/approvals``: list pending approvals, read one, decide it.

Mounted by the composition root (``STEWARD_ROUTERS`` names ``approvals.api:router``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from approvals import service
from approvals.models import ApprovalStatus
from approvals.schemas import ApprovalPage, ApprovalPublic, CommentCreate, DecisionCreate
from approvals.store import get_approval as get_one
from approvals.store import list_approvals as list_some
from runtime.api.deps import NO_NUL, ApprovalsDecide, ApprovalsRead, StewardDep
from runtime.api.problems import errors
from runtime.api.paging import CursorQuery, Pages
from runtime.api.responses import json_body
from runtime.models import utcnow
from runtime.policy import ROLE

router = APIRouter(prefix="/approvals", tags=["approvals"])


PAGES = Pages("approvals", ApprovalPublic, ApprovalPage, key=lambda approval: [approval.created_at, approval.id],
              key_types=[datetime, str])


@router.get("", response_model=ApprovalPage, operation_id="approvals-list", responses=errors(401, 403),
            summary="Approval requests, oldest first, a page at a time")
async def list_approvals(
    steward: StewardDep,
    _: ApprovalsRead,
    status: ApprovalStatus | None = None,
    run_id: Annotated[str | None, Query(max_length=32, pattern=NO_NUL)] = None,
    workflow: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    role: Annotated[str | None, Query(max_length=100, pattern=ROLE.pattern,
                                      description="Only requests for this role (a policy's @escalate)")] = None,
    risk: Annotated[Literal["normal", "high"] | None, Query()] = None,
    older_than_hours: Annotated[int | None, Query(ge=0, le=8760, description="Opened at least this long ago")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, CursorQuery] = None,
) -> Response:
    filters = {"status": status, "run_id": run_id, "workflow": workflow, "role": role, "risk": risk,
               "older_than_hours": older_than_hours}
    after = PAGES.start(cursor, **filters)
    opened_before = utcnow() - timedelta(hours=older_than_hours) if older_than_hours is not None else None
    body = await steward.db.run(lambda s: PAGES.encode(list_some(
        session=s, status=status, run_id=run_id, workflow=workflow, role=role, risk=risk,
        opened_before=opened_before, limit=limit + 1, after=after), limit, **filters), read_only=True)
    return json_body(body)


@router.get("/{approval_id}", response_model=ApprovalPublic, operation_id="approvals-get",
            responses=errors(401, 403, 404), summary="One approval request")
async def get_approval(approval_id: str, steward: StewardDep, _: ApprovalsRead) -> ApprovalPublic:
    approval = await steward.db.run(lambda s: get_one(session=s, approval_id=approval_id), read_only=True)
    return ApprovalPublic.model_validate(approval)


@router.post("/{approval_id}/decision", response_model=ApprovalPublic, operation_id="approvals-decide",
             responses=errors(401, 403, 404, 409), summary="Approve (as proposed or edited) or reject")
async def decide(approval_id: str, body: DecisionCreate, steward: StewardDep, user: ApprovalsDecide) -> ApprovalPublic:
    """Record the caller's decision; the run resumes with it. Deciding twice, or on arguments other than
    the request's now (`arguments_hash`), answers 409; approving a run you started, or deciding a request
    for a role you do not hold (`roles`), answers 403. An approval with `arguments` approves the call as
    edited: arguments that do not fit the action, or that the policies deny, answer 422."""
    approval = await service.decide(steward, approval_id=approval_id, decision=body.decision, actor=user,
                                    comment=body.comment, arguments_hash=body.arguments_hash, check_roles=True,
                                    arguments=body.arguments)
    return ApprovalPublic.model_validate(approval)


@router.post("/{approval_id}/comments", response_model=ApprovalPublic, operation_id="approvals-comment",
             responses=errors(401, 403, 404, 409), summary="Comment without deciding")
async def comment(approval_id: str, body: CommentCreate, steward: StewardDep, user: ApprovalsDecide) -> ApprovalPublic:
    """Add a remark to a pending request (audited `approval.commented`); a decided one answers 409."""
    approval = await service.comment(steward, approval_id=approval_id, actor=user, text=body.comment)
    return ApprovalPublic.model_validate(approval)
