"""``/api/v1/audit``: read the audit trail and verify its hash chain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from runtime import audit, store
from runtime.api.deps import StewardDep, UserDep
from runtime.api.schemas import AuditEventPublic

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=list[AuditEventPublic], summary="Audit events in chain order")
async def list_audit(
    steward: StewardDep,
    _: UserDep,
    run_id: str | None = None,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[AuditEventPublic]:
    events = await steward.db.run(
        lambda s: store.list_audit(session=s, run_id=run_id, after_seq=after_seq, limit=limit))
    return [AuditEventPublic.model_validate(e) for e in events]


@router.get("/verify", summary="Recompute the hash chain; name the first broken event")
async def verify(steward: StewardDep, _: UserDep) -> dict[str, Any]:
    return (await steward.db.run(audit.verify)).to_dict()
