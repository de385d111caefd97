"""Steward's per-step overhead against raw LangGraph, measured in one process on one machine.

The same 10-step graph (one connector call per step, against an in-process fake
HTTP transport) runs N times as plain LangGraph and N times as a Steward-governed
run (gate, idempotency record, audit chain, step records, spans). Both use the
same database with ``durability="sync"``: raw LangGraph through LangGraph's own saver
(``AsyncSqliteSaver`` / ``AsyncPostgresSaver``), Steward through its fenced one.
Prints a table and writes ``bench/results/overhead.json`` (``overhead-postgres.json``
with ``--database postgres``); the ratio is what matters.

    python bench/overhead.py [--runs N] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, TypedDict

import httpx
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from approvals.store import PORT  # noqa: E402
from runtime import Connector, Effect, Owner, RetryPolicy, StepContext, Workflow, action  # noqa: E402
from runtime.checkpoint import open_checkpointer  # noqa: E402
from runtime.db import Database  # noqa: E402
from runtime.executor import Executor  # noqa: E402
from runtime.models import RunStatus  # noqa: E402
from runtime.policy import PolicyBook, cedar_decimal, load_policies  # noqa: E402
from runtime.sdk import Registry  # noqa: E402
from runtime.settings import POLICIES  # noqa: E402
from runtime.telemetry import setup_tracing  # noqa: E402

STEPS = 10


def fake_transport() -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"id": uuid.uuid4().hex, "key": request.headers.get("Idempotency-Key")})

    return httpx.MockTransport(handler)


class State(TypedDict, total=False):
    n: int
    ids: list[str]


async def item_context(facts: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"step": arguments["step"], "weight": cedar_decimal(arguments["step"])}


class BenchConnector(Connector):
    name = "bench"

    @action(scope="bench.items.write", effect=Effect.write, context=item_context)
    async def create_item(self, *, step: int) -> dict[str, Any]:
        return await self.request("POST", "/items", json={"step": step})


def graph(node_factory, *, context_schema: type | None = None) -> StateGraph:
    """The same ten-step chain for both sides; only the nodes differ."""
    g = StateGraph(State, context_schema=context_schema)
    names = [f"step_{i}" for i in range(STEPS)]
    for i, name in enumerate(names):
        g.add_node(name, node_factory(i))
    g.add_edge(START, names[0])
    for a, b in zip(names, names[1:]):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g


def raw_graph(client: httpx.AsyncClient) -> StateGraph:
    def factory(i: int):
        async def node(state: State) -> State:
            response = await client.post("/items", json={"step": i}, headers={"Idempotency-Key": f"{i}"})
            return {"n": state.get("n", 0) + 1, "ids": [*state.get("ids", []), response.json()["id"]]}
        return node

    return graph(factory)


def governed_graph() -> StateGraph:
    def factory(i: int):
        async def node(state: State, runtime) -> State:
            item = await runtime.context.bench.create_item(step=i)
            return {"n": state.get("n", 0) + 1, "ids": [*state.get("ids", []), item["id"]]}
        return node

    return graph(factory, context_schema=StepContext)


class Empty(BaseModel):
    pass


# Steward's shipped policies plus the bench connector's: Cedar decides every gated call.
BOOK = PolicyBook(load_policies([POLICIES, Path(__file__).parent / "policies"]))

WORKFLOW = Workflow(name="bench_ten_steps", version="1.0.0", owner=Owner(name="Bench Owner", email="bench@example.com"),
                    description="ten gated writes", input_model=Empty, build=governed_graph,
                    grants={"bench.items.write"})


@contextlib.asynccontextmanager
async def raw_checkpointer(db: Database):
    """LangGraph's own saver for the same database kind, as a LangGraph user would open it."""
    if db.is_sqlite:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(db.sqlite_path) as saver:
            yield saver
        return
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    async with AsyncPostgresSaver.from_conn_string(db.libpq_url) as saver:
        yield saver


async def measure(database_url: str, runs: int, warmup: int) -> dict[str, list[float]]:
    setup_tracing()
    db = Database(database_url)
    db.upgrade()
    client = httpx.AsyncClient(base_url="http://bench", transport=fake_transport())
    connector = BenchConnector(base_url="http://bench", token="t", transport=fake_transport(),
                               retry=RetryPolicy(attempts=3))
    results: dict[str, list[float]] = {"raw": [], "steward": []}
    async with open_checkpointer(db) as saver, raw_checkpointer(db) as raw_saver:
        raw = raw_graph(client).compile(checkpointer=raw_saver)
        executor = Executor(db=db, registry=Registry([WORKFLOW]), connectors={"bench": connector}, checkpointer=saver,
                            approvals=PORT, policies=BOOK)
        for i in range(warmup + runs):
            # alternate so drift (cache, disk) hits both sides alike
            started = time.perf_counter()
            out = await raw.ainvoke({"n": 0, "ids": []}, {"configurable": {"thread_id": uuid.uuid4().hex}},
                                    durability="sync")
            raw_seconds = time.perf_counter() - started
            assert out["n"] == STEPS

            started = time.perf_counter()
            run, _ = await executor.submit(workflow=WORKFLOW.name, input={}, actor="bench")
            run = await executor.drive(run.id)
            steward_seconds = time.perf_counter() - started
            assert run.status == RunStatus.succeeded, run.error
            if i >= warmup:
                results["raw"].append(raw_seconds / STEPS)
                results["steward"].append(steward_seconds / STEPS)
    await client.aclose()
    await connector.aclose()
    await db.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per side per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a fresh database")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()

    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            if args.database == "sqlite":
                url = f"sqlite:///{tmp}/bench.db"
            else:
                url = os.environ.get("STEWARD_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
            results = asyncio.run(measure(url, args.runs, args.warmup))
        raw_ms = statistics.median(results["raw"]) * 1000
        steward_ms = statistics.median(results["steward"]) * 1000
        rounds.append({"raw_median_step_ms": round(raw_ms, 4), "steward_median_step_ms": round(steward_ms, 4),
                       "ratio": round(steward_ms / raw_ms, 3)})

    print(f"{'round':<8}{'raw LangGraph':>16}{'Steward':>14}{'ratio':>9}   (median per step, {STEPS} steps per run)")
    for i, r in enumerate(rounds, 1):
        print(f"{i:<8}{r['raw_median_step_ms']:>13.3f} ms{r['steward_median_step_ms']:>11.3f} ms{r['ratio']:>9.2f}")
    ratio = statistics.median(r["ratio"] for r in rounds)
    print(f"{'median':<8}{'':>30}{ratio:>9.2f}   (target <= 1.5)")
    report = {
        "benchmark": "overhead",
        "steps_per_run": STEPS,
        "runs_per_round": args.runs,
        "database": args.database,
        "durability": "sync",
        "rounds": rounds,
        "ratio": ratio,
        "target_ratio": 1.5,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    out = ROOT / "bench" / "results" / ("overhead.json" if args.database == "sqlite" else "overhead-postgres.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
