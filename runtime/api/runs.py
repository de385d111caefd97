"""``/api/v1/runs``: start, list, inspect and cancel runs."""

from __future__ import annotations

import asyncio
import functools
import json
from datetime import datetime
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from runtime import store
from runtime.api.deps import NO_NUL, RunsRead, RunsWrite, StewardDep, still_authorised
from runtime.api.problems import errors
from runtime.api.paging import CursorQuery, Pages
from runtime.api.responses import json_body
from runtime.api.schemas import PolicyPin, RunCreate, RunDetail, RunPage, RunPublic
from runtime.errors import Unauthorized
from runtime.models import FINISHED, RunStatus

router = APIRouter(prefix="/runs", tags=["runs"])
MAX_WAIT = 60.0
HEARTBEAT_SECONDS = 15.0
EVENTS_DOC = (
    "A stream of Server-Sent Events: first the run as it stands (its steps, then `event: status`), then "
    "`event: step` (a StepPublic) whenever a step starts or ends and `event: status` (a RunPublic) whenever "
    "the status changes; the stream ends after the status that ends the run, or with `event: error` once "
    "the token is revoked. A comment line is sent after 15 s of quiet. Reconnecting (`Last-Event-ID`) sends "
    "the run as it stands again; once it has ended, 204."
)


@router.post("", status_code=201, response_model=RunPublic, operation_id="runs-create", summary="Start a run",
             responses={200: {"model": RunPublic, "description": "The run a repeated Idempotency-Key started"},
                        201: {"description": "The run was queued"}, **errors(401, 403, 404, 409)})
async def create_run(
    body: RunCreate,
    steward: StewardDep,
    user: RunsWrite,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> Response:
    """Validate the input against the workflow's model and queue a run, pinned to ``version`` or else to
    the workflow's highest loaded version (404 when that version is not loaded). A repeated
    ``Idempotency-Key`` with the same body returns the first run (200)."""
    run, created = await steward.executor.submit(
        workflow=body.workflow, input=body.input, actor=user, idempotency_key=idempotency_key, version=body.version
    )
    return Response(RunPublic.model_validate(run).model_dump_json(), status_code=201 if created else 200,
                    media_type="application/json")  # validated once, here (FastAPI would do it again)


PAGES = Pages("runs", RunPublic, RunPage, key=lambda run: [run.created_at, run.id], key_types=[datetime, str])


@router.get("", response_model=RunPage, operation_id="runs-list", responses=errors(401, 403),
            summary="List runs, newest first, a page at a time")
async def list_runs(
    steward: StewardDep,
    _: RunsRead,
    status: RunStatus | None = None,
    workflow: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, CursorQuery] = None,
) -> Response:
    before = PAGES.start(cursor, status=status, workflow=workflow)
    body = await steward.db.run(lambda s: PAGES.encode(store.list_runs(
        session=s, status=status, workflow=workflow, limit=limit + 1, before=before), limit,
        status=status, workflow=workflow), read_only=True)
    return json_body(body)


async def run_detail(steward: StewardDep, run_id: str) -> RunDetail:
    pending = steward.executor.approvals.pending_column
    fields = await steward.db.run(
        lambda s: store.get_run_detail(session=s, run_id=run_id, pending=pending), read_only=True)
    ids = fields["pending_approval_ids"]
    return RunDetail.model_validate({**fields, "pending_approval_id": ids[0] if ids else None})


@router.get("/{run_id}", response_model=RunDetail, operation_id="runs-get", responses=errors(401, 403, 404),
            summary="One run with its steps and pending approval; with `wait`, once its status changes")
async def get_run(
    run_id: str,
    request: Request,
    steward: StewardDep,
    _: RunsRead,
    wait: Annotated[float | None, Query(gt=0, le=MAX_WAIT, description=(
        "Long-poll: answer once the run's status is no longer `seen` (or it has ended), or after this "
        "many seconds with the run as it stands"))] = None,
    seen: Annotated[RunStatus | None, Query(description=(
        "With `wait`: the status you last saw (default: the status when the request arrives)"))] = None,
    until: Annotated[list[RunStatus] | None, Query(description=(
        "With `wait`: answer only once the run is in one of these statuses (repeat the parameter), e.g. "
        "`until=waiting_approval&until=succeeded&until=failed`; `seen` is then ignored"))] = None,
) -> Response:
    """Without ``wait``, the run now. With ``wait``, the first state after a change of status: a client
    follows a run to its end with ``?wait=30&seen=<status it last saw>`` in a loop, no request wasted,
    or in one request with ``until``."""
    if wait is None:
        return _answer(await run_detail(steward, run_id))
    deadline = asyncio.get_running_loop().time() + wait
    with steward.changes.watch(run_id) as changed:
        detail = await run_detail(steward, run_id)
        baseline = seen or detail.status

        def waiting(status: RunStatus) -> bool:
            if status in FINISHED:
                return False
            return status not in until if until else status == baseline

        status, looked = detail.status, False
        while waiting(status):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await steward.changes.wait(changed, timeout=left)  # or a fallback look, every second at most
            if await request.is_disconnected():  # nobody waits for the answer any more
                looked = False
                break
            await still_authorised(request)  # a token revoked meanwhile ends the wait (401)
            changed.clear()  # before the read: a change committed after this sets it again
            # A run changes several times a step (its steps, its audit): look at its status alone until
            # it is one to answer with, then read the whole run once.
            status = await steward.db.read_cursor(
                functools.partial(store.run_status, raw=steward.db.raw, run_id=run_id))
            looked = True
            if not waiting(status):  # answer now, with the run as it stands (it may have moved on again)
                detail, looked = await run_detail(steward, run_id), False
                break
        if looked:  # the wait ran out: the run as it stands now, its steps too
            detail = await run_detail(steward, run_id)
    return _answer(detail)


