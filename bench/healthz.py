"""Does the server keep answering while it works? ``GET /healthz`` latency under load, on SQLite.

Starts the real server (``python -m runtime.cli serve --demo``) on a fresh SQLite
file whose audit chain was filled beforehand, and probes ``/healthz`` every ~10 ms
from a separate process while

(a) 400 ``price_change`` runs (moves of at most 10 %, so no approval) are submitted
    through the API and executed by the server's executor, and
(b) ``GET /api/v1/audit/verify`` recomputes the whole chain (50k events or more).

A probe answered late means the event loop was busy or blocked. Prints a table and
writes ``bench/results/healthz.json``; the target is a p99 under 100 ms in both phases.

    python bench/healthz.py [--runs 400] [--events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "steward-demo-operator"
PROBE_EVERY = 0.010
TARGET_P99_MS = 100.0
SKUS = [f"SKU-{n}" for n in range(1001, 1011)]
FINISHED = ("succeeded", "failed", "rejected", "cancelled")


# -- the probe: its own process, so that the benchmark's own work never delays it --------------

def probe(url: str, out: Path) -> None:
    """GET ``url`` every ~10 ms until SIGTERM; write ``[[monotonic_at_start, seconds], ...]`` to ``out``."""
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    gc.freeze()  # a full collection in the probe would be measured as the server's latency
    samples: list[tuple[float, float]] = []
    with httpx.Client(timeout=60) as client:
        while not stop:
            started = time.monotonic()
            try:
                client.get(url).raise_for_status()
                samples.append((started, time.monotonic() - started))
            except httpx.HTTPError:
                samples.append((started, float("nan")))
            if len(samples) == 1:
                print("probing", flush=True)
            time.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - started)))
    out.write_text(json.dumps(samples))


# -- setup ------------------------------------------------------------------------------------

def fill_audit(url: str, events: int, batch: int = 5000) -> None:
    """Append ``events`` filler events to the chain, ``batch`` per transaction, before the server starts."""
    sys.path.insert(0, str(ROOT))
    from runtime import audit
    from runtime.db import Database

    async def fill() -> None:
        db = Database(url)
        db.upgrade()
        try:
            done = 0
            while done < events:
                chunk = [audit.pending_event(kind="bench.filler", actor="bench", data={"i": done + i, "pad": "x" * 64})
                         for i in range(min(batch, events - done))]
                await db.run_cursor(lambda cursor, chunk=chunk: audit.write_events(cursor, db.raw, chunk))
                done += len(chunk)
        finally:
            await db.dispose()

    asyncio.run(fill())


def start_server(db_path: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STEWARD_DATABASE_URL": f"sqlite:///{db_path}",
           "OTEL_TRACES_EXPORTER": "none"}
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--demo", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not come up within 60 s; see {log}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def finished_runs(db_path: Path) -> int:
    """Read straight from the file (read-only), so that waiting adds no load to the server's loop."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as conn:
        marks = ",".join("?" * len(FINISHED))
        return conn.execute(f"SELECT count(*) FROM runs WHERE status IN ({marks})", FINISHED).fetchone()[0]


# -- the two phases ---------------------------------------------------------------------------

def phase_runs(base: str, db_path: Path, runs: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    started = time.monotonic()
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for i in range(runs):
            body = {"workflow": "price_change", "input": {
                "items": [{"sku": SKUS[i % len(SKUS)], "new_price": "105.00", "currency": "EUR"}],
                "reason": "index uplift"}}
            client.post("/api/v1/runs", json=body).raise_for_status()
        submitted = time.monotonic()
        while finished_runs(db_path) < runs:
            time.sleep(0.25)
        ended = time.monotonic()
        succeeded = len(client.get("/api/v1/runs", params={"status": "succeeded", "limit": 1000}).json()["data"])
    return {"window": (started, ended), "runs": runs, "succeeded": succeeded,
            "submit_seconds": round(submitted - started, 2), "seconds": round(ended - started, 2)}


def phase_verify(base: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
        started = time.monotonic()
        response = client.get("/api/v1/audit/verify")
        ended = time.monotonic()
    response.raise_for_status()
    result = response.json()
    return {"window": (started, ended), "ok": result["ok"], "events": result["events"],
            "seconds": round(ended - started, 2)}


def latency(samples: list[tuple[float, float]], window: tuple[float, float]) -> dict[str, Any]:
    start, end = window
    inside = [seconds * 1000 for at, seconds in samples if start <= at <= end]
    failed = sum(1 for ms in inside if ms != ms)  # NaN: the probe got no answer
    inside = sorted(ms for ms in inside if ms == ms)
    if not inside:
        return {"probes": 0, "failed": failed}
    p99 = inside[min(len(inside) - 1, round(0.99 * (len(inside) - 1)))]
    return {"probes": len(inside), "failed": failed, "p50_ms": round(statistics.median(inside), 2),
            "p99_ms": round(p99, 2), "max_ms": round(inside[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--events", type=int, default=50_000, help="audit events written before the server starts")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--probe-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe, Path(args.probe_out))
        return

    with tempfile.TemporaryDirectory() as tmp:
        db_path, port = Path(tmp) / "steward.db", free_port()
        base = f"http://127.0.0.1:{port}"
        print(f"filling the audit chain with {args.events} events …", flush=True)
        fill_audit(f"sqlite:///{db_path}", args.events)
        server = start_server(db_path, port, Path(tmp) / "server.log")
        samples_file = Path(tmp) / "probes.json"
        prober = subprocess.Popen([sys.executable, __file__, "--probe", f"{base}/healthz",
                                   "--probe-out", str(samples_file)], stdout=subprocess.PIPE, text=True)
        try:
            assert prober.stdout is not None and prober.stdout.readline().strip() == "probing"
            idle = (time.monotonic(), time.monotonic() + 1.0)
            time.sleep(1.0)  # a baseline with nothing to do
            print(f"(a) {args.runs} price_change runs …", flush=True)
            runs = phase_runs(base, db_path, args.runs)
            time.sleep(0.5)
            print("(b) GET /api/v1/audit/verify …", flush=True)
            verify = phase_verify(base)
        finally:
            prober.send_signal(signal.SIGTERM)
            prober.wait(30)
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        samples = [tuple(s) for s in json.loads(samples_file.read_text())]

    phases = {
        "idle": {**latency(samples, idle)},
        "runs": {**latency(samples, runs.pop("window")), **runs},
        "verify": {**latency(samples, verify.pop("window")), **verify},
    }
    print(f"\n{'phase':<10}{'probes':>8}{'p50':>10}{'p99':>10}{'max':>10}   what ran")
    notes = {
        "idle": "nothing",
        "runs": f"{runs['succeeded']}/{runs['runs']} runs succeeded in {runs['seconds']} s",
        "verify": f"verify of {verify['events']} events, ok={verify['ok']}, {verify['seconds']} s",
    }
    for name, p in phases.items():
        print(f"{name:<10}{p['probes']:>8}{p.get('p50_ms', 0):>7.1f} ms{p.get('p99_ms', 0):>7.1f} ms"
              f"{p.get('max_ms', 0):>7.1f} ms   {notes[name]}")
    print(f"target: p99 < {TARGET_P99_MS:.0f} ms in both phases")
    report = {
        "benchmark": "healthz",
        "database": "sqlite",
        "probe_interval_ms": PROBE_EVERY * 1000,
        "prefilled_audit_events": args.events,
        "phases": phases,
        "target_p99_ms": TARGET_P99_MS,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    out = ROOT / "bench" / "results" / "healthz.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
