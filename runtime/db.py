"""Database engine, transactions and migrations for one Steward database.

The SQLModel tables and the LangGraph checkpointer share one database: a SQLite
file by default, PostgreSQL (psycopg 3) when ``STEWARD_DATABASE_URL`` says so.

The data layer is plain synchronous SQLAlchemy; the async core reaches it through
one adapter, :meth:`Database.run`, which runs a function as one transaction: in a
worker thread for PostgreSQL (one thread hop per transaction, not per statement),
inline for SQLite, serialised with the checkpointer's writes.

>>> db = Database("sqlite:///./steward.db")
>>> db.upgrade()
>>> run = await db.run(lambda session: store.get_run(session=session, run_id="…"))
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg_pool import PoolTimeout
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from runtime.errors import DatabaseUnavailable, StewardError

log = logging.getLogger("steward.db")

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")


class DatabaseUrlInvalid(StewardError):
    code = "database_url_invalid"


def normalise_url(url: str) -> str:
    """Steward's canonical URL: ``sqlite:///…`` or ``postgresql+psycopg://…``."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise DatabaseUrlInvalid(
        f"unsupported database URL {parsed.render_as_string()!r}: use sqlite:///path or postgresql+psycopg://…"
    )


# PostgreSQL SQLSTATEs that mean "this transaction lost a race; run it again".
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected


def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        # Causes only, not the exception being handled when this one was raised: a workflow error
        # raised while handling a database error is still the workflow's.
        exc = exc.__cause__ or getattr(exc, "orig", None)
    return chain


def is_transient(exc: BaseException) -> bool:
    """True for failures of the database rather than of the work: a lost or refused connection, an
    exhausted pool, a deadlock or serialization failure, a locked SQLite file."""
    for cause in _causes(exc):
        if isinstance(cause, DatabaseUnavailable | PoolTimeout):
            return True
        if isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError):
            return True
        if isinstance(cause, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
            return True
        if isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause):
            return True
    return False


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL + NORMAL keeps every commit across a process kill; busy_timeout lets the
    # checkpointer's connection and ours take turns instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class RawSql:
    """Hand-written statements for the per-step write path, in the driver's own terms.

    SQLAlchemy costs several times what SQLite itself spends on a small statement;
    the few statements every step runs (audit append, call records) go to the
    DBAPI cursor directly. Write them with ``?`` placeholders and ``{json}`` where
    a JSON value is bound; :meth:`sql` adapts them to the driver. Get one with
    :func:`raw_sql`, which keeps one per dialect so adapted statements are reused.
    """

    def __init__(self, *, postgres: bool) -> None:
        self.postgres = postgres
        self._cache: dict[str, str] = {}

    def sql(self, statement: str) -> str:
        if statement not in self._cache:
            adapted = statement.replace("?", "%s").replace("{json}", "%s::json") if self.postgres else (
                statement.replace("{json}", "?"))
            self._cache[statement] = adapted
        return self._cache[statement]

    def time(self, value: datetime | None) -> Any:
        """A UTC datetime as the column stores it (what ``models.UTCDateTime`` writes)."""
        if value is None:
            return None
        naive = value.astimezone(timezone.utc).replace(tzinfo=None)
        return naive if self.postgres else naive.isoformat(sep=" ", timespec="microseconds")

    @staticmethod
    def json(value: Any) -> str | None:
        return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


class _Committing(Exception):
    """The commit itself failed (its cause attached): the transaction may or may not have landed."""


def _commit(commit: Callable[[], None]) -> None:
    try:
        commit()
    except Exception as exc:
        if is_transient(exc):
            raise _Committing() from exc
        raise


@functools.cache
def raw_sql(*, postgres: bool) -> RawSql:
    return RawSql(postgres=postgres)


def raw_cursor(session: Session) -> Any:
    """The DBAPI cursor of the session's connection, inside the session's transaction."""
    return session.connection().connection.driver_connection.cursor()


