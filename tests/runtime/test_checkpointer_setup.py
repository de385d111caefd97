"""Processes that start together on a fresh PostgreSQL database create LangGraph's tables one at a time."""

from __future__ import annotations

import asyncio

import pytest

from runtime.checkpoint import open_checkpointer
from runtime.db import Database
from tests.conftest import fresh_postgres_url


@pytest.mark.postgres
async def test_two_processes_starting_together_on_a_fresh_database_both_come_up() -> None:
    """Two processes (two pools) open the checkpointer at once on a database without LangGraph's tables.
    Had the second waited inside pg_advisory_lock, its statement's snapshot would hold up the first's
    CREATE INDEX CONCURRENTLY, and the lock is held by an idle connection: PostgreSQL sees no cycle."""
    for url in fresh_postgres_url():
        db = Database(url)
        try:
            async def start() -> None:
                async with open_checkpointer(db):
                    pass

            done = await asyncio.wait_for(asyncio.gather(start(), start()), 30)
            assert done == [None, None]
        finally:
            await db.dispose()
