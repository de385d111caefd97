"""The LangGraph checkpointer on Steward's own database (SQLite file or PostgreSQL), fenced.

A checkpoint is saved only while the execution that writes it still owns its run: the
executor puts the execution's epoch into the graph config (``EPOCH``), and the saver
checks it against the run's row before every new checkpoint. A stalled worker whose
run was taken over therefore cannot fork the run's history with a checkpoint of its
own. (The check and the save are two statements on two connections; the window
between them is what is left, and the executor's own writes are fenced in-transaction.)

On SQLite the checkpointer (``AsyncSqliteSaver``) writes through its own connection,
in aiosqlite's thread, and Steward writes through its writer thread (see
:mod:`runtime.db`); neither runs on the event loop. The two writers meet in SQLite's
own locking: WAL lets every reader go on while one connection writes, and both
connections wait for the write lock under the same busy timeout. Steward's write
transactions take that lock at ``BEGIN IMMEDIATE``, so neither side ever has to
upgrade a read to a write (the one case a busy timeout does not retry). On
PostgreSQL the checkpointer has a psycopg pool of its own.

>>> async with open_checkpointer(db) as saver:
...     graph = workflow.graph.compile(checkpointer=saver)
>>> await graph.ainvoke(None, {"configurable": {"thread_id": run.id, EPOCH: run.executions}})
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from runtime.db import SQLITE_BUSY_TIMEOUT_MS, Database
from runtime.errors import ExecutionFenced

EPOCH = "steward_epoch"
_OWNED = "SELECT 1 FROM runs WHERE id = ? AND executions = ? AND status = 'running'"


class _Fenced:
    """Mixed into the LangGraph saver classes: :meth:`aput` refuses a checkpoint of a lost execution."""

    steward_db: Database

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        configurable = config.get("configurable", {})
        epoch = configurable.get(EPOCH)
        if epoch is not None:
            run_id, db = configurable["thread_id"], self.steward_db

            def owned(cursor: Any) -> bool:
                cursor.execute(db.raw.sql(_OWNED), (run_id, epoch))
                return cursor.fetchone() is not None

            if not await db.run_cursor(owned):
                raise ExecutionFenced(f"run {run_id} is no longer owned by execution {epoch}; "
                                      "its checkpoint is refused")
        return await super().aput(config, checkpoint, metadata, new_versions)  # type: ignore[misc]


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
        await saver.setup()
        yield saver
    finally:
        await pool.close()