def _answer(detail: RunDetail) -> Response:
    """The detail as JSON, as it is: it was validated when it was made (FastAPI would validate it again)."""
    return json_body(detail.model_dump_json())


@router.get("/{run_id}/events", operation_id="runs-events", response_class=StreamingResponse,
            responses={200: {"description": EVENTS_DOC, "content": {"text/event-stream": {"schema": {
                "type": "string"}}}}, 204: {"description": "The run had ended when the client reconnected"},
                **errors(401, 403, 404)},
            summary="Follow a run: its status changes and steps as Server-Sent Events")
async def run_events(run_id: str, request: Request, steward: StewardDep, _: RunsRead) -> Response:
    detail = await run_detail(steward, run_id)  # 404 before the stream starts
    if request.headers.get("last-event-id") and detail.status in FINISHED:
        return Response(status_code=204)  # an EventSource reconnecting after the end: stop it reconnecting
    return StreamingResponse(_events(steward, request, run_id, detail), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _events(steward: Any, request: Request, run_id: str, detail: RunDetail) -> AsyncIterator[bytes]:
    sent: dict[str, str] = {}  # task id -> the step as last sent
    status: RunStatus | None = None
    number = 0
    loop = asyncio.get_running_loop()
    yield b"retry: 1000\n\n"
    with steward.changes.watch(run_id) as changed:
        quiet_since = loop.time()
        while True:
            for step in detail.steps:
                body = step.model_dump_json()
                if sent.get(step.task_id) != body:
                    sent[step.task_id] = body
                    number += 1
                    yield _event("step", number, body)
            if detail.status != status:
                status = detail.status
                number += 1
                yield _event("status", number, RunPublic.model_validate(detail.model_dump()).model_dump_json())
                quiet_since = loop.time()
            if status in FINISHED:
                return
            if not await steward.changes.wait(changed, timeout=HEARTBEAT_SECONDS):
                if loop.time() - quiet_since >= HEARTBEAT_SECONDS:
                    yield b": keep-alive\n\n"  # proxies close idle streams; a comment line is ignored
                    quiet_since = loop.time()
            try:
                await still_authorised(request)  # a token revoked meanwhile ends the stream within a second
            except Unauthorized as exc:
                number += 1
                yield _event("error", number, json.dumps({"code": exc.code, "detail": exc.message}))
                return
            changed.clear()  # before the read: a change committed after this sets it again
            detail = await run_detail(steward, run_id)


def _event(kind: str, number: int, data: str) -> bytes:
    return f"id: {number}\nevent: {kind}\ndata: {data}\n\n".encode()


@router.post("/{run_id}/policy", response_model=RunDetail, operation_id="runs-pin-policy",
             responses=errors(401, 403, 404, 409, 422), summary="Re-pin a run to another policy set")
async def pin_policy(run_id: str, body: PolicyPin, steward: StewardDep, user: RunsWrite) -> RunDetail:
    """A run keeps the policy set it started under; an operator may move it to another one this database
    has loaded (audited with the reason). An execution in progress takes it up at its next execution."""
    await steward.executor.pin_policy(run_id=run_id, policy_hash=body.policy_hash, actor=user, reason=body.reason)
    return await run_detail(steward, run_id)


@router.post("/{run_id}/cancel", response_model=RunDetail, operation_id="runs-cancel",
             responses=errors(401, 403, 404, 409), summary="Cancel a run that has not ended")
async def cancel_run(run_id: str, steward: StewardDep, user: RunsWrite) -> RunDetail:
    await steward.executor.cancel(run_id=run_id, actor=user)
    return await run_detail(steward, run_id)
