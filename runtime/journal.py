"""One execution's writes, batched into as few transactions as durability allows.

A run's steps are rows of ``run_steps``, each also told to the audit chain as a
``step.started`` / ``step.finished`` event. Writes that describe no external effect
(``run.started``, the steps) wait in memory and are written with the next transaction of
the same run: a connector call's record, a pause for approval, the run's end.
Everything with an external effect is written before the step goes on. After a
crash, a step that began but whose end was never written is reconciled against
the checkpoint when the run resumes (:meth:`Journal.recover_steps`).

The statements here run once or more per step, so they go to the DBAPI cursor
directly (see :class:`runtime.db.RawSql`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from runtime import audit
from runtime.db import Database, fetch_one, raw_cursor
from runtime.errors import ExecutionFenced, ExecutionStopped, RunCancelled
from runtime.models import Run, StepStatus, utcnow

CursorOp = Callable[[Any], Any]

_INSERT_CALL = ("INSERT INTO connector_calls (idempotency_key, run_id, node, superstep, position, action, effect,"
                " request_digest, response, attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {json}, ?, ?)")

# Every transaction of an execution starts here: it takes the run's row first (the lock order is
# run, then its children, then the audit head), renews the lease, and matches no row once another
# execution has claimed the run (the epoch moved on), the execution gave it back (no worker), or the
# run has left ``running``. It also reads whether anyone (in any process) asked to cancel the run.
_FENCE = ("UPDATE runs SET lease_expires_at = ? WHERE id = ? AND executions = ? AND worker_id = ?"
          " AND status = 'running' RETURNING cancel_requested")
# The same test without a write, for LangGraph's writes (which go through its own connection).
_OWNED = "SELECT cancel_requested FROM runs WHERE id = ? AND executions = ? AND worker_id = ? AND status = 'running'"
# A step as it stands at the end of the transaction: begun (and perhaps ended) in it. A task run again
# (after a resume) starts its step over.
_WRITE_STEP = ("INSERT INTO run_steps (run_id, task_id, node, status, started_at, finished_at, error)"
               " VALUES (?, ?, ?, ?, ?, ?, {json}) ON CONFLICT (run_id, task_id) DO UPDATE SET node = excluded.node,"
               " status = excluded.status, started_at = excluded.started_at, finished_at = excluded.finished_at,"
               " error = excluded.error")
# A step that began in an earlier transaction (or execution) ends.
_FINISH_STEP = "UPDATE run_steps SET status = ?, finished_at = ?, error = {json} WHERE run_id = ? AND task_id = ?"


class PendingStep(NamedTuple):
    """A step's row as the next transaction leaves it; ``started_at`` None: it began in an earlier one."""

    node: str
    status: str
    started_at: Any
    finished_at: Any
    error: str | None


def _then(earlier: PendingStep | None, later: PendingStep) -> PendingStep:
    """One pending write for a step from two in order: an end after a start still pending is the
    start's row, ended."""
    if earlier is not None and earlier.started_at is not None and later.started_at is None:
        return later._replace(started_at=earlier.started_at)
    return later


class Recorded(NamedTuple):
    """A recorded call: what was asked (action, request digest) and what came back."""

    action: str
    request_digest: str
    response: Any


