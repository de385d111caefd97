"""Does the approval inbox stay fast with 100,000 pending requests? Page latency through the real server.

Fills a fresh database (SQLite by default, ``--database postgres`` for a fresh PostgreSQL database on
the local server) with ``--pending`` pending approval requests and a fifth as many decided ones, spread
over 30 days, two workflows, two roles and both risks, each with its run. Then starts the real server
(``python -m runtime.cli serve``, demo mode for its sign-ins), signs in as a pricing manager and times
``--requests`` sequential page loads of each kind, HTML rendered and sent:

- the first page (``/inbox``: pending, oldest first, 50 rows, with the counts);
- a filtered page (``/inbox?workflow=price_change&risk=high``);
- a role filter (``/inbox?role=sales_ops``) and the page after the first (its cursor);
- the JSON API's first page (``/api/v1/approvals?status=pending&limit=50``), for comparison.

The tables are analysed after the fill (see :func:`analyze`). Prints a table and writes
``bench/results/inbox-<database>.json``; the target is a p95 under 100 ms for the first page and for a
filtered page.

    python bench/inbox.py [--pending 100000] [--requests 200] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from approvals.models import ApprovalRequest  # noqa: E402
from bench.databases import fresh  # noqa: E402
from runtime.db import Database  # noqa: E402
from runtime.models import Run  # noqa: E402

TARGET_P95_MS = 100.0
BATCH = 5000


def fill(db: Database, pending: int) -> None:
    """``pending`` pending requests and ``pending // 5`` decided ones, each with a run, in batches."""
    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    total = pending + pending // 5
    for start in range(0, total, BATCH):
        runs, requests = [], []
        for n in range(start, min(start + BATCH, total)):
            run_id, opened = uuid.uuid4().hex, now - timedelta(seconds=rng.uniform(0, 30 * 86400))
            workflow = "price_change" if n % 3 else "lead_routing"
            decided = n >= pending
            high = rng.random() < 0.1
            roles = ["pricing_manager"] if workflow == "price_change" else ["sales_ops"]
            runs.append({"id": run_id, "workflow": workflow, "version": "1.1.0",
                         "status": "succeeded" if decided else "waiting_approval", "input": {"n": n},
                         "created_by": "bench.operator", "created_at": opened, "updated_at": opened})
            arguments = {"sku": f"SKU-{1001 + n % 10}", "currency": "EUR", "amount": f"{100 + n % 40}.00"}
            requests.append({
                "id": uuid.uuid4().hex, "run_id": run_id, "interrupt_id": uuid.uuid4().hex, "workflow": workflow,
                "version": "1.1.0", "node": "apply_prices", "action": "pricing.set_price", "arguments": arguments,
                "arguments_hash": uuid.uuid4().hex * 2, "reason": "the price moves by more than 10 %",
                "requested_by": "bench.operator", "roles": roles, "required_approvals": 2 if high else 1,
                "approvers": [], "policy": None, "comments": [], "risk": "high" if high else "normal",
                "remind_at": opened + timedelta(hours=12), "due_at": opened + timedelta(hours=24),
                "expires_at": opened + timedelta(days=400), "owner": None, "separate": [],
                "status": "approved" if decided else "pending", "decided_by": "bench.approver" if decided else None,
                "created_at": opened, "decided_at": opened + timedelta(hours=1) if decided else None})
        db.transaction(lambda s, r=runs, q=requests: (s.execute(insert(Run), r), s.execute(insert(ApprovalRequest), q)))


def analyze(db: Database, database: str) -> None:
    """The planner's statistics, as a database in use has them: PostgreSQL's autovacuum analyses a table
    within a minute of a bulk load like this one (without them it plans for a few dozen rows and sorts
    all 100,000); SQLite is analysed by hand. The same for Steward's tables as for any other."""
    with db.engine.connect() as connection:
        if database == "postgres":
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE approval_requests, runs")
        else:
            connection.exec_driver_sql("ANALYZE")
            connection.commit()


def timed(client: httpx.Client, path: str, count: int) -> dict[str, Any]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        answer = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
    samples.sort()
    return {"path": path, "requests": count, "p50_ms": round(statistics.median(samples), 2),
            "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2), "max_ms": round(samples[-1], 2)}


def sign_in(client: httpx.Client) -> None:
    form = client.get("/inbox/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    done = client.post("/inbox/login", data={"csrf_token": token, "name": "demo.approver",
                                             "password": "demo-approver-pass"})
    assert done.status_code == 200 and "Approval requests" in done.text, done.text[:500]


def measure(url: str, args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], float]:
    """Fill the database at ``url``, start the server on it and time each kind of page."""
    db = Database(url)
    db.upgrade()
    started = time.perf_counter()
    fill(db, args.pending)
    filled = time.perf_counter() - started
    analyze(db, args.database)
    db.engine.dispose()
    port = 8000 + random.Random().randint(100, 900)
    env = {**os.environ, "STEWARD_DATABASE_URL": url, "STEWARD_DEMO": "true", "STEWARD_PORT": str(port),
           "STEWARD_SANDBOX_PATH": str(work / "sandbox.db"), "OTEL_TRACES_EXPORTER": "none",
           "PYTHONPATH": str(ROOT)}
    log = (work / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--no-worker"], env=env,
                              stdout=log, stderr=log, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit((work / "serve.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=60, follow_redirects=True) as client:
            sign_in(client)
            first = client.get("/inbox").text
            after = re.search(r'<a href="([^"]+)" rel="next">', first).group(1).replace("&amp;", "&")
            for path in ("/inbox", "/inbox?workflow=price_change&risk=high"):  # warm up
                timed(client, path, 5)
            pages = {
                "first page": timed(client, "/inbox", args.requests),
                "filtered page (workflow, risk)": timed(client, "/inbox?workflow=price_change&risk=high",
                                                        args.requests),
                "role filter": timed(client, "/inbox?role=sales_ops", args.requests),
                "second page (cursor)": timed(client, after, args.requests),
            }
            api = httpx.Client(base_url=base, timeout=60,
                               headers={"Authorization": "Bearer steward-demo-approver"})
            pages["API first page (JSON, no counts)"] = timed(api, "/api/v1/approvals?status=pending&limit=50",
                                                            args.requests)
            api.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    return pages, filled



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="steward-bench-inbox-"))
    with fresh(args.database, "inbox") as url:
        pages, filled = measure(url, args, work)
    print(f"\ninbox with {args.pending:,} pending approvals ({args.pending // 5:,} decided), {args.database}, "
          f"{args.requests} sequential requests each (filled in {filled:.0f} s)\n")
    print(f"| page | p50 ms | p95 ms | max ms |\n| --- | --- | --- | --- |")
    for name, row in pages.items():
        print(f"| {name} | {row['p50_ms']} | {row['p95_ms']} | {row['max_ms']} |")
    met = all(pages[k]["p95_ms"] < TARGET_P95_MS for k in ("first page", "filtered page (workflow, risk)"))
    print(f"\ntarget: p95 < {TARGET_P95_MS:g} ms for the first and a filtered page: {'met' if met else 'NOT met'}")
    result = {"benchmark": "inbox", "database": args.database, "pending": args.pending,
              "decided": args.pending // 5, "requests": args.requests, "target_p95_ms": TARGET_P95_MS,
              "target_met": met, "pages": pages, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    out = ROOT / "bench" / "results" / f"inbox-{args.database}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
