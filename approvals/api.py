"""``/api/v1/approvals``: list pending approvals, read one, decide it.

Mounted by the composition root (``STEWARD_ROUTERS`` names ``approvals.api:router``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from approvals import service
from approvals.models import ApprovalStatus
from approvals.schemas import ApprovalPublic, DecisionCreate
from approvals.store import get_approval as get_one
from approvals.store import list_approvals as list_some
from runtime.api.deps import StewardDep, UserDep
from runtime.api.problems import errors
from runtime.api.responses import encode_list, json_body

router = APIRouter(prefix="/approvals", tags=["approvals"])


@router.get("", response_model=list[ApprovalPublic], operation_id="approvals-list", responses=errors(401),
            summary="Approval requests, oldest first")
async def list_approvals(
    steward: StewardDep,
    _: UserDep,
    status: ApprovalStatus | None = None,
    run_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    body = await steward.db.run(lambda s: encode_list(
        ApprovalPublic, list_some(session=s, status=status, run_id=run_id, limit=limit)), read_only=True)
    return json_body(body)


@router.get("/{approval_id}", response_model=ApprovalPublic, operation_id="approvals-get",
            responses=errors(401, 404), summary="One approval request")
async def get_approval(approval_id: str, steward: StewardDep, _: UserDep) -> ApprovalPublic:
    approval = await steward.db.run(lambda s: get_one(session=s, approval_id=approval_id), read_only=True)
    return ApprovalPublic.model_validate(approval)


@router.post("/{approval_id}/decision", response_model=ApprovalPublic, operation_id="approvals-decide",
             responses=errors(401, 404, 409), summary="Approve or reject")
async def decide(approval_id: str, body: DecisionCreate, steward: StewardDep, user: UserDep) -> ApprovalPublic:
    """Record the caller's decision; the run resumes with it. Deciding twice answers 409."""
    approval = await service.decide(steward, approval_id=approval_id, decision=body.decision, actor=user,
                                    comment=body.comment)
    return ApprovalPublic.model_validate(approval)
