"""A database that drops its connections: runs are suspended and resumed, never failed or stranded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
import threading
import time

import psycopg
import pytest
from langgraph.graph import END, START, StateGraph
from sqlalchemy.engine import make_url

from runtime import StepContext, Workflow, audit, store
from runtime.models import RunStatus
from tests.conftest import fresh_postgres_url
from tests.fakes import OWNER, Empty

STEPS = 6


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url() -> Iterator[str]:
    """PostgreSQL only: connection termination is a PostgreSQL server feature; SQLite has no connections to drop."""
    yield from fresh_postgres_url()


def slow_chain() -> Workflow:
    """Six steps, each a write and a short pause, so the runs are in flight while the database drops."""

    def step(i: int):
        async def node(state: dict, runtime) -> dict:
            await asyncio.sleep(0.2)
            await runtime.context.pricing.set_price(sku=f"SKU-100{i + 1}", currency="EUR", amount=f"10{i}.00")
            return {f"s{i}": True}

        return node

    def build() -> StateGraph:
        graph = StateGraph(dict, context_schema=StepContext)
        previous = START
        for i in range(STEPS):
            graph.add_node(f"s{i}", step(i))
            graph.add_edge(previous, f"s{i}")
            previous = f"s{i}"
        graph.add_edge(previous, END)
        return graph

    return Workflow(name="slow_chain", version="1.0.0", owner=OWNER, description="six writes, slowly",
                    input_model=Empty, build=build, grants={"pricing.prices.write"})


def terminate_connections(dbname: str, stop: threading.Event, terminated: list[int]) -> None:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        while not stop.is_set():
            rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchall()
            terminated.append(len(rows))
            stop.wait(0.4)


@pytest.mark.slow
async def test_connections_dropped_repeatedly_for_15s_while_30_runs_execute(open_custom, database_url, sandbox):
    dbname = make_url(database_url).database
    async with open_custom([slow_chain()]) as steward:
        ex = steward.executor
        ids = [(await ex.submit(workflow="slow_chain", input={}, actor="alice"))[0].id for _ in range(30)]
        await ex.start()
        stop, terminated = threading.Event(), []
        killer = threading.Thread(target=terminate_connections, args=(dbname, stop, terminated))
        killer.start()
        try:
            await asyncio.sleep(15)
        finally:
            stop.set()
            killer.join()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = await steward.db.run(lambda s: store.list_runs(session=s, limit=100))
            if all(r.status.finished for r in runs):
                break
            await asyncio.sleep(0.2)
        await ex.stop()
        trail = await steward.db.run(lambda s: store.list_audit(session=s, limit=100000))
        verified = await steward.db.run(audit.verify)
    assert sum(terminated) > 30, "the outage really cut connections"
    statuses = {r.id: r.status for r in runs}
    assert set(statuses) == set(ids)
    assert set(statuses.values()) == {RunStatus.succeeded}, {r.id: (r.status, r.error) for r in runs}
    writes = sandbox.state.sandbox.writes
    assert len(writes) == 30 * STEPS and set(writes.values()) == {1}, "every write happened exactly once"
    assert verified.ok, verified
    finished = [e.run_id for e in trail if e.kind == "run.succeeded"]
    assert sorted(finished) == sorted(ids), "one terminal event per run"


async def test_idle_checkpointer_connections_the_server_dropped_are_replaced_not_handed_out(
        steward, sandbox, database_url, monkeypatch) -> None:
    """Connections dropped while idle in the pool (idle_session_timeout, a proxy, a failover) are checked
    and replaced on checkout: the run resumes without being suspended. (Every connection counts as idle
    here; in service, one idle longer than ``CHECK_IDLE_SECONDS``.)"""
    from approvals.models import ApprovalStatus
    from approvals.service import decide
    from approvals.store import list_approvals
    from runtime import checkpoint

    monkeypatch.setattr(checkpoint, "CHECK_IDLE_SECONDS", 0.0)
    price = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
    run, _ = await steward.executor.submit(workflow="price_change", input=price, actor="alice")
    run = await steward.executor.drive(run.id)
    assert run.status == RunStatus.waiting_approval
    [approval] = await steward.db.run(
        lambda s: list_approvals(session=s, run_id=run.id, status=ApprovalStatus.pending))
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        dropped = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                                (make_url(database_url).database,)).fetchall()
    assert dropped, "the pools held connections to drop"
    await decide(steward, approval_id=approval.id, decision="approve", actor="bob")
    deadline = time.monotonic() + 60
    run = await steward.executor.drive(run.id)
    while not run.status.finished and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        run = await steward.executor.drive(run.id)
    kinds = [e.kind for e in await steward.db.run(lambda s: store.list_audit(session=s, run_id=run.id))]
    assert run.status == RunStatus.succeeded, kinds
    assert "run.suspended" not in kinds, "a dropped connection was handed out and the run was suspended"
    assert sandbox.state.sandbox.prices[("SKU-1001", "EUR")]["amount"] == "115.00"
