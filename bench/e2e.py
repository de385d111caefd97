"""End to end through the real server: HTTP submit, long-poll until done, 16 runs in flight, against raw
LangGraph running the same 3-step graph with the same database, checkpointer kind and durability.

Steward side: ``steward serve`` as its own process (API and worker, demo tokens) serving the
``bench_e2e`` workflow; 16 clients each submit a run (``POST /api/v1/runs``) and follow it to its end
(``GET /api/v1/runs/{id}?wait=30&seen=...``), over and over. Raw side, in this process: the same three
nodes compiled with LangGraph's own saver (``AsyncSqliteSaver`` / ``AsyncPostgresSaver``), 16
``ainvoke(..., durability="sync")`` in flight, on the event loop the server gets (uvloop when installed). Throughput is runs per second; the ratio is
Steward / raw (target >= 0.6). Then the approval latency: runs of ``bench_e2e_approval`` wait for a
person; the time from ``POST .../decision`` to the client seeing ``succeeded`` (target p50 <= 50 ms).

Prints a table and writes ``bench/results/e2e-sqlite.json`` / ``e2e-postgres.json``.

    python bench/e2e.py [--database sqlite|postgres] [--runs 400] [--approvals 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, TypedDict

import httpx
import psycopg
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import Owner, StepContext, Workflow  # noqa: E402

IN_FLIGHT = 16
STEPS = 3
OPERATOR = {"Authorization": "Bearer steward-demo-operator"}
APPROVER = {"Authorization": "Bearer steward-demo-approver"}


class State(TypedDict, total=False):
    n: int
    trail: list[str]


def step(i: int):
    async def node(state: State) -> State:  # the same work on both sides: a small state update
        return {"n": state.get("n", 0) + 1, "trail": [*state.get("trail", []), f"step-{i}"]}
    return node


def chain(context_schema: type | None = None, approval_at: int | None = None) -> StateGraph:
    graph = StateGraph(State, context_schema=context_schema)
    names = [f"step_{i}" for i in range(STEPS)]
    for i, name in enumerate(names):
        if i == approval_at:
            async def ask(state: State, runtime: Any) -> State:
                await runtime.context.request_approval(action="bench.go_on", arguments={"n": state.get("n", 0)},
                                                       reason="the bench asks a person")
                return {"n": state.get("n", 0) + 1}
            graph.add_node(name, ask)
        else:
            graph.add_node(name, step(i))
    graph.add_edge(START, names[0])
    for a, b in zip(names, names[1:]):
        graph.add_edge(a, b)
    graph.add_edge(names[-1], END)
    return graph


class Empty(BaseModel):
    pass


OWNER = Owner(name="Bench Owner", email="bench@example.com")
WORKFLOWS = [
    Workflow(name="bench_e2e", version="1.0.0", owner=OWNER, description="three small steps", input_model=Empty,
             build=lambda: chain(StepContext), grants=set()),
    Workflow(name="bench_e2e_approval", version="1.0.0", owner=OWNER, description="three steps, one asks a person",
             input_model=Empty, build=lambda: chain(StepContext, approval_at=1), grants=set()),
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``steward serve`` on its own port and database, our workflows loaded."""

    def __init__(self, database_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "STEWARD_DATABASE_URL": database_url, "STEWARD_DEMO": "true",
               "STEWARD_WORKFLOWS": '["bench.e2e:WORKFLOWS"]', "STEWARD_EXECUTOR_CONCURRENCY": str(IN_FLIGHT),
               "OTEL_TRACES_EXPORTER": "none", "STEWARD_MOUNT_SANDBOX": "false",
               "STEWARD_CRM_URL": "http://127.0.0.1:9/crm", "STEWARD_PRICING_URL": "http://127.0.0.1:9/pricing"}
        if not database_url.startswith("sqlite"):
            subprocess.run([sys.executable, "-m", "runtime.cli", "db", "upgrade"], env=env, check=True,
                           capture_output=True)
        self.log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--port", str(self.port)],
                                     env=env, stdout=self.log, stderr=self.log, cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up; see {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


async def follow(client: httpx.AsyncClient, run: dict[str, Any], until: set[str]) -> dict[str, Any]:
    """Long-poll until the run is in ``until`` (one request, unless 30 s pass)."""
    while run["status"] not in until:
        answer = await client.get(f"/api/v1/runs/{run['id']}", params=[("wait", 30), *(("until", s) for s in until)])
        run = answer.json()
    return run


async def steward_throughput(url: str, runs: int, warmup: int) -> float:
    async with httpx.AsyncClient(base_url=url, headers=OPERATOR, timeout=60,
                                 limits=httpx.Limits(max_connections=IN_FLIGHT * 2)) as client:
        async def one() -> None:
            answer = await client.post("/api/v1/runs", json={"workflow": "bench_e2e", "input": {}})
            answer.raise_for_status()
            done = await follow(client, answer.json(), {"succeeded", "failed", "cancelled", "rejected"})
            assert done["status"] == "succeeded", done

        return await in_flight(one, runs, warmup)


async def in_flight(one: Any, runs: int, warmup: int) -> float:
    """Runs per second for ``runs`` calls of ``one`` with IN_FLIGHT at a time (after ``warmup`` calls)."""
    for _ in range(warmup):
        await one()
    left = runs

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return runs / (time.perf_counter() - started)


async def raw_throughput(database_url: str, runs: int, warmup: int) -> float:
    graph = chain()
    if database_url.startswith("sqlite"):
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        opener = AsyncSqliteSaver.from_conn_string(database_url.removeprefix("sqlite:///"))
    else:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        opener = AsyncPostgresSaver.from_conn_string(database_url.replace("postgresql+psycopg://", "postgresql://"))
    async with opener as saver:
        if hasattr(saver, "setup"):
            await saver.setup()
        compiled = graph.compile(checkpointer=saver)

        async def one() -> None:
            out = await compiled.ainvoke({"n": 0, "trail": []}, {"configurable": {"thread_id": uuid.uuid4().hex}},
                                         durability="sync")
            assert out["n"] == STEPS

        return await in_flight(one, runs, warmup)


async def approval_latency(url: str, count: int) -> list[float]:
    """Milliseconds from sending a decision to seeing the run ``succeeded``, one run at a time."""
    latencies = []
    async with httpx.AsyncClient(base_url=url, headers=OPERATOR, timeout=60) as client:
        for _ in range(count + 3):
            answer = await client.post("/api/v1/runs", json={"workflow": "bench_e2e_approval", "input": {}})
            run = await follow(client, answer.json(), {"waiting_approval", "failed"})
            assert run["status"] == "waiting_approval", run
            started = time.perf_counter()
            decided = await client.post(f"/api/v1/approvals/{run['pending_approval_id']}/decision",
                                        json={"decision": "approve", "comment": "bench"}, headers=APPROVER)
            decided.raise_for_status()
            answer = await client.get(f"/api/v1/runs/{run['id']}", params=[  # one request until it ends
                ("wait", 30), ("until", "succeeded"), ("until", "failed")])
            done = answer.json()
            latencies.append((time.perf_counter() - started) * 1000)
            assert done["status"] == "succeeded", done
    return latencies[3:]


def run_fast(coroutine: Any) -> Any:
    """Raw LangGraph on the event loop the server gets (uvloop when installed, as uvicorn picks it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def fresh_postgres(name: str) -> str:
    admin = os.environ.get("STEWARD_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--runs", type=int, default=400, help="runs per side")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--approvals", type=int, default=60, help="decisions timed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.database == "sqlite":
            steward_url, raw_url = f"sqlite:///{tmp}/steward.db", f"sqlite:///{tmp}/raw.db"
        else:
            steward_url, raw_url = fresh_postgres("steward_bench_e2e"), fresh_postgres("steward_bench_e2e_raw")
        raw = run_fast(raw_throughput(raw_url, args.runs, args.warmup))
        server = Server(steward_url, Path(tmp) / "server.log")
        try:
            steward = asyncio.run(steward_throughput(server.url, args.runs, args.warmup))
            latencies = asyncio.run(approval_latency(server.url, args.approvals))
        finally:
            server.stop()
        raw_again = run_fast(raw_throughput(raw_url, args.runs, args.warmup))  # drift check: raw before and after

    raw_rate = statistics.mean([raw, raw_again])
    ratio = steward / raw_rate
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(f"{args.database}: {IN_FLIGHT} runs in flight, {STEPS} steps a run, durability sync")
    print(f"{'raw LangGraph':<28}{raw:>9.1f} runs/s  (again after: {raw_again:.1f})")
    print(f"{'Steward through HTTP':<28}{steward:>9.1f} runs/s")
    print(f"{'ratio':<28}{ratio:>9.2f}        (target >= 0.6)")
    print(f"{'decision -> succeeded':<28}{p50:>9.1f} ms p50, {p95:.1f} ms p95  (target p50 <= 50 ms)")
    report = {
        "benchmark": "e2e", "database": args.database, "in_flight": IN_FLIGHT, "steps_per_run": STEPS,
        "runs_per_side": args.runs, "durability": "sync",
        "raw_runs_per_second": round(raw, 2), "raw_runs_per_second_after": round(raw_again, 2),
        "steward_runs_per_second": round(steward, 2), "ratio": round(ratio, 3), "target_ratio": 0.6,
        "approval_to_succeeded_ms": {"p50": round(p50, 2), "p95": round(p95, 2), "samples": len(latencies)},
        "target_approval_p50_ms": 50,
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    out = ROOT / "bench" / "results" / f"e2e-{args.database}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