class Database:
    """One database: the engine, transactions run off the event loop, and migrations."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.sqlite_path = parsed.database or ":memory:"
            if self.sqlite_path != ":memory:":
                Path(self.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, connect_args={"check_same_thread": False}, pool_size=8)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(self.url, pool_size=10, pool_pre_ping=True)
        self.raw = raw_sql(postgres=not self.is_sqlite)
        self._inflight: set[asyncio.Future] = set()
        # On SQLite, set to the checkpointer's lock: one writer at a time inside the process
        # instead of two connections meeting in SQLite's busy handler (which sleeps).
        self.write_lock: asyncio.Lock | None = None
        self._local_lock = asyncio.Lock()
        self._sqlite_connection: Any = None

    # PostgreSQL transactions that lose a race or a connection are run again, this many times in all.
    attempts = 6

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` (one whole transaction) again after a deadlock, a serialization failure or
        a lost connection, with jittered backoff; then :class:`DatabaseUnavailable` (HTTP 503)."""
        if self.is_sqlite:  # one writer, in-process: no races to lose, and the loop must not sleep
            return attempt()
        for number in range(1, self.attempts + 1):
            try:
                return attempt()
            except _Committing as exc:  # the commit itself failed: it may have landed, never run it twice
                raise DatabaseUnavailable(f"the database failed while committing: {exc.__cause__}; "
                                          "the outcome is unknown, retry with the same idempotency key") \
                    from exc.__cause__
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if number == self.attempts:
                    raise DatabaseUnavailable(
                        f"the database is unavailable or busy ({type(exc).__name__}) after {number} attempts; "
                        "retry later") from exc
                log.info("transaction attempt %d failed (%s); retrying", number, type(exc).__name__)
                time.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** number)))
        raise AssertionError("unreachable")

    def transaction(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one transaction on this thread: committed if it returns, rolled back if it raises.
        On PostgreSQL ``fn`` may run more than once (see :meth:`_retrying`): keep it free of outside effects."""

        def attempt() -> T:
            with Session(self.engine, expire_on_commit=False) as session:
                result = fn(session)
                _commit(session.commit)
                return result

        return self._retrying(attempt)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` as one transaction (see the module docstring for where it runs)."""
        return await self._dispatch(self.transaction, fn)

    def cursor_transaction(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(cursor)`` in one transaction on a DBAPI connection (the per-step path)."""
        return self._retrying(lambda: self._cursor_attempt(fn))

    def _cursor_attempt(self, fn: Callable[[Any], T]) -> T:
        # SQLite transactions run one at a time on the loop thread, so they can keep one
        # connection; PostgreSQL's run in threads and take theirs from the pool.
        shared = self.is_sqlite
        if shared and self._sqlite_connection is None:
            self._sqlite_connection = self.engine.raw_connection()
        connection = self._sqlite_connection if shared else self.engine.raw_connection()
        try:
            result = fn(connection.cursor())
            _commit(connection.commit)
            return result
        except BaseException:
            with contextlib.suppress(Exception):
                connection.rollback()
            if not shared and is_transient(sys.exc_info()[1]):
                connection.invalidate()  # type: ignore[attr-defined]  # never hand a broken connection back
            raise
        finally:
            if not shared:
                connection.close()

    async def run_cursor(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(cursor)`` as one transaction with the driver's cursor; statements via :attr:`raw`."""
        return await self._dispatch(self.cursor_transaction, fn)

    async def _dispatch(self, transaction: Callable[[Callable[[Any], T]], T], fn: Callable[[Any], T]) -> T:
        if not self.is_sqlite:
            context = contextvars.copy_context()
            future = asyncio.get_running_loop().run_in_executor(None, context.run, transaction, fn)
            self._inflight.add(future)
            future.add_done_callback(self._inflight.discard)
            # A cancelled caller cannot stop a transaction already in its thread; dispose() waits for it.
            return await asyncio.shield(future)
        # SQLite is in-process and answers in microseconds: run inline, one transaction at a
        # time with the checkpointer (its lock), so neither meets the other's write lock.
        async with self.write_lock or self._local_lock:
            return transaction(fn)

    @property
    def libpq_url(self) -> str:
        """The PostgreSQL URL as psycopg expects it (no SQLAlchemy driver suffix)."""
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)

    def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to ``revision``."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["url"] = self.url
        command.upgrade(config, revision)

    async def dispose(self) -> None:
        """Close every connection, after the transactions still in their threads have finished."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._sqlite_connection is not None:
            self._sqlite_connection.close()
            self._sqlite_connection = None
        self.engine.dispose()
