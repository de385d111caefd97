"""Which failures are the database's (the run is suspended and resumed) and which are the workflow's."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from psycopg_pool import PoolTimeout
from sqlalchemy import exc as sa_exc

from runtime import audit, store
from runtime.db import is_transient
from runtime.errors import ConnectorRejected, DatabaseUnavailable
from runtime.models import RunStatus
from tests.fakes import single_node_workflow


def raised(make) -> BaseException:
    try:
        make()
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever was raised
        return exc
    raise AssertionError("nothing raised")


def wrapped_by_sqlalchemy(orig: Exception) -> BaseException:
    def make():
        raise sa_exc.OperationalError("SELECT 1", {}, orig) from orig

    return raised(make)


@pytest.mark.parametrize("exc", [
    DatabaseUnavailable("down"),
    PoolTimeout("no connection in 30 s"),
    psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.errors.DeadlockDetected("deadlock detected"),
    sqlite3.OperationalError("database is locked"),
])
def test_database_failures_are_transient(exc: Exception) -> None:
    assert is_transient(exc)
    assert is_transient(wrapped_by_sqlalchemy(exc) if not isinstance(exc, DatabaseUnavailable) else exc)


def test_a_cause_chain_is_followed() -> None:
    def make():
        try:
            raise psycopg.OperationalError("connection lost")
        except psycopg.OperationalError as lost:
            raise RuntimeError("checkpoint write failed") from lost

    assert is_transient(raised(make))


@pytest.mark.parametrize("exc", [
    ValueError("a step's own bug"),
    ConnectorRejected("crm answered 400", status=400),
    sqlite3.OperationalError("no such table: runs"),
    sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
])
def test_workflow_and_programming_errors_are_not(exc: Exception) -> None:
    assert not is_transient(exc)


def test_an_error_raised_while_handling_a_database_error_is_the_workflows() -> None:
    def make():
        try:
            raise psycopg.OperationalError("connection lost")
        except psycopg.OperationalError:
            raise ValueError("the step mishandled it")  # noqa: B904 - the point of the test

    assert not is_transient(raised(make))


async def test_a_runs_end_run_again_after_a_lost_race_is_audited_once(open_custom, monkeypatch) -> None:
    """The transaction that ends a run may run again (a deadlock, a locked file); its event must not."""
    real, calls = store.finish_run, []

    def loses_first_race(**kwargs):
        result = real(**kwargs)
        calls.append(kwargs["run_id"])
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")  # after the row changed: all rolled back
        return result

    async def work(state: dict, runtime) -> dict:
        return {"done": True}

    wf = single_node_workflow("ends_once", work, grants=set())
    async with open_custom([wf]) as steward:
        run, _ = await steward.executor.submit(workflow=wf.name, input={}, actor="alice")
        monkeypatch.setattr(store, "finish_run", loses_first_race)
        run = await steward.executor.drive(run.id)
        trail = await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))
        verified = await steward.db.run(audit.verify)
    kinds = [e.kind for e in trail]
    assert len(calls) == 2 and run.status == RunStatus.succeeded
    assert kinds.count("run.succeeded") == 1 and kinds.count("step.finished") == 1
    assert verified.ok
