"""The LangGraph checkpointer on Steward's own database (SQLite file or PostgreSQL).

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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from langgraph.checkpoint.base import BaseCheckpointSaver

from runtime.db import SQLITE_BUSY_TIMEOUT_MS, Database


@asynccontextmanager
async def open_checkpointer(db: Database, *, pool_size: int = 10) -> AsyncIterator[BaseCheckpointSaver]:
    if db.is_sqlite:
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with aiosqlite.connect(db.sqlite_path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000) as connection:
            saver = AsyncSqliteSaver(connection)
            await saver.setup()
            yield saver
        return

    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        db.libpq_url,
        max_size=pool_size,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=False,
    )
    await pool.open()
    try:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        yield saver
    finally:
        await pool.close()
