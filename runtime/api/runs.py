"""``/api/v1/runs``: start, list, inspect and cancel runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from sqlalchemy.orm import Session

from runtime import store
from runtime.api.deps import StewardDep, UserDep
from runtime.api.problems import errors
from runtime.api.responses import encode_list, json_body
from runtime.api.schemas import RunCreate, RunDetail, RunPublic, StepPublic
from runtime.models import RunStatus

router = APIRouter(prefix="/runs", tags=["runs"])


@router.post("", status_code=201, response_model=RunPublic, operation_id="runs-create", summary="Start a run",
             responses={200: {"model": RunPublic, "description": "The run a repeated Idempotency-Key started"},
                        201: {"description": "The run was queued"}, **errors(401, 404)})
async def create_run(
    body: RunCreate,
    steward: StewardDep,
    user: UserDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> RunPublic:
    """Validate the input against the workflow's model and queue a run, pinned to ``version`` or else to
    the workflow's highest loaded version (404 when that version is not loaded). A repeated
    ``Idempotency-Key`` with the same body returns the first run (200)."""
    run, created = await steward.executor.submit(
        workflow=body.workflow, input=body.input, actor=user, idempotency_key=idempotency_key, version=body.version
    )
    if not created:
        response.status_code = 200
    return RunPublic.model_validate(run)


@router.get("", response_model=list[RunPublic], operation_id="runs-list", responses=errors(401),
            summary="List runs, newest first")
async def list_runs(
    steward: StewardDep,
    _: UserDep,
    status: RunStatus | None = None,
    workflow: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    body = await steward.db.run(lambda s: encode_list(
        RunPublic, store.list_runs(session=s, status=status, workflow=workflow, limit=limit)), read_only=True)
    return json_body(body)


async def run_detail(steward: StewardDep, run_id: str) -> RunDetail:
    def read(session: Session) -> tuple[Any, Any, list[str]]:
        run = store.get_run(session=session, run_id=run_id)
        steps = store.list_steps(session=session, run_id=run_id)
        return run, steps, steward.executor.approvals.pending_ids(session, run_id=run_id)

    run, steps, ids = await steward.db.run(read, read_only=True)
    return RunDetail.model_validate({
        **RunPublic.model_validate(run).model_dump(),
        "input": run.input,
        "output": run.output,
        "steps": [StepPublic.model_validate(s) for s in steps],
        "pending_approval_id": ids[0] if ids else None,
        "pending_approval_ids": ids,
    })


@router.get("/{run_id}", response_model=RunDetail, operation_id="runs-get", responses=errors(401, 404),
            summary="One run with its steps and pending approval")
async def get_run(run_id: str, steward: StewardDep, _: UserDep) -> RunDetail:
    return await run_detail(steward, run_id)


@router.post("/{run_id}/cancel", response_model=RunDetail, operation_id="runs-cancel",
             responses=errors(401, 404, 409), summary="Cancel a run that has not ended")
async def cancel_run(run_id: str, steward: StewardDep, user: UserDep) -> RunDetail:
    await steward.executor.cancel(run_id=run_id, actor=user)
    return await run_detail(steward, run_id)
