"""The data layer keeps the event loop free: transactions run in threads, long reads beside the
writer, and SQLite's two writers (Steward's and the checkpointer's) take turns without errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading

import httpx
import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from approvals.models import ApprovalStatus
from approvals.service import decide
from approvals.store import list_approvals
from runtime import audit, store
from runtime.app import create_app, seed_demo_tokens
from runtime.db import Database
from runtime.models import AuditEvent, RunStatus
from runtime.service import open_steward

OPERATOR = {"Authorization": "Bearer steward-demo-operator"}


async def fill_chain(db: Database, events: int) -> None:
    batch = [audit.pending_event(kind="test.filler", actor="test", data={"i": i}) for i in range(events)]
    await db.run_cursor(lambda cursor: audit.write_events(cursor, db.raw, batch))


class Ticker:
    """Counts the turns the event loop gives to a coroutine that only yields."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


async def test_a_long_verify_leaves_the_loop_and_the_writer_free(steward, settings, connectors, monkeypatch) -> None:
    """GET /api/v1/audit/verify, paused half-way through the chain: meanwhile the loop keeps turning
    and a write commits; the verification then reads the one snapshot it started with."""
    db = steward.db
    before = (await db.run(audit.verify, read_only=True)).events  # start-up registers the workflow versions
    await fill_chain(db, 1000)
    loop_thread = threading.get_ident()
    reached, release = threading.Event(), threading.Event()
    seen: dict[str, int] = {}
    ticker = Ticker()
    batches = audit._events_in_batches

    def paused_half_way(cursor, raw, batch):
        for i, row in enumerate(batches(cursor, raw, 100)):  # ten batches instead of one
            if i == 550:
                seen["thread"], seen["ticks"] = threading.get_ident(), ticker.ticks
                if seen["thread"] != loop_thread:  # on the loop, waiting here would hang the test
                    reached.set()
                    release.wait(timeout=60)
            yield row

    monkeypatch.setattr(audit, "_events_in_batches", paused_half_way)
    app = create_app(settings, connectors=connectors, start_executor=False)
    app.state.steward = steward
    await seed_demo_tokens(steward)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://steward") as client:
        request = asyncio.create_task(client.get("/api/v1/audit/verify", headers=OPERATOR))
        try:
            while not reached.is_set():
                assert not request.done(), f"verify finished without pausing in a thread: {seen}"
                await asyncio.sleep(0)
            # verify is now stopped in the middle of the chain, in its thread
            await db.run(lambda s: audit.append(s, kind="test.written_meanwhile", actor="test"))
            for _ in range(100):
                await asyncio.sleep(0)
            assert not request.done()
            ticks_while_paused = ticker.ticks - seen["ticks"]
        finally:
            release.set()
        response = await request
    await ticker.stop()

    assert seen["thread"] != loop_thread
    assert ticks_while_paused >= 100
    assert response.status_code == 200
    assert response.json() == {"ok": True, "events": before + 1000, "broken_seq": None, "reason": None,
                               "disagreements": []}  # its snapshot
    assert (await db.run(audit.verify, read_only=True)).events == before + 1001


async def test_every_transaction_runs_in_a_thread(database_url: str) -> None:
    """Writes, cursor writes and reads all leave the loop; on SQLite every write shares one thread."""
    db = Database(database_url)
    await asyncio.to_thread(db.upgrade)
    loop_thread = threading.get_ident()
    try:
        writes = [await db.run(lambda s: threading.get_ident()) for _ in range(3)]
        writes += [await db.run_cursor(lambda c: threading.get_ident()) for _ in range(3)]
        read = await db.run(lambda s: threading.get_ident(), read_only=True)
    finally:
        await db.dispose()
    assert loop_thread not in {*writes, read}
    if db.is_sqlite:
        assert len(set(writes)) == 1 and read not in writes


async def test_a_read_only_transaction_cannot_write(database_url: str) -> None:
    db = Database(database_url)
    await asyncio.to_thread(db.upgrade)
    try:
        with pytest.raises((DBAPIError, sqlite3.Error, psycopg.Error), match="read.?only"):
            await db.run(lambda s: audit.append(s, kind="test.sneaky", actor="test"), read_only=True)
        assert (await db.run(audit.verify, read_only=True)).events == 0
    finally:
        await db.dispose()


async def test_a_cancelled_caller_does_not_cut_a_transaction_in_half(database_url: str) -> None:
    """The caller gives up half-way through its transaction: the transaction still ends whole,
    and closing the database waits for it."""
    db = Database(database_url)
    await asyncio.to_thread(db.upgrade)
    inside, release = threading.Event(), threading.Event()

    def two_events(session):
        audit.append(session, kind="test.first", actor="test")
        inside.set()
        release.wait(timeout=60)
        audit.append(session, kind="test.second", actor="test")

    try:
        caller = asyncio.create_task(db.run(two_events))
        while not inside.is_set():
            await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    finally:
        release.set()
        await db.dispose()
    reopened = Database(database_url)
    try:
        kinds = await reopened.run(lambda s: list(s.scalars(select(AuditEvent.kind).order_by(AuditEvent.seq))))
    finally:
        await reopened.dispose()
    assert kinds == ["test.first", "test.second"]


