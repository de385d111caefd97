"""One execution's writes, batched into as few transactions as durability allows.

Events that describe no external effect (``run.started``, ``step.started``,
``step.finished``) wait in memory and are written with the next transaction of
the same run: a connector call's record, a pause for approval, the run's end.
Everything with an external effect is written before the step goes on. After a
crash, a step that began but whose end was never written is reconciled against
the checkpoint when the run resumes (:meth:`Journal.recover_steps`).

The statements here run once or more per step, so they go to the DBAPI cursor
directly (see :class:`runtime.db.RawSql`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from runtime import audit
from runtime.db import Database, raw_cursor
from runtime.models import Run, StepStatus, utcnow

CursorOp = Callable[[Any], Any]

_UPSERT_STEP = ("INSERT INTO run_steps (run_id, task_id, node, status, error, started_at, finished_at)"
                " VALUES (?, ?, ?, ?, {json}, ?, ?) ON CONFLICT (run_id, task_id) DO UPDATE SET"
                " status = excluded.status, error = excluded.error, finished_at = excluded.finished_at")
_RESTART_STEP = _UPSERT_STEP + ", started_at = excluded.started_at"
_INSERT_CALL = ("INSERT INTO connector_calls (idempotency_key, run_id, node, superstep, position, action, effect,"
                " request_digest, response, attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {json}, ?, ?)")


class Journal:
    """The write path of one execution of one run."""

    def __init__(
        self, *, db: Database, run: Run, actor: str, recorded: dict[str, Any], steps: dict[str, tuple[str, str]]
    ) -> None:
        self.db = db
        self.run = run
        self.actor = actor
        self.recorded = recorded
        self._raw = db.raw
        self._open = {task_id: node for task_id, (node, status) in steps.items() if status == StepStatus.running.name}
        self._ops: list[CursorOp] = []
        self._events: list[dict[str, Any]] = []
        self._started: set[str] = set()

    def event(self, kind: str, data: dict[str, Any] | None = None, *, trace_id: str | None = None) -> dict[str, Any]:
        """An audit event of this run, its time and trace taken now."""
        return audit.pending_event(kind=kind, actor=self.actor, run=self.run, data=data, trace_id=trace_id)

    def defer(self, event: dict[str, Any]) -> None:
        self._events.append(event)

    def _save_step(self, task_id: str, node: str, status: StepStatus, *, finished_at: datetime | None,
                   error: dict[str, Any] | None) -> CursorOp:
        """One row per task: a re-executed task (after a resume) starts its row over."""
        raw = self._raw
        statement = raw.sql(_RESTART_STEP if status is StepStatus.running else _UPSERT_STEP)
        params = (self.run.id, task_id, node, status.name, raw.json(error), raw.time(utcnow()), raw.time(finished_at))
        return lambda cursor: cursor.execute(statement, params)

    def step_started(self, *, task_id: str, node: str, trace_id: str | None) -> None:
        """Note that a task began (idempotent: the executor and the gate may both see it first)."""
        if task_id in self._started:
            return
        self._started.add(task_id)
        self._ops.append(self._save_step(task_id, node, StepStatus.running, finished_at=None, error=None))
        self.defer(self.event("step.started", {"node": node, "task_id": task_id}, trace_id=trace_id))

    def step_finished(self, *, task_id: str, node: str, status: StepStatus, error: dict[str, Any] | None,
                      recovered: bool = False) -> None:
        """Note that a task ended; written with the run's next transaction (see :meth:`recover_steps`)."""
        self._started.discard(task_id)
        self._open.pop(task_id, None)
        self._ops.append(self._save_step(task_id, node, status, finished_at=utcnow(), error=error))
        data = {"node": node, "task_id": task_id, "status": status.value, "error": error}
        if recovered:
            data["recovered"] = True
        self.defer(self.event("step.finished", data))

    def recover_steps(self, pending_task_ids: set[str]) -> None:
        """After a crash: steps recorded as running that the checkpoint no longer lists as pending
        did finish; their end was still in memory when the process died."""
        for task_id, node in list(self._open.items()):
            if task_id not in pending_task_ids:
                self.step_finished(task_id=task_id, node=node, status=StepStatus.succeeded, error=None,
                                   recovered=True)

    def record_call(self, row: dict[str, Any]) -> CursorOp:
        self.recorded[row["idempotency_key"]] = row["response"]
        raw = self._raw
        params = (row["idempotency_key"], row["run_id"], row["node"], row["superstep"], row["position"],
                  row["action"], row["effect"], row["request_digest"], raw.json(row["response"]), row["attempts"],
                  raw.time(utcnow()))
        return lambda cursor: cursor.execute(raw.sql(_INSERT_CALL), params)

    async def commit(self, events: list[dict[str, Any]], *, ops: list[CursorOp] = ()) -> None:
        """Write everything pending plus ``ops`` and ``events`` in one transaction."""
        pending_ops, pending_events = self._take()

        def write(cursor: Any) -> None:
            for op in (*pending_ops, *ops):
                op(cursor)
            audit.write_events(cursor, self._raw, [*pending_events, *events])

        try:
            await self.db.run_cursor(write)
        except BaseException:
            self._ops[:0], self._events[:0] = pending_ops, pending_events
            raise

    def flush_into(self, session: Session) -> None:
        """Write what is pending inside a transaction the caller runs (the run's last one)."""
        pending_ops, pending_events = self._take()
        session.flush()
        cursor = raw_cursor(session)
        for op in pending_ops:
            op(cursor)
        audit.write_events(cursor, self._raw, pending_events)

    def _take(self) -> tuple[list[CursorOp], list[dict[str, Any]]]:
        ops, events = self._ops, self._events
        self._ops, self._events = [], []
        return ops, events