class Journal:
    """The write path of one execution of one run; every write is fenced by the execution's epoch."""

    def __init__(
        self, *, db: Database, run: Run, actor: str, recorded: dict[str, Recorded], open_steps: dict[str, str],
        lease_seconds: float = 30.0,
    ) -> None:
        self.db = db
        self.run = run
        self.epoch = run.executions
        self.actor = actor
        self.recorded = recorded
        self.lease_seconds = lease_seconds
        self.stopping: ExecutionStopped | None = None
        self._stop_lock = threading.Lock()
        self.on_stop: Callable[[ExecutionStopped], None] | None = None
        self._raw = db.raw
        self._open = dict(open_steps)  # task id -> node: began in an earlier execution, end never written
        self._ops: list[CursorOp] = []
        self._steps: dict[str, PendingStep] = {}  # task id -> its row as the next transaction writes it
        self._events: list[dict[str, Any]] = []
        self._started: set[str] = set()
        self.ended: ExecutionFenced | None = None  # set by end(): nothing of the execution may be written any more

    def event(self, kind: str, data: dict[str, Any] | None = None, *, trace_id: str | None = None,
              trusted: bool = False) -> dict[str, Any]:
        """An audit event of this run, its time and trace taken now (see :func:`audit.pending_event`)."""
        return audit.pending_event(kind=kind, actor=self.actor, run=self.run, data=data, trace_id=trace_id,
                                   trusted=trusted)

    def defer(self, event: dict[str, Any], *, op: CursorOp | None = None) -> None:
        """Write ``event`` (and ``op``, a statement that records no external effect) with the run's next
        transaction."""
        self._events.append(event)
        if op is not None:
            self._ops.append(op)

    def step_started(self, *, task_id: str, node: str) -> None:
        """Note that a task began (idempotent: the executor and the gate may both see it first)."""
        if task_id in self._started:
            return
        self._started.add(task_id)
        self._steps[task_id] = PendingStep(node, StepStatus.running.value, self._raw.time(utcnow()), None, None)
        # Every span of a run shares the run's trace, so its id needs no span to look at.
        self.defer(self.event("step.started", {"node": node, "task_id": task_id}, trace_id=self.run.trace_id,
                              trusted=True))

    def step_finished(self, *, task_id: str, node: str, status: StepStatus, error: dict[str, Any] | None,
                      recovered: bool = False) -> None:
        """Note that a task ended; written with the run's next transaction (see :meth:`recover_steps`)."""
        self._started.discard(task_id)
        self._open.pop(task_id, None)
        raw = self._raw
        self._steps[task_id] = _then(self._steps.get(task_id),
                                     PendingStep(node, status.value, None, raw.time(utcnow()), raw.json(error)))
        data = {"node": node, "task_id": task_id, "status": status.value, "error": error}
        if recovered:
            data["recovered"] = True
        self.defer(self.event("step.finished", data, trace_id=self.run.trace_id, trusted=error is None))

    def recover_steps(self, pending_task_ids: set[str]) -> None:
        """After a crash: steps recorded as running that the checkpoint no longer lists as pending
        did finish; their end was still in memory when the process died."""
        for task_id, node in list(self._open.items()):
            if task_id not in pending_task_ids:
                self.step_finished(task_id=task_id, node=node, status=StepStatus.succeeded, error=None,
                                   recovered=True)

    def stop(self, reason: ExecutionStopped) -> None:
        """Make every later call of this execution raise ``reason`` (the first reason wins, also when a
        transaction's thread and the event loop stop it at once), and tell ``on_stop`` (the executor stops
        the graph at its next superstep boundary; ``RunControl.request_drain`` is thread-safe)."""
        with self._stop_lock:
            if self.stopping is not None:
                return
            self.stopping = reason
        if self.on_stop is not None:
            self.on_stop(reason)

    def end(self) -> None:
        """The execution is over: whatever still holds the gate or the saver (a task LangGraph left
        running) writes nothing more, whatever stopped the execution before."""
        self.ended = ExecutionFenced(f"execution {self.epoch} of run {self.run.id} has ended; its writes are refused")
        self.stop(self.ended)

    def check_stop(self) -> None:
        if self.stopping is not None:
            raise self.stopping

    def refuse_if_lost(self) -> None:
        """Raise :class:`ExecutionFenced` when this execution already knows it no longer owns its run
        (it was fenced, or it has ended). A cancelled execution still owns its run (its last
        superstep's writes are kept)."""
        if self.ended is not None:
            raise self.ended
        if isinstance(self.stopping, ExecutionFenced):
            raise self.stopping

    def check_owned(self, cursor: Any) -> None:
        """For writes that go around the journal (LangGraph's checkpoints and task writes), inside their
        transaction: raise :class:`ExecutionFenced` unless this execution still owns the run. One read
        of the run's row every time: no clock can tell that nobody took the run over meanwhile (a
        paused VM's clocks stand still while its lease runs out)."""
        self.refuse_if_lost()  # again: the execution may have learnt it meanwhile (the write waited its turn)
        raw = self._raw
        self._fenced(fetch_one(cursor, raw.sql(_OWNED), (self.run.id, self.epoch, self.run.worker_id)))

    def record_call(self, row: dict[str, Any], response_json: str) -> CursorOp:
        """The statement that records a call; pass it to :meth:`commit`, which remembers the call
        for replays once the transaction is committed (never before)."""
        raw = self._raw
        params = (row["idempotency_key"], row["run_id"], row["node"], row["superstep"], row["position"],
                  row["action"], row["effect"], row["request_digest"], response_json, row["attempts"],
                  raw.time(utcnow()))
        return lambda cursor: cursor.execute(raw.sql(_INSERT_CALL), params)

    async def commit(self, events: list[dict[str, Any]], *, ops: list[CursorOp] = (),
                     remember: dict[str, Recorded] | None = None) -> None:
        """Write everything pending plus ``ops`` and ``events`` in one transaction; then remember the
        recorded calls in ``remember`` (by idempotency key) for replays within this execution."""
        remember = remember or {}
        steps, pending_ops, pending_events = self._take()
        ops, events = [*pending_ops, *ops], [*pending_events, *events]
        try:
            await self.db.run_cursor(lambda cursor: self._write(cursor, steps, ops, events))
        except BaseException:
            self._ops[:0], self._events[:0] = pending_ops, pending_events
            self._steps = {**steps, **{task_id: _then(steps.get(task_id), later)
                                       for task_id, later in self._steps.items()}}
            raise
        for key, recorded in remember.items():
            self.recorded[key] = recorded

    def flush_into(self, session: Session, *, fence: bool = True, events: list[dict[str, Any]] = ()) -> None:
        """Write what is pending, then ``events``, inside a transaction the caller runs (and may run again
        after a lost race, so nothing is taken or added here); ``fence=False`` when the caller has already
        called :meth:`fence` in it."""
        session.flush()
        self._write(raw_cursor(session), dict(self._steps), list(self._ops), [*self._events, *events], fence=fence)

    def fence(self, cursor: Any) -> None:
        """Lock the run's row, extend the lease and check this execution still owns the run
        (:class:`ExecutionFenced` if not)."""
        raw = self._raw
        cursor.execute(raw.sql(_FENCE), (raw.time(utcnow() + timedelta(seconds=self.lease_seconds)), self.run.id,
                                         self.epoch, self.run.worker_id))
        self._fenced(cursor.fetchone())

    def fenced(self, row: Any) -> None:
        """Act on the run's row as an ownership read found it (None: this execution lost the run)."""
        self._fenced(row)

    def _fenced(self, row: Any) -> None:
        """Act on the run's row as a fence read it: None when this execution no longer owns the run."""
        if row is None:
            fenced = ExecutionFenced(f"run {self.run.id} is no longer owned by execution {self.epoch}; "
                                     "its writes are refused")
            self.stop(fenced)
            raise fenced
        if row[0] and self.stopping is None:  # the transaction still commits; the next call is refused
            self.stop(RunCancelled(f"run {self.run.id} was cancelled"))

    def _write(self, cursor: Any, steps: dict[str, PendingStep], ops: list[CursorOp], events: list[dict[str, Any]],
               *, fence: bool = True) -> None:
        if fence:
            self.fence(cursor)
        raw, run_id = self._raw, self.run.id
        begun = [(run_id, task_id, *step) for task_id, step in steps.items() if step.started_at is not None]
        ended = [(step.status, step.finished_at, step.error, run_id, task_id)
                 for task_id, step in steps.items() if step.started_at is None]
        if begun:  # one statement per kind, however many steps: one round trip each on PostgreSQL
            cursor.executemany(raw.sql(_WRITE_STEP), begun)
        if ended:
            cursor.executemany(raw.sql(_FINISH_STEP), ended)
        for op in ops:
            op(cursor)
        audit.write_events(cursor, self._raw, events)

    def _take(self) -> tuple[dict[str, PendingStep], list[CursorOp], list[dict[str, Any]]]:
        steps, ops, events = self._steps, self._ops, self._events
        self._steps, self._ops, self._events = {}, [], []
        return steps, ops, events
