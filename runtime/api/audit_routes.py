"""``/api/v1/audit``: read the audit trail and verify its hash chain."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from runtime import audit, store
from runtime.api.deps import NO_NUL, AuditRead, StewardDep
from runtime.api.problems import errors
from runtime.api.paging import MAX_INT_KEY, CursorQuery, Pages
from runtime.api.responses import json_body
from runtime.api.schemas import AuditEventPublic, AuditPage

router = APIRouter(prefix="/audit", tags=["audit"])


PAGES = Pages("audit", AuditEventPublic, AuditPage, key=lambda event: [event.seq], key_types=[int])


@router.get("", response_model=AuditPage, operation_id="audit-list", responses=errors(401, 403),
            summary="Audit events in chain order, a page at a time")
async def list_audit(
    steward: StewardDep,
    _: AuditRead,
    run_id: Annotated[str | None, Query(max_length=32, pattern=NO_NUL)] = None,
    after_seq: Annotated[int, Query(ge=0, le=MAX_INT_KEY, description="Start after this sequence number")] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    cursor: Annotated[str | None, CursorQuery] = None,
) -> Response:
    """Page on with ``cursor`` (each page's ``next_cursor``); ``after_seq`` starts the listing past a
    sequence number you already hold (a follower resuming where it stopped)."""
    after = PAGES.start(cursor, run_id=run_id, after_seq=after_seq)
    start = after_seq if after is None else max(after_seq, after[0])
    body = await steward.db.run(lambda s: PAGES.encode(store.list_audit(
        session=s, run_id=run_id, after_seq=start, limit=limit + 1), limit, run_id=run_id, after_seq=after_seq),
        read_only=True)
    return json_body(body)


@router.get("/verify", operation_id="audit-verify", responses=errors(401, 403),
            summary="Recompute the hash chain; name the first broken event and any approval that differs from its events")
async def verify(steward: StewardDep, _: AuditRead) -> dict[str, Any]:
    check = functools.partial(audit.verify, projections=steward.executor.approvals.disagreements)
    return (await steward.db.run(check, read_only=True)).to_dict()
