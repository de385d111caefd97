"""Data-access verbs over Steward's tables; keyword-only arguments, the caller owns the session.

>>> run = await db.run(lambda session: get_run(session=session, run_id="4f1c…"))
"""

from __future__ import annotations

import functools

import hashlib
import secrets
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, false, func, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from runtime.db import RawSql, json_rows, parse_json_rows, parse_time
from runtime.errors import RunNotFound, TokenNotFound, Unauthorized
from runtime.journal import Recorded
from runtime.scopes import Principal
from runtime.models import (
    ApiToken,
    AuditEvent,
    ConnectorCall,
    PolicyCounter,
    PolicySetRecord,
    PolicySlot,
    Run,
    RunStatus,
    RunStep,
    WorkerHeartbeat,
    WorkflowVersion,
    utcnow,
)


def get_run(*, session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    return run


def lock_run(*, session: Session, run_id: str) -> Run:
    """The run, its row locked for this transaction (``FOR UPDATE`` on PostgreSQL; SQLite has one writer).

    Every command that changes a run calls this first: the lock order is run, children, audit."""
    query = select(Run).where(Run.id == run_id).with_for_update().execution_options(populate_existing=True)
    run = session.scalars(query).first()
    if run is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    return run


def list_runs(
    *, session: Session, status: RunStatus | None = None, workflow: str | None = None, limit: int = 100,
    before: Sequence[Any] | None = None,
) -> Sequence[Run]:
    """Runs newest first, by ``(created_at, id)``; with ``before``, only those after that key in this
    order (keyset paging, see ``runtime.api.paging``). Each filter has an index in this order."""
    query = select(Run).order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)
    if before is not None:
        query = query.where(tuple_(Run.created_at, Run.id) < tuple(before))
    if status is not None:
        query = query.where(Run.status == status)
    if workflow is not None:
        query = query.where(Run.workflow == workflow)
    return session.scalars(query).all()


def get_run_detail(*, session: Session, run_id: str, pending: Any) -> dict[str, Any]:
    """A run's columns with ``steps`` (in the order they started) and ``pending_approval_ids`` (its
    undecided approval requests, oldest first), in one query; ``pending`` is the approval port's
    ``pending_column``. Followed runs are read on every change, so the statement is built once."""
    postgres = session.get_bind().dialect.name == "postgresql"
    query = _detail_query(pending, postgres)
    row = session.connection().execute(query, {"run_id": run_id}).first()
    if row is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    fields = dict(row._mapping)
    step_rows, pending_rows = parse_json_rows(fields.pop("steward_steps")), parse_json_rows(fields.pop("steward_pending"))
    for step in step_rows:
        step["started_at"], step["finished_at"] = parse_time(step["started_at"]), parse_time(step["finished_at"])
    step_rows.sort(key=lambda step: (step["started_at"], step["task_id"]))
    fields["steps"] = step_rows
    fields["pending_approval_ids"] = [approval_id for _, approval_id in sorted(
        (parse_time(at), i) for at, i in ((p["created_at"], p["id"]) for p in pending_rows))]
    return fields


def run_status(cursor: Any, *, raw: RawSql, run_id: str) -> RunStatus:
    """A run's status alone, on a raw cursor (``Database.read_cursor``): what a long-poll looks at."""
    cursor.execute(raw.sql("SELECT status FROM runs WHERE id = ?"), (run_id,))
    row = cursor.fetchone()
    if row is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    return RunStatus(row[0])


@functools.lru_cache(maxsize=8)
def _detail_query(pending: Any, postgres: bool) -> Any:
    steps = (select(json_rows(postgres=postgres, node=RunStep.node, task_id=RunStep.task_id, status=RunStep.status,
                              error=RunStep.error, started_at=RunStep.started_at, finished_at=RunStep.finished_at))
             .where(RunStep.run_id == _RUNS.c.id).scalar_subquery())
    return select(*_RUNS.c, steps.label("steward_steps"), pending(_RUNS.c.id, postgres=postgres).label(
        "steward_pending")).where(_RUNS.c.id == bindparam("run_id"))


