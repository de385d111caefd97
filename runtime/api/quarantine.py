"""``/api/v1/quarantine``: records that failed a workflow's data-quality checks, and a person's decision.

>>> GET /api/v1/quarantine?status=quarantined&workflow=lead_routing
{"data": [{"id": "…", "kind": "lead", "reasons": [{"check": "required", "field": "company", …}], …}], …}
>>> POST /api/v1/quarantine/{id}/release {"comment": "real company, the form dropped the field"}
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from runtime.api.deps import NO_NUL, QuarantineRead, QuarantineWrite, StewardDep
from runtime.api.paging import CursorQuery, Page, Pages
from runtime.api.problems import errors
from runtime.api.responses import json_body
from runtime.quarantine import QuarantineStatus

router = APIRouter(prefix="/quarantine", tags=["quarantine"])


class QuarantineReason(BaseModel):
    check: str = Field(description="The check that failed: required, format, one_of, duplicate or a rule's name")
    field: str
    message: str


class QuarantinePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    workflow: str
    version: str = Field(description="The version whose run first quarantined the record")
    kind: str = Field(description="The kind of record, as the workflow's checks name it")
    run_id: str = Field(description="The run that first quarantined the record")
    last_run_id: str = Field(description="The run that saw it last")
    node: str
    record: Any
    reasons: list[QuarantineReason]
    status: QuarantineStatus
    seen_count: int = Field(description="How many screenings found this same record failing")
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None
    resubmitted_run_id: str | None = Field(description="The run a release started with the record as its input")
    created_at: datetime
    updated_at: datetime


class QuarantinePage(Page[QuarantinePublic]):
    """A page of quarantined records, newest first."""


class QuarantineDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: Annotated[str, Field(max_length=2000, pattern=NO_NUL, description="Why (kept in the audit trail)")] = ""


PAGES = Pages("quarantine", QuarantinePublic, QuarantinePage, key=lambda item: [item.created_at, item.id],
              key_types=[datetime, str])


@router.get("", response_model=QuarantinePage, operation_id="quarantine-list", responses=errors(401, 403),
            summary="List quarantined records, newest first, a page at a time")
async def list_items(
    steward: StewardDep,
    _: QuarantineRead,
    status: QuarantineStatus | None = None,
    workflow: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    kind: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    run_id: Annotated[str | None, Query(max_length=32, pattern=NO_NUL, description=(
        "Records this run quarantined first or saw last"))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, CursorQuery] = None,
) -> Response:
    filters = {"status": status, "workflow": workflow, "kind": kind, "run_id": run_id}
    before = PAGES.start(cursor, **filters)
    rows = await steward.quarantine.list(limit=limit + 1, before=before, **filters)
    return json_body(PAGES.encode(rows, limit, **filters))


@router.get("/{item_id}", response_model=QuarantinePublic, operation_id="quarantine-get",
            responses=errors(401, 403, 404), summary="One quarantined record with its reasons")
async def get_item(item_id: str, steward: StewardDep, _: QuarantineRead) -> QuarantinePublic:
    return QuarantinePublic.model_validate(await steward.quarantine.get(item_id=item_id))


@router.post("/{item_id}/release", response_model=QuarantinePublic, operation_id="quarantine-release",
             responses=errors(401, 403, 404, 409), summary="Release a record: it passes its workflow's checks from now on")
async def release_item(item_id: str, steward: StewardDep, user: QuarantineWrite,
                       body: QuarantineDecision | None = None) -> QuarantinePublic:
    """The record passes the workflow's screening for its kind from now on; when the kind declares
    ``resubmit``, a new run starts with the record as its input (``resubmitted_run_id``), in the same
    transaction. 409 once the record has been released or dropped; 422 when the record is no valid
    input for the workflow (nothing changes)."""
    comment = body.comment if body is not None else ""
    return QuarantinePublic.model_validate(
        await steward.quarantine.release(item_id=item_id, actor=user, comment=comment))


@router.post("/{item_id}/drop", response_model=QuarantinePublic, operation_id="quarantine-drop",
             responses=errors(401, 403, 404, 409), summary="Drop a record: it is not processed, now or when seen again")
async def drop_item(item_id: str, steward: StewardDep, user: QuarantineWrite,
                    body: QuarantineDecision | None = None) -> QuarantinePublic:
    comment = body.comment if body is not None else ""
    return QuarantinePublic.model_validate(await steward.quarantine.drop(item_id=item_id, actor=user, comment=comment))
