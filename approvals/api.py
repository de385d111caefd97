"""``/api/v1/approvals``: list pending approvals, read one, decide it.

Mounted by the composition root (``STEWARD_ROUTERS`` names ``approvals.api:router``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from approvals import service
from approvals.models import ApprovalStatus
from approvals.schemas import ApprovalPage, ApprovalPublic, DecisionCreate
from approvals.store import get_approval as get_one
from approvals.store import list_approvals as list_some
from runtime.api.deps import NO_NUL, ApprovalsDecide, ApprovalsRead, StewardDep
from runtime.api.problems import errors
from runtime.api.paging import CursorQuery, Pages
from runtime.api.responses import json_body

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
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, CursorQuery] = None,
) -> Response:
    after = PAGES.start(cursor, status=status, run_id=run_id)
    body = await steward.db.run(lambda s: PAGES.encode(list_some(
        session=s, status=status, run_id=run_id, limit=limit + 1, after=after), limit, status=status, run_id=run_id),
        read_only=True)
    return json_body(body)


@router.get("/{approval_id}", response_model=ApprovalPublic, operation_id="approvals-get",
            responses=errors(401, 403, 404), summary="One approval request")
async def get_approval(approval_id: str, steward: StewardDep, _: ApprovalsRead) -> ApprovalPublic:
    approval = await steward.db.run(lambda s: get_one(session=s, approval_id=approval_id), read_only=True)
    return ApprovalPublic.model_validate(approval)


@router.post("/{approval_id}/decision", response_model=ApprovalPublic, operation_id="approvals-decide",
             responses=errors(401, 403, 404, 409), summary="Approve or reject")
async def decide(approval_id: str, body: DecisionCreate, steward: StewardDep, user: ApprovalsDecide) -> ApprovalPublic:
    """Record the caller's decision; the run resumes with it. Deciding twice, or on arguments other than
    the request's now (`arguments_hash`), answers 409; approving a run you started, or deciding a request
    for a role you do not hold (`roles`), answers 403."""
    approval = await service.decide(steward, approval_id=approval_id, decision=body.decision, actor=user,
                                    comment=body.comment, arguments_hash=body.arguments_hash, check_roles=True)
    return ApprovalPublic.model_validate(approval)