def active_run_counts(*, session: Session) -> dict[tuple[str, str, str], int]:
    """Runs that have not ended, counted by ``(workflow, version, status)`` (for the metrics)."""
    active = [RunStatus.queued, RunStatus.running, RunStatus.waiting_approval]
    query = (select(Run.workflow, Run.version, Run.status, func.count()).where(Run.status.in_(active))
             .group_by(Run.workflow, Run.version, Run.status))
    return {(workflow, version, RunStatus(status).value): count
            for workflow, version, status, count in session.execute(query).all()}


def find_run_by_idempotency_key(*, session: Session, key: str) -> Run | None:
    return session.scalars(select(Run).where(Run.idempotency_key == key)).first()


def list_steps(*, session: Session, run_id: str) -> Sequence[RunStep]:
    """A run's steps in the order they started."""
    query = select(RunStep).where(RunStep.run_id == run_id).order_by(RunStep.started_at, RunStep.task_id)
    return session.scalars(query).all()


_RUNS = Run.__table__
_TAKEABLE = or_(
    _RUNS.c.status == RunStatus.queued,
    and_(_RUNS.c.status == RunStatus.running, _RUNS.c.lease_expires_at < bindparam("now")),
    and_(_RUNS.c.status == RunStatus.running, _RUNS.c.worker_id == bindparam("force_from")),
)
# Built once: claiming and finishing run for every run, and composing a statement costs more than running it.
_CLAIM = (
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("run_id"), _TAKEABLE)
    .values(status=RunStatus.running, worker_id=bindparam("worker_id"), lease_expires_at=bindparam("lease"),
            updated_at=bindparam("now"), executions=_RUNS.c.executions + 1, status_reason=None)
    .returning(*_RUNS.c)
)
_FINISH = (
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("run_id"), _RUNS.c.status != RunStatus.succeeded,
           _RUNS.c.status != RunStatus.failed, _RUNS.c.status != RunStatus.rejected,
           _RUNS.c.status != RunStatus.cancelled)
    .values(status=bindparam("status"), error=bindparam("error"), output=bindparam("output"),
            updated_at=bindparam("now"), finished_at=bindparam("now"), worker_id=None, lease_expires_at=None,
            status_reason=None)
    .returning(*_RUNS.c)
)
# An execution ends only a run it still owns (see runtime.journal: the epoch is ``executions``).
_FINISH_OWNED = _FINISH.where(_RUNS.c.executions == bindparam("epoch"), _RUNS.c.status == RunStatus.running)


_INSERT_RUN = _RUNS.insert()


def insert_run(*, session: Session, run: Run) -> None:
    """Store a new run (a plain INSERT: the ORM's unit of work costs more than the statement)."""
    session.connection().execute(_INSERT_RUN, {column.name: getattr(run, column.name) for column in _RUNS.c})


def claim_run(
    *, session: Session, run_id: str, worker_id: str, lease_seconds: float, force_from: str | None = None
) -> Run | None:
    """Take a queued run, or a running run whose lease ran out (or whose worker ``force_from`` is dead).

    Returns the claimed run, or None when it is not there to take."""
    now = utcnow()
    row = session.connection().execute(_CLAIM, {
        "run_id": run_id, "now": now, "force_from": force_from, "worker_id": worker_id,
        "lease": now + timedelta(seconds=lease_seconds),
    }).first()
    return None if row is None else Run(**row._mapping)


def finish_run(
    *, session: Session, run_id: str, status: RunStatus, error: dict[str, Any] | None, output: Any,
    epoch: int | None = None,
) -> Run | None:
    """Record a run's end (its output kept when ``output`` is None). With ``epoch``, only while that
    execution still owns the run; None when it does not (or the run had already ended)."""
    if output is None:
        output = session.connection().execute(select(_RUNS.c.output).where(_RUNS.c.id == run_id)).scalar()
    params = {"run_id": run_id, "status": status, "error": error, "output": output, "now": utcnow()}
    if epoch is not None:
        params["epoch"] = epoch
    row = session.connection().execute(_FINISH if epoch is None else _FINISH_OWNED, params).first()
    return None if row is None else Run(**row._mapping)


def renew_leases(*, session: Session, worker_id: str, epochs: dict[str, int], lease_seconds: float) -> set[str]:
    """Extend the lease of each run this worker drives (run id -> epoch); returns the runs it still owns."""
    if not epochs:
        return set()
    query = (
        update(Run)
        .where(tuple_(Run.id, Run.executions).in_(list(epochs.items())), Run.status == RunStatus.running,
               Run.worker_id == worker_id)  # a run this worker gave back stays given back
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .returning(Run.id)
    )
    return set(session.scalars(query).all())


