"""The executor: creates runs, drives them through their graph, pauses and resumes them.

A run is claimed with a lease (``worker_id`` + ``lease_expires_at``) before it is
driven; the lease is renewed while the graph runs, so a run left ``running`` by a
dead process is taken over (at once when that process lived on this host, else
when its lease runs out) and continues from its last checkpoint. Checkpoints are
written with ``durability="sync"``: each superstep is on disk before the next starts.

>>> executor = Executor(db=db, registry=registry, connectors=connectors, checkpointer=saver, approvals=port,
...                     policies=book)
>>> run, _ = await executor.submit(workflow="price_change", input={...}, actor="alice")
>>> run = await executor.drive(run.id)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import GraphDrained
from langgraph.runtime import RunControl
from langgraph.types import Command
from opentelemetry import trace
from pydantic_core import to_jsonable_python
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from runtime import audit, logs, metrics, rollout, store
from runtime.approval import ApprovalNeed, ApprovalPort
from runtime.checkpoint import EPOCH, WORKER, owned_by
from runtime.connectors.base import Connector
from runtime.context import StepContext
from runtime.db import Database, is_transient, raw_cursor
from runtime.errors import (
    ApprovalRejected,
    Conflict,
    ExecutionFenced,
    ExecutionStopped,
    InputInvalid,
    RunCancelled,
    StewardError,
    WorkflowNotFound,
)
from runtime.gate import APPROVAL, Gate
from runtime.policy import PolicyBook
from runtime.journal import Journal
from runtime.models import (
    FINISHED,
    Rollout,
    Run,
    RunStatus,
    StepStatus,
    utcnow,
)
from runtime.sdk import Registry, Workflow, resolve_model
from runtime.telemetry import fail_span, run_parent, tracer

log = logging.getLogger("steward.executor")
SYSTEM = "steward"


@functools.cache
def _host_prefix() -> str:
    """This host as worker ids name it: the host name and, where there is one, the PID namespace (two
    containers sharing a host name see different processes; neither may judge the other's pids)."""
    try:
        namespace = f"~{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}{namespace}:"


def _owner_died_here(worker_id: str | None) -> bool:
    """True when ``worker_id`` names another process on this host that no longer exists."""
    if not worker_id or not worker_id.startswith(_host_prefix()):
        return False
    pid = int(worker_id.split(":")[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StewardError):
        return exc.to_dict()
    return {"code": "step_failed", "message": f"{type(exc).__name__}: {exc}"}


def _cancelled_meanwhile(journal: Journal) -> None:
    """Inside a transaction that gives the run up (pause, park, release) after its fence: a cancel the
    fence read (asked in any process) ends the run instead; raised, this transaction rolls back."""
    if isinstance(journal.stopping, RunCancelled):
        raise journal.stopping


def _end_data(error: dict[str, Any] | None, output: Any) -> dict[str, Any]:
    return {"error": error} if error else {"output_digest": audit.digest(output)}


class Execution:
    """One execution of one run in this process: its journal (epoch-fenced writes) and the LangGraph
    run control that stops the graph cooperatively between supersteps."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.control = RunControl()
        journal.on_stop = lambda reason: self.control.request_drain(reason.code)

    @property
    def epoch(self) -> int:
        return self.journal.epoch

    def stop(self, reason: ExecutionStopped) -> None:
        """Stop at the next connector call or superstep boundary, whichever comes first."""
        self.journal.stop(reason)


class Executor:
    """Drives runs of the workflows in ``registry`` (one per process; several processes may share a database)."""

    def __init__(
        self,
        *,
        db: Database,
        registry: Registry,
        connectors: Mapping[str, Connector],
        checkpointer: BaseCheckpointSaver,
        approvals: ApprovalPort,
        policies: PolicyBook,
        clock: Callable[[], datetime] = utcnow,
        models: Mapping[str, Any] | None = None,
        lease_seconds: float = 30.0,
        concurrency: int = 8,
        poll_seconds: float = 1.0,
        sweeps: Sequence[Callable[[datetime], Awaitable[Any]]] = (),
        sweep_seconds: float = 30.0,
    ) -> None:
        self.db = db
        self.registry = registry
        self.connectors = dict(connectors)
        self.checkpointer = checkpointer
        self.approvals = approvals
        self.policies = policies
        self.clock = clock  # what steps and policies see as now (tests fix it)
        self.models = {name: resolve_model(name, model) for name, model in (models or {}).items()}
        # Made now, for every loaded version: a broken default model stops start-up, like a broken graph.
        self._models = {(wf.name, wf.version): self._models_of(wf) for wf in registry}
        self.lease_seconds = lease_seconds
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        # Periodic work of the human layer (approval deadlines, notifications), called with the clock's now.
        self.sweeps = list(sweeps)
        self.sweep_seconds = sweep_seconds
        self.worker_id = f"{_host_prefix()}{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._compiled: dict[tuple[str, str], Any] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._executions: dict[str, Execution] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task] = []
        self._stopping = False
        self._heartbeat = False

    # -- creating and deciding ---------------------------------------------------------

    async def submit(
        self, *, workflow: str, input: Any, actor: str, idempotency_key: str | None = None,
        version: str | None = None,
    ) -> tuple[Run, bool]:
        """Validate and queue a run pinned to ``version`` (default: the one the workflow's rollout routes it
        to, see :mod:`runtime.rollout`). Returns ``(run, created)``; a repeated idempotency key returns the
        first run."""
        named = self.registry.get(workflow, version)  # 404 for an unknown workflow or version
        data = named.validate_input(input) if version is not None else None
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
            raise InputInvalid("an idempotency key has 1 to 200 characters", details=[
                {"loc": ["idempotency_key"], "msg": "1 to 200 characters", "type": "string_length"}])
        with tracer().start_as_current_span("steward.submit"):  # the run's root, exported at once
            created: list[bool] = []

            def create(session: Session) -> Run:
                created.clear()
                wf, checked, routed = named, data, None
                if version is None:
                    wf, route, state = rollout.choose(session, self.registry, workflow, input, idempotency_key)
                    checked, routed = wf.validate_input(input), route.audit(state)
                return self.create_run(session, wf=wf, data=checked, actor=actor, idempotency_key=idempotency_key,
                                       version=version, created=created, route=routed)

            run = await self.db.run(create)
        self._wake.set()
        return run, created == [True]

    async def change_rollout(self, *, workflow: str, action: rollout.Action, actor: str, reason: str,
                             version: str | None = None, percent: int | None = None,
                             in_flight: str = "continue") -> tuple[Rollout, list[str]]:
        """Change the workflow's rollout (see :func:`runtime.rollout.change`); with a rollback's
        ``in_flight="cancel"``, then cancel every run of the versions it took traffic from that has not
        ended (each cancel audited as any other). Returns the new state and the runs cancelled."""
        state, stopping = await self.db.run(lambda s: rollout.change(
            s, self.registry, workflow=workflow, action=action, actor=actor, reason=reason, version=version,
            percent=percent, in_flight=in_flight))
        cancelled = []
        if stopping:
            ids = await self.db.run(lambda s: rollout.in_flight_runs(s, workflow=workflow, versions=stopping),
                                    read_only=True)
            for run_id in ids:
                try:
                    await self.cancel(run_id=run_id, actor=actor)
                except Conflict:  # it ended meanwhile
                    continue
                cancelled.append(run_id)
        return state, cancelled

    def create_run(self, session: Session, *, wf: Workflow, data: dict[str, Any], actor: str,
                   idempotency_key: str | None = None, version: str | None = None,
                   created: list[bool] | None = None, route: dict[str, Any] | None = None) -> Run:
        """Inside the caller's transaction: queue a run of ``wf`` on ``data`` (its validated input; see
        :meth:`submit`, and call :meth:`wake` after commit). ``version`` is the one the caller asked for,
        if any. Its trace is the current span's. ``created`` gets True appended when the run is new,
        False when a repeated idempotency key found the first one."""
        # Scoped to the actor, unambiguously: actor "a:b" with key "c" is not actor "a" with key "b:c".
        scoped_key = f"{len(actor)}:{actor}:{idempotency_key}" if idempotency_key else None
        span = trace.get_current_span()
        context = span.get_span_context()
        run = Run(workflow=wf.name, version=wf.version, input=data, created_by=actor, idempotency_key=scoped_key,
                  policy_hash=self.policies.current.hash, trace_id=format(context.trace_id, "032x"),
                  root_span_id=format(context.span_id, "016x"))
        span.set_attributes({"steward.run_id": run.id, "steward.workflow": wf.name, "steward.version": wf.version})

        def same_request(existing: Run) -> Run:
            if existing.workflow != wf.name or existing.input != data or (
                    version is not None and existing.version != version):
                raise Conflict(
                    f"Idempotency-Key {idempotency_key!r} was used for a different request "
                    f"(run {existing.id}); use a new key for a new run"
                )
            if created is not None:
                created.append(False)
            return existing

        if scoped_key:
            existing = store.find_run_by_idempotency_key(session=session, key=scoped_key)
            if existing is not None:
                return same_request(existing)
            try:
                with session.begin_nested():  # a concurrent submit with the key may win the insert
                    store.insert_run(session=session, run=run)
            except IntegrityError:
                existing = store.find_run_by_idempotency_key(session=session, key=scoped_key)
                if existing is None:
                    raise
                return same_request(existing)
        else:
            store.insert_run(session=session, run=run)
        audit.append(session, kind="run.created", actor=actor, run=run,
                     data={"input_digest": audit.digest(data), "owner": wf.owner.email,
                           **({"route": route} if route is not None else {})})
        store.notify_queued(session=session)
        if created is not None:
            created.append(True)
        return run

    def queue_resume(self, session: Session, *, run: Run, actor: str, reason: str) -> None:
        """The port's "resume this run": inside a command's transaction that has locked ``run``
        (waiting for approval), queue it to resume with its decisions; :meth:`wake` after commit."""
        run.status, run.updated_at = RunStatus.queued, utcnow()
        session.flush()
        audit.append(session, kind="run.queued", actor=actor, run=run, data={"reason": reason})
        store.notify_queued(session=session)

    def wake(self) -> None:
        """Look for queued runs now (after a command queued one in this process)."""
        self._wake.set()

    async def cancel(self, *, run_id: str, actor: str) -> Run:
        """Cancel a run: at once when queued or waiting; a running run stops cooperatively, before its
        next connector call or at its next superstep boundary, whichever comes first."""

        def record(session: Session) -> Run:
            run = store.lock_run(session=session, run_id=run_id)  # lock order: run, approvals, audit
            if run.status in FINISHED:
                raise Conflict(f"run {run_id} already ended {run.status.value}; nothing to cancel")
            if run.status == RunStatus.running:
                if not run.cancel_requested:
                    run.cancel_requested = True
                    session.flush()
                    audit.append(session, kind="run.cancel_requested", actor=actor, run=run)
                    store.notify_cancel(session=session, run_id=run_id)  # its worker may be another process
                return run
            self.approvals.withdraw(session, run_id=run_id)
            return self._finish(session, run_id, RunStatus.cancelled, actor=actor)

        run = await self.db.run(record)
        if run.status == RunStatus.cancelled:
            metrics.run_finished(run, run.status.value)
        execution = self._executions.get(run_id)
        if run.status == RunStatus.running and execution is not None:
            execution.stop(RunCancelled(f"run {run_id} was cancelled by {actor}"))
        return run

    async def pin_policy(self, *, run_id: str, policy_hash: str, actor: str, reason: str) -> Run:
        """Evaluate a run that has not ended under another loaded policy set from its next execution on."""

        def record(session: Session) -> Run:
            run = store.lock_run(session=session, run_id=run_id)
            if run.status in FINISHED:
                raise Conflict(f"run {run_id} already ended {run.status.value}; its policy set cannot change")
            if store.policy_documents(session=session, policy_hash=policy_hash) is None:
                raise InputInvalid(f"no policy set {policy_hash[:12]}… was ever loaded with this database", details=[
                    {"loc": ["body", "policy_hash"], "msg": "not a loaded policy set", "type": "value_error"}])
            previous, run.policy_hash, run.updated_at = run.policy_hash, policy_hash, utcnow()
            session.flush()
            audit.append(session, kind="run.policy_pinned", actor=actor, run=run, data={
                "policy_hash": policy_hash, "previous_hash": previous, "reason": reason})
            return run

        return await self.db.run(record)

    def _cancelled_elsewhere(self, run_id: str) -> None:
        """Another process asked to cancel ``run_id`` (a PostgreSQL notification, or read at lease renewal)."""
        execution = self._executions.get(run_id)
        if execution is not None:
            execution.stop(RunCancelled(f"run {run_id} was cancelled"))

    # -- driving -----------------------------------------------------------------------

    async def drive(self, run_id: str) -> Run:
        """Claim ``run_id`` and drive it until it pauses or ends; returns the run as it then stands."""

        def claim(session: Session) -> tuple[Run, Journal | None]:
            claim = functools.partial(store.claim_run, session=session, run_id=run_id, worker_id=self.worker_id,
                                      lease_seconds=self.lease_seconds)
            run = claim()
            if run is None:
                current = store.get_run(session=session, run_id=run_id)
                if current.status == RunStatus.running and _owner_died_here(current.worker_id):
                    run = claim(force_from=current.worker_id)
                if run is None:
                    return current, None
            return run, self._journal(session, run)

        run, journal = await self.db.run(claim)
        if journal is None:
            return run
        return await self._drive_claimed(run, journal)

    def _journal(self, session: Session | None, run: Run) -> Journal:
        """The write path of a new execution of ``run``, with what earlier executions recorded."""
        fresh = run.executions == 1
        return Journal(
            db=self.db, run=run, actor=SYSTEM, lease_seconds=self.lease_seconds,
            recorded={} if fresh else store.recorded_calls(session=session, run_id=run.id),
            open_steps={} if fresh else {step.task_id: step.node
                                         for step in store.list_steps(session=session, run_id=run.id)
                                         if step.status is StepStatus.running},
        )

    async def _drive_claimed(self, run: Run, journal: Journal | None = None) -> Run:
        if journal is None:
            # Reads only (what earlier executions recorded), beside the writer; nothing at all the first time.
            journal = (self._journal(None, run) if run.executions == 1 else
                       await self.db.run(lambda session: self._journal(session, run), read_only=True))
        execution = Execution(journal)
        named = logs.run_id.set(run.id)  # the log lines of this execution name the run (see runtime.logs)
        if run.cancel_requested:
            execution.stop(RunCancelled(f"run {run.id} was cancelled"))
        self._executions[run.id] = execution
        try:
            with owned_by(self.checkpointer, run.id, journal):
                return await self._execute(run, execution)
        finally:
            logs.run_id.reset(named)
            journal.end()
            if self._executions.get(run.id) is execution:
                del self._executions[run.id]

    def _graph(self, wf: Workflow) -> Any:
        key = (wf.name, wf.version)
        if key not in self._compiled:
            self._compiled[key] = wf.graph.compile(checkpointer=self.checkpointer)
        return self._compiled[key]

    def _models_of(self, wf: Workflow) -> dict[str, Any]:
        """The chat models a run of ``wf`` sees: the workflow's defaults, the process's over them."""
        defaults = {name: resolve_model(name, model) for name, model in wf.models.items() if name not in self.models}
        return {**defaults, **self.models}

    async def _execute(self, run: Run, execution: Execution) -> Run:
        journal = execution.journal
        try:
            wf = self.registry.get(run.workflow, run.version)  # a run resumes on the version it started on
        except WorkflowNotFound as exc:
            return await self._park(run, journal, exc)
        graph = self._graph(wf)
        config = {"configurable": {"thread_id": run.id, EPOCH: journal.epoch, WORKER: run.worker_id}}
        attrs = {"steward.run_id": run.id, "steward.workflow": run.workflow, "steward.version": run.version}
        spans: dict[str, trace.Span] = {}
        with tracer().start_as_current_span("steward.run", context=run_parent(run.trace_id, run.root_span_id),
                                            attributes=attrs) as run_span:
            try:
                # A run taken up for the first time has no checkpoint yet; any later execution resumes
                # the latest one, and LangGraph alone decides what is left to do (a task whose writes
                # were saved before a crash is not run again, a task without them is).
                snapshot = None if run.executions == 1 else await graph.aget_state(config)
                graph_input: Any = None
                kind = "run.resumed"
                if snapshot is None or snapshot.created_at is None:
                    graph_input, kind = run.input, "run.started"
                elif snapshot.interrupts:
                    resume, waiting = await self.db.run(
                        lambda s: self._decisions(s, run, snapshot.interrupts, journal))
                    if resume is None:
                        return waiting
                    graph_input = Command(resume=resume)
                journal.defer(journal.event(kind, {"worker": self.worker_id}, trusted=True))
                if snapshot is not None and kind == "run.resumed":
                    journal.recover_steps({task.id for task in snapshot.tasks})

                run_context = trace.set_span_in_context(run_span)

                def step_span(task_id: str, node: str) -> trace.Span:
                    if task_id not in spans:
                        spans[task_id] = tracer().start_span(f"steward.step {node}", context=run_context,
                                                             attributes={**attrs, "steward.node": node})
                    return spans[task_id]

                gate = Gate(journal=journal, grants=wf.grants, step_span=step_span,
                            policies=await self.policies.get(run.policy_hash), clock=self.clock, checks=wf.checks)
                context = StepContext(run_id=run.id, workflow=run.workflow, version=run.version, gate=gate,
                                      connectors=self.connectors, clock=self.clock,
                                      models=self._models[(wf.name, wf.version)])
                values, interrupted = None, False
                begun: dict[str, float] = {}  # task id -> when it started (for its duration)
                async for mode, chunk in graph.astream(graph_input, config, context=context,
                                                       stream_mode=["tasks", "values"], durability="sync",
                                                       control=execution.control):
                    if mode == "values":
                        values = chunk
                    else:
                        interrupted = self._record_task(journal, chunk, step_span, spans, begun) or interrupted
                if interrupted or values is None:
                    snapshot = await graph.aget_state(config)
                    if snapshot.interrupts:
                        _, waiting = await self.db.run(
                            lambda s: self._decisions(s, run, snapshot.interrupts, journal))
                        return waiting
                    values = snapshot.values
            except (ExecutionStopped, GraphDrained) as exc:
                return await self._stopped(run, journal, exc)
            except ApprovalRejected as exc:
                fail_span(run_span, exc.code, exc.message)
                return await self._end(journal, RunStatus.rejected, error=exc.to_dict())
            except Exception as exc:
                if journal.stopping is not None:
                    return await self._stopped(run, journal, exc)
                if is_transient(exc):
                    return await self._suspend(run, journal, exc)
                log.warning("run %s failed: %s", run.id, exc)  # a node raised: the run fails with the reason
                run_span.record_exception(exc)
                error = _error(exc)
                fail_span(run_span, error["code"], error["message"])
                return await self._end(journal, RunStatus.failed, error=error)
            finally:
                for span in spans.values():
                    span.end()
            return await self._end(journal, RunStatus.succeeded, output=to_jsonable_python(values, fallback=str))

    async def _stopped(self, run: Run, journal: Journal, exc: BaseException) -> Run:
        """The execution stopped on purpose: cancelled (the run ends so), or fenced (nothing more is written)."""
        reason = journal.stopping or (exc if isinstance(exc, ExecutionStopped) else None)
        if isinstance(reason, RunCancelled):
            log.info("run %s stopped: cancelled", run.id)
            return await self._end(journal, RunStatus.cancelled)
        if isinstance(reason, ExecutionFenced):
            log.warning("run %s: execution %s lost the run to another worker; it stops without writing",
                        run.id, journal.epoch)
            return await self.db.run(lambda s: store.get_run(session=s, run_id=run.id))
        if isinstance(exc, GraphDrained):  # this process is stopping: any worker resumes the run at once
            return await self._suspend(run, journal, exc, retry_in=0.0, kind="run.released")
        return await self._suspend(run, journal, exc)

    async def _suspend(self, run: Run, journal: Journal, exc: BaseException, *, retry_in: float | None = None,
                       kind: str = "run.suspended") -> Run:
        """An infrastructure failure is not the workflow's: give the run back so that an execution
        resumes it from its last checkpoint after a pause; if even that fails, its lease lapses."""
        retry_in = min(self.lease_seconds, 2.0) if retry_in is None else retry_in
        log.warning("run %s given back (%s: %s); resuming in %.1fs", run.id, type(exc).__name__, exc, retry_in)

        def release(session: Session) -> Run:
            journal.flush_into(session)
            _cancelled_meanwhile(journal)
            released = store.release_run(session=session, run_id=run.id, epoch=journal.epoch, retry_in=retry_in)
            assert released is not None  # the fence above held the row
            audit.append(session, kind=kind, actor=SYSTEM, run=released, data={
                "error": type(exc).__name__, "message": str(exc)[:500], "retry_in_seconds": retry_in})
            if retry_in == 0:
                store.notify_queued(session=session)
            return released

        try:
            try:
                return await self.db.run(release)
            except RunCancelled:
                return await self._end(journal, RunStatus.cancelled)
        except Exception:
            log.warning("run %s could not be released; its lease will lapse", run.id, exc_info=True)
            return run

    async def _park(self, run: Run, journal: Journal, exc: WorkflowNotFound) -> Run:
        """This process does not serve the run's version: give the run back without failing it.

        It goes back to ``queued`` with a ``status_reason`` saying which version it waits for, and a
        ``run.parked`` audit event. From then on the poller offers it only to processes that serve that
        version (:func:`runtime.store.claim_next_runs`): no process without it takes it up again in a
        loop, and the first process with it (one running now, or one started later) drives it on; taking
        it up clears the reason."""
        if journal.stopping is not None:  # cancelled meanwhile: that comes first
            return await self._stopped(run, journal, exc)
        loaded = ", ".join(self.registry.versions(run.workflow)) or f"no version of {run.workflow}"
        reason = f"waiting for a process that serves {run.workflow} {run.version}; this one has loaded: {loaded}"
        log.warning("run %s parked: %s", run.id, reason)

        def park(session: Session) -> Run:
            journal.flush_into(session)
            _cancelled_meanwhile(journal)
            parked = store.park_run(session=session, run_id=run.id, epoch=journal.epoch, reason=reason)
            assert parked is not None  # the fence above held the row
            audit.append(session, kind="run.parked", actor=SYSTEM, run=parked, data={
                "version": run.version, "reason": parked.status_reason, "worker": self.worker_id})
            return parked

        try:
            return await self.db.run(park)
        except RunCancelled:
            return await self._end(journal, RunStatus.cancelled)
        except ExecutionFenced:
            return await self.db.run(lambda s: store.get_run(session=s, run_id=run.id))
        except Exception:
            log.warning("run %s could not be parked; its lease will lapse", run.id, exc_info=True)
            return run

    async def _end(self, journal: Journal, status: RunStatus, *, error: dict | None = None, output: Any = None) -> Run:
        ended = journal.event(f"run.{status.value}", _end_data(error, output))  # once, however often `end` runs

        def end(session: Session) -> Run:
            journal.fence(raw_cursor(session))
            run = store.finish_run(session=session, run_id=journal.run.id, status=status, error=error,
                                   output=output, epoch=journal.epoch)
            assert run is not None  # the fence above held the row
            journal.flush_into(session, fence=False, events=[ended])
            return run

        try:
            run = await self.db.run(end)
        except ExecutionFenced:
            return await self.db.run(lambda s: store.get_run(session=s, run_id=journal.run.id))
        metrics.run_finished(run, status.value)
        return run

    def _record_task(self, journal: Journal, event: dict[str, Any], step_span: Any, spans: dict,
                     begun: dict[str, float]) -> bool:
        """Journal a task's start or end; True when the task ended waiting for a person."""
        task_id, node = event["id"], event["name"]
        if "input" in event:  # the task starts; written with the step's first transaction
            begun[task_id] = time.perf_counter()
            step_span(task_id, node)
            journal.step_started(task_id=task_id, node=node)
            return False
        if event.get("interrupts"):
            status, error = StepStatus.interrupted, None
        elif event.get("error"):
            status, error = StepStatus.failed, {"message": str(event["error"])}
        else:
            status, error = StepStatus.succeeded, None
        span = spans.pop(task_id, None)
        if span is not None:
            span.set_attribute("steward.step_status", status.value)
            if status is StepStatus.failed:
                fail_span(span, "step_failed", str(event.get("error")))
            span.end()
        journal.step_finished(task_id=task_id, node=node, status=status, error=error)
        if task_id in begun:
            metrics.step_finished(journal.run, node=node, status=status.value,
                                  seconds=time.perf_counter() - begun.pop(task_id))
        return status is StepStatus.interrupted

    def _decisions(
        self, session: Session, run: Run, interrupts: Any, journal: Journal
    ) -> tuple[dict[str, Any] | None, Run]:
        """Resume values for every open interrupt; or None, after asking the approval port for the
        requests still needed, with the run as it now waits."""
        known = self.approvals.decisions(session, interrupt_ids=[i.id for i in interrupts])
        if all(known.get(i.id) is not None for i in interrupts):
            return {i.id: known[i.id].model_dump(mode="json") for i in interrupts}, run
        journal.flush_into(session)  # fenced: this execution still owns the run, and its row is locked
        _cancelled_meanwhile(journal)  # then ask nobody
        needs = [self._need(run, item) for item in interrupts if item.id not in known]
        for need, approval_id in zip(needs, self.approvals.request(session, needs=needs), strict=True):
            audit.append(session, kind="approval.requested", actor=SYSTEM, run=run, data={
                "approval_id": approval_id, "decision": "needs_approval", "rule": need.reason,
                "action": need.action, "arguments_hash": need.arguments_hash, "node": need.node,
                "roles": list(need.roles), "required_approvals": need.required_approvals,
                "policies": (need.policy or {}).get("policies", []),
            })
        current = store.get_run(session=session, run_id=run.id)
        current.status, current.worker_id, current.lease_expires_at, current.updated_at = (
            RunStatus.waiting_approval, None, None, utcnow())
        audit.append(session, kind="run.waiting_approval", actor=SYSTEM, run=current)
        return None, current

    def _need(self, run: Run, item: Any) -> ApprovalNeed:
        value = item.value if isinstance(item.value, dict) and item.value.get("kind") == APPROVAL else {
            "action": "interrupt", "arguments": {"value": to_jsonable_python(item.value, fallback=str)},
            "arguments_hash": audit.digest(to_jsonable_python(item.value, fallback=str)),
            "reason": "the step asked a person", "node": "?",
        }
        policy = value.get("policy") or {}
        try:
            wf = self.registry.get(run.workflow, run.version)
        except WorkflowNotFound:  # a run of a version this process does not load is never driven here
            wf = None
        deadlines = [s for s in (policy.get("sla_seconds"),
                                 wf.approval_sla.total_seconds() if wf and wf.approval_sla else None) if s]
        return ApprovalNeed(
            interrupt_id=item.id, run_id=run.id, workflow=run.workflow, version=run.version,
            requested_by=run.created_by, node=value["node"], action=value["action"], arguments=value["arguments"],
            arguments_hash=value["arguments_hash"], reason=value["reason"], roles=tuple(value.get("roles") or ()),
            required_approvals=int(value.get("approvals") or 1), policy=value.get("policy"),
            opened_at=self.clock(), sla_seconds=min(deadlines) if deadlines else None,
            owner={"name": wf.owner.name, "email": wf.owner.email, "backup": wf.owner.backup} if wf else None,
            separate=tuple(policy.get("separate") or ()), editable=tuple(value.get("editable") or ()),
        )

    def _finish(
        self, session: Session, run_id: str, status: RunStatus, *, actor: str, error: dict | None = None,
        output: Any = None,
    ) -> Run:
        run = store.finish_run(session=session, run_id=run_id, status=status, error=error, output=output)
        audit.append(session, kind=f"run.{status.value}", actor=actor, run=run, data=_end_data(error, output))
        return run

    # -- the background loop -------------------------------------------------------------

    async def start(self, *, poll: bool = True) -> None:
        """Renew this worker's leases in the background and, with ``poll``, pick up queued and orphaned
        runs: at once when woken (a submit or decision in this process, or a PostgreSQL notification
        from any process), else every ``poll_seconds``."""
        self._stopping = False
        self._heartbeat = poll
        if poll:  # this process takes runs: say so now, then at every lease renewal (see /readyz)
            def first_beat(session: Session) -> None:
                store.forget_silent_workers(session=session, older_than=timedelta(days=1))
                self._beat(session)

            await self.db.run(first_beat)
        self._loops = [asyncio.create_task(self._lease_loop())]
        if poll:
            self._loops.append(asyncio.create_task(self._poll_loop()))
            if self.sweeps:
                self._loops.append(asyncio.create_task(self._sweep_loop()))
            if not self.db.is_sqlite:
                self._loops.append(asyncio.create_task(self._listen_loop()))

    async def stop(self, *, grace_seconds: float = 5.0) -> None:
        """Stop: running executions are drained at their next superstep boundary and given back for
        any worker to resume at once; those still running after ``grace_seconds`` are cancelled (a
        connector call in flight is recorded first) and resumed when their lease lapses."""
        self._stopping = True
        for task in self._loops:
            task.cancel()
        for execution in list(self._executions.values()):
            execution.control.request_drain("shutdown")
        running = list(self._tasks.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_seconds)
            for task in pending:
                task.cancel()
        for task in [*self._loops, *running]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops = []
        if self._heartbeat:  # a clean stop: this worker no longer takes runs
            self._heartbeat = False
            with contextlib.suppress(Exception):
                await self.db.run(lambda s: store.forget_worker(session=s, worker_id=self.worker_id))

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            for sweep in self.sweeps:
                try:
                    await sweep(self.clock())
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("sweep %s failed; trying again in %s s", getattr(sweep, "__name__", sweep),
                                  self.sweep_seconds)
            await asyncio.sleep(self.sweep_seconds)

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        adopted_at = float("-inf")
        while not self._stopping:
            self._wake.clear()
            try:
                if loop.time() - adopted_at >= self.poll_seconds:  # at the poll interval, not at every wake
                    adopted_at = loop.time()
                    await self._adopt_dead_local_runs()
                free = self.concurrency - len(self._tasks)
                if free > 0:
                    claimed = await self.db.run(lambda s: store.claim_next_runs(
                        session=s, worker_id=self.worker_id, lease_seconds=self.lease_seconds, limit=free,
                        serves=self.registry.keys()))
                    for run in claimed:
                        self._spawn(run.id, self._drive_claimed(run))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("executor poll failed; retrying")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _listen_loop(self) -> None:
        """Wake the poll loop when any process queues a run, and stop an execution at once when any
        process cancels its run (PostgreSQL ``LISTEN``); reconnects."""
        import psycopg

        while not self._stopping:
            try:
                async with await psycopg.AsyncConnection.connect(self.db.libpq_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {store.RUNS_CHANNEL}")
                    await conn.execute(f"LISTEN {store.CANCELS_CHANNEL}")
                    self._wake.set()  # runs queued while not listening
                    await self._renew()  # cancellations requested while not listening
                    async for note in conn.notifies():
                        if note.channel == store.CANCELS_CHANNEL:
                            self._cancelled_elsewhere(note.payload)
                        else:
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("listening for queued runs failed; polling every %.1fs until it reconnects",
                            self.poll_seconds, exc_info=True)
                await asyncio.sleep(self.poll_seconds)

    def _spawn(self, run_id: str, work: Any = None) -> None:
        task = asyncio.create_task(work if work is not None else self.drive(run_id))
        self._tasks[run_id] = task
        task.add_done_callback(functools.partial(self._driven, run_id))

    def _driven(self, run_id: str, task: asyncio.Task) -> None:
        if self._tasks.get(run_id) is task:  # also when the run was not there to claim
            del self._tasks[run_id]
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("driving run %s failed; its lease will lapse and it will be retried", run_id,
                      exc_info=task.exception())

    async def _adopt_dead_local_runs(self) -> None:
        rows = await self.db.run(lambda s: store.running_runs_by_worker_prefix(session=s, prefix=_host_prefix()))
        for run_id, owner in rows:
            if _owner_died_here(owner) and run_id not in self._tasks:
                log.info("run %s was left running by dead worker %s; resuming it", run_id, owner)
                self._spawn(run_id)

    async def _lease_loop(self) -> None:
        interval = max(self.lease_seconds / 3, 0.1)
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease renewal failed; retrying")

    @property
    def in_flight(self) -> int:
        """Runs this process drives now (its slots in use)."""
        return len(self._tasks)

    def _beat(self, session: Session) -> None:
        store.beat(session=session, worker_id=self.worker_id, concurrency=self.concurrency, running=len(self._tasks))

    async def _renew(self) -> None:
        """Extend the leases of the runs this process drives; stop an execution that lost its run
        (another worker took it over) or whose cancellation was requested elsewhere."""
        executions = dict(self._executions)
        epochs = {run_id: execution.epoch for run_id, execution in executions.items()}

        def renew(session: Session) -> tuple[set[str], list[str]]:
            owned = store.renew_leases(session=session, worker_id=self.worker_id, epochs=epochs,
                                       lease_seconds=self.lease_seconds)
            if self._heartbeat:
                self._beat(session)
            return owned, store.cancel_requested_ids(session=session, worker_id=self.worker_id)

        owned, cancelled = await self.db.run(renew)
        for run_id, execution in executions.items():
            if run_id not in owned and self._executions.get(run_id) is execution:
                # Ended meanwhile (its own last write left `running`), or taken over: either way no
                # further write of this execution may land; the fence refuses them, this stops it early.
                execution.stop(ExecutionFenced(f"run {run_id} is no longer owned by execution {execution.epoch}"))
        for run_id in cancelled:
            self._cancelled_elsewhere(run_id)
