"""The LangGraph checkpointer on Steward's own database (SQLite file or PostgreSQL), fenced.

A checkpoint, and a task's writes, are saved only while the execution that writes them
still owns its run: the executor puts the execution's epoch into the graph config
(``EPOCH``) and registers the execution (:func:`owned_by`), and the saver asks it
before every write (:meth:`runtime.journal.Journal.ensure_owned`: one read of the
run's row, on a reader thread on SQLite). A stalled worker whose run was taken over
therefore can neither fork the run's history with a checkpoint of its own nor slip
its task's writes under the checkpoint the new owner paused at. (The check and the
save are two statements on two connections; the window between them is what is left,
and the executor's own writes are fenced in-transaction.) A write under an epoch no
execution of this process registered is checked against the run's row alone.

On SQLite the checkpointer (``AsyncSqliteSaver``) writes through its own connection,
in aiosqlite's thread, and Steward writes through its writer thread (see
:mod:`runtime.db`); neither runs on the event loop. The two writers meet in SQLite's
own locking: WAL lets every reader go on while one connection writes, and both
connections wait for the write lock under the same busy timeout. Steward's write
transactions take that lock at ``BEGIN IMMEDIATE``, so neither side ever has to
upgrade a read to a write (the one case a busy timeout does not retry). On
PostgreSQL the checkpointer has a psycopg pool of its own, and processes starting
together create its tables one at a time (an advisory lock around ``setup()``).

>>> async with open_checkpointer(db) as saver:
...     graph = workflow.graph.compile(checkpointer=saver)
>>> with owned_by(saver, run.id, journal):
...     await graph.ainvoke(None, {"configurable": {"thread_id": run.id, EPOCH: journal.epoch}})
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

from langgraph.checkpoint.base import BaseCheckpointSaver

from runtime.db import SQLITE_BUSY_TIMEOUT_MS, Database, fetch_one
from runtime.errors import ExecutionFenced

EPOCH = "steward_epoch"
_OWNED = "SELECT 1 FROM runs WHERE id = ? AND executions = ? AND status = 'running'"
# Any 64-bit constant: processes starting together create LangGraph's tables one at a time.
_SETUP_LOCK = 0x5374657761726401


class Owner(Protocol):
    """An execution as the saver sees it (:class:`runtime.journal.Journal`)."""

    epoch: int

    async def ensure_owned(self) -> None: ...


class _Fenced:
    """Mixed into the LangGraph saver classes: a checkpoint or task write of a lost execution is refused."""

    steward_db: Database

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steward_owners: dict[tuple[str, int], Owner] = {}

    async def _steward_check(self, config: Any, what: str) -> None:
        configurable = config.get("configurable", {})
        epoch = configurable.get(EPOCH)
        if epoch is None:
            return
        run_id = configurable["thread_id"]
        owner = self.steward_owners.get((run_id, epoch))
        if owner is not None:
            await owner.ensure_owned()
            return
        db = self.steward_db
        if await db.read_cursor(lambda cursor: fetch_one(cursor, db.raw.sql(_OWNED), (run_id, epoch))) is None:
            raise ExecutionFenced(f"run {run_id} is no longer owned by execution {epoch}; its {what} is refused")

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        await self._steward_check(config, "checkpoint")
        return await super().aput(config, checkpoint, metadata, new_versions)  # type: ignore[misc]

    async def aput_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        await self._steward_check(config, "task's writes")
        await super().aput_writes(config, writes, task_id, task_path)  # type: ignore[misc]


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

        class FencedSqliteSaver(_Fenced, AsyncSqliteSaver):
            steward_db = db

        async with aiosqlite.connect(db.sqlite_path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000) as connection:
            saver = FencedSqliteSaver(connection)
            await saver.setup()
            yield saver
        return

    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    class FencedPostgresSaver(_Fenced, AsyncPostgresSaver):
        steward_db = db
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        db.libpq_url,
        max_size=pool_size,
        check=AsyncConnectionPool.check_connection,  # a connection the server dropped is replaced, not handed out
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
