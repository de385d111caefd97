"""The LangGraph checkpointer on Steward's own database (SQLite file or PostgreSQL), fenced.

A checkpoint, and a task's writes, are saved only while the execution that writes them
still owns its run: the executor puts the execution's epoch into the graph config
(``EPOCH``) and registers the execution (:func:`owned_by`), and the saver asks it
before every write. A stalled worker whose run was taken over therefore can neither
fork the run's history with a checkpoint of its own nor slip its task's writes under
the checkpoint the new owner paused at. A write under an epoch no execution of this
process registered is checked against the run's row alone.

On SQLite, LangGraph's ``AsyncSqliteSaver`` reads through its own connection (aiosqlite's
thread), but its two writes go through Steward's writer thread (see :mod:`runtime.db`), each
one transaction that checks ownership and writes the rows LangGraph's saver writes, in its
tables: the check and the write hold SQLite's write lock together, so nothing changes the
run between them, and Steward is the file's one writer in this process. They commit with
``synchronous=FULL``, as LangGraph's saver does. On PostgreSQL the checkpointer has a psycopg
pool of its own: each of the two writes is one transaction on a pooled connection that first reads
the run's row ``FOR SHARE`` (held until it commits, so no claim by another worker lands between the
check and the write) and then runs LangGraph's statements; the saver's lock, there for a single
connection, is not taken over the pool. Processes starting together create its tables one at a
time (an advisory lock around ``setup()``).

>>> async with open_checkpointer(db) as saver:
...     graph = workflow.graph.compile(checkpointer=saver)
>>> with owned_by(saver, run.id, journal):
...     await graph.ainvoke(None, {"configurable": {"thread_id": run.id, EPOCH: journal.epoch}})
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

from langgraph.checkpoint.base import WRITES_IDX_MAP, BaseCheckpointSaver, get_checkpoint_metadata

from runtime.db import SQLITE_BUSY_TIMEOUT_MS, Database, fetch_one
from runtime.errors import ExecutionFenced, WorkflowDefinitionError

EPOCH = "steward_epoch"
WORKER = "steward_worker"
_OWNED = "SELECT 1 FROM runs WHERE id = ? AND executions = ? AND worker_id = ? AND status = 'running'"
_PUT_CHECKPOINT = ("INSERT OR REPLACE INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,"
                   " type, checkpoint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)")
_WRITES = ("INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, value)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_PUT_WRITES_REPLACE, _PUT_WRITES_KEEP = f"INSERT OR REPLACE {_WRITES}", f"INSERT OR IGNORE {_WRITES}"
_SQLITE_COLUMNS = {
    "checkpoints": {"thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "type", "checkpoint",
                    "metadata"},
    "writes": {"thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "task_path", "idx", "channel", "type",
               "value"},
}
# Any 64-bit constant: processes starting together create LangGraph's tables one at a time.
_SETUP_LOCK = 0x5374657761726401
CHECK_IDLE_SECONDS = 5.0  # a pooled connection idle longer than this is checked before it is handed out


class Owner(Protocol):
    """An execution as the saver sees it (:class:`runtime.journal.Journal`)."""

    epoch: int

    def refuse_if_lost(self) -> None: ...

    def check_owned(self, cursor: Any) -> None: ...

    def fenced(self, row: Any) -> None: ...


class _Fenced:
    """Mixed into the LangGraph saver classes: a checkpoint or task write of a lost execution is refused."""

    steward_db: Database

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steward_owners: dict[tuple[str, int], Owner] = {}

    def _steward_fence(self, config: Any, what: str) -> Callable[[Any], None] | None:
        """The ownership check for a write under ``config``, as a function of a cursor in the writing
        transaction (None: no execution's write, nothing to check). Raises at once when the owner
        already knows it lost the run."""
        configurable = config.get("configurable", {})
        epoch = configurable.get(EPOCH)
        if epoch is None:
            return None
        run_id = configurable["thread_id"]
        owner = self.steward_owners.get((run_id, epoch))
        if owner is not None:
            owner.refuse_if_lost()
            return owner.check_owned
        sql, worker = self.steward_db.raw.sql(_OWNED), configurable.get(WORKER)

        def check(cursor: Any) -> None:  # a run given back (no worker) is no execution's any more
            if fetch_one(cursor, sql, (run_id, epoch, worker)) is None:
                raise ExecutionFenced(f"run {run_id} is no longer owned by execution {epoch}; its {what} is refused")

        return check


class _FencedSqlite(_Fenced):
    """``AsyncSqliteSaver``'s two writes, on Steward's writer in one transaction with the ownership check.

    The rows are the ones LangGraph's saver writes into the tables its ``setup()`` creates (the
    same statements); reading them back is left to the saver."""

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        check = self._steward_fence(config, "checkpoint")
        await self.setup()  # type: ignore[attr-defined]
        configurable = config["configurable"]
        thread_id, checkpoint_ns = configurable["thread_id"], configurable["checkpoint_ns"]
        type_, serialized = self.serde.dumps_typed(checkpoint)  # type: ignore[attr-defined]
        serialized_metadata = json.dumps(get_checkpoint_metadata(config, metadata),
                                         ensure_ascii=False).encode("utf-8", "ignore")
        row = (str(thread_id), checkpoint_ns, checkpoint["id"], configurable.get("checkpoint_id"), type_, serialized,
               serialized_metadata)
        await self._steward_write(check, _PUT_CHECKPOINT, [row])
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                                 "checkpoint_id": checkpoint["id"]}}

    async def aput_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        check = self._steward_fence(config, "task's writes")
        await self.setup()  # type: ignore[attr-defined]
        configurable = config["configurable"]
        # Special channels (an error, an interrupt) replace an earlier write of the task; others keep the first.
        query = _PUT_WRITES_REPLACE if all(channel in WRITES_IDX_MAP for channel, _ in writes) else _PUT_WRITES_KEEP
        rows = [(str(configurable["thread_id"]), str(configurable["checkpoint_ns"]),
                 str(configurable["checkpoint_id"]), task_id, task_path, WRITES_IDX_MAP.get(channel, idx), channel,
                 *self.serde.dumps_typed(value))  # type: ignore[attr-defined]
                for idx, (channel, value) in enumerate(writes)]
        await self._steward_write(check, query, rows)

    async def _steward_write(self, check: Callable[[Any], None] | None, statement: str, rows: list[tuple]) -> None:
        """One transaction on Steward's writer, synced as LangGraph's saver commits: the check, then the rows."""

        def write(cursor: Any) -> None:
            if check is not None:
                check(cursor)
            cursor.executemany(statement, rows)

        await self.steward_db.run_cursor(write, synced=True)


# PostgreSQL: the ownership read in the writing transaction, holding the run's row (FOR SHARE) until it
# commits, so no claim of another worker (an UPDATE of that row) can slip between check and write.
_OWNED_PG = ("SELECT cancel_requested FROM runs WHERE id = %s AND executions = %s AND worker_id = %s"
             " AND status = 'running' FOR SHARE")
_writing: contextvars.ContextVar[tuple[Any, str] | None] = contextvars.ContextVar("steward_writing", default=None)


class _FencedPostgres(_Fenced):
    """``AsyncPostgresSaver``'s two writes, each one transaction on a pooled connection that first reads
    the run's row (and holds it) to check the execution still owns the run; everything else as
    LangGraph does it. Connections come from a pool, so the saver's one lock (there for a single
    connection) is not taken: runs write their checkpoints side by side. Each write is two round trips
    (the check, then the rows with the COMMIT) in psycopg's pipeline mode."""

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        token = _writing.set((config, "checkpoint"))
        try:
            return await super().aput(config, checkpoint, metadata, new_versions)  # type: ignore[misc]
        finally:
            _writing.reset(token)

    async def aput_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        token = _writing.set((config, "task's writes"))
        try:
            await super().aput_writes(config, writes, task_id, task_path)  # type: ignore[misc]
        finally:
            _writing.reset(token)

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[Any]:
        from psycopg.pq import TransactionStatus
        from psycopg.rows import dict_row

        writing = _writing.get()
        async with self.conn.connection() as conn:  # type: ignore[attr-defined]
            if writing is None:  # a read: as LangGraph does it, without the saver-wide lock
                async with contextlib.AsyncExitStack() as stack:
                    if pipeline:
                        await stack.enter_async_context(conn.pipeline())
                    yield await stack.enter_async_context(conn.cursor(binary=True, row_factory=dict_row))
                return
            config, what = writing
            # Two round trips in one pipeline: BEGIN and the ownership read, answered before anything is
            # written; then LangGraph's statements and the COMMIT. (psycopg's transaction() would add a
            # sync of its own at BEGIN and at COMMIT, so the transaction is begun and ended here.)
            try:
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    await cur.execute("BEGIN", prepare=False)
                    await self._steward_own(cur, config, what)
                    yield cur
                    await cur.execute("COMMIT", prepare=False)
            except BaseException:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    with contextlib.suppress(Exception):  # a broken connection is dropped by the pool instead
                        await conn.rollback()  # refused, failed or cut short: nothing of it lands
                raise

    async def _steward_own(self, cursor: Any, config: Any, what: str) -> None:
        configurable = config.get("configurable", {})
        epoch = configurable.get(EPOCH)
        if epoch is None:  # no execution's write (a test's graph): nothing to check
            return
        run_id = configurable["thread_id"]
        owner = self.steward_owners.get((run_id, epoch))
        if owner is not None:
            owner.refuse_if_lost()
        await cursor.execute(_OWNED_PG, (run_id, epoch, configurable.get(WORKER)))
        row = await cursor.fetchone()
        found = None if row is None else (row["cancel_requested"],)
        if owner is not None:
            owner.fenced(found)  # raises when lost; notes a cancel (the write still lands)
        elif found is None:
            raise ExecutionFenced(f"run {run_id} is no longer owned by execution {epoch}; its {what} is refused")


