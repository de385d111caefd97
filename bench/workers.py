"""Throughput and pickup latency of separate worker processes sharing one PostgreSQL database.

Each measurement starts from nothing: a fresh database (migrated with ``steward db upgrade``),
a fresh sandbox process (``steward sandbox``), one API process (``steward serve --no-worker``)
and W worker processes (``steward worker --concurrency C``), all on 127.0.0.1.

* Throughput, W=1 against W=2: submit N ``price_change`` runs through the API (16 requests in
  flight) and time from the first submit until the database shows all N ``succeeded`` (one COUNT
  every 50 ms). Each round measures both, in alternating order; the ratio is what matters.
  Exactly-once is checked every time: every run succeeded, was started once (one ``run.started``
  audit event, ``executions = 1``), and the sandbox saw one write per run.
* Pickup latency, W=2 idle workers: submit runs one at a time, 100 ms apart; pickup is the time
  between a run's ``run.created`` and ``run.started`` audit events (the API writes the first, the
  worker that claimed it the second, both on this host's clock).

Prints a table and writes ``bench/results/workers.json``.

    python bench/workers.py [--runs 300] [--rounds 2] [--concurrency 8] [--pickup-runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster import (  # noqa: E402
    PG_ADMIN,
    PYTHON,
    BenchError,
    Cluster,
    machine_cpu,
    own_cpu_seconds,
)

TOKEN = "steward-demo-operator"
RUN_BODY = {"workflow": "price_change",
            "input": {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}],
                      "reason": "index uplift"}}
IN_FLIGHT = 16
POLL_SECONDS = 0.05
ENDED = ("succeeded", "failed", "rejected", "cancelled", "waiting_approval")  # waiting: would never end here


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def api_client(cluster: Cluster) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=cluster.api, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                             trust_env=False, limits=httpx.Limits(max_connections=IN_FLIGHT))


async def counts(conn: psycopg.AsyncConnection) -> tuple[int, int]:
    """(succeeded, ended otherwise) runs, in one cheap query."""
    row = await (await conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = ANY(%s)) FROM runs",
        (list(ENDED[1:]),))).fetchone()
    return row[0], row[1]


async def sample_waits(cluster: Cluster, exclude: int, stop: asyncio.Event) -> dict[str, Any]:
    """What this database's backends are doing, sampled every 200 ms: the mean number of backends per
    state (``CPU`` = active and not waiting; ``idle in transaction`` = waiting for its client), and
    which statements wait for a lock."""
    states: Counter[str] = Counter()
    blocked: Counter[str] = Counter()
    samples = 0
    async with await psycopg.AsyncConnection.connect(cluster.libpq, autocommit=True) as conn:
        while not stop.is_set():
            rows = await (await conn.execute(
                "SELECT state, wait_event_type, wait_event, left(query, 60) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), %s) "
                "AND state IN ('active', 'idle in transaction')", (exclude,))).fetchall()
            samples += 1
            for state, kind, event, query in rows:
                states["idle in transaction" if state != "active" else f"{kind}:{event}" if kind else "CPU"] += 1
                if kind == "Lock":
                    blocked[" ".join(query.split())] += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    def mean(counter: Counter[str]) -> dict[str, float]:
        return {key: round(n / max(samples, 1), 2) for key, n in counter.most_common(6)}

    return {"samples": samples, "backends_by_state": mean(states), "waiting_for_a_lock_by_statement": mean(blocked)}


async def wait_ended(conn: psycopg.AsyncConnection, expected: int, deadline: float) -> tuple[int, int]:
    while True:
        succeeded, other = await counts(conn)
        if succeeded + other >= expected or time.monotonic() > deadline:
            return succeeded, other
        await asyncio.sleep(POLL_SECONDS)


async def exactly_once(cluster: Cluster, conn: psycopg.AsyncConnection, run_ids: list[str]) -> dict[str, Any]:
    """Every run succeeded, was started once by one execution, and wrote to the sandbox once."""
    async def rows(sql: str) -> list[tuple]:
        return await (await conn.execute(sql)).fetchall()

    statuses = dict(await rows("SELECT status, count(*) FROM runs GROUP BY status"))
    started = dict(await rows("SELECT run_id, count(*) FROM audit_events WHERE kind = 'run.started' GROUP BY run_id"))
    again = dict(await rows("SELECT kind, count(*) FROM audit_events "
                            "WHERE kind IN ('run.resumed', 'run.suspended', 'run.released') GROUP BY kind"))
    executions = dict(await rows("SELECT executions, count(*) FROM runs GROUP BY executions"))
    per_worker = await rows("SELECT data->>'worker', count(*) FROM audit_events WHERE kind = 'run.started' "
                            "GROUP BY 1 ORDER BY 2 DESC")
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        writes = (await client.get(f"{cluster.sandbox}/_writes",
                                   headers={"Authorization": "Bearer sandbox-token"})).json()
    counts_by_key = writes["writes"]
    verify = await asyncio.to_thread(
        subprocess.run, [PYTHON, "-m", "runtime.cli", "audit", "verify"], cwd=ROOT, env=cluster.env(),
        capture_output=True, text=True, timeout=120)
    n = len(run_ids)
    checks = {
        "runs_submitted": n,
        "statuses": statuses,
        "runs_not_started_once": sorted(r for r in run_ids if started.get(r, 0) != 1)[:20],
        "started_events_for_unknown_runs": len(set(started) - set(run_ids)),
        "executions": {str(k): v for k, v in executions.items()},
        "resumed_suspended_released_events": again,
        "sandbox_keys": len(counts_by_key),
        "sandbox_total_writes": writes["total"],
        "sandbox_keys_written_more_than_once": {k: c for k, c in counts_by_key.items() if c != 1},
        "runs_per_worker": [c for _, c in per_worker],
        "audit_verify": (verify.stdout or verify.stderr).strip().splitlines()[-1:],
    }
    checks["ok"] = (statuses == {"succeeded": n} and not checks["runs_not_started_once"]
                    and not checks["started_events_for_unknown_runs"] and executions == {1: n} and not again
                    and checks["sandbox_keys"] == n and writes["total"] == n
                    and not checks["sandbox_keys_written_more_than_once"] and verify.returncode == 0)
    return checks


async def measure_throughput(cluster: Cluster, runs: int, timeout: float) -> dict[str, Any]:
    run_ids: list[str] = []
    refused: list[str] = []
    sem = asyncio.Semaphore(IN_FLIGHT)
    async with await psycopg.AsyncConnection.connect(cluster.libpq, autocommit=True) as conn, \
            api_client(cluster) as client:

        async def submit() -> None:
            async with sem:
                try:
                    response = await client.post("/api/v1/runs", json=RUN_BODY)
                except httpx.HTTPError as exc:
                    refused.append(f"{type(exc).__name__}: {exc}")
                    return
                if response.status_code == 201:
                    run_ids.append(response.json()["id"])
                else:
                    refused.append(f"{response.status_code}: {response.text[:200]}")

        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(sample_waits(cluster, conn.info.backend_pid, stop_sampling))
        pg_before = await cluster.backends_cpu(conn)
        cpu_before, own_before, machine_before = cluster.cpu(), own_cpu_seconds(), machine_cpu()
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        submitting = asyncio.gather(*(submit() for _ in range(runs)))
        submit_seconds = None
        succeeded = other = 0
        while time.monotonic() < deadline:
            if submit_seconds is None and submitting.done():
                submit_seconds = time.perf_counter() - started
            succeeded, other = await counts(conn)
            if submitting.done() and succeeded + other >= len(run_ids):
                break
            await asyncio.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - started
        cpu_after, own_after, machine_after = cluster.cpu(), own_cpu_seconds(), machine_cpu()
        pg_after = await cluster.backends_cpu(conn)
        stop_sampling.set()
        waits = await sampling
        if not submitting.done():
            submitting.cancel()
        timed_out = succeeded + other < len(run_ids) or not submitting.done()
        checks = await exactly_once(cluster, conn, run_ids)
    busy = (machine_after[0] - machine_before[0]) / max(machine_after[1] - machine_before[1], 1)
    cpu = {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_before}
    cpu["bench client"] = round(own_after - own_before, 2)
    cpu["postgresql"] = round(sum(t - pg_before.get(pid, 0.0) for pid, t in pg_after.items()), 2)
    cpu["rest of machine"] = round(busy * elapsed * (os.cpu_count() or 1) - sum(cpu.values()), 2)
    return {
        "workers": cluster.workers,
        "seconds": round(elapsed, 3),
        "runs_per_second": round(succeeded / elapsed, 2),
        "submit_seconds": round(submit_seconds, 3) if submit_seconds is not None else None,
        "succeeded": succeeded,
        "timed_out": timed_out,
        "refused_submits": len(refused),
        "refused_examples": refused[:5],
        "machine_busy_pct": round(busy * 100, 1),
        "cpu_seconds": cpu,
        "postgresql_activity": waits,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cluster_start_seconds": cluster.start_seconds,
        "exactly_once": checks,
    }


async def measure_pickup(cluster: Cluster, runs: int, gap: float, timeout: float) -> dict[str, Any]:
    run_ids: list[str] = []
    async with await psycopg.AsyncConnection.connect(cluster.libpq, autocommit=True) as conn, \
            api_client(cluster) as client:
        for _ in range(runs):
            response = await client.post("/api/v1/runs", json=RUN_BODY)
            if response.status_code != 201:
                raise BenchError(f"submit refused: {response.status_code} {response.text[:200]}")
            run_ids.append(response.json()["id"])
            await asyncio.sleep(gap)
        await wait_ended(conn, runs, time.monotonic() + timeout)
        rows = await (await conn.execute(
            "SELECT c.run_id, c.created_at, s.created_at, r.finished_at - r.created_at FROM audit_events c "
            "JOIN audit_events s ON s.run_id = c.run_id AND s.kind = 'run.started' "
            "JOIN runs r ON r.id = c.run_id WHERE c.kind = 'run.created'")).fetchall()
        checks = await exactly_once(cluster, conn, run_ids)
    pickups = [(datetime.fromisoformat(s) - datetime.fromisoformat(c)).total_seconds() * 1000 for _, c, s, _ in rows]
    durations = [d.total_seconds() * 1000 for *_, d in rows if d is not None]
    if not pickups:
        raise BenchError("no run was started: no pickup to measure")
    return {
        "workers": cluster.workers,
        "runs": runs,
        "gap_ms": gap * 1000,
        "measured": len(pickups),
        "pickup_ms": {"p50": round(percentile(pickups, 50), 2), "p99": round(percentile(pickups, 99), 2),
                      "max": round(max(pickups), 2), "min": round(min(pickups), 2)},
        "run_ms_p50": round(percentile(durations, 50), 2) if durations else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cluster_start_seconds": cluster.start_seconds,
        "exactly_once": checks,
    }


def machine_info() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpu_model": model, "postgresql": pg, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def clean(result: dict[str, Any]) -> bool:
    """Exactly once, nothing refused or left unfinished, and every process lived and stopped on SIGTERM
    (uvicorn re-raises the signal once it has shut down, so serve and the sandbox exit with -15)."""
    shutdown = result["shutdown"]
    return (result["exactly_once"]["ok"] and not result.get("timed_out") and not result.get("refused_submits")
            and not shutdown["died_before_stop"] and not shutdown["killed_after_sigterm"]
            and all(code in (0, -signal.SIGTERM) for code in shutdown["exit_codes"].values()))


def other_load_pct(result: dict[str, Any]) -> float:
    """CPU used by the rest of the machine during the measurement, as a share of all its CPUs."""
    return 100 * result["cpu_seconds"]["rest of machine"] / (result["seconds"] * (os.cpu_count() or 1))


def throughput_round(args: argparse.Namespace, logdir: Path, index: int, workers: int) -> dict[str, Any]:
    label = f"round{index}-w{workers}"
    with Cluster(workers=workers, concurrency=args.concurrency, logdir=logdir, label=label) as cluster:
        result = asyncio.run(measure_throughput(cluster, args.runs, args.timeout))
    result["shutdown"] = cluster.shutdown_report()
    result["log_problems"] = cluster.log_problems()  # the drain at shutdown included
    print(f"  round {index} W={workers}: {result['runs_per_second']:.1f} runs/s in {result['seconds']:.2f} s "
          f"(machine {result['machine_busy_pct']:.0f} % busy, {other_load_pct(result):.0f} % by other work), "
          f"{'ok' if clean(result) else 'PROBLEM'}", flush=True)
    if not clean(result):
        print(json.dumps({k: result[k] for k in ("exactly_once", "shutdown", "log_problems", "refused_examples")},
                         indent=2), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="runs per throughput measurement")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each measuring W=1 and W=2 (order alternates)")
    parser.add_argument("--concurrency", type=int, default=8, help="runs driven at once per worker")
    parser.add_argument("--pickup-runs", type=int, default=50)
    parser.add_argument("--pickup-gap-ms", type=float, default=100.0)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement (default 60 + runs/2)")
    args = parser.parse_args()
    args.timeout = args.timeout or 60 + args.runs / 2
    # A SIGTERM ends the benchmark like Ctrl-C does: through the finally blocks that stop and drop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    info = machine_info()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as tmp:
        logdir = Path(tmp)
        for i in range(1, args.rounds + 1):
            order = (1, 2) if i % 2 else (2, 1)
            results = {w: throughput_round(args, logdir, i, w) for w in order}
            rounds.append({"order": list(order), "w1": results[1], "w2": results[2],
                           "ratio": round(results[2]["runs_per_second"] / results[1]["runs_per_second"], 3)})
        with Cluster(workers=2, concurrency=args.concurrency, logdir=logdir, label="pickup") as cluster:
            pickup = asyncio.run(measure_pickup(cluster, args.pickup_runs, args.pickup_gap_ms / 1000, args.timeout))
        pickup["shutdown"] = cluster.shutdown_report()
        pickup["log_problems"] = cluster.log_problems()

    ratio = statistics.median(r["ratio"] for r in rounds)
    all_ok = all(clean(r[w]) for r in rounds for w in ("w1", "w2")) and clean(pickup)
    print()
    print(f"{'round':<7}{'order':<9}{'W=1 runs/s':>12}{'W=2 runs/s':>12}{'ratio':>8}{'other work':>13}   checks"
          f"   ({args.runs} runs, concurrency {args.concurrency} per worker)")
    for i, r in enumerate(rounds, 1):
        other = f"{other_load_pct(r['w1']):.0f}/{other_load_pct(r['w2']):.0f} %"
        print(f"{i:<7}{'W=' + '/'.join(map(str, r['order'])):<9}{r['w1']['runs_per_second']:>12.1f}"
              f"{r['w2']['runs_per_second']:>12.1f}{r['ratio']:>8.2f}{other:>13}   "
              f"{'ok' if clean(r['w1']) and clean(r['w2']) else 'PROBLEM'}")
    print(f"{'median':<7}{'':<33}{ratio:>8.2f}")
    p = pickup["pickup_ms"]
    print(f"pickup by an idle worker (W=2, {pickup['measured']} runs {args.pickup_gap_ms:.0f} ms apart): "
          f"p50 {p['p50']:.1f} ms, p99 {p['p99']:.1f} ms, max {p['max']:.1f} ms   {'ok' if clean(pickup) else 'PROBLEM'}")
    print(f"exactly once, and every process lived and stopped cleanly, in every measurement: "
          f"{'yes' if all_ok else 'NO (see the JSON)'}")

    report = {
        "benchmark": "workers",
        "runs_per_round": args.runs,
        "concurrency_per_worker": args.concurrency,
        "requests_in_flight": IN_FLIGHT,
        "workflow": RUN_BODY,
        **info,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds,
        "ratio_w2_over_w1": ratio,
        "pickup": pickup,
        "exactly_once_ok": all_ok,
    }
    out = ROOT / "bench" / "results" / "workers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
