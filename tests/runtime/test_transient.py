"""Which failures are the database's (the run is suspended and resumed) and which are the workflow's."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from psycopg_pool import PoolTimeout
from sqlalchemy import exc as sa_exc

from runtime.db import is_transient
from runtime.errors import ConnectorRejected, DatabaseUnavailable


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