async def _expect_sqlite_tables(connection: Any) -> None:
    """Steward writes LangGraph's rows itself (see :class:`_FencedSqlite`): refuse to start on tables of
    another shape (a LangGraph release that changed them) rather than fail at the first checkpoint."""
    for table, columns in _SQLITE_COLUMNS.items():
        async with connection.execute(f"PRAGMA table_info({table})") as cursor:
            found = {row[1] for row in await cursor.fetchall()}
        if not columns <= found:
            raise WorkflowDefinitionError(
                f"LangGraph's SQLite table {table!r} lacks column(s) {sorted(columns - found)}: this Steward writes "
                "checkpoints as langgraph-checkpoint-sqlite 3.1.2 lays them out; install that release")


@contextmanager
def owned_by(saver: Any, run_id: str, owner: Owner) -> Iterator[None]:
    """While inside, ``saver`` asks ``owner`` whether writes of its epoch of ``run_id`` may land."""
    owners = getattr(saver, "steward_owners", None)
    if owners is None:  # not a Steward saver (a test's in-memory one): nothing to fence
        yield
        return
    key = (run_id, owner.epoch)
    owners[key] = owner
    try:
        yield
    finally:
        if owners.get(key) is owner:
            del owners[key]


@asynccontextmanager
async def open_checkpointer(db: Database, *, pool_size: int = 10) -> AsyncIterator[BaseCheckpointSaver]:
    if db.is_sqlite:
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        class FencedSqliteSaver(_FencedSqlite, AsyncSqliteSaver):
            steward_db = db

        async with aiosqlite.connect(db.sqlite_path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000) as connection:
            saver = FencedSqliteSaver(connection)
            await saver.setup()
            await _expect_sqlite_tables(connection)
            yield saver
        return

    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    class FencedPostgresSaver(_FencedPostgres, AsyncPostgresSaver):
        steward_db = db
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    # A connection is checked on checkout only when it has been idle a while (a round trip before every
    # checkpoint write would cost more than the write): the ones dropped while idle (idle_session_timeout,
    # a proxy, a failover) are replaced, not handed out; one dropped while in use fails its statement and
    # the execution is suspended and resumed as in any outage (tests/runtime/test_outage.py).
    returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def note_return(conn: Any) -> None:
        returned[conn] = time.monotonic()

    async def check_if_idle(conn: Any) -> None:
        if time.monotonic() - returned.get(conn, 0.0) > CHECK_IDLE_SECONDS:
            await AsyncConnectionPool.check_connection(conn)

    pool = AsyncConnectionPool(
        db.libpq_url,
        max_size=pool_size,
        check=check_if_idle,
        reset=note_return,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=False,
    )
    await pool.open()
    try:
        saver = FencedPostgresSaver(pool)  # type: ignore[arg-type]
        async with pool.connection() as conn:  # autocommit: the lock is held until unlocked
            # Try, never wait inside the server: a waiting statement holds a snapshot, and the holder's
            # CREATE INDEX CONCURRENTLY waits for every older snapshot (a deadlock PostgreSQL cannot see).
            while not (await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS locked",
                                                 (_SETUP_LOCK,))).fetchone())["locked"]:
                await asyncio.sleep(0.1)
            try:
                await saver.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
        yield saver
    finally:
        await pool.close()