def release_run(*, session: Session, run_id: str, epoch: int, retry_in: float) -> Run | None:
    """Give a run back after an infrastructure failure: any worker resumes it from its last checkpoint
    once ``retry_in`` seconds have passed. None when this execution no longer owns it."""
    query = (
        update(Run)
        .where(Run.id == run_id, Run.executions == epoch, Run.status == RunStatus.running)
        .values(worker_id=None, lease_expires_at=utcnow() + timedelta(seconds=retry_in), updated_at=utcnow())
        .returning(*_RUNS.c)
    )
    row = session.execute(query).first()
    return None if row is None else Run(**row._mapping)


RUNS_CHANNEL = "steward_runs"


def notify_queued(*, session: Session) -> None:
    """Tell every listening worker that a run is ready, when this transaction commits (PostgreSQL
    ``NOTIFY``; on SQLite there is one process, woken directly)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {RUNS_CHANNEL}"))


CANCELS_CHANNEL = "steward_cancels"


def notify_cancel(*, session: Session, run_id: str) -> None:
    """Tell the worker driving ``run_id`` (in whichever process) to stop it, when this transaction
    commits. Without PostgreSQL, or when the notification is missed, the execution notices at its next
    transaction (the fence reads ``cancel_requested``) or lease renewal."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :run_id)"), {"channel": CANCELS_CHANNEL, "run_id": run_id})


def park_run(*, session: Session, run_id: str, epoch: int, reason: str) -> Run | None:
    """Give a run back, unfailed, to wait for a process that serves its version: ``queued`` again with
    ``reason`` (see :func:`claim_next_runs`). None when this execution no longer owns it."""
    query = (
        update(Run)
        .where(Run.id == run_id, Run.executions == epoch, Run.status == RunStatus.running)
        .values(status=RunStatus.queued, status_reason=reason[:500], worker_id=None, lease_expires_at=None,
                updated_at=utcnow())
        .returning(*_RUNS.c)
    )
    row = session.execute(query).first()
    return None if row is None else Run(**row._mapping)


def _claimable(now: Any, serves: Collection[tuple[str, str]] | None) -> Any:
    """Queued runs and running runs whose lease ran out. A parked run (queued with a ``status_reason``:
    a process that took it up did not serve its version) is offered only to a process that ``serves``
    its ``(workflow, version)``, so processes without that version leave it alone instead of taking it
    up again and again. Every other run is offered to all: whoever takes up a run it cannot drive parks
    it, with the reason for the operator to see."""
    queued = _RUNS.c.status == RunStatus.queued
    if serves is not None:
        served = tuple_(_RUNS.c.workflow, _RUNS.c.version).in_(list(serves)) if serves else false()
        queued = queued & (_RUNS.c.status_reason.is_(None) | served)
    return or_(queued, and_(_RUNS.c.status == RunStatus.running, _RUNS.c.lease_expires_at < now))


def claimable_run_ids(
    *, session: Session, limit: int, serves: Collection[tuple[str, str]] | None = None
) -> list[str]:
    """The runs :func:`claim_next_runs` would offer, oldest first, without claiming them."""
    query = select(_RUNS.c.id).where(_claimable(utcnow(), serves)).order_by(_RUNS.c.created_at).limit(limit)
    return list(session.scalars(query).all())


