"""The LangGraph checkpointer on Steward's own database (SQLite file or PostgreSQL).

>>> async with open_checkpointer(db) as saver:
...     graph = workflow.graph.compile(checkpointer=saver)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from langgraph.checkpoint.base import BaseCheckpointSaver

from runtime.db import Database


@asynccontextmanager
async def open_checkpointer(db: Database, *, pool_size: int = 10) -> AsyncIterator[BaseCheckpointSaver]:
    if db.is_sqlite:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(db.sqlite_path) as saver:
            await saver.setup()
            db.write_lock = saver.lock
            try:
                yield saver
            finally:
                db.write_lock = None
        return

    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
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
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        yield saver
    finally:
        await pool.close()
