"""Database engine, transactions and migrations for one Steward database.

The SQLModel tables and the LangGraph checkpointer share one database: a SQLite
file by default, PostgreSQL (psycopg 3) when ``STEWARD_DATABASE_URL`` says so.

The data layer is plain synchronous SQLAlchemy. The async core reaches it through
two adapters only, :meth:`Database.run` (a function of a ``Session``) and
:meth:`Database.run_cursor` (a function of a DBAPI cursor: the per-step path); each
runs the function as one transaction in a thread, one thread hop per transaction,
never on the event loop:

- SQLite: every write transaction runs on one writer thread that ``Database`` owns,
  so Steward is a single writer to the file and the cursor path keeps one connection
  there. Write transactions begin with ``BEGIN IMMEDIATE``: they take the write lock
  first, waiting for it under ``busy_timeout``, and never have to upgrade a read
  (see :mod:`runtime.checkpoint` for the checkpointer's connection, the other
  writer). Read-only transactions (``read_only=True``) run on a few reader threads
  with read-only connections; under WAL they read one snapshot beside the writer.
- PostgreSQL: twenty threads of its own, a pooled connection per transaction;
  read-only transactions are ``REPEATABLE READ, READ ONLY`` (one snapshot).

A transaction that loses a race (a deadlock, a serialization failure, a lost
connection, a locked file) runs again, a commit that fails is never run twice, and
a caller that is cancelled while it waits does not cut its transaction in half: the
transaction runs to its end in its thread, committed or rolled back whole.

>>> db = Database("sqlite:///./steward.db")
>>> db.upgrade()
>>> run = await db.run(lambda session: store.get_run(session=session, run_id="…"))
>>> check = await db.run(audit.verify, read_only=True)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import functools
import logging
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg_pool import PoolTimeout
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

from runtime.errors import DatabaseUnavailable, StewardError
from runtime.threads import Threads

log = logging.getLogger("steward.db")

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_THREADS = 20  # PostgreSQL: transactions at once per process (threads and pooled connections)


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


def fetch_one(cursor: Any, sql: str, params: tuple) -> Any:
    """One row of ``sql`` on a DBAPI cursor (for :meth:`Database.read_cursor`), or None."""
    cursor.execute(sql, params)
    return cursor.fetchone()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling (a deferred BEGIN slipped in before the first
    # write) is switched off: Steward emits its own BEGIN, so a transaction holds one
    # snapshot from its first statement and SAVEPOINTs work (SQLAlchemy's pysqlite recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL + NORMAL keeps every commit across a process kill and lets readers read while one
    # connection writes; busy_timeout makes Steward's writer and the checkpointer's take turns.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_connect_reader(dbapi_connection: Any, record: Any) -> None:
    _sqlite_connect(dbapi_connection, record)
    dbapi_connection.execute("PRAGMA query_only=ON")  # a write on a reader is a bug: refuse it


def _sqlite_begin_immediate(connection: Any) -> None:
    # A write transaction takes SQLite's write lock at BEGIN, waiting for it under busy_timeout.
    # A deferred BEGIN would read first and then upgrade; an upgrade that meets another writer's
    # commit fails at once with SQLITE_BUSY, which busy_timeout does not retry. (Sent straight to
    # the driver: a BEGIN through SQLAlchemy's statement machinery costs more than the write.)
    connection.connection.driver_connection.execute("BEGIN IMMEDIATE")


def _sqlite_begin_deferred(connection: Any) -> None:
    connection.connection.driver_connection.execute("BEGIN")  # a read transaction: one snapshot, no lock


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


def json_rows(*, postgres: bool, **columns: Any) -> Any:
    """An aggregate of the selected rows as one JSON array of objects (``{name: column}``): SQLite's
    ``json_group_array(json_object(...))`` or PostgreSQL's ``json_agg(json_build_object(...))``. A JSON
    column is embedded as JSON; times come back as the database writes them (ISO 8601, in any order:
    sort after parsing). Read it back with :func:`parse_json_rows`."""
    from sqlalchemy import JSON, func

    pairs: list[Any] = []
    for name, column in columns.items():
        is_json = isinstance(getattr(column, "type", None), JSON)
        pairs += [name, func.json(column) if is_json and not postgres else column]
    if postgres:
        return func.json_agg(func.json_build_object(*pairs))
    return func.json_group_array(func.json_object(*pairs))


def parse_json_rows(value: Any) -> list[dict[str, Any]]:
    """What a :func:`json_rows` aggregate read back: SQLite answers text, PostgreSQL parsed JSON or NULL."""
    if value is None:
        return []
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def parse_time(value: str | None) -> datetime | None:
    """A time a :func:`json_rows` aggregate returned (naive UTC, ISO 8601) as an aware UTC datetime."""
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


_touched = threading.local()  # the runs the transaction running on this thread changed


def touch_runs(run_ids: Iterable[str]) -> None:
    """Note, inside a write transaction, that it changes ``run_ids``; once it commits, the database's
    ``on_commit`` hears of them (the audit writer calls this for every event of a run)."""
    runs = getattr(_touched, "runs", None)
    if runs is not None:
        runs.update(run_ids)


@contextlib.contextmanager
def _tracking_touched(on_commit: Callable[[set[str]], None] | None) -> Any:
    """Around one transaction attempt: collect the runs it touches; after the block (the commit)
    returns, tell ``on_commit``. An attempt that raises tells nobody."""
    outer = getattr(_touched, "runs", None)
    _touched.runs = runs = set()
    try:
        yield
    finally:
        _touched.runs = outer
    if runs and on_commit is not None:
        try:
            on_commit(runs)
        except Exception:  # noqa: BLE001 - the transaction committed; a listener's failure is not its failure
            log.exception("on_commit listener failed")


def raw_cursor(session: Session) -> Any:
    """The DBAPI cursor of the session's connection, inside the session's transaction."""
    return session.connection().connection.driver_connection.cursor()


class Database:
    """One database: the engines, transactions run off the event loop, and migrations.

    ``readers`` is the number of threads (and connections) serving read-only transactions on SQLite.
    """

    def __init__(self, url: str, *, readers: int = 4) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._inflight: set[asyncio.Future] = set()
        self._closed = False
        self._shared: Connection | None = None  # SQLite: the writer thread's one connection
        self._pg_threads: Threads | None = None
        if self.is_sqlite:
            self.sqlite_path = parsed.database or ":memory:"
            if self.sqlite_path != ":memory:":
                Path(self.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
                # A new file is readable by its owner only (it holds token hashes and business data);
                # SQLite gives its -wal and -shm files the same permissions.
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.sqlite_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            sqlite_args = {"connect_args": {"check_same_thread": False}}
            self.engine = create_engine(self.url, pool_size=2, **sqlite_args)
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin_immediate)
            self._read_bind: Any = create_engine(self.url, pool_size=readers, **sqlite_args)
            event.listen(self._read_bind, "connect", _sqlite_connect_reader)
            event.listen(self._read_bind, "begin", _sqlite_begin_deferred)
            # One writer thread: SQLite sees one writer from Steward, and transactions queue here
            # instead of meeting in the busy handler. Reads go to their own threads (WAL).
            self._writer: Threads | None = Threads("steward-db-writer", 1)
            self._readers: Threads | None = Threads("steward-db-reader", readers)
        else:
            # No pre-ping: it costs a round trip per transaction, and a connection that died in the pool
            # fails the transaction's first statement, which is then run again on a fresh connection
            # (see _retrying; SQLAlchemy drops every pooled connection once it sees a disconnect).
            self.engine = create_engine(self.url, pool_size=PG_THREADS, max_overflow=10)
            # One snapshot for every statement of a read; a read-only transaction never loses a race.
            self._read_bind = self.engine.execution_options(isolation_level="REPEATABLE READ",
                                                            postgresql_readonly=True)
            self._writer = self._readers = None
            # Threads of their own, as many as pooled connections: each transaction waits on the network
            # and the server's commit, and the loop's default pool (CPUs + 4) would queue runs in flight.
            self._pg_threads = Threads("steward-db", PG_THREADS)
        self.raw = raw_sql(postgres=not self.is_sqlite)
        # Told, in the transaction's thread, which runs each committed transaction changed (see touch_runs).
        self.on_commit: Callable[[set[str]], None] | None = None

    # Transactions that lose a race or a connection (or meet a locked SQLite file) are run again,
    # this many times in all.
    attempts = 6

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` (one whole transaction) again after a deadlock, a serialization failure, a
        lost connection or a locked SQLite file, with jittered backoff (in the transaction's thread,
        never on the event loop); then :class:`DatabaseUnavailable` (HTTP 503)."""
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

    def transaction(self, fn: Callable[[Session], T], *, read_only: bool = False) -> T:
        """Run ``fn`` in one transaction on this thread: committed if it returns, rolled back if it raises.
        ``fn`` may run more than once (see :meth:`_retrying`): keep it free of outside effects.

        ``read_only`` transactions read one snapshot and may not write: on SQLite they use read-only
        connections, on PostgreSQL ``REPEATABLE READ, READ ONLY``."""
        bind = self._read_bind if read_only else self._writer_connection() or self.engine

        def attempt() -> T:
            with _tracking_touched(self.on_commit), Session(bind, expire_on_commit=False) as session:
                result = fn(session)
                _commit(session.commit)
            return result

        return self._retrying(attempt)

    async def run(self, fn: Callable[[Session], T], *, read_only: bool = False) -> T:
        """Run ``fn(session)`` as one transaction in a thread (see the module docstring for which).

        Pass ``read_only=True`` for a read, above all a long one (a verify, a listing): on SQLite it
        then runs beside the writer instead of queueing behind it."""
        executor = self._readers if read_only else self._writer
        return await self._dispatch(executor, functools.partial(self.transaction, read_only=read_only), fn)

    def cursor_transaction(self, fn: Callable[[Any], T], *, synced: bool = False) -> T:
        """Run ``fn(cursor)`` in one transaction on a DBAPI connection (the per-step path).

        ``synced``: on SQLite, the commit is written through to the disk (``synchronous=FULL``, what
        LangGraph's own SQLite saver commits with) rather than only to the operating system; a
        process kill keeps either, a power loss only the synced one."""
        def attempt() -> T:
            with _tracking_touched(self.on_commit):
                result = self._cursor_attempt(fn, synced=synced)
            return result

        return self._retrying(attempt)

    def _writer_connection(self) -> Connection | None:
        """On SQLite's writer thread, its one connection (opened on first use); None on any other thread.

        The writer runs one transaction at a time, so every one of them, through a Session or a
        cursor, uses the same connection: no pool checkout and reset per transaction."""
        if self._writer is None or threading.get_ident() not in self._writer.idents:
            return None
        if self._shared is None:
            self._shared = self.engine.connect()
        return self._shared

    def _cursor_attempt(self, fn: Callable[[Any], T], *, synced: bool = False) -> T:
        writer = self._writer_connection()
        shared = writer is not None
        connection = writer.connection if writer is not None else self.engine.raw_connection()
        synced = synced and self.is_sqlite
        try:
            cursor = connection.cursor()
            if synced:
                cursor.execute("PRAGMA synchronous=FULL")  # for this commit (see _sqlite_connect)
            if self.is_sqlite:
                cursor.execute("BEGIN IMMEDIATE")  # see _sqlite_begin_immediate
            result = fn(cursor)
            _commit(connection.commit)
            return result
        except BaseException:
            with contextlib.suppress(Exception):
                connection.rollback()
            if not shared and is_transient(sys.exc_info()[1]):
                connection.invalidate()  # type: ignore[attr-defined]  # never hand a broken connection back
            raise
        finally:
            if synced:
                with contextlib.suppress(Exception):
                    connection.cursor().execute("PRAGMA synchronous=NORMAL")
            if not shared:
                connection.close()

    def _read_cursor_attempt(self, fn: Callable[[Any], T]) -> T:
        connection = self._read_bind.raw_connection()
        driver = connection.driver_connection
        try:
            if not self.is_sqlite:  # each statement its own snapshot, as on SQLite's readers: no BEGIN, no ROLLBACK
                driver.autocommit = True
            result = fn(connection.cursor())
            connection.rollback()
            return result
        except BaseException:
            with contextlib.suppress(Exception):
                connection.rollback()
            if is_transient(sys.exc_info()[1]):
                connection.invalidate()  # type: ignore[attr-defined]
            raise
        finally:
            if not self.is_sqlite and not driver.closed:
                driver.autocommit = False  # back to the pool as the engine hands connections out
            connection.close()

    async def read_cursor(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(cursor)``, a short read, with the driver's cursor on a reader (beside the writer on
        SQLite): the cheapest way to read a row or two on the per-step path. Each statement reads its own
        snapshot (autocommit: one round trip on PostgreSQL); a read that needs one snapshot for several
        statements uses :meth:`run` with ``read_only=True``."""
        return await self._dispatch(self._readers, lambda f: self._retrying(lambda: self._read_cursor_attempt(f)), fn)

    async def run_cursor(self, fn: Callable[[Any], T], *, synced: bool = False) -> T:
        """Run ``fn(cursor)`` as one transaction with the driver's cursor; statements via :attr:`raw`
        (``synced``: see :meth:`cursor_transaction`)."""
        return await self._dispatch(self._writer, functools.partial(self.cursor_transaction, synced=synced), fn)

    async def _dispatch(self, threads: Threads | None, transaction: Callable[[Callable[[Any], T]], T],
                        fn: Callable[[Any], T]) -> T:
        if self._closed:
            raise DatabaseUnavailable("the database was closed (the process is shutting down); retry later")
        context = contextvars.copy_context()  # the caller's trace reaches the audit events
        threads = threads or self._pg_threads
        if threads is None:
            future = asyncio.get_running_loop().run_in_executor(None, context.run, transaction, fn)
        else:
            future = threads.submit(context.run, transaction, fn)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        # A cancelled caller cannot stop a transaction already in its thread: it runs to its end,
        # committed or rolled back whole, and dispose() waits for it.
        return await asyncio.shield(future)

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
        """Close every connection, after the transactions still in their threads have finished.

        Closing the last connection to a SQLite file checkpoints its WAL (disk I/O), so the
        connections are closed in threads too."""
        if self._closed:
            return
        self._closed = True
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._pg_threads is not None:
            await self._pg_threads.close()
        if self._writer is not None and self._readers is not None:
            await self._writer.submit(self._close_shared)  # the shared connection, on its own thread
            await self._writer.close()
            await self._readers.close()
        await asyncio.to_thread(self._dispose_engines)

    def _close_shared(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def _dispose_engines(self) -> None:
        if self.is_sqlite:
            self._read_bind.dispose()
        self.engine.dispose()