def claim_next_runs(
    *, session: Session, worker_id: str, lease_seconds: float, limit: int,
    serves: Collection[tuple[str, str]] | None = None,
) -> list[Run]:
    """Claim up to ``limit`` claimable runs (see :func:`_claimable`), oldest first.

    On PostgreSQL the candidates are locked with ``FOR UPDATE SKIP LOCKED``, so any number of
    workers claim concurrently without waiting for each other or claiming one run twice; SQLite
    has one writer. Each claim starts a new execution (the epoch ``executions`` moves on)."""
    now = utcnow()
    candidates = (
        select(_RUNS.c.id)
        .where(_claimable(now, serves))
        .order_by(_RUNS.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    query = (
        update(_RUNS)
        .where(_RUNS.c.id.in_(candidates), _TAKEABLE)
        .values(status=RunStatus.running, worker_id=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now, executions=_RUNS.c.executions + 1, status_reason=None)
        .returning(*_RUNS.c)
    )
    rows = session.connection().execute(query, {"now": now, "force_from": None}).all()
    return [Run(**row._mapping) for row in rows]


def running_runs_by_worker_prefix(*, session: Session, prefix: str) -> Sequence[tuple[str, str]]:
    query = select(Run.id, Run.worker_id).where(Run.status == RunStatus.running, Run.worker_id.startswith(prefix))
    return session.execute(query).all()


def cancel_requested_ids(*, session: Session, worker_id: str) -> list[str]:
    query = select(Run.id).where(Run.worker_id == worker_id, Run.status == RunStatus.running, Run.cancel_requested)
    return list(session.scalars(query).all())


def beat(*, session: Session, worker_id: str, concurrency: int, running: int) -> None:
    """Report a worker alive now (insert or update its heartbeat)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    now = utcnow()
    statement = dialect.insert(WorkerHeartbeat).values(
        worker_id=worker_id, started_at=now, seen_at=now, concurrency=concurrency, running=running)
    session.execute(statement.on_conflict_do_update(index_elements=["worker_id"], set_={
        "seen_at": now, "concurrency": concurrency, "running": running}))


def forget_worker(*, session: Session, worker_id: str) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id))


def forget_silent_workers(*, session: Session, older_than: timedelta) -> int:
    """Drop the heartbeats of workers silent for longer than ``older_than`` (killed, never stopped cleanly)."""
    return session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < utcnow() - older_than)).rowcount


def last_heartbeat(*, session: Session) -> Any:
    """When any worker last reported itself alive (None: never, or every worker stopped cleanly)."""
    return session.scalar(select(func.max(WorkerHeartbeat.seen_at)))


def insert_workflow_version(*, session: Session, name: str, version: str, code_hash: str) -> bool:
    """Record a version's code hash unless a row for ``(name, version)`` exists; True when inserted.

    An insert that does nothing on conflict: concurrent start-ups registering the same version do not
    fail (on PostgreSQL the second waits for the first to commit, then inserts nothing)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(WorkflowVersion).values(
        name=name, version=version, code_hash=code_hash, registered_at=utcnow()
    ).on_conflict_do_nothing(index_elements=["name", "version"]).returning(WorkflowVersion.name)
    return session.execute(statement).first() is not None


def lock_workflow_version(*, session: Session, name: str, version: str) -> WorkflowVersion:
    """The recorded version, its row locked for this transaction (``FOR UPDATE`` on PostgreSQL)."""
    query = (select(WorkflowVersion).where(WorkflowVersion.name == name, WorkflowVersion.version == version)
             .with_for_update().execution_options(populate_existing=True))
    return session.scalars(query).one()


def list_workflow_versions(*, session: Session) -> Sequence[WorkflowVersion]:
    query = select(WorkflowVersion).order_by(WorkflowVersion.name, WorkflowVersion.version)
    return session.scalars(query).all()


def version_has_runs(*, session: Session, workflow: str, version: str) -> bool:
    query = select(Run.id).where(Run.workflow == workflow, Run.version == version).limit(1)
    return session.scalars(query).first() is not None


def recorded_calls(*, session: Session, run_id: str) -> dict[str, Recorded]:
    """Every recorded call of a run, by idempotency key (loaded once per execution)."""
    query = select(ConnectorCall.idempotency_key, ConnectorCall.action, ConnectorCall.request_digest,
                   ConnectorCall.response).where(ConnectorCall.run_id == run_id)
    return {key: Recorded(action, digest, response) for key, action, digest, response in session.execute(query).all()}




def take_slot(*, session: Session, key: str, counter: str, window_start: Any) -> int:
    """The slot call ``key`` holds in ``counter``'s window, taking the next one if it holds none.

    The counter row is bumped with an upsert, so concurrent calls on both databases queue on it and
    each gets its own number: twenty calls released together count 1 to 20, never 20 twenty times."""
    held = session.get(PolicySlot, key)
    if held is not None:
        return held.slot
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    upsert = dialect.insert(PolicyCounter).values(counter=counter, window_start=window_start, count=1)
    upsert = upsert.on_conflict_do_update(index_elements=["counter", "window_start"],
                                          set_={"count": PolicyCounter.count + 1}).returning(PolicyCounter.count)
    slot = session.execute(upsert).scalar_one()
    session.add(PolicySlot(idempotency_key=key, counter=counter, window_start=window_start, slot=slot))
    session.flush()
    return slot


def peek_slot(*, session: Session, key: str, counter: str, window_start: Any) -> int:
    """The slot ``take_slot`` would return now, without taking it (hypothetical evaluations)."""
    held = session.get(PolicySlot, key)
    if held is not None:
        return held.slot
    count = session.scalar(select(PolicyCounter.count).where(PolicyCounter.counter == counter,
                                                               PolicyCounter.window_start == window_start))
    return (count or 0) + 1


_RELEASE_SLOT = "DELETE FROM policy_slots WHERE idempotency_key = ? RETURNING counter, window_start"
_UNCOUNT = "UPDATE policy_counters SET count = count - 1 WHERE counter = ? AND window_start = ? AND count > 0"


def release_slot(cursor: Any, raw: Any, key: str) -> None:
    """Give back the slot call ``key`` took (its call was denied): a cursor operation for the journal."""
    cursor.execute(raw.sql(_RELEASE_SLOT), (key,))
    row = cursor.fetchone()
    if row is not None:
        cursor.execute(raw.sql(_UNCOUNT), (row[0], row[1]))


def save_policy_set(*, session: Session, policy_hash: str, documents: dict[str, Any]) -> bool:
    """Keep a loaded policy set by its hash; True when it was new."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(PolicySetRecord).values(hash=policy_hash, documents=documents, loaded_at=utcnow())
    statement = statement.on_conflict_do_nothing(index_elements=["hash"]).returning(PolicySetRecord.hash)
    return session.execute(statement).first() is not None


def policy_documents(*, session: Session, policy_hash: str) -> dict[str, Any] | None:
    record = session.get(PolicySetRecord, policy_hash)
    return None if record is None else record.documents


def list_audit(
    *, session: Session, run_id: str | None = None, after_seq: int = 0, limit: int = 1000
) -> Sequence[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.seq > after_seq).order_by(AuditEvent.seq).limit(limit)
    if run_id is not None:
        query = query.where(AuditEvent.run_id == run_id)
    return session.scalars(query).all()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(*, session: Session, user: str, scopes: Collection[str]) -> tuple[ApiToken, str]:
    """A new API token for ``user`` carrying ``scopes``; the plain token is returned once and stored
    only as a hash."""
    plain = "stw_" + secrets.token_urlsafe(32)
    token = ApiToken(user=user, token_hash=hash_token(plain), scopes=sorted(scopes))
    session.add(token)
    return token, plain


def store_token(*, session: Session, user: str, plain: str, scopes: Collection[str], demo: bool = False) -> ApiToken:
    """Register a token chosen by the caller (demo mode's well-known tokens), or bring one registered
    before up to date (its user, scopes and demo mark; a revoked one stays revoked)."""
    existing = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(plain))).first()
    if existing is not None:
        existing.user, existing.scopes, existing.demo = user, sorted(scopes), demo
        return existing
    token = ApiToken(user=user, token_hash=hash_token(plain), scopes=sorted(scopes), demo=demo)
    session.add(token)
    return token


def list_tokens(*, session: Session, user: str | None = None) -> Sequence[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if user is not None:
        query = query.where(ApiToken.user == user)
    return session.scalars(query).all()


def revoke_token(*, session: Session, token_id: str) -> ApiToken:
    """Revoke a token (once: revoking it again keeps the first time); :class:`TokenNotFound` if unknown."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise TokenNotFound(f"no token with id {token_id!r}; see `steward tokens list`")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
    return token


def authenticate(*, session: Session, plain: str) -> Principal:
    """Whom a bearer token belongs to and what it may do, or :class:`Unauthorized`."""
    query = select(ApiToken).where(ApiToken.token_hash == hash_token(plain), ApiToken.revoked_at.is_(None))
    token = session.scalars(query).first()
    if token is None:
        raise Unauthorized("the bearer token is unknown or revoked; create one with `steward tokens create`")
    return Principal(user=token.user, scopes=frozenset(token.scopes or ()), demo=token.demo, token_id=token.id)

