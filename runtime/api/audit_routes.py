"""``/api/v1/audit``: read the audit trail and verify its hash chain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from runtime import audit, store
from runtime.api.deps import StewardDep, UserDep
from runtime.api.problems import errors
from runtime.api.responses import encode_list, json_body
from runtime.api.schemas import AuditEventPublic

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=list[AuditEventPublic], operation_id="audit-list", responses=errors(401),
            summary="Audit events in chain order")
async def list_audit(
    steward: StewardDep,
    _: UserDep,
    run_id: str | None = None,
    after_seq: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> Response:
    """Page on with ``after_seq`` (the last ``seq`` you got)."""
    body = await steward.db.run(lambda s: encode_list(
        AuditEventPublic, store.list_audit(session=s, run_id=run_id, after_seq=after_seq, limit=limit)),
        read_only=True)
    return json_body(body)


@router.get("/verify", operation_id="audit-verify", responses=errors(401),
            summary="Recompute the hash chain; name the first broken event")
async def verify(steward: StewardDep, _: UserDep) -> dict[str, Any]:
    return (await steward.db.run(audit.verify, read_only=True)).to_dict()