async def test_a_write_that_reads_first_is_not_refused_when_another_connection_commits(tmp_path, caplog) -> None:
    """SQLite: a write transaction that reads before it writes, while another connection (as the
    checkpointer's does) writes the same file, runs once: it held the write lock from its BEGIN, so
    the other connection waited for it instead of invalidating its snapshot."""
    caplog.set_level(logging.INFO, logger="steward.db")
    path = tmp_path / "steward.db"
    db = Database(f"sqlite:///{path}")
    await asyncio.to_thread(db.upgrade)
    await db.run(lambda s: s.connection().exec_driver_sql("CREATE TABLE scratch (writer TEXT)"))
    read_done, other_done = threading.Event(), threading.Event()
    attempts: list[int] = []

    def read_then_write(session):
        attempts.append(1)
        session.connection().exec_driver_sql("SELECT count(*) FROM scratch").scalar()
        read_done.set()
        other_done.wait(timeout=1)  # the other writer commits now if nothing stops it
        session.connection().exec_driver_sql("INSERT INTO scratch VALUES ('steward')")

    def other_writer() -> None:
        read_done.wait(timeout=60)
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as other:
            other.execute("INSERT INTO scratch VALUES ('other')")
            other.commit()
        other_done.set()

    other = threading.Thread(target=other_writer)
    other.start()
    try:
        await db.run(read_then_write)
        await asyncio.to_thread(other.join)
        rows = await db.run(lambda s: s.connection().exec_driver_sql("SELECT writer FROM scratch").scalars().all(),
                            read_only=True)
    finally:
        read_done.set()
        await db.dispose()
    assert attempts == [1]
    assert sorted(rows) == ["other", "steward"]
    assert [r.getMessage() for r in caplog.records] == []


async def test_concurrent_runs_and_checkpoints_take_turns_without_locking_errors(settings, connectors, caplog) -> None:
    """30 runs at once, a third of them waiting for an approval that is decided while the others run:
    Steward's writer and the checkpointer's connection write the same file side by side; every run
    succeeds, no transaction is retried and no run is suspended."""
    caplog.set_level(logging.INFO, logger="steward")
    wide = settings.model_copy(update={"executor_concurrency": 30})
    async with open_steward(wide, connectors=connectors) as steward:
        await steward.executor.start()
        runs = [
            (await steward.executor.submit(workflow="price_change", actor="alice", input={
                "items": [{"sku": f"SKU-{1001 + i % 10}", "new_price": "115.00" if i % 3 == 0 else "105.00",
                           "currency": "EUR"}],
                "reason": "index uplift"}))[0]
            for i in range(30)
        ]

        async def decide_until_all_finished() -> list:
            while True:
                pending = await steward.db.run(
                    lambda s: list_approvals(session=s, status=ApprovalStatus.pending), read_only=True)
                await asyncio.gather(*(decide(steward, approval_id=a.id, decision="approve", actor="bob")
                                       for a in pending))
                current = await steward.db.run(lambda s: store.list_runs(session=s, limit=100), read_only=True)
                if all(run.status.finished for run in current):
                    return current
                await asyncio.sleep(0.02)

        finished = await asyncio.wait_for(decide_until_all_finished(), timeout=300)
        kinds = [e.kind for e in await steward.db.run(lambda s: store.list_audit(session=s, limit=10000),
                                                        read_only=True)]
        verified = await steward.db.run(audit.verify, read_only=True)

    assert {run.id for run in finished} == {run.id for run in runs}
    assert [run.status for run in finished] == [RunStatus.succeeded] * 30, [run.error for run in finished]
    assert kinds.count("approval.decided") == kinds.count("approval.requested") > 0
    assert kinds.count("run.succeeded") == 30
    assert "run.suspended" not in kinds
    assert verified.ok
    trouble = [r.getMessage() for r in caplog.records if r.name.startswith("steward")
               and ("locked" in r.getMessage() or "retrying" in r.getMessage() or r.levelno >= logging.WARNING)]
    assert trouble == []


def test_the_migrated_schema_is_the_models_schema(database_url: str) -> None:
    """Every table, column and index the models declare is what the migrations build, and nothing else
    (LangGraph's checkpoint tables aside); a model changed without a migration fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import approvals.models  # noqa: F401 - its table belongs to the metadata

    database = Database(database_url)
    database.upgrade()
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = [d for d in compare_metadata(context, SQLModel.metadata)
                       if not (d[0] == "remove_table" and d[1].name in {"checkpoints", "writes",
                                                                         "checkpoint_blobs", "checkpoint_writes",
                                                                         "checkpoint_migrations"})]
    if database.engine.dialect.name == "sqlite":  # 0004 leaves SQLite's (unenforced) VARCHAR length as it was
        differences = [d for d in differences if not (isinstance(d, list) and d[0][0] == "modify_type"
                                                      and d[0][3] == "idempotency_key")]
    database.engine.dispose()
    assert differences == []


def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path) -> None:
    path = tmp_path / "fresh" / "steward.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    db.transaction(lambda s: audit.append(s, kind="test.written", actor="test"))
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in path.parent.iterdir()}  # with -wal and -shm open
    db._dispose_engines()
    assert modes == {name: "0o600" for name in ("steward.db", "steward.db-wal", "steward.db-shm")}, modes
